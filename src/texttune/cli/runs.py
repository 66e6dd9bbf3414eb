"""`texttune runs [--tracking-uri URI] [--experiment NAME] [--limit N]`: the recent runs of a tracking store."""

from __future__ import annotations

import argparse

from texttune.cli._arguments import positive_int


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "runs", help="list recent train, cv and lr-find runs of the tracking store (folds under their cv run)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///texttune-runs/mlflow.db)",
    )
    parser.add_argument("--experiment", default="texttune", help="experiment (the recipes' tracking.experiment)")
    parser.add_argument("--limit", type=positive_int, default=20, help="newest top-level runs to show (20)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.tracking.listing import format_runs, recent_runs

    print(format_runs(recent_runs(args.tracking_uri, args.experiment, args.limit)))
    return 0
