"""Writes that are all-or-nothing: a temporary sibling, then a rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from texttune.errors import TexttuneError

# The names of the staging files and folders below: a dot, then the target's name and a tag of 8 hex digits.
_STAGING = re.compile(r"^\.(?:.+\.(?:tmp|old)-[0-9a-f]{8}|tmp-[0-9a-f]{8}-.+)$")


def is_staging(path: Path) -> bool:
    """Whether `path` is a staging file or folder that these writers made (and a killed write left behind)."""
    return bool(_STAGING.match(path.name))


def check_writable(path: str | Path, what: str) -> None:
    """Fail now, in one line, if `path` could not be written later: it is a folder where a file goes (or the
    reverse), or its folder cannot be created or written. Creates the missing folders, nothing else."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TexttuneError(
            f"{what} {path}: cannot write in {path.parent} ({exc.strerror}); choose another path"
        ) from None


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes.

    Readers see the old directory or the whole new one; between the two renames `path` is briefly absent, and
    if the second rename fails the old directory is put back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging, old = path.parent / f".{path.name}.tmp-{tag}", path.parent / f".{path.name}.old-{tag}"
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            path.rename(old)
        try:
            staging.rename(path)
        except OSError:
            if old.exists():
                old.rename(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (same suffixes, so writers infer the same compression) that replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
