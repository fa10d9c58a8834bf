"""Micro-batching: concurrent requests' LLM scoring becomes one call per batch.

Requests wait in a bounded asyncio queue; one worker takes the first, waits at most
``max_wait_ms`` for more (up to ``max_batch_size``), and runs one scoring call for them in its
own thread, so the event loop keeps serving. A full queue refuses at once (:class:`Overloaded`);
a caller past its deadline stops waiting, and its job is dropped if not yet scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")

logger = logging.getLogger("llmrec.service")


class Overloaded(Exception):
    """The queue is full: the request is not scored."""


@dataclass
class _Job(Generic[P, R]):
    payload: P
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[P, R]):
    """Runs ``score_batch(payloads) -> results`` (one result per payload, same order) for
    batches of concurrently submitted payloads, one call at a time, in a worker thread."""

    def __init__(
        self,
        score_batch: Callable[[list[P]], Sequence[R]],
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        queue_size: int = 256,
        on_queue_depth: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.score_batch = score_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_queue_depth = on_queue_depth or (lambda depth: None)
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Job[P, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (not counting the batch being scored)."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        """Start the worker on the running loop (idempotent; :meth:`submit` calls it too)."""
        if self._worker is not None and not self._worker.done():
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-llm")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="llmrec-batcher")

    async def stop(self) -> None:
        """Stop the worker; jobs still queued fail with :class:`Overloaded`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.on_queue_depth(0)

    async def submit(self, payload: P, timeout: float) -> R:
        """The result for ``payload``; :class:`Overloaded` when the queue is full, TimeoutError
        after ``timeout`` seconds, or the scoring call's own exception."""
        if timeout <= 0:
            raise TimeoutError("the deadline passed before the LLM stage")
        self.start()
        assert self._queue is not None
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(payload, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue_size} requests already wait for the LLM") from None
        self.on_queue_depth(self.depth)
        return await asyncio.wait_for(future, timeout)

    async def _next_batch(self) -> list[_Job[P, R]]:
        """The first waiting job and whatever else arrives within ``max_wait_s``."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = until - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.on_queue_depth(self.depth)
            live = [job for job in batch if not job.future.done()]  # callers past their deadline left
            if not live:
                continue
            self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(
                    self._executor, self.score_batch, [job.payload for job in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"scoring returned {len(results)} results for {len(live)} requests")
            except asyncio.CancelledError:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(Overloaded("the service is shutting down"))
                raise
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                logger.warning("LLM scoring of a batch of %d failed: %r", len(live), err)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)
