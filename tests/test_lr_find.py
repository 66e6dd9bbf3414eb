"""LR range test: suggestions on known curves, divergence stop, restored weights, CLI and plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from texttune import load_recipe
from texttune.cli.main import main
from texttune.lr_find import lr_find
from texttune.policy.lr_finder import (
    FINE_TUNING_DIVISOR,
    divergence_onset,
    fine_tuning_start,
    minimum_tenth,
    steepest,
    valley,
)

RATES = np.logspace(-7, 0, 71)  # ten points per decade


def _curve() -> np.ndarray:
    """Flat until 1e-5, falls steepest at 1e-3, bottoms out at 1e-2, then blows up."""
    x = np.log10(RATES)
    return 2.0 - 1.0 / (1.0 + np.exp(-3.0 * (x + 3.0))) + np.where(x > -2, 20.0 * (x + 2) ** 2, 0.0)


def test_suggestions_on_a_known_curve() -> None:
    losses = _curve()
    assert steepest(RATES, losses) == pytest.approx(1e-3, rel=0.3)
    assert minimum_tenth(RATES, losses) == pytest.approx(RATES[np.argmin(losses)] / 10)
    # the valley lies on the falling stretch, before the minimum and after the flat start
    assert 1e-5 < valley(RATES, losses) < RATES[np.argmin(losses)]
    noisy = losses + np.random.default_rng(0).normal(0, 1e-3, len(losses))
    assert steepest(RATES, noisy) == pytest.approx(1e-3, rel=0.6)


@pytest.mark.parametrize("seed", range(10))
def test_divergence_onset_ignores_noise_on_a_flat_curve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.log10(RATES)
    clean = 0.6 + np.where(x > -2.3, 2.0 * (x + 2.3) ** 2, 0.0)  # flat, then turns up from 5e-3
    raw = clean + rng.normal(0, 0.08, len(clean))  # noisy batches, as with long essays
    average, smoothed = 0.0, []
    for i, loss in enumerate(raw, start=1):  # LRFinder's debiased exponential average
        average = 0.98 * average + 0.02 * loss
        smoothed.append(average / (1 - 0.98**i))
    onset = divergence_onset(RATES, raw, smoothed)
    assert 5e-3 <= onset < 1e-1
    assert fine_tuning_start(RATES, raw, smoothed) == pytest.approx(onset / FINE_TUNING_DIVISOR)


def test_sweep_stops_at_divergence_and_restores_the_weights(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe("classification", rows=160))
    result = lr_find(recipe, start=1e-6, end=1e4, steps=80, plot=tmp_path / "sweep.png")
    assert 5 <= len(result.rates) < 80  # diverged before the end of the sweep
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert result.rates == sorted(result.rates) and result.rates[0] == pytest.approx(1e-6)
    assert set(result.suggestions) == {"valley", "steepest", "minimum/10"}
    assert all(result.rates[0] <= rate <= result.rates[-1] for rate in result.suggestions.values())
    assert result.rates[0] <= result.fine_tuning * FINE_TUNING_DIVISOR <= result.rates[-1]
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "sweep.json").read_text())["rates"] == result.rates


def test_finder_callback_puts_the_weights_back(write_recipe) -> None:
    from texttune.policy.lr_finder import LRFinder

    model = torch.nn.Linear(3, 2)
    finder = LRFinder([1e-3])
    finder.on_train_begin(None, None, None, model=model)
    initial = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    finder.on_train_end(None, None, None, model=model)
    assert torch.equal(model.weight.detach(), initial)


def test_cli_prints_suggestions_and_writes_the_plot(write_recipe, tmp_path: Path, capsys) -> None:
    recipe = write_recipe("classification", rows=80)
    assert main(["-q", "lr-find", str(recipe), "--steps", "20", "--plot", str(tmp_path / "lr.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 20 and summary["plot"] == str(tmp_path / "lr.png")
    assert summary["fine_tuning_start"] > 0 and set(summary["suggestions"]) == {"valley", "steepest", "minimum/10"}
    assert (tmp_path / "lr.png").is_file()
    assert main(["-q", "lr-find", str(recipe), "--start", "1", "--end", "0.1"]) == 2
    assert "start < end" in capsys.readouterr().err
