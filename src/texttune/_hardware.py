"""What the machine can do fast: bf16 on GPUs that have it and on CPUs with AVX512-BF16 or AMX; int8 dot products
on CPUs with VNNI.

`ONEDNN_MAX_CPU_ISA` (oneDNN's cap on the instructions torch's kernels use; pair it with ATEN_CPU_CAPABILITY and
MKL_ENABLE_INSTRUCTIONS) caps the flags reported here too, so a capped run decides as a CPU without them would:
`ONEDNN_MAX_CPU_ISA=AVX2` behaves as an AVX2-only machine, with no bf16.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

# The instruction sets the speed of our engines depends on: fp32 (AVX2, FMA, AVX-512), bf16, int8 (VNNI, AMX).
KNOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# oneDNN's ISA names, lowest first, with the flags each adds; a cap keeps its own and those below it. ALL (or
# none) is no cap; a name not listed here is treated as no cap too, as oneDNN ignores names it does not know.
_ISA_LEVELS = (
    ("SSE41", ()),
    ("AVX", ()),
    ("AVX2", ("avx2", "fma")),
    ("AVX2_VNNI", ("avx_vnni",)),
    ("AVX2_VNNI_2", ()),
    ("AVX512_CORE", ("avx512f",)),
    ("AVX512_CORE_VNNI", ("avx512_vnni",)),
    ("AVX512_CORE_BF16", ("avx512_bf16",)),
    ("AVX512_CORE_FP16", ()),
    ("AVX10_1_512", ()),
    ("AVX512_CORE_AMX", ("amx_bf16", "amx_int8")),
)


@functools.cache
def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of KNOWN_FLAGS it has (Linux; elsewhere unknown and none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    names = [name for name, _ in _ISA_LEVELS]
    if cap in names:
        allowed = {flag for _, added in _ISA_LEVELS[: names.index(cap) + 1] for flag in added}
        flags &= allowed
        model = f"{model} (capped at {cap})"
    return model, tuple(flag for flag in KNOWN_FLAGS if flag in flags)


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_model_and_flags()[1]))


def cpu_has_vnni() -> bool:
    """Whether int8 dot products have their own instructions; without them onnxruntime's int8 kernels can
    saturate unless weights use 7 bits (`reduce_range`)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_model_and_flags()[1]))


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def use_bf16(precision: str) -> bool:
    """Resolve a recipe's `precision` (auto, bf16, fp32) to whether bf16 autocast is on."""
    return precision == "bf16" or (precision == "auto" and bf16_available())
