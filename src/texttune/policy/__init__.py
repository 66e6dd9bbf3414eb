"""Training policy: which parameters learn, how fast, and when."""

from texttune.policy.param_groups import Rates, level_rates
from texttune.policy.schedules import ExponentialSweep, OneCycle

__all__ = ["ExponentialSweep", "OneCycle", "Rates", "level_rates"]
