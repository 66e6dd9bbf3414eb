"""Training policy: which parameters learn, how fast, and when."""

from texttune.policy.param_groups import param_groups

__all__ = ["param_groups"]
