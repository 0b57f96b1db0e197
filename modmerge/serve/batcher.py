"""Cross-request batching: one worker drains a bounded queue and calls the engine once per batch.

Requests that arrive within ``batch_window_ms`` of each other (up to ``max_batch`` inputs) share
one ``engine.predict`` call, which groups the combined inputs by expert chain, so an assembled
body runs once for everybody who needs it. The engine runs in a single-thread executor: the event
loop stays free to accept (or refuse with 503) while a batch computes, and the engine never sees
two calls at once.

One bad request never fails its batch-mates: an engine with ``prepare`` (see
:class:`~modmerge.serve.protocol.Engine`) checks and decodes each request's inputs alone first,
and a request it refuses is answered with its own error; if the batch's engine call still
fails, whatever the exception, each request is retried alone.

A request's future resolves to its outputs or to a :class:`Failed` holding its error (its
traceback dropped); it never raises. An exception raised out of a future carries the frames it
passed through, and those frames hold the future: a reference cycle that would keep every
failed request's body (a 500 KiB image bomb, three copies of it) alive until a full GC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from modmerge.errors import ModmergeError
from modmerge.serve.protocol import Engine
from modmerge.serve.schema import Stats

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The request queue is at ``queue_size``; the caller should answer 503."""


class ShuttingDown(Exception):
    """The service stopped before this request was answered."""


@dataclass(frozen=True)
class Failed:
    """What a refused or failed request's future resolves to: the error to answer with."""

    error: Exception


@dataclass
class Job:
    """One request's inputs (as sent, then as the engine prepared them) and the future its handler awaits."""

    inputs: list[Any]
    task: str | None
    future: asyncio.Future[list[dict] | Failed] = field(repr=False)


class Batcher:
    """Bounded queue + single worker. ``start()`` inside the running loop, ``stop()`` at shutdown.

    Example (inside an event loop)::

        batcher = Batcher(engine, executor, queue_size=64, window_s=0.005, max_batch=256)
        batcher.start()
        outputs = await batcher.submit([{"text": "hi"}], task=None)
    """

    def __init__(self, engine: Engine, executor: Executor, *, queue_size: int, window_s: float, max_batch: int) -> None:
        self._engine = engine
        self._executor = executor
        self._queue_size = queue_size
        self._window_s = window_s
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: Job | None = None  # a job that did not fit the previous batch
        self.stats = Stats()
        self._recent: deque[dict[str, int]] = deque(maxlen=32)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="modmerge-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the cancel we just asked for
                await self._worker
        pending = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_result(Failed(ShuttingDown("the service is shutting down")))

    def submit(self, inputs: list[dict], task: str | None) -> asyncio.Future[list[dict] | Failed]:
        """Queue one request; raises :class:`QueueFull` at once when the queue is full. The future
        resolves to the request's outputs, or to :class:`Failed`."""
        assert self._queue is not None, "Batcher.start() was not called"
        job = Job(inputs, task, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected_queue_full += 1
            raise QueueFull(f"the request queue is full ({self._queue_size} waiting); retry later") from None
        self.stats.requests += 1
        self.stats.inputs += len(inputs)
        return job.future

    def snapshot(self) -> Stats:
        return self.stats.model_copy(update={"recent_batches": list(self._recent)})

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._answer(batch)
            except Exception:  # never let one bad batch kill the worker (each job already got its error)
                logger.exception("batch failed")

    async def _collect(self) -> list[Job]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.inputs)
        deadline = loop.time() + self._window_s
        while size < self._max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(job.inputs) > self._max_batch:
                self._carry = job
                break
            batch.append(job)
            size += len(job.inputs)
        return batch

    async def _answer(self, batch: list[Job]) -> None:
        live = await self._prepared([job for job in batch if not job.future.done()])
        if not live:
            return
        n_inputs = sum(len(j.inputs) for j in live)
        self.stats.batches += 1
        self.stats.max_inputs_per_batch = max(self.stats.max_inputs_per_batch, n_inputs)
        self.stats.max_requests_per_batch = max(self.stats.max_requests_per_batch, len(live))
        self._recent.append({"requests": len(live), "inputs": n_inputs})
        # the engine takes oracle labels for all of its inputs or for none: one call per kind
        routed = [j for j in live if j.task is None]
        oracle = [j for j in live if j.task is not None]
        for group in (routed, oracle):
            if group:
                await self._call(group, isolate_on_error=len(group) > 1)

    async def _prepared(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose inputs the engine's ``prepare`` accepts, holding the prepared inputs; the
        others are answered with their own error now (all of them when the engine has no ``prepare``)."""
        prepare = getattr(self._engine, "prepare", None)
        if prepare is None or not jobs:
            return jobs
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._executor, _prepare_each, prepare, [job.inputs for job in jobs])
        # each job's own outcome only: the list would tie its errors' tracebacks into a cycle
        accepted = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if not isinstance(outcome, ModmergeError):
                    logger.error("engine.prepare failed on a request of %d inputs: %r", len(job.inputs), outcome)
                self._fail([job], outcome)
            else:
                job.inputs = outcome
                accepted.append(job)
        return accepted

    async def _call(self, group: list[Job], *, isolate_on_error: bool) -> None:
        inputs = [x for job in group for x in job.inputs]
        tasks = None if group[0].task is None else [job.task for job in group for _ in job.inputs]
        loop = asyncio.get_running_loop()
        self.stats.engine_calls += 1
        try:
            outputs = await loop.run_in_executor(self._executor, self._engine.predict, inputs, tasks)
            if len(outputs) != len(inputs):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(inputs)} inputs")
        except Exception as err:
            if isolate_on_error:
                # one request's bad input must not fail its batch-mates, whatever it raised: answer each alone
                for job in group:
                    await self._call([job], isolate_on_error=False)
                return
            if not isinstance(err, ModmergeError):
                logger.exception("engine.predict failed on %d inputs", len(inputs))
            self._fail(group, err)
            return
        start = 0
        for job in group:
            if not job.future.done():
                job.future.set_result(list(outputs[start : start + len(job.inputs)]))
            start += len(job.inputs)

    def _fail(self, group: list[Job], err: Exception) -> None:
        self.stats.failed += len(group)
        failed = Failed(_bare(err))
        for job in group:
            if not job.future.done():
                job.future.set_result(failed)


def _prepare_each(prepare: Callable[[list[Any]], list[Any]], requests: list[list[Any]]) -> list[list[Any] | Exception]:
    """``prepare`` of each request's inputs, or the exception it raised for that request (runs in the executor)."""
    return [_attempt(prepare, inputs) for inputs in requests]


def _attempt(prepare: Callable[[list[Any]], list[Any]], inputs: list[Any]) -> list[Any] | Exception:
    try:
        return prepare(inputs)
    except Exception as err:  # handed to this request's future by the caller
        return _bare(err)


def _bare(err: Exception) -> Exception:
    """``err`` without its traceback and chained errors, whose frames hold the batch's futures and
    inputs (a cycle back to ``err``); what a request is answered with is its one line."""
    err.__context__ = err.__cause__ = None
    return err.with_traceback(None)
