"""Checkpoints: a killed training resumes where it stopped, and ends bit for bit where it would have ended.

`OUTPUT/.checkpoints/step-<N>/` holds what the run needs to go on after optimizer step N (on the whole run's axis):
the weights, the optimizer and scheduler, the RNG states, the Trainer's state (its step, hence the sampler's
position: batches are a function of seed, epoch and step), the stage of gradual unfreezing, the kept-best weights
and score, the moving average, and the log so far. Tensors are safetensors and the rest JSON: no pickle.

A checkpoint is written into a staging folder, fsynced and renamed, and its `COMPLETE` marker is written last, so a
kill mid-write leaves a folder that is ignored and removed at the next start. The newest complete one is used and
the last two are kept. Checkpoints are taken right after a training log (the Trainer's running loss is then zero)
following each evaluation, at least every `training.checkpoint_minutes`, and at the end of each stage.

`TEXTTUNE_CRASH_AT=step:N` (SIGKILL after step N) or `save:N` (SIGKILL in the middle of writing the N-th checkpoint)
lets tests kill a run at a chosen point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import TrainerCallback

from texttune._io import write_failure
from texttune.bundle import CHECKPOINTS
from texttune.errors import TexttuneError
from texttune.fingerprint import changes
from texttune.history import History
from texttune.policy.callbacks import KeepBest

if TYPE_CHECKING:
    from texttune.trainer import TexttuneTrainer

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
RUN_FILE = "run.json"
TRAINER_STATE = "trainer_state.json"  # the Trainer's own name: `train(resume_from_checkpoint=...)` reads it
KEEP = 2
BEST_OUTPUTS = "best_outputs.safetensors"  # the kept evaluation's head outputs: the bundle's validation predictions
_OURS = re.compile(r"^(?:step-\d+|\.step-\d+\.tmp-[0-9a-f]{8}|run\.json|\.run\.json\.tmp-[0-9a-f]{8})$")


def crash_at(kind: str, count: int) -> None:
    """SIGKILL this process when TEXTTUNE_CRASH_AT names this point (`step:N`, `save:N`, `trial:N`): tests only."""
    if os.environ.get("TEXTTUNE_CRASH_AT") == f"{kind}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_tree(folder: Path, entries: bool = True) -> None:
    for path in [*(folder.iterdir() if entries else ()), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    plain = {"numpy": [name, keys.tolist(), position, has_gauss, cached], "python": [version, list(state), gauss]}
    return tensors, plain


def load_rng_state(checkpoint: str | Path) -> None:
    """Put back the random number generators as they were when `checkpoint` was written."""
    checkpoint = Path(checkpoint)
    tensors = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        devices = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.removeprefix("cuda.")))
        torch.cuda.set_rng_state_all([tensors[k] for k in devices])
    plain = json.loads((checkpoint / "rng.json").read_text())
    name, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value for index, values in state["state"].items() for key, value in values.items()}
    return {k: v.contiguous() for k, v in tensors.items()}, {"param_groups": state["param_groups"]}


def load_optimizer_and_scheduler(trainer: TexttuneTrainer, checkpoint: str | Path) -> None:
    """The optimizer's moments and steps and the scheduler's position, as they were in `checkpoint`."""
    checkpoint = Path(checkpoint)
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = json.loads((checkpoint / "optimizer.json").read_text())["param_groups"]
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.lr_scheduler.load_state_dict(json.loads((checkpoint / "scheduler.json").read_text()))


class Checkpoints(TrainerCallback):
    """The checkpoints of one output directory, and the callback that decides when a Trainer writes one.

    Args:
        output: the run's output directory (`output.dir`, or a cv fold's).
        fingerprint: the recipe and data they belong to (`texttune.fingerprint`).
        history, keep_best: the run's log and kept-best weights, saved with every checkpoint.
        minutes: the longest time between checkpoints while training.
    """

    def __init__(
        self,
        output: Path,
        fingerprint: dict[str, Any],
        history: History | None = None,
        keep_best: KeepBest | None = None,
        minutes: float = 10,
    ) -> None:
        self.root = Path(output) / CHECKPOINTS
        self.fingerprint = fingerprint
        self.history = history
        self.keep_best = keep_best
        self.seconds = minutes * 60
        self.pending = False
        self.last_save = time.monotonic()
        self.saves = 0

    # -- finding, checking and discarding ----------------------------------------------------------------------

    def owned(self) -> bool:
        """Whether the folder is texttune's: it holds the record of the run it belongs to."""
        return (self.root / RUN_FILE).is_file()

    def complete(self) -> list[Path]:
        """The complete checkpoints, newest first; incomplete ones (and staging a kill left) are removed."""
        if not self.owned():
            return []
        found = []
        for path in self.root.iterdir():
            if not _OURS.match(path.name) or path.name == RUN_FILE:
                continue
            if path.name.startswith("step-") and (path / COMPLETE).is_file():
                found.append(path)
            else:
                logger.info("removing the incomplete checkpoint %s", path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return sorted(found, key=lambda p: int(p.name.removeprefix("step-")), reverse=True)

    def changed(self) -> list[str]:
        """What differs between the run the checkpoints belong to and this one; empty when resuming is safe."""
        marker = self.root / RUN_FILE
        if not marker.is_file():
            return ["no record of the recipe"]
        return changes(json.loads(marker.read_text()), self.fingerprint)

    def discard(self) -> None:
        """Remove texttune's checkpoints (only its own names; the folder too once it is empty)."""
        if not self.owned():
            return
        for path in self.root.iterdir():
            if _OURS.match(path.name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()

    def _claim(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / RUN_FILE).is_file():
            staging = self.root / f".{RUN_FILE}.tmp-{uuid.uuid4().hex[:8]}"
            _write_json(staging, self.fingerprint)
            os.replace(staging, self.root / RUN_FILE)

    # -- writing -----------------------------------------------------------------------------------------------

    def save(self, model: torch.nn.Module, trainer: TexttuneTrainer | None = None) -> Path:
        """Write a checkpoint after the run's current step: mid-stage with the `trainer`'s optimizer, scheduler,
        state and RNG, or at the end of a stage (`trainer` None) with the weights and the run's state alone."""
        self._claim()
        step = self.history.steps_before + (trainer.state.global_step if trainer is not None else 0)
        self.saves += 1
        final = self.root / f"step-{step}"
        staging = self.root / f".step-{step}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            self._write(staging, model, trainer)
        except (OSError, SafetensorError) as exc:  # a full disk, a file size limit: the last checkpoint stays
            shutil.rmtree(staging, ignore_errors=True)
            raise TexttuneError(
                f"{final}: could not write the checkpoint ({write_failure(exc)}); free some disk space, or set "
                "training.checkpoints: false; the last complete checkpoint is kept"
            ) from None
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        (final / COMPLETE).write_text("")  # last: a checkpoint without it is never used
        _fsync_tree(final)
        _fsync_tree(self.root, entries=False)  # the rename itself
        for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name.removeprefix("step-")))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        self.last_save, self.pending = time.monotonic(), False
        logger.info("checkpoint written: %s", final)
        return final

    def _write(self, staging: Path, model: torch.nn.Module, trainer: TexttuneTrainer | None) -> None:
        save_model(model, str(staging / "model.safetensors"))
        run = {
            "stage": self.history.stage,
            "mid_stage": trainer is not None,
            "bf16": bool(trainer.args.bf16) if trainer is not None else None,
            "history": self.history.state(),
            "best": self.keep_best.best,
        }
        if self.keep_best.weights is not None:
            save_file(
                {k: v.contiguous() for k, v in self.keep_best.weights.items()}, str(staging / "best.safetensors")
            )
        if self.keep_best.outputs is not None:
            save_file({"outputs": torch.from_numpy(self.keep_best.outputs)}, str(staging / BEST_OUTPUTS))
        crash_at("save", self.saves)  # a kill half-way through a write
        if trainer is not None:
            tensors, groups = _optimizer_files(trainer.optimizer)
            save_file(tensors, str(staging / "optimizer.safetensors"))
            _write_json(staging / "optimizer.json", groups)
            _write_json(staging / "scheduler.json", trainer.lr_scheduler.state_dict())
            tensors, plain = _rng_state()
            save_file(tensors, str(staging / "rng.safetensors"))
            _write_json(staging / "rng.json", plain)
            trainer.state.save_to_json(str(staging / TRAINER_STATE))
            averaging = trainer.weight_averaging
            if averaging is not None:
                save_file({k: v.contiguous() for k, v in averaging.average.items()}, str(staging / "ema.safetensors"))
                run["ema_updates"] = averaging.updates
        _write_json(staging / RUN_FILE, run)
        _fsync_tree(staging)

    # -- reading -----------------------------------------------------------------------------------------------

    def restore(self, checkpoint: Path, model: torch.nn.Module) -> dict[str, Any]:
        """Load a checkpoint's weights into `model`, and its log and kept-best weights into the run; returns its
        run state (stage, whether it was taken mid-stage, and the moving average with its update count, on the
        model's device). Everything is read before the run is changed, so a damaged checkpoint changes nothing
        but the weights, which the next one loaded replaces."""
        device = str(next(model.parameters()).device)
        run = json.loads((checkpoint / RUN_FILE).read_text())
        best = load_file(str(checkpoint / "best.safetensors")) if (checkpoint / "best.safetensors").is_file() else None
        scored = checkpoint / BEST_OUTPUTS
        outputs = load_file(str(scored))["outputs"].numpy() if scored.is_file() else None
        if (checkpoint / "ema.safetensors").is_file():
            run["ema"] = load_file(str(checkpoint / "ema.safetensors"), device=device)
        load_model(model, str(checkpoint / "model.safetensors"), strict=True)
        self.history.restore(run["history"], mid_stage=run["mid_stage"])
        self.keep_best.best, self.keep_best.weights, self.keep_best.outputs = run["best"], best, outputs
        return run

    def resume(
        self, candidates: list[Path], model: torch.nn.Module, stages: int, bf16: bool
    ) -> tuple[Path, dict[str, Any]] | None:
        """Restore the newest of `candidates` that reads back whole (a damaged one is skipped with a warning) and
        say so; `bf16`: whether this machine trains with it, which a checkpoint written otherwise warns about."""
        for checkpoint in candidates:
            try:
                run = self.restore(checkpoint, model)
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
                logger.warning("checkpoint %s is damaged (%s); trying the one before", checkpoint, exc)
                continue
            logger.warning("resuming from the checkpoint %s (stage %d of %d)", checkpoint, run["stage"] + 1, stages)
            if run.get("bf16") not in (None, bf16):
                logger.warning(
                    "the checkpoint was written with bf16 %s and this machine trains with it %s: the run goes on, "
                    "but will not end bit for bit as an uninterrupted run would",
                    "on" if run["bf16"] else "off", "on" if bf16 else "off",
                )  # fmt: skip
            return checkpoint, run
        return None

    # -- when: the callback ------------------------------------------------------------------------------------

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pending = True
        self._maybe_save(args, state, control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        crash_at("step", self.history.steps_before + state.global_step)
        if time.monotonic() - self.last_save >= self.seconds:
            self.pending = True
        self._maybe_save(args, state, control)

    def _maybe_save(self, args: Any, state: Any, control: Any) -> None:
        # Only right after a training log, where the Trainer's running loss is zero and a resume logs the same
        # averages; the stage's last step is followed by the end-of-stage checkpoint instead.
        logged = state.global_step % args.logging_steps == 0
        if self.pending and logged and state.global_step < state.max_steps:
            control.should_save = True


def foreign_checkpoints(output: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse, before any work, checkpoints in `output` of another recipe or data (the changed keys named)."""
    checkpoints = Checkpoints(output, fingerprint)
    if checkpoints.complete():
        changed = checkpoints.changed()
        if changed:
            raise TexttuneError(
                f"{checkpoints.root} holds checkpoints of another recipe or data (changed: {', '.join(changed[:5])}); "
                "use --restart to discard them, or another output.dir"
            )


def open_checkpoints(
    output: Path, fingerprint: dict[str, Any], history: History, keep_best: KeepBest, minutes: float, restart: bool
) -> tuple[Checkpoints, list[Path]]:
    """The checkpoints of `output` and the complete ones to resume from, newest first (none: start afresh).

    Raises:
        TexttuneError: checkpoints of another recipe or data (the changed keys named), unless `restart`.
    """
    checkpoints = Checkpoints(output, fingerprint, history, keep_best, minutes)
    if restart:
        checkpoints.discard()
        return checkpoints, []
    foreign_checkpoints(output, fingerprint)
    complete = checkpoints.complete()
    if not complete:
        checkpoints.discard()  # a record without checkpoints: nothing to resume
    return checkpoints, complete
