"""`texttune train RECIPE [--set section.key=value ...]`"""

from __future__ import annotations

import argparse
import json

from texttune.cli._arguments import add_recipe_arguments
from texttune.config import load_recipe


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("train", help="fine-tune an encoder from a YAML recipe and write a bundle")
    add_recipe_arguments(parser)
    parser.add_argument(
        "--restart", action="store_true", help="discard the checkpoints of a killed run in output.dir and start over"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="train on every row (data.valid_fraction 0): no evaluation, the last weights kept",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.training import train

    overrides = [*args.overrides, *(["data.valid_fraction=0"] if args.full else [])]
    result = train(load_recipe(args.recipe, overrides), restart=args.restart)
    summary = {
        "bundle": str(result.bundle),
        "valid": result.metrics,
        "baseline": result.baseline,
        "seconds": round(result.seconds, 1),
        "model_version": result.model_version,
        **({"full_data": True} if args.full else {}),
    }
    print(json.dumps(summary, indent=2))
    return 0
