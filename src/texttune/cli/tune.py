"""`texttune tune RECIPE --trials N [--timeout 2h] [--cv]`: a hyperparameter search over the recipe's `tune.space`."""

from __future__ import annotations

import argparse
import re

from texttune.cli._arguments import add_recipe_arguments, positive_int
from texttune.config import load_recipe


def duration(value: str) -> float:
    """An argparse type: seconds, or a number with s, m or h (90, 45m, 2h, 1.5h)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90, 45m or 2h, got {value!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "tune", help="search hyperparameters (tune.space) with Optuna; resumable; writes best.yaml into output.dir"
    )
    add_recipe_arguments(parser)
    parser.add_argument("--trials", type=positive_int, required=True, help="finished trials the study should hold")
    parser.add_argument("--timeout", type=duration, help="stop starting trials after this long (e.g. 2h, 45m)")
    parser.add_argument(
        "--cv", action="store_true", help="score each trial by its OOF metric over tune.folds (default cv.folds)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.tune import tune

    result = tune(load_recipe(args.recipe, args.overrides), args.trials, args.timeout, args.cv)
    names = list(result.best_params)
    print(f"{'trial':>5}  {'state':<8} {result.metric:>10}  " + "  ".join(names))
    for row in result.trials[:10]:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        shown = "  ".join(_shown(row.get(name)) for name in names)
        print(f"{row['number']:>5}  {row['state']:<8} {value:>10}  {shown}")
    print(
        f"\nbest: trial {result.trials[0]['number']}, {result.metric} {result.best_value:.4f}; recipe "
        f"{result.best_recipe}; train it with: texttune train {result.best_recipe}"
    )
    return 0


def _shown(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
