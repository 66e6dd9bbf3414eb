"""Schedules: one cycle with momentum cycling, and the LR range test's exponential sweep."""

from __future__ import annotations

import pytest
import torch

from texttune.policy.schedules import ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV, exponential_sweep, one_cycle


def _optimizer(*rates: float) -> torch.optim.AdamW:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": rate} for rate in rates]
    return torch.optim.AdamW(groups, lr=rates[0])


def _curves(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> tuple[list[list[float]], list[float]]:
    rates, betas = [], []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    return rates, betas


def test_one_cycle_rises_to_each_groups_rate_at_pct_start_and_anneals() -> None:
    optimizer = _optimizer(1e-3, 1e-4)
    scheduler = one_cycle(optimizer, total_steps=100, pct_start=0.3, momentums=(0.95, 0.85))
    rates, betas = _curves(optimizer, scheduler, 100)
    head = [r[0] for r in rates]
    assert head[0] == pytest.approx(1e-3 / ONE_CYCLE_DIV)
    peak = max(range(100), key=head.__getitem__)
    assert peak == pytest.approx(29, abs=1) and head[peak] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(head[:peak], head[1 : peak + 1]))  # rises, then falls
    assert all(a >= b for a, b in zip(head[peak:], head[peak + 1 :]))
    assert head[-1] < 1e-3 / ONE_CYCLE_DIV / ONE_CYCLE_FINAL_DIV * 2
    for rate in rates:  # discriminative rates keep their ratio all along
        assert rate[1] / rate[0] == pytest.approx(0.1)
    # beta1 moves against the rate: 0.95 -> 0.85 at the peak -> 0.95
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85)
    assert betas[-1] == pytest.approx(0.95, abs=1e-3)
    assert min(betas) == pytest.approx(0.85)


def test_exponential_sweep_is_geometric_from_start_to_end() -> None:
    optimizer = _optimizer(1.0, 0.5)
    rates, _ = _curves(optimizer, exponential_sweep(optimizer, 1e-6, 1.0, steps=7), 7)
    heads = [r[0] for r in rates]
    assert heads[0] == pytest.approx(1e-6) and heads[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(heads, heads[1:])] == pytest.approx([10.0] * 6)
    assert all(r[1] == pytest.approx(r[0] / 2) for r in rates)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_one_cycle_survives_very_short_stages(steps: int) -> None:
    optimizer = _optimizer(1e-3)
    rates, _ = _curves(optimizer, one_cycle(optimizer, total_steps=steps, pct_start=0.25), steps)
    assert max(r[0] for r in rates) <= 1e-3 and all(r[0] > 0 for r in rates)
