"""Does texttune's fast path train the same model? Its loss curve against a reference's over the first steps.

Runs texttune's default training path (bf16 autocast where the CPU has it, SDPA attention; `--set` changes it) and
the reference (`--against`; by default the unchanged fp32 path: fp32, eager attention), on a fixed seed, and
compares the training loss step by step. Tolerance: bf16 keeps 8 bits of mantissa, so each step's loss may differ
by a few percent; the curves must agree within 5% per step on average and 10% at worst over the first 50 steps.

python bench/loss_curve.py [--workload sst5|ellipse] [--steps 50] [--set KEY=VALUE ...] [--against KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from texttune.config import Stage, load_recipe
from texttune.prepare import prepare
from texttune.task import parse_examples
from texttune.training import stage_trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"sst5": ("examples/sst5.yaml", "sst5_train.tsv"), "ellipse": ("examples/ellipse.yaml", "ellipse_train.csv")}


class Losses(TrainerCallback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.values.append(float(logs["loss"]))


def curve(workload: str, overrides: list[str], steps: int) -> list[float]:
    from texttune.data import read_table

    recipe_path, data = RECIPES[workload]
    recipe = load_recipe(ROOT / recipe_path, ["training.stages=null", *overrides])
    frame = read_table(ROOT / ".." / "shared" / "data" / data).sample(n=steps * recipe.training.batch_size + 8,
                                                                       random_state=0)  # fmt: skip
    examples = parse_examples(frame.reset_index(drop=True), recipe.data, recipe.task)
    rows = np.arange(len(examples))
    prepared = prepare(recipe, (examples.subset(rows[:-8]), examples.subset(rows[-8:])))
    losses = Losses()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = stage_trainer(prepared, Stage(epochs=1), 0, scratch, [losses])
        trainer.args.logging_steps = 1  # every step's loss, nothing else changed
        trainer.train()
    return losses.values[:steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sst5", choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--against", action="append", default=None, help="the reference's overrides")
    args = parser.parse_args()
    reference = args.against or ["training.precision=fp32", "model.attention=eager"]
    fast, exact = (
        np.array(curve(args.workload, args.overrides, args.steps)),
        np.array(curve(args.workload, reference, args.steps)),
    )
    relative = np.abs(fast - exact) / np.abs(exact)
    ok = relative.mean() < 0.05 and relative.max() < 0.10
    print(f"{args.workload}, {len(fast)} steps: loss reference ({' '.join(reference)}) {exact[0]:.4f} -> "
          f"{exact[-1]:.4f}, texttune {fast[0]:.4f} -> {fast[-1]:.4f}; relative difference per step: "
          f"mean {relative.mean():.2%}, max {relative.max():.2%} (tolerance 5% / 10%): "
          f"{'within' if ok else 'OUTSIDE'}")  # fmt: skip
    print(json.dumps({"reference": exact.tolist(), "texttune": fast.tolist(), "mean_rel": relative.mean(),
                      "max_rel": relative.max()}))  # fmt: skip


if __name__ == "__main__":
    main()
