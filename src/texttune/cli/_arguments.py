"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe and its `--set` overrides, shared by every command that reads a recipe."""
    parser.add_argument("recipe", help="YAML recipe, e.g. examples/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value (repeatable), e.g. --set training.epochs=2",
    )


def positive_int(value: str) -> int:
    """An argparse type: the option's value as an integer of at least 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def class_shares(value: str) -> dict[str, float]:
    """An argparse type: `LABEL=SHARE,LABEL=SHARE,...` as a dict (the shares are checked against the model's
    labels when it is loaded)."""
    shares: dict[str, float] = {}
    for part in value.split(","):
        label, _, share = (piece.strip() for piece in part.partition("="))
        try:
            number = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected LABEL=SHARE,... (e.g. neg=0.7,pos=0.3), got {part!r}"
            ) from None
        if not label or label in shares:
            raise argparse.ArgumentTypeError(f"{part!r}: {'a label named twice' if label else 'no label'}")
        shares[label] = number
    return shares


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """The engine a model predicts with (checked by `texttune.runners.choose_engine`, not imported here)."""
    parser.add_argument(
        "--engine",
        default="auto",
        metavar="ENGINE",
        help="auto (a gated ONNX export where there is one, else PyTorch), torch, onnx, onnx-fp32 or onnx-int8",
    )
