"""The prediction log and feedback: what monitoring compares with the training data.

Servers hand sampled predictions to a :class:`PredictionLog`, which redacts PII (the data stage's
scanner: e-mails, phones, cards, IBANs, IPs, national ids become ``[KIND]``) and writes them in one
transaction per ``flush_s`` from a background thread, so logging never adds a database round trip to a
request. A full buffer drops the oldest rows and counts them (``dropped``): the log is telemetry and must
not take the server down with it. Feedback (ground truth for a request id) is written at once.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from modelyard.core._db import insert_for
from modelyard.core._models import Feedback, Prediction
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)
MAX_TEXT = 20_000  # characters of an input or output kept in the log
REQUEST_ID_CHARS = 26  # + 6 digits of the input's index = a 32-character prediction id


def new_request_id() -> str:
    return uuid.uuid4().hex[:REQUEST_ID_CHARS]


def prediction_id(request_id: str, index: int) -> str:
    """The logged prediction of input ``index`` of a request: its id and the index, 32 characters."""
    return f"{request_id}{index:06d}"


def redact(text: str) -> str:
    from modelyard.data._pii import redact_text

    return redact_text(text[:MAX_TEXT])


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class PredictionLog:
    def __init__(
        self, platform: Platform, ctx: Context, *, flush_s: float = 1.0, max_buffer: int = 100_000
    ) -> None:
        self._platform, self._ctx, self._flush_s = platform, ctx, flush_s
        self._rows: deque[dict[str, Any]] = deque(maxlen=max_buffer)
        self._lock = threading.Lock()
        # One flush at a time: a flush (feedback's) must not return while rows another flush took are not
        # stored yet, or the prediction it looks up next is not found.
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="yard-prediction-log", daemon=True)
        self._thread.start()

    def add(
        self,
        rid: str,
        model: str,
        version: int,
        route: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        latency_ms: float,
    ) -> None:
        now = utcnow()
        with self._lock:
            for i, (x, y) in enumerate(zip(inputs, outputs, strict=True)):
                if len(self._rows) == self._rows.maxlen:
                    self.dropped += 1
                self._rows.append(
                    {
                        "id": prediction_id(rid, i),
                        "project_id": self._ctx.project_id,
                        "model": model,
                        "version": version,
                        "route": route,
                        "ts": now,
                        "input": x,
                        "output": y,
                        "latency_ms": latency_ms,
                    }
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_s)
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
        if not rows:
            return
        for r in rows:  # redaction off the request path; a NUL, which PostgreSQL cannot store, becomes U+FFFD
            r["input"], r["output"] = _storable(redact(r["input"])), _storable(redact(r["output"]))
        try:
            self._insert(rows)
        except DataError:  # a row the database refuses must not lose the others: one at a time
            for r in rows:
                try:
                    self._insert([r])
                except Exception as exc:
                    self.dropped += 1
                    log.warning("prediction log: a row was not stored: %s", exc)
        except Exception as exc:  # the store is down: keep serving, say so, lose this batch of telemetry
            self.dropped += len(rows)
            log.warning("prediction log: %d rows not stored: %s", len(rows), exc)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._platform.db.write() as s:  # a row flushed twice (a retry) is kept once
            s.execute(insert_for(s)(Prediction).on_conflict_do_nothing(index_elements=["id"]), rows)
        self.written += len(rows)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.flush()


@dataclass(frozen=True)
class LoggedPrediction:
    id: str
    version: int
    route: str
    ts: datetime
    input: str
    output: str
    latency_ms: float
    target: str | None = None  # feedback, when some was posted


_REQUEST_ID = re.compile(rf"^[0-9a-f]{{{REQUEST_ID_CHARS}}}\Z")


def record_feedback(
    platform: Platform, ctx: Context, model: str, request_id: str, target: str, *, index: int = 0
) -> None:
    """Ground truth for input ``index`` of a logged request of ``model`` (a viewer's token suffices:
    clients post it)."""
    platform.authorize(ctx, "model.predict", f"model:{model}")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise UsageError(f"request_id must be the {REQUEST_ID_CHARS}-character id a prediction answered with")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1_000_000:
        raise UsageError("index must be the position of the input in its request (0, 1, ...)")
    if not isinstance(target, str) or not target or len(target) > MAX_TEXT or "\x00" in target:
        raise UsageError(f"target must be a non-empty string of at most {MAX_TEXT} characters, without NUL")
    pid = prediction_id(request_id, index)

    def check(s: Session) -> None:
        row = s.get(Prediction, pid)
        if row is None or row.project_id != ctx.project_id or row.model != model:
            raise NotFoundError(
                f"no logged prediction of input {index} of request {request_id} of model {model!r}"
            )

    # Looked up in a read first: an unknown id (a typo, a replay, a flood; the server retries it for a few
    # seconds while the log flushes) must not queue on the store's one write lock with the prediction log.
    with platform.db.read() as s:
        check(s)
    with platform.db.write() as s:
        check(s)  # retention may have removed it since
        # One row per prediction, the latest answer in it (quality reads only the latest): a client posting
        # corrections, or retrying, must not grow the table without bound.
        latest = s.scalars(
            select(Feedback)
            .where(Feedback.project_id == ctx.project_id, Feedback.prediction_id == pid)
            .order_by(Feedback.id.desc())
            .limit(1)
        ).first()
        fields = {"target": redact(target), "ts": utcnow(), "by": ctx.user}
        if latest is None:
            s.add(Feedback(project_id=ctx.project_id, model=model, prediction_id=pid, **fields))
        else:
            for key, value in fields.items():
                setattr(latest, key, value)


def answered_latencies(
    platform: Platform, ctx: Context, model: str, *, since: datetime, until: datetime, limit: int = 100_000
) -> tuple[int, list[float]]:
    """(how many inputs clients were answered for in [since, until), the latencies of the newest
    ``limit`` of them): shadow copies answered nobody and are not counted."""
    platform.authorize(ctx, "model.read", f"model:{model}")
    where = (
        Prediction.project_id == ctx.project_id,
        Prediction.model == model,
        Prediction.ts >= since,
        Prediction.ts < until,
        Prediction.route != "shadow",
    )
    with platform.db.read() as s:
        count = s.scalar(select(func.count()).select_from(Prediction).where(*where)) or 0
        latest = s.scalars(
            select(Prediction.latency_ms).where(*where).order_by(Prediction.ts.desc()).limit(limit)
        ).all()
    return int(count), [float(x) for x in latest]


def predictions(
    platform: Platform,
    ctx: Context,
    model: str,
    *,
    since: datetime,
    until: datetime | None = None,
    version: int | None = None,
    limit: int = 100_000,
) -> list[LoggedPrediction]:
    """Logged predictions of ``model`` in [since, until), oldest first, newest feedback per prediction
    attached; past ``limit`` rows, the newest ``limit`` (what monitoring must see first)."""
    platform.authorize(ctx, "model.read", f"model:{model}")
    with platform.db.read() as s:
        q = select(Prediction).where(
            Prediction.project_id == ctx.project_id, Prediction.model == model, Prediction.ts >= since
        )
        if until is not None:
            q = q.where(Prediction.ts < until)
        if version is not None:
            q = q.where(Prediction.version == version)
        rows = s.scalars(q.order_by(Prediction.ts.desc(), Prediction.id.desc()).limit(limit)).all()[::-1]
        ids = [r.id for r in rows]
        targets: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            for pid, target in s.execute(
                select(Feedback.prediction_id, Feedback.target)
                .where(Feedback.project_id == ctx.project_id, Feedback.prediction_id.in_(ids[i : i + 500]))
                .order_by(Feedback.id)
            ):
                targets[pid] = target
        return [
            LoggedPrediction(
                r.id, r.version, r.route, as_utc(r.ts), r.input, r.output, r.latency_ms, targets.get(r.id)
            )
            for r in rows
        ]
