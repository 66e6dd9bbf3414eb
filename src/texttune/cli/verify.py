"""`texttune verify BUNDLE`: check a bundle (or every member of a cv run) before trusting it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "verify", help="check a bundle's files against the SHA-256 it recorded (no symlinks, pickles, outside files)"
    )
    parser.add_argument("bundle", help="a bundle written by `texttune train`, or a `texttune cv` run directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.bundle import BUNDLE_FILE, ENSEMBLE_FILE, load_bundle, load_ensemble, verify_bundle
    from texttune.errors import TexttuneError
    from texttune.runners import OnnxRunner

    path = Path(args.bundle)
    if (path / ENSEMBLE_FILE).is_file():
        members, _, _ = load_ensemble(path)  # checks the manifest and verifies and loads every member
        for member in json.loads((path / ENSEMBLE_FILE).read_text())["members"]:
            print("\n".join(verify_bundle(path / member)))
        print(f"{path}: an ensemble of {len(members)} members, each checked above")
        return 0
    if not (path / BUNDLE_FILE).is_file():
        raise TexttuneError(f"{path}: not a texttune bundle (no {BUNDLE_FILE}) and not a cv run")
    print("\n".join(verify_bundle(path)))
    bundle = load_bundle(path)  # and the description matches the weights
    for engine, record in bundle.exports.items():  # and ONNX Runtime accepts every export
        OnnxRunner(path / record["file"])
        verdict = "passed" if record.get("passed") else "FAILED"
        print(f"{path / record['file']}: {engine} loads; its fidelity gate {verdict}")
    print(f"{path}: verified")
    return 0
