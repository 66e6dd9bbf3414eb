"""`texttune export BUNDLE --format onnx [--quantize int8]`: ONNX files beside the bundle, gated against PyTorch."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "export", help="export a bundle (or each member of a cv run) to ONNX, kept only if it passes its fidelity gate"
    )
    parser.add_argument("bundle", help="a bundle written by `texttune train`, or a `texttune cv` run directory")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="the export format (onnx)")
    parser.add_argument("--quantize", choices=["int8"], help="also write an int8 model (dynamic quantization)")
    parser.add_argument("--force", action="store_true", help="keep an export that fails its gate, marked as failed")
    parser.add_argument(
        "--data",
        help="the table the bundle validated on (data.valid, else data.train) where its recipe's path fails from here",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from texttune.export import export_bundle

    results = export_bundle(args.bundle, quantize=args.quantize == "int8", force=args.force, data=args.data)
    for member, exports in results.items():
        for export in exports:
            print(f"{member}/{export.file}: {export.describe()}")
    return 0
