"""The processes of a data-parallel job (`torchrun` or `accelerate launch`), as the Trainer's DDP sees them.

Launchers describe the job in the environment (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE). Every process trains; only the
main one writes bundles, checkpoints, cv files and tracking records, while the others wait at a barrier, so files
appear once and the embedded tracking store is opened by one process. A single process is a job of one: every
function here is then a no-op. Importing this module does not import torch (`texttune runs` must start fast).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from texttune.errors import TexttuneError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: its rank, the job's size and how many processes share this machine."""

    rank: int = 0
    count: int = 1
    on_this_machine: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1


def processes() -> Processes:
    """The job this process belongs to, from the launcher's environment."""

    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        return int(value) if value.isdigit() else default

    count = number("WORLD_SIZE", 1)
    return Processes(number("RANK", 0), count, number("LOCAL_WORLD_SIZE", count))


@functools.cache  # once per process: a cv run calls it for every fold
def start() -> Processes:
    """Join the job's process group (gloo on CPU, nccl on GPU; accelerate's choice, as the Trainer's) and give this
    process its share of the machine's cores. A launcher's default of one thread per process leaves cores idle
    wherever a machine has more cores than processes, and two processes each using all cores slow both."""
    job = processes()
    if not job.distributed:
        return job
    import torch

    if not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // job.on_this_machine)
    torch.set_num_threads(threads)
    if job.main:
        logger.info(
            "data-parallel: %d processes, %d on this machine, %d threads each (%d cores // %d processes)",
            job.count, job.on_this_machine, threads, cores, job.on_this_machine,
        )  # fmt: skip
    return job


def barrier() -> None:
    """Wait until every process of the job gets here."""
    import torch

    if _initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """The main process runs the block first (yielding True); the others run it after it is done (yielding
    False), so they read what it wrote. A failure in the main process ends the job there, as a launcher does."""
    job = processes()
    if job.main:
        yield True
        barrier()
    else:
        barrier()
        yield False


def _initialized() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def same_on_every_process(values: torch.Tensor) -> bool:
    """Whether `values` (a 1-D float64 tensor, on the device the job's backend gathers: the GPU under nccl) is bit
    for bit the same in every process of the job."""
    import torch

    if not _initialized():
        return True
    gathered = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, values)
    return all(torch.equal(values, other) for other in gathered)


def from_main(value: T) -> T:
    """The main process's `value`, in every process: decisions taken from files (which folds are complete) must be
    the same everywhere, or the processes would train different things and wait for each other forever."""
    if not _initialized():
        return value
    import torch

    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_shared(folder: Path) -> None:
    """Refuse, in one line, a job on several machines whose `folder` is not one filesystem they all see: the
    others read what the main process writes there (checkpoints to resume from, folds to collect)."""
    job = processes()
    if not _initialized() or job.count == job.on_this_machine:
        return
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".tmp-{from_main(uuid.uuid4().hex[:8])}-shared"
    if job.main:
        probe.write_text("")
    barrier()
    seen = [None] * job.count
    torch.distributed.all_gather_object(seen, probe.is_file())
    barrier()
    if job.main:
        probe.unlink(missing_ok=True)
    blind = [rank for rank, sees in enumerate(seen) if not sees]
    if blind:
        raise TexttuneError(
            f"{folder} is not on a filesystem every machine of the job sees (processes {blind} do not see the main "
            "process's files): put output.dir on a shared filesystem"
        )
