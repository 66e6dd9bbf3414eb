"""The LR range test (Smith 2015, fastai's `lr_find`): a callback that records the loss while the rate grows
exponentially, stops at divergence and puts the weights back; and the suggestions read off its curve.

Suggestions are plain functions of (rates, smoothed losses) -> rate, gathered in SUGGESTIONS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback


class LRFinder(TrainerCallback):
    """Records (rate, loss) per optimizer step of an exponential sweep; restores the initial weights at the end.

    Pair it with `schedules.exponential_sweep` and `logging_steps=1`, so every step's loss reaches `on_log`.

    Args:
        rates: the rate of step i (the one the sweep sets before step i's update).
        smoothing: weight of the running loss in the debiased exponential average (fastai's 0.98).
        divergence: stop once the smoothed loss exceeds this times its minimum.
    """

    def __init__(self, rates: Sequence[float], smoothing: float = 0.98, divergence: float = 4.0) -> None:
        self.sweep = list(rates)
        self.smoothing = smoothing
        self.divergence = divergence
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.initial: dict[str, torch.Tensor] = {}
        self._average = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        self.initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        if not logs or "loss" not in logs or not 0 < state.global_step <= len(self.sweep):
            return
        loss = float(logs["loss"])
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** (len(self.losses) + 1))
        self.rates.append(self.sweep[state.global_step - 1])
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.divergence * min(self.smoothed):
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        model.load_state_dict(self.initial)


def _finite(rates: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve without its first tenth, where the smoothed loss is still settling, and without non-finite points."""
    rates, losses = np.asarray(rates, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(losses) & (np.arange(len(losses)) >= len(losses) // 10)
    return rates[keep], losses[keep]


def minimum_tenth(rates: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the rate at the lowest loss: the last rate that still learns fast, backed off."""
    rates, losses = _finite(rates, losses)
    return float(rates[np.argmin(losses)] / 10)


def steepest(rates: Sequence[float], losses: Sequence[float]) -> float:
    """Where the loss falls fastest against log(rate), on the way down to its minimum (not in a later bump)."""
    rates, losses = _finite(rates, losses)
    end = int(np.argmin(losses)) + 1
    slopes = np.gradient(losses[: max(end, 2)], np.log(rates[: max(end, 2)]))
    return float(rates[np.argmin(slopes)])


def valley(rates: Sequence[float], losses: Sequence[float]) -> float:
    """Halfway along the longest stretch over which the loss keeps falling (fastai's default since 2.5).

    The stretch is the longest decreasing subsequence of the smoothed losses, so a bump does not end it.
    """
    rates, losses = _finite(rates, losses)
    length, previous = [1] * len(losses), [-1] * len(losses)
    for i in range(len(losses)):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], previous[i] = length[j] + 1, j
    end = int(np.argmax(length))
    start = end
    while previous[start] >= 0:
        start = previous[start]
    return float(rates[(start + end) // 2])


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": valley,
    "steepest": steepest,
    "minimum/10": minimum_tenth,
}


# Pretrained encoders fine-tune best about a hundred times below the rate at which the range test's loss turns up:
# measured here with MiniLM, `divergence_onset` found 5.5e-3 on SST-5 and 6.4e-3 on ELLIPSE, and the best
# fine-tuning rates were 5e-5 to 8e-5 and 1e-4 (bench/experiments.md). The classic suggestions assume training
# from scratch, and on a pretrained encoder the curve is often flat until it diverges (transformers #16013), so
# they can land anywhere.
FINE_TUNING_DIVISOR = 100.0


def divergence_onset(rates: Sequence[float], losses: Sequence[float], smoothed: Sequence[float]) -> float:
    """The rate from which on the smoothed loss stays more than one noise width above its lowest point so far.

    The noise width is the spread of the raw losses around the smoothed curve over the sweep's first half (a robust
    standard deviation: 1.4826 x the median absolute deviation), so a noisy flat curve (long essays, few steps) does
    not count as rising, and the spikes of divergence do not widen it. A bump that comes back down is not the onset.
    """
    rates, losses, smoothed = (np.asarray(a, dtype=float) for a in (rates, losses, smoothed))
    keep = np.isfinite(losses) & np.isfinite(smoothed)
    start = len(smoothed) // 10
    residuals = (losses - smoothed)[start : max(start + 2, len(smoothed) // 2)]
    residuals = residuals[np.isfinite(residuals)]
    noise = 1.4826 * float(np.median(np.abs(residuals))) if len(residuals) else 0.0
    lowest = np.minimum.accumulate(np.where(keep & (np.arange(len(smoothed)) >= start), smoothed, np.inf))
    risen = ~keep | (smoothed > lowest + noise)
    below = np.flatnonzero(~risen[start:])  # the onset follows the last point that was not risen
    onset = start + (below[-1] + 1 if len(below) else 0)
    return float(rates[min(onset, len(rates) - 1)])


def fine_tuning_start(rates: Sequence[float], losses: Sequence[float], smoothed: Sequence[float]) -> float:
    """Where to start fine-tuning a pretrained encoder: the divergence onset / FINE_TUNING_DIVISOR."""
    return divergence_onset(rates, losses, smoothed) / FINE_TUNING_DIVISOR
