"""Learning-rate schedules the Trainer steps once per optimizer step.

Linear, cosine and constant-with-warmup come from transformers (`lr_scheduler_type`); these are the ones it lacks,
each also as a small frozen object `(optimizer, total_steps) -> scheduler` that `TexttuneTrainer.create_scheduler`
calls once it has built the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

# fastai's fit_one_cycle defaults: start at peak / 25, end at peak / (25 * 1e5).
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_FINAL_DIV = 1e5


def one_cycle(
    optimizer: Optimizer, total_steps: int, pct_start: float = 0.25, momentums: tuple[float, float] = (0.95, 0.85)
) -> LRScheduler:
    """fastai's one cycle (slanted triangular with cosine sides) on torch's OneCycleLR.

    Each parameter group peaks at its own `lr` after `pct_start` of the steps, so discriminative rates keep their
    ratios; Adam's beta1 falls from momentums[0] to momentums[1] while the rate rises, and comes back as it falls:
    less momentum while the steps are large.
    """
    high, low = momentums
    total_steps = max(4, total_steps)
    if pct_start > 0:  # OneCycleLR divides by zero when a phase spans under one step: short runs warm up 2 steps
        pct_start = min(max(pct_start, 2 / total_steps), 1 - 1 / total_steps)
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=low,
        max_momentum=high,
        div_factor=ONE_CYCLE_DIV,
        final_div_factor=ONE_CYCLE_FINAL_DIV,
    )


def exponential_sweep(optimizer: Optimizer, start: float, end: float, steps: int, reference: float = 1.0) -> LambdaLR:
    """The LR range test's sweep: the group whose rate is `reference` goes from `start` to `end` geometrically over
    `steps`; every other group keeps its ratio to it."""
    ratio = end / start
    return LambdaLR(optimizer, lambda step: start * ratio ** (min(step, steps - 1) / max(1, steps - 1)) / reference)


@dataclass(frozen=True)
class OneCycle:
    """`one_cycle` as a schedule for `TexttuneTrainer`: the recipe's warmup_ratio and momentums."""

    pct_start: float = 0.25
    momentums: tuple[float, float] = (0.95, 0.85)

    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        return one_cycle(optimizer, total_steps, self.pct_start, self.momentums)


@dataclass(frozen=True)
class ExponentialSweep:
    """`exponential_sweep` as a schedule for `TexttuneTrainer`; `reference` is the rate of the swept group."""

    start: float
    end: float
    steps: int
    reference: float = 1.0

    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        return exponential_sweep(optimizer, self.start, self.end, self.steps, self.reference)
