"""`texttune cv RECIPE [--set ...] [--force]`: K-fold cross-validation into `output.dir`, resumable."""

from __future__ import annotations

import argparse

from texttune.cli._arguments import add_recipe_arguments
from texttune.config import load_recipe


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "cv", help="cross-validate: one bundle per fold, out-of-fold report, the run directory predicts as an ensemble"
    )
    add_recipe_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="discard a run of another recipe in output.dir instead of refusing"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.cv import format_report, run_cv

    result = run_cv(load_recipe(args.recipe, args.overrides), force=args.force)
    report = result.report
    print(format_report(report))
    print(
        f"\nout-of-fold {report['metric']} {report['oof'][report['metric']]:.4f} "
        f"(folds {report['fold_mean']:.4f} +- {report['fold_std']:.4f}) in {result.seconds / 60:.1f} min; "
        f"report {result.run / 'cv_report.json'}; predict with: texttune predict {result.run} --input ..."
    )
    if result.model_version:
        print(f"registered as {result.model_version}: texttune predict {result.model_version} --input ...")
    return 0
