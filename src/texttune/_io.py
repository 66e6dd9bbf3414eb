"""Writes that are all-or-nothing: a temporary sibling, then a rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from texttune.errors import TexttuneError

# The names of the staging files and folders below: a dot, then the target's name and a tag of 8 hex digits.
_STAGING = re.compile(r"^\.(?:.+\.(?:tmp|old)-[0-9a-f]{8}|tmp-[0-9a-f]{8}-.+)$")


def is_staging(path: Path) -> bool:
    """Whether `path` is a staging file or folder that these writers made (and a killed write left behind)."""
    return bool(_STAGING.match(path.name))


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_failure(exc: BaseException) -> str:
    """Why a write failed, in a few words: the OS's reason, also when a library wraps it (safetensors)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).split("I/O error: ")[-1].split(" (os error")[0]


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


def recover_directory(path: str | Path, sweep: bool = True) -> None:
    """Finish what a killed `atomic_directory(path)` left: killed between its two renames (`path` missing, the
    old one and the complete new one beside it), the new one takes its place. With `sweep` (a writer about to
    write `path`), the old one after a finished replacement and staging a kill interrupted are removed too; a
    reader does not sweep, since the staging may be a live write. Touches only the names those writes use."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    staged = {
        p.name.rsplit("-", 1)[1]: p for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*") if is_staging(p)
    }
    old = {p.name.rsplit("-", 1)[1]: p for p in path.parent.glob(f".{glob.escape(path.name)}.old-*") if is_staging(p)}
    if not path.exists():
        tag = next((tag for tag in old if tag in staged), None)
        if tag is not None:  # the new one was complete: renames only start after it is written
            staged.pop(tag).rename(path)
        elif old:
            old.pop(sorted(old)[-1]).rename(path)
    for leftover in [*staged.values(), *old.values()] if sweep else []:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def scratch_directory(kind: str) -> Iterator[str]:
    """A temporary folder `.texttune-<kind>-<host>-<pid>-*` in the system's temp folder; this machine's ones of
    processes that are gone (killed, so their cleanup never ran) are removed first."""
    root, host = Path(tempfile.gettempdir()), re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    for stale in root.glob(f".texttune-{kind}-{host}-*-*"):
        pid = stale.name.removeprefix(f".texttune-{kind}-{host}-").split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    prefix = f".texttune-{kind}-{host}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as folder:
        yield folder


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes.

    Readers see the old directory or the whole new one; between the two renames `path` is briefly absent, and
    if the second rename fails the old directory is put back. What a kill leaves is finished or removed by the
    next write or load of `path` (`recover_directory`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
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


def _host() -> str:
    return socket.gethostname() or "host"


def _holder(text: str) -> str | None:
    """The live holder a claim's text names, or None when its process was of this machine and is gone."""
    try:
        holder = json.loads(text)
        pid = int(holder.get("pid", 0))
    except (ValueError, TypeError, AttributeError):
        return None  # claims are linked into place whole: one that does not parse was not written by us
    if holder.get("host") == _host() and (pid <= 0 or not process_alive(pid)):
        return None
    return f"{holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"


def claim_holder(path: str | Path) -> str | None:
    """Who holds the claim on `path` ("host pid N since TIME"), or None when nobody does; a claim left by a process
    of this machine that is gone (killed) counts as nobody's."""
    try:
        return _holder(Path(f"{path}.claim").read_text())
    except OSError:
        return None


@contextlib.contextmanager
def exclusive_claim(path: str | Path, what: str) -> Iterator[None]:
    """Hold `path` for this process alone while the block runs (jobs of an array on a shared folder): a file
    `<path>.claim`, linked into place whole (a hard link is atomic and exclusive, NFS included), names the holder and
    is removed at the end. A claim of a killed process of this machine is taken over; one of another machine is only
    reported, since its process cannot be checked from here.

    Raises:
        TexttuneError: another live process holds the claim (named, with how to clear a stale one).
    """
    claim = Path(f"{path}.claim")
    claim.parent.mkdir(parents=True, exist_ok=True)
    record = claim.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{claim.name}")
    record.write_text(json.dumps({"host": _host(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    try:
        for _ in range(2):
            try:
                os.link(record, claim)  # atomic, fails if the claim exists, and never shows a half-written one
                ours = os.stat(record).st_ino
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    _take_over(claim, what)
        else:
            raise TexttuneError(f"{what}: another job took it over just now (its claim: {claim}); run again later")
    finally:
        record.unlink(missing_ok=True)
    try:
        yield
    finally:  # ours only: a claim that was taken over meanwhile (by hand) belongs to its new holder
        with contextlib.suppress(FileNotFoundError):
            if os.stat(claim).st_ino == ours:
                claim.unlink()


def _take_over(claim: Path, what: str) -> None:
    """Move a dead process's claim aside; a live one (or one that changed meanwhile) is put back and reported."""
    text = claim.read_text()
    holder = _holder(text)
    if holder is not None:
        raise TexttuneError(
            f"{what} is being trained by {holder} (its claim: {claim}); if that job is gone, remove the claim file "
            "and run again"
        )
    moved = claim.with_name(f".{claim.name}.old-{uuid.uuid4().hex[:8]}")
    claim.rename(moved)
    if moved.read_text() != text:  # another job took the stale claim over between the read and the rename
        with contextlib.suppress(FileExistsError):
            os.link(moved, claim)
        moved.unlink()
        raise TexttuneError(f"{what}: another job took it over just now (its claim: {claim}); run again later")
    moved.unlink()
