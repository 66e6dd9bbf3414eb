"""The first rows of SST-5's training sentences in a fresh work folder, for the kill-and-resume benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst5_train.tsv"


def sst5_slice(workdir: str | Path, rows: int) -> Path:
    """Empty `workdir` (created if needed) holding `train.tsv`: the header and the first `rows` sentences."""
    work = Path(workdir)
    if work.is_dir() and any(work.iterdir()) and not (work / "train.tsv").is_file():
        raise SystemExit(f"{work} holds files of something else; give another --workdir")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lines = DATA.read_text().splitlines()[: rows + 1]
    (work / "train.tsv").write_text("\n".join(lines) + "\n")
    return work / "train.tsv"
