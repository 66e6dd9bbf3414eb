"""`texttune cv RECIPE [--set ...] [--force] [--fold K | --collect] [--executor ray]`: K-fold cross-validation into
`output.dir`, resumable, and splittable into one job per fold."""

from __future__ import annotations

import argparse
import shlex

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
    split = parser.add_mutually_exclusive_group()
    split.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="train fold K only (0..cv.folds-1), e.g. one job of a Slurm array; then run --collect",
    )
    split.add_argument(
        "--collect", action="store_true", help="once every fold is trained: the report, OOF table, plots and ensemble"
    )
    split.add_argument(
        "--executor",
        choices=("sequential", "ray"),
        default="sequential",
        help="ray: each fold a Ray task on a local Ray or the cluster in RAY_ADDRESS (pip install 'texttune[ray]')",
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="then train the full-data model (every row, for the epochs the folds chose) into OUTPUT_DIR/full",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.cv import collect_cv, format_report, refit, run_cv, train_fold
    from texttune.errors import TexttuneError

    recipe = load_recipe(args.recipe, args.overrides)
    if args.force and (args.fold is not None or args.collect):
        raise TexttuneError("--force discards a run; it goes with neither --fold nor --collect (other jobs' folds)")
    if args.refit and (args.fold is not None or recipe.seeds):
        raise TexttuneError("--refit follows a whole run of one seed: use it with texttune cv RECIPE (or --collect)")
    if args.fold is not None:
        bundle = train_fold(recipe, args.fold)
        again = " ".join(
            ["texttune cv", shlex.quote(args.recipe), *(f"--set {shlex.quote(o)}" for o in args.overrides)]
        )
        print(f"fold {args.fold} is in {bundle}; once every fold is, run: {again} --collect")
        return 0
    result = collect_cv(recipe) if args.collect else run_cv(recipe, force=args.force, executor=args.executor)
    report = result.report
    print(format_report(report))
    if "seeds" in report:
        what, where = f"blend of {len(report['seeds']['seeds'])} seeds", "seeds_report.json"
        spread = f"(seeds {report['seeds']['mean']:.4f} +- {report['seeds']['std']:.4f})"
    else:
        what, where = "out-of-fold", "cv_report.json"
        spread = f"(folds {report['fold_mean']:.4f} +- {report['fold_std']:.4f})"
    print(
        f"\n{what} {report['metric']} {report['oof'][report['metric']]:.4f} {spread}; "
        f"{'collected' if args.collect else 'ran'} in {result.seconds / 60:.1f} min; "
        f"report {result.run / where}; predict with: texttune predict {result.run} --input ..."
    )
    if result.model_version:
        print(f"registered as {result.model_version}: texttune predict {result.model_version} --input ...")
    if args.refit:
        full = refit(recipe)
        print(f"full-data model in {full.bundle} (no held-out score: the cv run's is its estimate)")
    return 0
