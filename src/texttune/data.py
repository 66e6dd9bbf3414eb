"""Reading tables and validating their columns; the datasets and the batch sampler training draws from.

Tables are read as strings with no NA guessing: with pandas' defaults the texts "NA" and "None" become missing and
"007" becomes 7, silently. Every problem is reported as one line naming the file, the row and the column.
Rows are numbered from 1 after the header.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from texttune.errors import TexttuneError

logger = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def _unpack(path: Path, raw: bytes) -> tuple[str, bytes]:
    """Return the inner file name and bytes of a .gz or single-file .zip."""
    name = path.name
    if name.endswith(".gz"):
        try:
            return name[:-3], gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TexttuneError(
                f"{path}: not a valid gzip file ({exc}); re-compress it or pass the plain file"
            ) from None
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
                if len(members) != 1:
                    raise TexttuneError(
                        f"{path}: the zip holds {len(members)} files {members[:5]}; zip exactly one table"
                    )
                return Path(members[0]).name, archive.read(members[0])
        except zipfile.BadZipFile:
            raise TexttuneError(f"{path}: not a valid zip file; re-create it or pass the plain file") from None
    return name, raw


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TexttuneError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def _kind(value: str) -> str:
    """A value's kind, to tell a table's row from a line of prose: empty, number, word (no space) or text."""
    value = value.strip()
    if not value:
        return "empty"
    try:
        float(value)
        return "number"
    except ValueError:
        return "word" if " " not in value else "text"


def _looks_like_row(line: str, sep: str, columns: int, shape: list[str] | None) -> bool:
    """Whether a line inside a field reads as a whole row: as many fields as the header, and numbers and single
    words where the table's first row has them (a sentence with commas has neither)."""
    if line.count(sep) < columns - 1:
        return False
    fields = next(csv.reader([line], delimiter=sep), [])
    if len(fields) != columns:
        return False
    if shape is None:
        return True
    return all(_kind(value) == kind for value, kind in zip(fields, shape) if kind in ("number", "word"))


def _check_records(path: Path, text: str, sep: str) -> None:
    """What pandas reads silently wrong: a header naming a column twice (it renames one `label.1`), and quotes
    that do not close where a field ends (an unbalanced quote merges the rows up to the next quote into one field).
    Strict CSV parsing names the line; fields that span lines which look like whole rows get a warning."""
    if len(sep) != 1:
        return
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long essay is one field (a C long on every platform)
    reader = csv.reader(io.StringIO(text), delimiter=sep, strict=True)
    started = 1  # the line the record being read starts on
    try:
        header = next(reader, [])
        repeated = [name for name, count in Counter(header).items() if count > 1 and name]
        if repeated:
            raise TexttuneError(
                f"{path}: the header names column '{repeated[0]}' {header.count(repeated[0])} times; "
                "give every column its own name"
            )
        started = reader.line_num + 1
        suspicious: list[tuple[int, int]] = []  # (row, line it starts on) of fields holding what look like rows
        shape: list[str] | None = None  # the kinds of value of the first record (see _looks_like_row)
        for row, record in enumerate(reader, start=1):
            if shape is None and len(record) == len(header):
                shape = ["text" if "\n" in field else _kind(field) for field in record]
            for field in record if len(header) >= 3 else ():  # with two columns a text line with a comma looks alike
                if any(_looks_like_row(line, sep, len(header), shape) for line in field.split("\n")[1:]):
                    suspicious.append((row, started))
                    break
            started = reader.line_num + 1
        if suspicious:
            logger.warning(
                "%s: %d field(s) span lines that look like whole rows (first: row %d, from line %d); if a quote "
                "is unbalanced there, rows were merged: check it",
                path, len(suspicious), *suspicious[0],
            )  # fmt: skip
    except csv.Error as exc:
        if "end of data" in str(exc) or "EOF" in str(exc):
            raise TexttuneError(
                f"{path}: the quote opened in the row starting on line {started} never closes (an unbalanced "
                'quote); close it, or write a quote inside a quoted field as ""'
            ) from None
        raise TexttuneError(
            f"{path}: line {reader.line_num}: {exc}; look for an unbalanced or stray quote in the row starting on "
            f'line {started} (a quoted field must close right before a separator; write a quote inside one as "")'
        ) from None
    finally:
        csv.field_size_limit(limit)


def _read_delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    _check_records(path, text, sep)
    try:
        return pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False, index_col=False
        )
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().splitlines()[-1]
        hint = "an unbalanced quote" if "EOF inside string" in detail else "a wrong separator or stray quotes"
        raise TexttuneError(f"{path}: cannot parse ({detail}); look for {hint}, or set data.sep") from None
    except pd.errors.EmptyDataError:
        raise TexttuneError(f"{path}: the file is empty; it needs a header row and at least one data row") from None


