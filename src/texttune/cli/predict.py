"""`texttune predict BUNDLE --input test.csv --output submission.csv` or `texttune predict BUNDLE --text "..."`"""

from __future__ import annotations

import argparse
import json
import logging
import os

from texttune.cli._arguments import add_engine_argument, class_shares, positive_int

logger = logging.getLogger(__name__)


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("predict", help="predict a table or one text with a trained bundle")
    parser.add_argument(
        "bundle",
        help="bundle written by `texttune train`, a `texttune cv` run (its folds averaged), or a registered "
        "version: models:/NAME@best, models:/NAME@latest, models:/NAME/3",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="table to predict (CSV, TSV, Parquet, JSONL; .zip/.gz)")
    source.add_argument("--text", help="one text; prints JSON")
    parser.add_argument("--output", help="submission CSV to write (with --input)")
    parser.add_argument("--sep", help="field separator of --input when not implied by its suffix")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="texts per forward pass at most (128)")
    add_engine_argument(parser)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="a cv run: leave out the post-processing it fitted on out-of-fold predictions (temperature, snapping)",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="classes: write each class's probability (prob_<label>) after the label, for log-loss submissions",
    )
    parser.add_argument(
        "--class-prior",
        type=class_shares,
        metavar="LABEL=SHARE,...",
        help="classes: move the probabilities to a known test prior, e.g. neg=0.7,pos=0.3 (a cv run or blend)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store of a models:/ bundle (default: $MLFLOW_TRACKING_URI, else sqlite:///texttune-runs/mlflow.db)",
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.input and not args.output:
        args.parser.error("--input needs --output, the submission CSV to write")
    from texttune.predictor import Predictor

    progress = args.input is not None and not os.environ.get("TQDM_DISABLE")  # `texttune -q` sets it
    predictor = Predictor.load(
        args.bundle,
        tracking_uri=args.tracking_uri,
        engine=args.engine,
        raw=args.raw,
        class_prior=args.class_prior,
        batch_size=args.batch_size,
        progress=progress,
    )
    if args.text is not None:
        print(json.dumps(predictor.predict_text(args.text), indent=2))
        return 0
    if args.probabilities and predictor.task.is_regression:
        args.parser.error("--probabilities is for classification models; this one predicts scores")
    submission = predictor.predict_file(args.input, args.output, sep=args.sep, probabilities=args.probabilities)
    logger.info("wrote %d rows to %s", len(submission), args.output)
    return 0
