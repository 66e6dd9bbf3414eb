"""`texttune train RECIPE [--set section.key=value ...]`"""

from __future__ import annotations

import argparse
import json

from texttune.config import load_recipe


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("train", help="fine-tune an encoder from a YAML recipe and write a bundle")
    parser.add_argument("recipe", help="YAML recipe, e.g. examples/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value (repeatable), e.g. --set training.epochs=2",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.training import train

    result = train(load_recipe(args.recipe, args.overrides))
    summary = {
        "bundle": str(result.bundle),
        "valid": result.metrics,
        "baseline": result.baseline,
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0