def _as_text(path: Path, value: Any) -> str:
    """A typed value as the string a CSV would hold: ints exactly (2**53 + 1 stays itself), missing values empty,
    bytes decoded, nested values as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TexttuneError(f"{path}: a binary value is not UTF-8 text ({value[:20]!r}...)") from None
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _frame_of(path: Path, columns: dict[str, list[Any]]) -> pd.DataFrame:
    return pd.DataFrame({name: [_as_text(path, v) for v in values] for name, values in columns.items()}, dtype=object)


def _read_parquet(path: Path, raw: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise TexttuneError(f"{path}: not a readable Parquet file ({exc})") from None
    names = [n for n in table.column_names if not re.fullmatch(r"__index_level_\d+__", n)]  # a pandas index
    return _frame_of(path, {name: table.column(name).to_pylist() for name in names})


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    if text.lstrip().startswith("["):  # a plain JSON array of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TexttuneError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not all(isinstance(record, dict) for record in records):
            raise TexttuneError(f"{path}: a JSON array of objects ({{...}}) is expected")
        return _records_frame(path, records)
    records = []
    # split on newlines only: JSON strings may hold U+2028 or U+0085, which str.splitlines() also splits on
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TexttuneError(f"{path}: line {number} is not valid JSON ({exc.msg}); one object per line") from None
        if not isinstance(record, dict):
            raise TexttuneError(f"{path}: line {number} is not a JSON object; write one {{...}} per line")
        records.append(record)
    return _records_frame(path, records)


def _records_frame(path: Path, records: list[dict[str, Any]]) -> pd.DataFrame:
    names = list(dict.fromkeys(key for record in records for key in record))
    return _frame_of(path, {name: [record.get(name) for record in records] for name in names})


def read_table(path: str | Path, sep: str | None = None) -> pd.DataFrame:
    """Read CSV, TSV, Parquet or JSONL (optionally .gz or a one-file .zip) into a DataFrame of strings.

    Args:
        path: the file; its suffix (inside the archive) picks the format.
        sep: field separator for delimited files; default ',' for .csv, tab for .tsv.

    Raises:
        TexttuneError: missing, empty, undecodable or unparsable file.
    """
    path = Path(path)
    if not path.is_file():
        raise TexttuneError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    name, raw = _unpack(path, path.read_bytes())
    fmt = FORMATS.get(Path(name).suffix.lower())
    if fmt is None:
        raise TexttuneError(f"{path}: unknown table format '{Path(name).suffix}'; use {', '.join(sorted(FORMATS))}")
    if not raw.strip():
        raise TexttuneError(f"{path}: the file is empty; it needs a header row and at least one data row")
    if fmt == "parquet":
        frame = _read_parquet(path, raw)
    elif fmt == "jsonl":
        frame = _read_jsonl(path, _decode(path, raw))
    else:
        frame = _read_delimited(path, _decode(path, raw), sep or ("\t" if fmt == "tsv" else ","))
    if frame.empty:
        raise TexttuneError(f"{path}: the file has a header but no data rows")
    frame = frame.reset_index(drop=True)  # rows are numbered 0..N-1 in file order (Parquet may store an index)
    frame.attrs["source"] = str(path)
    logger.info("read %s: %d rows, columns %s", path, len(frame), list(frame.columns))
    return frame


def source_of(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "table")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], role: str) -> None:
    """Fail with the available columns (and a separator hint) when a named column is absent."""
    available = [str(c) for c in frame.columns]
    for column in columns:
        if column not in frame.columns:
            hint = ""
            if len(available) == 1:
                seen = next((s for s in (";", "\t", ",", "|") if s in available[0]), None)
                hint = f"; the header looks '{seen}'-separated, set data.sep" if seen else ""
            raise TexttuneError(
                f"{source_of(frame)}: no {role} column '{column}'; available columns: {', '.join(available)}{hint}"
            )


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def read_texts(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The text columns as arrays of strings, refusing absent columns and empty texts (naming the row)."""
    require_columns(frame, columns, "text")
    texts = {}
    for column in columns:
        values = frame[column].to_numpy(dtype=object)
        for row, value in enumerate(values, start=1):
            if is_missing(value):
                raise TexttuneError(
                    f"{source_of(frame)}: row {row} has an empty text in column '{column}'; fill it or drop the row"
                )
        texts[column] = np.array([str(v) for v in values], dtype=object)
    return texts


class EncodedDataset(Dataset):
    """Token ids (and labels) held in memory; `__getitem__` does no work."""

    def __init__(self, features: list[dict[str, list[int]]], labels: Sequence[Any] | None = None) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = dict(self.features[index])
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length texts, in a random order; with several processes, this process's share.

    Shuffles, cuts the order into megabatches, sorts each by length and splits it into batches, then shuffles the
    batches too: HF's LengthGroupedSampler leaves them longest-first, which shows as loss spikes (transformers #20810).
    Under data parallelism each batch is a global one (`batch_size` per process), cut into one slice per process:
    every process draws the same order, so at each step the processes get texts of similar length (equal step times)
    and each text goes to one process once per epoch. The last, smaller batch is shared out evenly; only where it
    has fewer texts than there are processes do some get a text repeated (every process must take a step).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        megabatch_factor: int = 50,
        rank: int = 0,
        processes: int = 1,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.processes = rank, processes
        self.global_batch = batch_size * processes
        self.megabatch = self.global_batch * megabatch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.megabatch):
            chunk = sorted(order[start : start + self.megabatch], key=lambda i: -self.lengths[i])
            batches.extend(chunk[i : i + self.global_batch] for i in range(0, len(chunk), self.global_batch))
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield self._share(batches[index])

    def _share(self, batch: list[int]) -> list[int]:
        """This process's slice of a global batch."""
        if self.processes == 1:
            return batch
        if len(batch) < self.processes:  # too few to go round: wrap
            return [batch[self.rank % len(batch)]]
        size, extra = divmod(len(batch), self.processes)
        start = self.rank * size + min(self.rank, extra)
        return batch[start : start + size + (self.rank < extra)]
