"""`MicroBatcher`: concurrent requests merged into token-budget batches, run one at a time in one inference thread.

While one batch runs, the requests that arrive queue up; the next batch takes them from the front, as many as fit
in the token budget, so batches grow with load and a lone request never waits for company. The queue is bounded in
texts (waiting or running): past it `submit` raises `Overloaded` with a retry estimate (the server answers 429 with
Retry-After), as text-embeddings-inference's router does. A request whose caller gave up (deadline, client gone) is
cancelled: its texts leave the count at once and it is skipped when its turn comes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from texttune.pipeline import Features

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full; try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is at capacity; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Pending:
    features: Sequence[Features]
    tokens: int
    future: asyncio.Future


class MicroBatcher:
    """Runs `run(features) -> outputs (N, C)` on merged requests in a single thread.

    Args:
        run: the model on a list of tokenized texts (`Predictor.outputs_of`), in their order.
        tokens: the tokens of one tokenized text (`Predictor.tokens`).
        max_tokens: tokens merged into one run (a request larger than this runs alone).
        max_queued_texts: texts waiting or running at most; more are refused with `Overloaded`.
        observe_batch: called with the number of texts of each run (for metrics).
    """

    def __init__(
        self,
        run: Callable[[Sequence[Features]], np.ndarray],
        tokens: Callable[[Features], int],
        max_tokens: int,
        max_queued_texts: int,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.run = run
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.max_queued_texts = max_queued_texts
        self.observe_batch = observe_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_texts = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="texttune-inference")
        self._worker: asyncio.Task | None = None
        self._seconds_per_text = 0.01  # a running estimate, for Retry-After

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._queue:
            pending.future.cancel()
        await asyncio.to_thread(self._executor.shutdown)  # a run in progress finishes off the event loop

    def submit(self, features: Sequence[Features]) -> asyncio.Future:
        """Queue tokenized texts; the future gives their outputs (N, C). Cancel it to give up.

        Raises:
            Overloaded: the queue holds `max_queued_texts` already.
            RuntimeError: the worker is not running (stopped, or not started).
        """
        if not self.alive:
            raise RuntimeError("the model's worker is not running")
        if self._queued_texts + len(features) > self.max_queued_texts:
            wait = (self._queued_texts + len(features)) * self._seconds_per_text
            raise Overloaded(max(1, math.ceil(wait)))
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(features, sum(map(self.tokens, features)), future))
        self._queued_texts += len(features)
        future.add_done_callback(lambda _: self._release(len(features)))  # answered, failed or given up
        self._wake.set()
        return future

    def _release(self, texts: int) -> None:
        self._queued_texts -= texts

    def _take(self) -> list[_Pending]:
        """From the front of the queue, the live requests that fit in the token budget (at least one)."""
        taken, tokens = [], 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():  # cancelled: its caller is gone
                self._queue.popleft()
                continue
            if taken and tokens + pending.tokens > self.max_tokens:
                break
            self._queue.popleft()
            taken.append(pending)
            tokens += pending.tokens
        return taken

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            taken = self._take()
            if not self._queue:
                self._wake.clear()
            if taken:
                try:
                    await self._run(taken)
                except Exception:  # a bug here must not stop the worker: its requests fail, the next ones run
                    logger.exception("the micro-batcher failed on a run")
                finally:  # stopped (or failed) mid-run: nobody is left waiting on a future that never resolves
                    for pending in taken:
                        if not pending.future.done():
                            pending.future.cancel()

    async def _run(self, taken: list[_Pending]) -> None:
        features = [feature for pending in taken for feature in pending.features]
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.run, features)
        except Exception as exc:  # the model failed: every request of the run gets the error
            for pending in taken:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        seconds_per_text = (time.perf_counter() - started) / len(features)
        self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * seconds_per_text
        self.observe_batch(len(features))
        start = 0
        for pending in taken:
            end = start + len(pending.features)
            if not pending.future.done():
                pending.future.set_result(outputs[start:end])
            start = end
