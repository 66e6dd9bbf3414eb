"""What the machine can do fast: bf16 on GPUs that have it and on CPUs with AVX512-BF16 or AMX."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def use_bf16(precision: str) -> bool:
    """Resolve a recipe's `precision` (auto, bf16, fp32) to whether bf16 autocast is on."""
    return precision == "bf16" or (precision == "auto" and bf16_available())
