"""Runners: one padded batch of token ids -> head outputs (B, C) as float32 numpy.

The seam below `Predictor`: sorting by length, batching, input order and ensembling are written once above it, so
another engine (ONNX Runtime, say) only has to map a batch to outputs.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np
import torch

from texttune._hardware import use_bf16
from texttune.models.heads import TextModel


def runs_in_bf16(trained: str, precision: str = "auto") -> bool:
    """Whether a model trained in `trained` precision predicts in bf16 here: only one trained in bf16, and only
    where `precision` allows (auto: this machine has fast bf16; fp32: never)."""
    return trained == "bf16" and use_bf16(precision)


class Runner(Protocol):
    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray: ...


class TorchRunner:
    """A `TextModel` in eval mode on this machine's device (CUDA when present), in bf16 autocast when asked.

    Args:
        model: the model; put in eval mode and moved to the device.
        bf16: autocast the encoder to bf16 (the head stays fp32, see `TextModel.forward`).
    """

    def __init__(self, model: TextModel, bf16: bool = False) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            return self.model(**inputs)["logits"].float().cpu().numpy()  # (B, C)
