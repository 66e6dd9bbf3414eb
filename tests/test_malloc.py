"""Allocator policy: tcmalloc preloaded by the command when installed, glibc's `retain` otherwise, opt-out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from texttune import _malloc


def test_tcmalloc_environment_follows_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_malloc, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("TEXTTUNE_MALLOC", raising=False)
    environment = _malloc.tcmalloc_environment()
    assert environment["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
    assert environment["TEXTTUNE_MALLOC"] == "tcmalloc"
    monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
    assert _malloc.tcmalloc_environment()["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/lib/other.so"
    monkeypatch.setenv("LD_PRELOAD", "/lib/libtcmalloc_minimal.so.4")  # already loaded: nothing to do
    assert _malloc.tcmalloc_environment() is None
    monkeypatch.setenv("TEXTTUNE_MALLOC", "system")
    monkeypatch.delenv("LD_PRELOAD")
    assert _malloc.tcmalloc_environment() is None
    monkeypatch.setattr(_malloc, "find_tcmalloc", lambda: None)
    monkeypatch.setenv("TEXTTUNE_MALLOC", "auto")
    assert _malloc.tcmalloc_environment() is None


@pytest.mark.skipif(_malloc.find_tcmalloc() is None, reason="libtcmalloc-minimal4 is not installed")
def test_the_command_reexecutes_itself_under_tcmalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTTUNE_MALLOC", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    environment = _malloc.tcmalloc_environment()
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], env=environment,
                          capture_output=True, text=True)  # fmt: skip
    assert "tcmalloc" in maps.stdout
    version = subprocess.run([sys.executable, "-m", "texttune", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("texttune ")  # re-executed once, no loop
