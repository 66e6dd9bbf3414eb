"""`texttune serve MODEL [--host 127.0.0.1] [--port 8000]`: the model as an HTTP service with a playground page."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from texttune.cli._arguments import add_engine_argument, positive_int

logger = logging.getLogger(__name__)


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("serve", help="serve a bundle, cv run or models:/ version over HTTP")
    parser.add_argument("bundle", help="a bundle, a `texttune cv` run, or a registered version (models:/NAME@best)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    add_engine_argument(parser)
    parser.add_argument("--max-texts", type=positive_int, default=64, help="texts per request (64)")
    parser.add_argument("--max-chars", type=positive_int, default=20_000, help="characters per text (20000)")
    parser.add_argument("--truncate", action="store_true", help="cut texts over --max-chars instead of refusing")
    parser.add_argument("--queue", type=positive_int, default=256, help="texts waiting at most before 429 (256)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds before a request gets 503 (10)")
    parser.add_argument("--threads", type=positive_int, help="inference threads (default: the CPU's cores)")
    parser.add_argument("--tracking-uri", help="MLflow store of a models:/ version (default: $MLFLOW_TRACKING_URI)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from texttune.predictor import Predictor
    from texttune.serving import ServeSettings, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    api_key = os.environ.get("TEXTTUNE_API_KEY") or None
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("serving on %s without TEXTTUNE_API_KEY: anyone who can reach it can use it", args.host)
    settings = ServeSettings(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        truncate=args.truncate,
        max_queued_texts=args.queue,
        deadline_seconds=args.deadline,
        api_key=api_key,
    )
    predictor = Predictor.load(args.bundle, tracking_uri=args.tracking_uri, engine=args.engine)
    logger.info("serving %s (%s) on http://%s:%d", args.bundle, predictor.engine, args.host, args.port)
    uvicorn.run(create_app(predictor, settings), host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
