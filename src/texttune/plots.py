"""Figures people would rather look at than read: training curves and the LR range test.

Each function returns PNG bytes, so callers write them atomically next to what they describe. matplotlib is
imported lazily with the Agg backend: no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (7.0, 4.0)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt.subplots(rows, columns, figsize=size, squeeze=False)


def _png(figure: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def lr_find_plot(output_dir: str | Path) -> Path:
    """Where `texttune lr-find` puts its plot by default: beside the recipe's output.dir, so that a later cv run
    of the recipe finds it (its report shows it)."""
    output = Path(output_dir)
    return output.with_name(f"{output.name}-lr_find.png")


def training_curves(
    train_log: Sequence[Mapping[str, float]],
    evaluations: Sequence[Mapping[str, float]],
    metric: str,
    stage_starts: Sequence[int] = (),
) -> bytes:
    """Training and validation loss (left) and the validation metric (right) against optimizer steps, with the
    boundaries of unfreezing stages dashed (fastai's ShowGraph)."""
    figure, axes = _figure(1, 2, size=(11.0, 4.0))
    losses, scores = axes[0]
    losses.plot([e["step"] for e in train_log], [e["loss"] for e in train_log], label="train", alpha=0.8)
    losses.plot([e["step"] for e in evaluations], [e["loss"] for e in evaluations], "o-", label="validation")
    losses.set(xlabel="step", ylabel="loss", title="loss")
    losses.legend()
    scores.plot([e["step"] for e in evaluations], [e[metric] for e in evaluations], "o-", color="tab:green")
    scores.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    for axis in (losses, scores):
        axis.grid(alpha=0.3)
        for start in stage_starts:
            axis.axvline(start, color="grey", linestyle="--", linewidth=0.8)
    return _png(figure)


def lr_find(
    rates: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestions: Mapping[str, float],
    fine_tuning: float,
) -> bytes:
    """The range test's loss against the rate (log scale), each suggestion marked, and the fine-tuning advice."""
    figure, axes = _figure(size=(8.0, 4.8))
    axis = axes[0][0]
    axis.plot(rates, losses, color="tab:blue", alpha=0.25, label="loss")
    axis.plot(rates, smoothed, color="tab:blue", label="smoothed loss")
    axis.set_xscale("log")
    axis.set(xlabel="learning rate (the encoder's top level; other groups keep their ratio)", ylabel="loss")
    low, high = min(smoothed), max(smoothed[: max(1, len(smoothed) * 9 // 10)])
    axis.set_ylim(low - 0.1 * (high - low), high + 0.2 * (high - low))
    markers = {"valley": ("o", "tab:red"), "steepest": ("^", "tab:orange"), "minimum/10": ("s", "tab:purple")}
    for name, rate in suggestions.items():
        marker, color = markers.get(name, ("x", "black"))
        index = min(range(len(rates)), key=lambda i: abs(rates[i] - rate))
        axis.plot(rates[index], smoothed[index], marker, color=color, markersize=9, label=f"{name}: {rate:.1e}")
    axis.axvline(fine_tuning, color="tab:green", linestyle="--", label=f"fine-tuning start: {fine_tuning:.1e}")
    axis.set_title(
        "LR range test. The classic suggestions assume training from scratch; a pretrained encoder fine-tunes best\n"
        "about 100x below where the loss turns up: start near the green line and compare a few runs.",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def confusion(matrix: Mapping[str, Any]) -> bytes:
    """Out-of-fold confusion matrix: true classes in rows, predicted in columns, counts and row shares."""
    labels, counts = list(matrix["labels"]), np.asarray(matrix["counts"], dtype=float)
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = 2.0 + 0.7 * len(labels)
    figure, axes = _figure(size=(size + 1.0, size))
    axis = axes[0][0]
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        color = "white" if shares[row, column] > 0.5 else "black"
        axis.text(column, row, f"{int(count)}\n{shares[row, column]:.0%}", ha="center", va="center", color=color,
                  fontsize=8)  # fmt: skip
    axis.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true")
    axis.set_xticklabels(labels, rotation=45, ha="right")
    axis.set_yticklabels(labels)
    axis.set_title("out-of-fold confusion matrix (share of each true class)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def predicted_vs_true(oof: Any, targets: Sequence[str]) -> bytes:
    """Out-of-fold predictions against the truth, one panel per target, with the diagonal and each panel's RMSE."""
    columns = min(3, len(targets))
    rows = -(-len(targets) // columns)
    figure, axes = _figure(rows, columns, size=(4.0 * columns, 3.8 * rows))
    for index, target in enumerate(targets):
        axis = axes[index // columns][index % columns]
        truth, predicted = oof[target].to_numpy(dtype=float), oof[f"pred_{target}"].to_numpy(dtype=float)
        jitter = np.random.default_rng(index).uniform(-0.08, 0.08, len(truth))  # targets often sit on a grid
        axis.scatter(truth + jitter, predicted, s=6, alpha=0.35)
        low, high = min(truth.min(), predicted.min()), max(truth.max(), predicted.max())
        axis.plot([low, high], [low, high], color="grey", linewidth=1)
        rmse = float(np.sqrt(np.mean((predicted - truth) ** 2)))
        axis.set(title=f"{target}: RMSE {rmse:.3f}", xlabel="true", ylabel="predicted")
        axis.grid(alpha=0.3)
    for index in range(len(targets), rows * columns):
        axes[index // columns][index % columns].axis("off")
    return _png(figure)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> bytes:
    """Reliability diagram: rows binned by their top probability; each bin's accuracy against its confidence, with
    the bins' shares of rows below. A calibrated model sits on the diagonal."""
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    centres = (np.arange(bins) + 0.5) / bins
    filled = [b for b in range(bins) if np.any(which == b)]
    accuracy = [float(np.mean(predicted[which == b] == labels[which == b])) for b in filled]
    mean_confidence = [float(confidence[which == b].mean()) for b in filled]
    figure, axes = _figure(2, 1, size=(4.8, 5.2))
    top, bottom = axes[0][0], axes[1][0]
    top.plot([0, 1], [0, 1], color="grey", linewidth=1)
    top.bar(centres[filled], accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot(mean_confidence, accuracy, "o", color="black", markersize=3, label="mean confidence")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="out-of-fold reliability")
    top.legend(fontsize=8)
    bottom.bar(centres, np.bincount(which, minlength=bins) / len(which), width=1 / bins, edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="top-class probability", ylabel="share of rows")
    return _png(figure)
