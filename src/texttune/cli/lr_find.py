"""`texttune lr-find RECIPE [--set ...] [--plot PNG]`: the LR range test, its suggestions and plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from texttune.cli._arguments import add_recipe_arguments
from texttune.config import load_recipe


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("lr-find", help="LR range test: suggest learning rates and plot the sweep")
    add_recipe_arguments(parser)
    parser.add_argument("--plot", help="PNG to write (default: OUTPUT_DIR-lr_find.png next to the recipe's bundle)")
    parser.add_argument("--start", type=float, default=1e-7, help="first learning rate of the sweep")
    parser.add_argument("--end", type=float, default=1.0, help="last learning rate of the sweep")
    parser.add_argument("--steps", type=int, default=100, help="batches in the sweep (it stops early on divergence)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.lr_find import lr_find
    from texttune.plots import lr_find_plot

    recipe = load_recipe(args.recipe, args.overrides)
    plot = Path(args.plot) if args.plot else lr_find_plot(recipe.output.dir)
    result = lr_find(recipe, start=args.start, end=args.end, steps=args.steps, plot=plot)
    summary = {
        "suggestions": {name: float(f"{rate:.3g}") for name, rate in result.suggestions.items()},
        "fine_tuning_start": float(f"{result.fine_tuning:.3g}"),
        "steps": len(result.rates),
        "plot": str(plot),
    }
    print(json.dumps(summary, indent=2))
    return 0
