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


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """The engine a model predicts with (checked by `texttune.runners.choose_engine`, not imported here)."""
    parser.add_argument(
        "--engine",
        default="auto",
        metavar="ENGINE",
        help="auto (a gated ONNX export where there is one, else PyTorch), torch, onnx, onnx-fp32 or onnx-int8",
    )
