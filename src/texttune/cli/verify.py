"""`texttune verify BUNDLE`: check a bundle (or every member of a cv run) before trusting it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "verify", help="check a bundle's files against the SHA-256 it recorded (no symlinks, pickles, outside files)"
    )
    parser.add_argument("bundle", help="a bundle written by `texttune train`, or a `texttune cv` run directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.bundle import BUNDLE_FILE, ENSEMBLE_FILE, ensemble_members, load_ensemble
    from texttune.errors import TexttuneError

    path = Path(args.bundle)
    if (path / ENSEMBLE_FILE).is_file():
        load_ensemble(path, model=False)  # the manifest, and the members agree
        members = ensemble_members(path)
        for member in members:
            _verify(path / member)
        print(f"{path}: an ensemble of {len(members)} members, each checked above")
        return 0
    if not (path / BUNDLE_FILE).is_file():
        raise TexttuneError(f"{path}: not a texttune bundle (no {BUNDLE_FILE}) and not a cv run")
    _verify(path)
    return 0


def _verify(path: Path) -> None:
    """Every file against its hash, the weights against the description, and each export through ONNX Runtime."""
    from texttune.bundle import load_bundle, verify_bundle
    from texttune.runners import OnnxRunner

    print("\n".join(verify_bundle(path)))
    bundle = load_bundle(path)
    for engine, record in bundle.exports.items():
        OnnxRunner(path / record["file"])
        verdict = "passed" if record.get("passed") else "FAILED"
        print(f"{path / record['file']}: {engine} loads; its fidelity gate {verdict}")
    print(f"{path}: verified")
