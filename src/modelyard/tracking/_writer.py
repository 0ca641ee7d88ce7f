"""The buffered metric writer: one daemon thread per active run.

``log_metric`` validates and appends to an in-memory buffer (microseconds); the thread flushes the buffer
every ``metric_flush_s`` or as soon as it holds ``FLUSH_POINTS`` points, one transaction per batch. Each
batch carries a uuid that is claimed insert-if-absent in the same transaction, so a retry after a lost
commit acknowledgement writes nothing twice. The same thread sends the run's heartbeat and samples system
metrics, so an active run costs one thread.

Failures (store outage, lock timeouts) never reach the training loop: the batch stays pending with the same
id and is retried with backoff; after ``OUTAGE_WARN_S`` of failing, one warning names the run and the number
of buffered points. Nothing is dropped: the buffer grows while the store is away (about 100 bytes per
point, so an hour of 1,000 points/s is ~360 MB); ``flush()`` raises after its timeout but keeps the points.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from modelyard.errors import BackendError, NotFoundError, PermissionDeniedError, UsageError
from modelyard.tracking._store import MetricPoint, heartbeat, write_metric_batch

if TYPE_CHECKING:
    from modelyard.core._platform import Context, Platform

log = logging.getLogger("modelyard.tracking")

# Flush early once this many points are buffered; at most BATCH_POINTS per transaction.
FLUSH_POINTS = 5_000
BATCH_POINTS = 20_000
# How long the store may fail before the writer warns (it keeps retrying after that). The budget
# is 60 s of outage without disturbing training; tests shorten this.
OUTAGE_WARN_S = 60.0
_BACKOFF_MAX_S = 2.0


def orphan_error(run_id: str) -> UsageError:
    """What a forked child is told when it logs into a run it inherited."""
    # Not start_run(run_id=...): that run would end when this process leaves it, while the parent is
    # still training in it.
    return UsageError(
        f"run {run_id} belongs to the process that forked this one; log from that process, or "
        f"give this one a run of its own: Client().start_run(parent_id={run_id!r})"
    )


class MetricWriterWarning(UserWarning):
    """The metric store has been unreachable for a while; points are buffered, not lost."""


class MetricWriter:
    def __init__(
        self,
        platform: Platform,
        ctx: Context,
        run_id: str,
        *,
        sampler: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        st = platform.settings
        self.platform, self.ctx, self.run_id = platform, ctx, run_id
        self.flush_s = st.metric_flush_s
        self.heartbeat_s = st.run_beat_s  # at least three beats per timeout, or reapers take live runs
        self.system_s = st.system_metrics_s if sampler is not None else 0.0
        self.sampler = sampler
        # RLock: a signal handler on the main thread may flush while that thread is inside log_metric.
        self._cond = threading.Condition(threading.RLock())
        self._buffer: deque[MetricPoint] = deque()
        self._pending: tuple[str, list[MetricPoint]] | None = None  # taken from the buffer, not committed
        self._logged = 0  # points accepted so far
        self._committed = 0  # points durable so far (FIFO, so the first _committed points)
        self._flush_wanted = False
        self._stopping = False
        self._ending = False  # the run is ending: no more heartbeats or samples (see begin_end)
        self._failing_since: float | None = None
        self._warned = False
        self.last_error: BaseException | None = None
        self._samples = 0
        self.orphaned = False  # set in a forked child: the thread that writes these points is the parent's
        self._thread = threading.Thread(target=self._loop, name=f"modelyard-run-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------------------------------
    def add(self, points: list[MetricPoint]) -> None:
        with self._cond:
            if self.orphaned:
                raise orphan_error(self.run_id)
            if self._stopping and not self._thread.is_alive():
                if self.last_error is not None:  # it gave up: the run was deleted or the role revoked
                    raise BackendError(
                        f"run {self.run_id}: metric writing stopped ({self.last_error}); this point cannot "
                        "be stored"
                    )
                raise BackendError(f"run {self.run_id} has ended; start or resume a run to log metrics")
            self._buffer.extend(points)
            self._logged += len(points)
            if len(self._buffer) >= FLUSH_POINTS:
                self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def buffered(self) -> int:
        with self._cond:
            return self._logged - self._committed

    def flush(self, timeout: float) -> None:
        """Block until every point added before this call is committed; BackendError after ``timeout``
        (the points stay buffered and are still retried)."""
        deadline = time.monotonic() + timeout
        if self.orphaned:
            raise orphan_error(self.run_id)
        with self._cond:
            target = self._logged
            self._flush_wanted = True
            self._cond.notify_all()
            while self._committed < target:
                left = deadline - time.monotonic()
                missing = target - self._committed
                if not self._thread.is_alive():
                    raise BackendError(
                        f"run {self.run_id}: metric writing stopped ({self.last_error}); {missing} "
                        "metric points could not be stored"
                    )
                if left <= 0:
                    cause = f": {self.last_error}" if self.last_error else ""
                    raise BackendError(
                        f"run {self.run_id}: {missing} metric points are not yet durable after {timeout:g}s "
                        f"(the metadata store is unavailable{cause}); they stay buffered and are retried"
                    )
                self._cond.wait(min(left, 0.5))

    def orphan(self) -> None:
        """This process is a fork: points added here would wait for a thread that only the parent has."""
        self._cond = threading.Condition(threading.RLock())  # another thread may have held it at the fork
        self.orphaned = True

    def begin_end(self) -> None:
        """The run is ending: stop heartbeats and system samples, keep writing what is buffered. If the
        end never commits (the process dies, or the store stays away), the silent heartbeat lets the
        reaper take the run instead of an orphaned thread keeping it RUNNING."""
        with self._cond:
            self._ending = True
            self._cond.notify_all()

    def stop(self, timeout: float) -> None:
        """Flush what is buffered (up to ``timeout``) and end the thread."""
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                if self._committed >= self._logged:
                    self._stopping = True
                    self._cond.notify_all()
            if self._stopping:
                self._thread.join(timeout=max(1.0, timeout))

    # -- the thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        now = time.monotonic()
        next_flush = now + self.flush_s
        next_beat = now + self.heartbeat_s
        next_sample = now + self.system_s if self.system_s else float("inf")
        backoff = 0.05
        while True:
            with self._cond:
                while True:
                    if self._stopping and not self._buffer and self._pending is None:
                        return
                    if self._ending:
                        next_beat = next_sample = float("inf")
                    now = time.monotonic()
                    due = (
                        self._flush_wanted
                        or len(self._buffer) >= FLUSH_POINTS
                        or self._stopping
                        or (now >= next_flush and (self._buffer or self._pending))
                    )
                    if due or now >= next_beat or now >= next_sample:
                        break
                    if now >= next_flush:  # nothing to write at the flush time: look again in flush_s (a
                        next_flush = now + self.flush_s  # wait of 0 here would spin, a core's worth of CPU)
                    self._cond.wait(min(next_flush, next_beat, next_sample) - now)
                if self._pending is None and self._buffer:
                    n = min(len(self._buffer), BATCH_POINTS)
                    self._pending = (uuid.uuid4().hex, [self._buffer.popleft() for _ in range(n)])
                pending = self._pending if due else None
            if self._ending:  # read without the lock: at worst one more beat or sample
                next_beat = next_sample = float("inf")
            if now >= next_sample and self.sampler is not None:
                next_sample = now + self.system_s
                self._sample()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                try:
                    heartbeat(self.platform, self.run_id)
                except Exception as exc:  # the metric path reports outages
                    log.debug("heartbeat of run %s failed: %s", self.run_id, exc)
                    # Try again soon: the outage may have outlasted the timeout, and until the next beat
                    # lands any reaper may take this live run.
                    next_beat = now + min(self.heartbeat_s, 1.0)
            if pending is None:
                continue
            try:
                write_metric_batch(self.platform, self.ctx, self.run_id, pending[0], pending[1])
            except PermissionDeniedError as exc:  # the role was revoked mid-run
                self._give_up(exc)
                return
            except IntegrityError:  # the run's row is gone: its foreign key refuses the batch
                self._give_up(NotFoundError(f"run {self.run_id} no longer exists (it was deleted)"))
                return
            except Exception as exc:  # store outage or contention: keep the batch (same id) and retry
                self._failed(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.05
            with self._cond:
                self._committed += len(pending[1])
                self._pending = None
                if self._committed >= self._logged:
                    self._flush_wanted = False
                self._cond.notify_all()
                recovered = self._failing_since is not None
                if recovered:
                    if self._warned:
                        log.warning(
                            "run %s: metric store reachable again; buffered points flushed", self.run_id
                        )
                    self._failing_since, self._warned, self.last_error = None, False, None
            next_flush = time.monotonic() + self.flush_s
            if recovered and next_beat != float("inf"):
                # The store is back after an outage that may have outlasted the heartbeat timeout: beat
                # now, not up to heartbeat_s later, while any reaper could mark this live run FAILED.
                next_beat = 0.0

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._cond:
            self.last_error = exc
            if self._failing_since is None:
                self._failing_since = now
            if self._warned or now - self._failing_since < OUTAGE_WARN_S:
                return
            self._warned = True
            count = self._logged - self._committed
        message = (
            f"modelyard: run {self.run_id} cannot reach the metadata store for "
            f"{now - self._failing_since:.0f}s "
            f"({type(exc).__name__}: {str(exc)[:300]}); {count} metric points are buffered in memory and "
            "retried, none is dropped; flush()/end_run() will wait for the store"
        )
        log.warning(message)
        # Warnings made errors (-W error): raised here, it killed the writer thread, and every point logged
        # after it was accepted and never written. The log record above already says it.
        with contextlib.suppress(Exception):
            warnings.warn(message, MetricWriterWarning, stacklevel=1)

    def _give_up(self, exc: BaseException) -> None:
        # Retrying cannot succeed (the role was revoked, or the run deleted). Say so; flush() reports it.
        with self._cond:
            self.last_error = exc
            self._stopping = True
            self._cond.notify_all()
        log.error("run %s: metrics can no longer be written: %s", self.run_id, exc)

    def _sample(self) -> None:
        assert self.sampler is not None
        try:
            values = self.sampler()
        except Exception as exc:  # a sampler must never break the run
            log.debug("system metrics sampling failed: %s", exc)
            return
        ts = int(time.time() * 1000)
        self._samples += 1
        step = self._samples
        with self._cond:
            self._buffer.extend(MetricPoint(k, v, step, ts) for k, v in values.items())
            self._logged += len(values)
