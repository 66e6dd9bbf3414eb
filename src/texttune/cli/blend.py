"""`texttune blend RUN_A RUN_B ... --output BLEND`: cv runs of one fold plan, mixed by weights fitted on their
out-of-fold predictions."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "blend", help="mix cv runs that share a fold plan, with weights fitted on their out-of-fold predictions"
    )
    parser.add_argument("runs", nargs="+", help="two or more `texttune cv` run directories")
    parser.add_argument("--output", required=True, help="the blend directory to write (a predictor)")
    parser.add_argument(
        "--register",
        action="store_true",
        help="register the blend as a model version pointing at the runs' registered ensembles (tracked cv runs)",
    )
    parser.add_argument("--tracking-uri", help="--register: the store (default: the one the runs were registered in)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.blend import blend, register_blend, registered_versions

    if args.register:
        registered_versions(args.runs)  # refused before the blend is written
    result = blend(args.runs, args.output)
    metric = "mcrmse" if "mcrmse" in result.blend else "accuracy"
    for (path, metrics), weights in zip(result.runs.items(), result.weights):
        shown = " ".join(f"{w:.3f}" for w in (weights if weights.ndim else [weights]))
        print(f"{metrics[metric]:10.5f}  weight {shown}  {path}")
    print(
        f"{result.blend[metric]:10.5f}  the blend's out-of-fold {metric} "
        f"({result.cross_fitted[metric]:.5f} with each fold's weights fitted on the other folds)"
    )
    kept = ", ".join(step["name"] for step in result.postprocess) or "no post-processing kept"
    print(f"{kept}; predict with: texttune predict {result.output} --input ...")
    if args.register:
        version = register_blend(result.output, args.tracking_uri)
        print(f"registered as {version}" if version else "not registered: the tracking store failed (see above)")
    return 0
