"""Read the records of an offline W&B run file (`run-*.wandb`), which wandb no longer reads back in Python.

The file is a 7-byte header (":W&B", a magic number, a version) followed by LevelDB's log format: 32 KiB blocks of
chunks, each a 7-byte header (CRC-32C, length, type: full, first, middle, last) and a piece of one serialized
`wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pieces, offset = [], [], 7
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if kind == 0 and length == 0:
            break
        pieces.append(data[offset + 7 : offset + 7 + length])
        offset += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records
