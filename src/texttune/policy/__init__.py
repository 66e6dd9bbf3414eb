"""Training policy: which parameters learn, how fast, and when."""

from texttune.policy.param_groups import build_optimizer, param_groups

__all__ = ["build_optimizer", "param_groups"]
