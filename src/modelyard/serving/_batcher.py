"""Dynamic batching: requests are split into their inputs, inputs are gathered into batches of at most
``max_batch_size`` (whatever the request sizes) or whatever arrived within ``max_wait_ms`` of the oldest,
run together on a worker thread, and each request is answered with its own outputs.

The default wait is 0: a batch starts as soon as the model is free, and the inputs that arrive while it runs
form the next one. Under load batches fill anyway; with few clients nobody waits for company that is not
coming (benchmarks/serving.py: a 5 ms wait halved the throughput of one client and did not raise it at 32).

* The queue is bounded in inputs (``max_queue``): a request that would overflow it is refused at once
  (:class:`QueueFull`, HTTP 429 with Retry-After) instead of waiting behind work it cannot catch up with.
* Inputs with different generation parameters are never mixed in one batch (the parameters are part of the
  batch key). An FP32 model answers a batched input exactly as it would answer it alone (tested); an INT8
  model with dynamic quantisation scales activations over the whole batch, so a few answers differ with
  their batch companions (benchmarks/serving.py: 79% identical at batch 16 on the tiny model).
* A batch that fails is run again in halves of its requests until the failure is narrowed to single
  requests, so that an input the model fails on fails only its own request, never those batched with it.
* A request that times out or whose client went away cancels its waiting inputs; inputs already running
  finish and their results are dropped. ``drain()`` stops intake and waits for queued work, so swapping a
  model (blue-green) drops nothing in flight; what it has not answered within its timeout is answered
  :class:`Draining` (HTTP 503, or the new version where one took over), never left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

RunBatch = Callable[[list[str], Any], list[str]]  # (inputs, parameters) -> outputs
OnBatch = Callable[[int, float], None]  # (batch size, seconds)


class QueueFull(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the queue is full; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The batcher stopped taking work (its model is being replaced or the server is shutting down)."""


@dataclass
class _Item:
    text: str
    params: Hashable  # generation parameters: the batch key
    future: asyncio.Future[str]
    request: int  # which submit() it came from
    enqueued: float = field(default_factory=time.monotonic)


def _fail(items: Iterable[_Item], error: Exception) -> None:
    for i in items:
        if not i.future.done():
            i.future.set_exception(error)


class Batcher:
    def __init__(
        self,
        run: RunBatch,
        *,
        executor: Executor,
        max_batch_size: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        on_batch: OnBatch | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size or max_wait_ms < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= max_batch_size and max_wait_ms >= 0")
        self._run, self._executor, self._on_batch = run, executor, on_batch
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._running = 0  # inputs in the batch being run
        self._seconds_per_input = 0.01  # running estimate, for Retry-After
        self.largest_batch = 0
        self._requests = itertools.count()

    @property
    def depth(self) -> int:
        """Inputs waiting or running."""
        return len(self._queue) + self._running

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="yard-batcher")

    async def submit(self, texts: Sequence[str], params: Hashable) -> list[str]:
        """The outputs for ``texts`` (in order) generated with ``params`` (hashable: inputs share a batch only
        with inputs of equal parameters). Raises QueueFull, Draining, or what the model raised."""
        if self._draining:
            raise Draining("this model version is being replaced")
        if self.depth + len(texts) > self.max_queue:
            raise QueueFull(max(1.0, self.depth * self._seconds_per_input))
        loop = asyncio.get_running_loop()
        request = next(self._requests)
        items = [_Item(t, params, loop.create_future(), request) for t in texts]
        self._queue.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for i in items:  # timed out or cancelled: running inputs finish and their outputs are dropped
                if not i.future.done():
                    i.future.cancel()
            if any(i.future.cancelled() for i in items):  # waiting ones leave the queue now, not after
                # the running batch: they would count toward the limit and have others refused (429)
                self._queue = deque(i for i in self._queue if not i.future.done())

    async def drain(self, timeout: float = 60.0) -> None:
        """Refuse new work, then wait until everything queued has been answered."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Past the timeout, what was not answered never will be: its requests learn it now (503, retry)
        # rather than wait for their own timeout.
        _fail(self._queue, Draining("this model version was replaced before it answered"))
        self._queue.clear()

    def _take(self) -> list[_Item]:
        """Up to max_batch_size live inputs sharing the oldest live input's key, in arrival order."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        if not self._queue:
            return []
        key = self._queue[0].params
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():
                continue
            (batch if item.params == key else rest).append(item)
        rest.extend(self._queue)
        self._queue = rest
        return batch

    def _ready(self) -> int:
        key = next((i.params for i in self._queue if not i.future.done()), None)
        return sum(1 for i in self._queue if i.params == key and not i.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if not self._queue:  # what woke it was cancelled meanwhile
                continue
            oldest = self._queue[0].enqueued
            while self._ready() < self.max_batch_size:
                remaining = oldest + self.max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            batch = self._take()
            if not batch:
                continue
            self._running = len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                await self._isolate(loop, batch, await self._run_batch(loop, batch))
            except asyncio.CancelledError:  # drain() timed out: this batch's answers will never come
                _fail(batch, Draining("this model version was replaced before it answered"))
                raise
            finally:
                self._running = 0

    async def _isolate(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Item], failure: Exception | None
    ) -> None:
        """After ``batch`` failed: whose input failed it? Halves of its requests run again, each as one batch,
        until the failure is narrowed to single requests: only those fail (one bad request among K costs about
        2 log2 K runs, not K)."""
        if failure is None:
            return
        requests = list(dict.fromkeys(i.request for i in batch))
        if len(requests) == 1:
            _fail(batch, failure)
            return
        for half in (requests[: len(requests) // 2], requests[len(requests) // 2 :]):
            wanted = set(half)
            part = [i for i in batch if i.request in wanted and not i.future.done()]
            if part:
                await self._isolate(loop, part, await self._run_batch(loop, part, retry=True))

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Item], *, retry: bool = False
    ) -> Exception | None:
        """Run ``batch`` on the model; answer each item on success, else return what the model raised.
        A retry is not reported as a batch (the histogram shows what traffic formed, not the narrowing)."""
        t0 = time.perf_counter()
        try:
            texts = [i.text for i in batch]
            outputs = await loop.run_in_executor(self._executor, self._run, texts, batch[0].params)
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(batch)} inputs")
        except Exception as exc:
            return exc
        else:
            for i, out in zip(batch, outputs, strict=True):
                if not i.future.done():
                    i.future.set_result(out)
            return None
        finally:
            seconds = time.perf_counter() - t0
            self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * seconds / len(batch)
            if self._on_batch is not None and not retry:
                self._on_batch(len(batch), seconds)
