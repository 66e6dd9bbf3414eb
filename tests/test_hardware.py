"""What texttune believes the CPU can do, and the cap a user (or a benchmark) puts on it."""

from __future__ import annotations

import pytest

from texttune import _hardware


@pytest.fixture
def fresh_flags():
    _hardware.cpu_model_and_flags.cache_clear()
    yield
    _hardware.cpu_model_and_flags.cache_clear()


def test_an_avx2_cap_hides_bf16_and_vnni(fresh_flags, monkeypatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    model, flags = _hardware.cpu_model_and_flags()
    assert set(flags) <= {"avx2", "fma"} and model.endswith("(capped at AVX2)")
    assert not _hardware.cpu_has_bf16() and not _hardware.cpu_has_vnni()


def test_caps_keep_what_lies_below_them(fresh_flags, monkeypatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = set(_hardware.cpu_model_and_flags()[1])
    _hardware.cpu_model_and_flags.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni")  # oneDNN reads it in any case
    capped = set(_hardware.cpu_model_and_flags()[1])
    assert capped == native & {"avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni"}
    _hardware.cpu_model_and_flags.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX10_1_512_AMX")  # above our table: nothing is taken away
    assert set(_hardware.cpu_model_and_flags()[1]) == native
