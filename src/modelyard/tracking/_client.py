"""The SDK: ``Client`` owns a platform, an acting context and its active runs; ``Run`` is one run's handle;
the module-level helpers (``modelyard.log_metric`` ...) delegate to the run that is active in the current
context (a ``contextvars`` variable, so threads and asyncio tasks do not see each other's runs).

A run never stays RUNNING after its process stops: the context manager ends it FINISHED, FAILED (exception)
or KILLED (KeyboardInterrupt); SIGTERM/SIGINT handlers flush and end it KILLED before the default
behaviour; an atexit hook flushes and ends what is still open; and a process that dies without any of these
stops its heartbeat, so the reaper marks the run FAILED.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import numbers
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from modelyard.core._platform import Context, Platform
from modelyard.errors import NotFoundError, PermissionDeniedError, UsageError, ValidationError, YardError
from modelyard.tracking import _store
from modelyard.tracking._search import search_runs as _search_runs
from modelyard.tracking._store import (
    MetricPoint,
    RunInfo,
    check_key,
    check_step,
    check_timestamp,
    check_value,
)
from modelyard.tracking._writer import MetricWriter, orphan_error

log = logging.getLogger("modelyard.tracking")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_I64 = 2**63
# The client whose run is active in this context (module helpers use it); each client keeps its own stack.
_CURRENT: contextvars.ContextVar[Client | None] = contextvars.ContextVar("modelyard_client", default=None)
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()  # for the fork hook below
# Clients with runs open. The exit hook holds its client weakly (a client never closed may be collected),
# but one with open runs must live until they end: once the thread that started them was gone, the client
# and its runs referred only to each other, the collector took them, and the exit ended nothing.
_OPEN: set[Client] = set()


# In a forked child: the run that was active where the fork happened (the parent's), so that the module
# helpers can say whose it is and how to log from here, rather than "call start_run first".
_INHERITED: str | None = None


def _after_fork_in_child() -> None:
    global _INHERITED
    current = _CURRENT.get()
    inherited = current.active_run() if current is not None else None
    _INHERITED = inherited.id if inherited is not None else _INHERITED
    for client in list(_CLIENTS):
        client._forked()


# A forked child (DataLoader workers, multiprocessing) inherits the clients, their runs, signal handlers
# and exit hook, but not the threads writing the runs' metrics: without this its SIGTERM or exit ended the
# parent's live run, and what it logged was accepted and never written.
os.register_at_fork(after_in_child=_after_fork_in_child)


class Run:
    """A live run of this process. Use it as a context manager, or call :meth:`end`."""

    def __init__(self, client: Client, run_id: str, experiment: str, parent_id: str | None) -> None:
        self.client = client
        self.id = run_id
        self.experiment = experiment
        self.parent_id = parent_id
        self.status = "RUNNING"  # changes only once the final status is committed
        # The end asked for (status, reason), kept until it commits: a failed end is retried with it.
        self._end_request: tuple[str, str | None] | None = None
        self._ending = False  # an end() of this run is in progress (re-entry guard)
        self._ender: int | None = None  # the thread of that end
        # RLock: a signal handler on the thread that holds it may end the run too.
        self._end_cond = threading.Condition(threading.RLock())
        # A signal the program's own handler took while this run was active ("received SIGTERM"): if the
        # run then ends by an exception (SystemExit included) or at the exit, it ends KILLED.
        self._signalled: str | None = None
        self._keys: set[str] = set()  # keys already validated: the hot path skips the regex
        sampler = None
        if client.platform.settings.system_metrics_s > 0 and parent_id is None:
            from modelyard.tracking._system import system_sampler

            sampler = system_sampler()
        self._writer = MetricWriter(client.platform, client.ctx, run_id, sampler=sampler)

    def __repr__(self) -> str:
        return f"<Run {self.id} experiment={self.experiment!r} status={self.status}>"

    # -- metrics (buffered) --------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        if key not in self._keys:
            check_key(key, "metric key")
            self._keys.add(key)
        return key

    def log_metric(self, key: str, value: float, step: int = 0, timestamp: int | None = None) -> None:
        """Buffer one point; it is durable after :meth:`flush`, :meth:`end` or within ``metric_flush_s``.
        ``timestamp`` is epoch milliseconds (default now); NaN is kept (as a missing value)."""
        if self._end_request is not None:
            raise self._ended()
        if type(key) is not str:
            check_key(key, "metric key")
        point = MetricPoint(
            self._key(key),
            check_value(key, value),
            step if type(step) is int and -_I64 <= step < _I64 else check_step(key, step),
            int(time.time() * 1000) if timestamp is None else check_timestamp(key, timestamp),
        )
        self._writer.add([point])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, timestamp: int | None = None) -> None:
        """Buffer several points with one step and timestamp; all are validated before any is kept."""
        if not isinstance(metrics, Mapping):
            raise ValidationError(f"metrics must be a mapping of key to number, got {type(metrics).__name__}")
        if self._end_request is not None:
            raise self._ended()
        ts = int(time.time() * 1000) if timestamp is None else check_timestamp("*", timestamp)
        step = step if type(step) is int and -_I64 <= step < _I64 else check_step("*", step)
        points = [MetricPoint(self._key(k), check_value(k, v), step, ts) for k, v in metrics.items()]
        self._writer.add(points)

    def _ended(self) -> UsageError:
        state = f"has ended ({self.status})" if self.status != "RUNNING" else "is ending"
        return UsageError(
            f"run {self.id} {state}; start a new run, or continue this one with start_run(run_id={self.id!r})"
        )

    def flush(self, timeout: float | None = None) -> None:
        """Block until every metric logged so far is committed (BackendError after ``flush_timeout_s``;
        the points stay buffered)."""
        self._writer.flush(
            self.client.platform.settings.flush_timeout_s if timeout is None else _seconds(timeout)
        )

    @property
    def buffered(self) -> int:
        """Points logged but not yet durable."""
        return self._writer.buffered

    # -- params, tags, artifacts, lineage (audited) ----------------------------------------------------
    def log_param(self, key: str, value: object) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, object]) -> None:
        _store.log_params(self.client.platform, self.client.ctx, self.id, params)

    def set_tag(self, key: str, value: object) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, object]) -> None:
        _store.set_tags(self.client.platform, self.client.ctx, self.id, tags)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> list[str]:
        """Store a file (or a directory's files) encrypted in the artifact store and record it on the run;
        ``artifact_path`` is a folder inside the run (default: a directory's files go under its name, so
        ``"."`` logs the current directory as ``<its name>/...``). Returns the digests. Symbolic links are
        refused (UnsafePathError naming the link) before anything is stored: following one could upload a
        file from outside the directory."""
        if not isinstance(path, str | os.PathLike):
            raise UsageError(f"log_artifact needs a file or directory path, got {type(path).__name__}")
        pairs = _store.artifact_files(
            self.client.platform, self.client.ctx, self.id, Path(path), artifact_path
        )
        logged = _store.log_artifacts(self.client.platform, self.client.ctx, self.id, pairs)
        return [digest for _, digest, _ in logged]

    def log_dict(self, data: Mapping[str, Any] | Sequence[Any], name: str) -> str:
        """Store ``data`` as JSON (or YAML when ``name`` ends in .yaml/.yml) under ``name``."""
        if not isinstance(name, str) or not name:
            raise UsageError("log_dict needs an artifact name such as 'config.json'")
        try:
            data = _plain(data)
        except RecursionError:
            what = "YAML" if name.endswith((".yaml", ".yml")) else "JSON"
            message = f"log_dict: {name!r} is not {what}-serialisable: it contains itself"
            raise ValidationError(message) from None
        if name.endswith((".yaml", ".yml")):
            import yaml

            try:
                text = yaml.safe_dump(data, sort_keys=True)
            except yaml.YAMLError as exc:
                raise ValidationError(f"log_dict: {name!r} is not YAML-serialisable: {exc}") from None
        else:
            try:
                text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"log_dict: {name!r} is not JSON-serialisable: {exc}") from None
        return self._log_bytes(text.encode(), name)

    def log_figure(self, figure: Any, name: str) -> str:
        """Store a matplotlib figure as an image (PNG unless ``name`` says .svg/.pdf/.jpg). Axes and other
        objects that hold one in ``.figure`` (seaborn's grids) store that figure."""
        fig = figure if hasattr(figure, "canvas") else getattr(figure, "figure", None)
        # pyplot itself has savefig but no canvas (and its .figure is a function): refused here, not
        # an AttributeError from the canvas below.
        if not hasattr(fig, "savefig") or not hasattr(fig, "canvas"):
            raise ValidationError(
                f"log_figure expects a matplotlib Figure (or Axes), got {type(figure).__name__}"
            )
        figure = fig
        if not isinstance(name, str) or not name:
            raise UsageError("log_figure needs an artifact name such as 'curves.png'")
        suffix = Path(name).suffix.lstrip(".").lower() or "png"
        supported = figure.canvas.get_supported_filetypes()
        if suffix not in supported:
            raise ValidationError(
                f"log_figure: {name!r}: matplotlib cannot write .{suffix}; use one of "
                + ", ".join(f".{s}" for s in sorted(supported))
            )
        with tempfile.TemporaryDirectory(prefix="yard-fig-") as tmp:
            out = Path(tmp) / f"figure.{suffix}"
            figure.savefig(out, format=suffix)
            return self._log_file(out, name)

    def _log_bytes(self, data: bytes, name: str) -> str:
        with tempfile.TemporaryDirectory(prefix="yard-art-") as tmp:
            out = Path(tmp) / "payload"
            out.write_bytes(data)
            return self._log_file(out, name)

    def _log_file(self, path: Path, name: str) -> str:
        ((_, digest, _),) = _store.log_artifacts(
            self.client.platform, self.client.ctx, self.id, [(path, name)]
        )
        return digest

    def use_dataset(self, spec: str) -> str:
        """Record that this run reads dataset version ``name@N`` (``name``: latest); returns its reference."""
        return _store.use_dataset(self.client.platform, self.client.ctx, self.id, spec)

    def info(self) -> RunInfo:
        return self.client.get_run(self.id)

    # -- ending ---------------------------------------------------------------------------------------
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Flush (bounded by ``flush_timeout_s``), then record the final status. Idempotent once the status
        is recorded. If the flush times out the status is still recorded, the points stay buffered and
        BackendError is raised. If recording the status fails (store outage) the run stays open in this
        process, with its heartbeat stopped: calling ``end`` again, or the interpreter's exit, retries."""
        if status not in _store.TERMINAL:
            raise UsageError(f"status {status!r} is not a final status; expected one of {_store.TERMINAL}")
        self._end(status, reason)

    def _end(
        self, status: str, reason: str | None, *, interrupting: bool = False, deadline: float | None = None
    ) -> None:
        """``interrupting``: a signal handler ending the run while an ``end`` of it is in progress on
        this thread (the handler then does that end itself, with its own status, before the process
        stops). ``deadline`` (monotonic): when the flush gives up, if not ``flush_timeout_s`` from now."""
        if self._writer.orphaned:
            raise orphan_error(self.id)  # a forked child must not end its parent's run
        with self._end_cond:
            # Another thread is ending this run: return once it is done, as an end() that returned means
            # the run is ended (this returned at once, and a main thread could exit and lose the run).
            while self._ending and not interrupting and self._ender != threading.get_ident():
                self._end_cond.wait()
            if self.status != "RUNNING" or (self._ending and not interrupting):
                return  # recorded already, or this thread's end of it is in progress
            self._ending, self._ender = True, threading.get_ident()
        self._end_request = (status, reason)
        flush_error: YardError | None = None
        try:
            self._writer.begin_end()
            try:
                timeout = self.client.platform.settings.flush_timeout_s
                self._writer.stop(timeout if deadline is None else max(0.0, deadline - time.monotonic()))
            except YardError as exc:
                flush_error = exc
            if self.status != "RUNNING":
                return  # a signal handler ended it while we were flushing
            status, reason = self._end_request  # a signal handler may have asked for KILLED meanwhile
            try:
                _store.end_run(self.client.platform, self.client.ctx, self.id, status, reason)
            except (NotFoundError, PermissionDeniedError):
                # The run was deleted or the role revoked: no retry can record it, so stop holding it.
                self.client._forget(self)
                raise
            self.status = status
        finally:
            with self._end_cond:
                self._ending, self._ender = False, None
                self._end_cond.notify_all()
        self.client._forget(self)
        if flush_error is not None:
            if self._writer.alive:  # it keeps retrying; the exit waits for it once more
                atexit.register(_flush_at_exit, self)
            raise flush_error

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer.orphaned:
            return  # a forked child leaving the block: the run goes on in the parent
        interrupted = self._signalled
        if exc_type is None or (
            exc_type is SystemExit and getattr(exc, "code", 1) in (0, None) and not interrupted
        ):
            self.end("FINISHED")
            return
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) or interrupted else "FAILED"
        reason = f"{exc_type.__name__}: {exc}"
        try:
            self.end(status, reason=(f"{interrupted}, then {reason}" if interrupted else reason)[:2000])
        except Exception as end_exc:  # never hide the exception that ended the run
            _warn(f"modelyard: could not end run {self.id} cleanly: {end_exc}", stacklevel=3)


def _seconds(timeout: object) -> float:
    seconds = float(timeout) if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) else -1.0
    if not seconds >= 0:  # NaN too
        raise UsageError(f"timeout must be a number of seconds (0 or more), got {timeout!r}")
    return seconds


def _plain(value: Any) -> Any:
    """``value`` with every Mapping made a dict and every list or tuple a list, so that any Mapping that
    log_dict takes can be written: YAML's safe dumper refused an OrderedDict and a tuple, and neither
    dumper took a MappingProxyType."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: every param and latest metric key, and the params whose values differ."""

    runs: list[RunInfo]
    param_keys: list[str]
    metric_keys: list[str]
    differing_params: list[str]


class Client:
    """Tracking client: a platform, who acts, and this process's active runs.

    ``Client()`` opens the platform from settings (YARD_HOME, YARD_DATABASE_URL, ...); pass ``platform`` to
    share one, ``project`` and ``token`` to act elsewhere or as a token's user."""

    def __init__(
        self, platform: Platform | None = None, project: str | None = None, token: str | None = None
    ) -> None:
        self._owns_platform = platform is None
        self.platform = platform or Platform()
        try:
            self.ctx: Context = self.platform.context(token=token, project=project)
        except BaseException:
            if self._owns_platform:
                self.platform.close()
            raise
        self._stack: contextvars.ContextVar[tuple[Run, ...]] = contextvars.ContextVar(
            f"modelyard_runs_{id(self)}", default=()
        )
        self._lock = threading.RLock()
        self._active: dict[str, Run] = {}
        self._saved_handlers: dict[int, Any] = {}
        self._in_signal = False
        self._close_when_idle = False
        self._closed = False
        ref = weakref.ref(self)
        self._atexit = lambda: _at_exit(ref)
        atexit.register(self._atexit)
        _CLIENTS.add(self)

    def _forked(self) -> None:
        """In a forked child: the active runs are the parent's. Forget them and put the signal handlers
        back, so the child's signals and exit leave them alone (see os.register_at_fork above)."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        for run in self._active.values():
            run._writer.orphan()
        self._active = {}
        _OPEN.discard(self)
        self._stack.set(())
        if _CURRENT.get() is self:
            _CURRENT.set(None)
        self._in_signal = False
        self._restore_signal_handlers()

    def close(self) -> None:
        """End active runs (FINISHED) and release the platform if this client opened it. A run whose end
        could not be recorded (store outage) keeps the client open: the exit retries it, and the client
        closes when its last run is ended."""
        self._end_all("FINISHED", "client closed")
        with self._lock:
            if self._active:
                self._close_when_idle = True
                return
        atexit.unregister(self._atexit)
        self._closed = True
        if self._owns_platform:
            self.platform.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs of this process --------------------------------------------------------------------------
    def start_run(
        self,
        experiment: str | None = None,
        *,
        name: str | None = None,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
        nested: bool = False,
        run_id: str | None = None,
        capture: bool = True,
        parent_id: str | None = None,
    ) -> Run:
        """Start a run (or, with ``run_id``, continue an existing one) and make it the active run.

        Continuing a run sets the ``name``, ``params`` and ``tags`` given (a param may not change), and an
        ``experiment``, if given, must be the run's own; ``capture`` applies to new runs only.

        Inside an active run, ``nested=True`` starts a child (HPO trials); otherwise it is an error.
        ``parent_id`` makes the new run a child of a run of another process (HPO workers of one study).
        ``capture`` records git commit and dirty flag, command line, Python, host and package versions."""
        if self._closed:
            # Its exit hook is gone: a run started now would never be flushed or ended at exit.
            raise UsageError("this client is closed; open a new Client() to start or continue a run")
        parent = self.active_run()
        if parent is not None and parent_id is not None:
            raise UsageError(
                "parent_id is for a run of another process; inside an active run use nested=True"
            )
        if parent is not None and not nested:
            raise UsageError(
                f"run {parent.id} is already active; end it first, or pass nested=True to start a child run"
            )
        _store.reap_stale_runs(self.platform, self.ctx)
        if run_id is not None:
            _store.check_run_id(run_id)
            with self._lock:
                if run_id in self._active:
                    # A second handle replaced the first in _active: whichever ended first dropped the
                    # other from it, and that one was then never flushed or ended at close or exit.
                    raise UsageError(
                        f"run {run_id} is already active in this client (another thread or task holds "
                        "its handle): log through that Run object, or continue it from another Client"
                    )
            # MLflow's start_run sets a resumed run's tags and name too; they were silently dropped.
            _store.resume_run(
                self.platform, self.ctx, run_id, experiment=experiment, name=name, params=params, tags=tags
            )
            info = _store.get_run(self.platform, self.ctx, run_id)
            run = Run(self, run_id, info.experiment, info.parent_id)
        else:
            exp = experiment
            if exp is None:
                exp = parent.experiment if parent else _store.DEFAULT_EXPERIMENT
            all_tags: dict[str, object] = {}
            if capture and parent is None and parent_id is None:
                from modelyard.tracking._system import capture_tags

                all_tags.update(capture_tags())
            all_tags.update(tags or {})
            new_id = _store.create_run(
                self.platform,
                self.ctx,
                exp,
                name=name,
                params=params,
                tags=all_tags,
                parent_id=parent.id if parent else parent_id,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            run = Run(self, new_id, exp, parent.id if parent else parent_id)
        with self._lock:
            self._active[run.id] = run
            _OPEN.add(self)
        self._stack.set((*self._stack.get(), run))
        _CURRENT.set(self)
        self._install_signal_handlers()
        global _INHERITED
        _INHERITED = None  # this process has had a run of its own: no run active is no longer the parent's
        return run

    def active_run(self) -> Run | None:
        # A run ended from another thread or context is still on this context's stack: skip it.
        for run in reversed(self._stack.get()):
            if run.status == "RUNNING" and run._end_request is None:
                return run
        return None

    def end_run(self, status: str = "FINISHED") -> None:
        run = self.active_run()
        if run is None:
            raise UsageError("no active run to end")
        run.end(status)

    def _forget(self, run: Run) -> None:
        with self._lock:
            self._active.pop(run.id, None)
            idle = not self._active
            if idle:
                _OPEN.discard(self)
        self._stack.set(tuple(r for r in self._stack.get() if r is not run))
        if idle:
            self._restore_signal_handlers()
            if _CURRENT.get() is self:
                _CURRENT.set(None)
            if self._close_when_idle:
                self.close()

    def _end_all(
        self, status: str, reason: str, *, signalled: bool = False, deadline: float | None = None
    ) -> None:
        """End every active run. A run whose earlier end did not commit is ended with the status that end
        asked for, except on a signal, which ends everything KILLED (including an end in progress). Their
        flushes share one ``deadline`` (default ``flush_timeout_s`` from now): with the store down, N runs
        each waiting the whole timeout held a SIGTERM's grace period or the exit for N timeouts."""
        if deadline is None:
            deadline = time.monotonic() + self.platform.settings.flush_timeout_s
        with self._lock:
            runs = list(self._active.values())
        for run in reversed(runs):  # children before parents
            st, why = (status, reason) if signalled or run._end_request is None else run._end_request
            try:
                run._end(st, why, interrupting=signalled, deadline=deadline)
            except Exception as exc:
                _warn(f"modelyard: could not end run {run.id}: {exc}", stacklevel=3)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every metric logged so far to this client's open runs is committed (BackendError
        after ``timeout``, default ``flush_timeout_s``, for all of them together; the points stay buffered).
        A run's own :meth:`Run.flush` covers that run only: not the parent of a nested run."""
        total = self.platform.settings.flush_timeout_s if timeout is None else _seconds(timeout)
        deadline = time.monotonic() + total
        with self._lock:
            runs = list(self._active.values())
        for run in runs:
            run._writer.flush(max(0.0, deadline - time.monotonic()))

    # -- signals: flush and end KILLED, then behave as the process would have -------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            try:
                prev = signal.getsignal(sig)
                if sig in self._saved_handlers and self._reaches_us(prev, sig):
                    continue  # ours, or another client's that passes the signal on to ours
                if prev is signal.SIG_IGN:
                    continue  # the process chose to ignore it: so do we
                signal.signal(sig, self._on_signal)
                self._saved_handlers[sig] = prev
            except (ValueError, OSError):  # not the main interpreter, or unsupported
                continue

    def _reaches_us(self, handler: Any, sig: int) -> bool:
        """Whether ``handler`` is this client's, or another client's whose chain of saved handlers leads
        to this one's (every client's handler passes a signal on to the handler it replaced)."""
        for _ in range(len(_CLIENTS) + 1):  # a chain visits each client at most once
            owner = getattr(handler, "__self__", None)
            if not isinstance(owner, Client) or getattr(handler, "__func__", None) is not Client._on_signal:
                return False
            if owner is self:
                return True
            handler = owner._saved_handlers.get(sig)
        return False

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in list(self._saved_handlers.items()):
            try:
                if signal.getsignal(sig) != self._on_signal:
                    # Another client's handler (or the program's) was installed over ours and passes signals
                    # on to ours: keep the handler ours passes them to. Forgetting it lost the program's own
                    # handler once the other client put ours back (SIGTERM then exited 143).
                    continue
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
            del self._saved_handlers[sig]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._in_signal:
            return  # a second signal while the first is ending the runs: that one finishes the job
        prev = self._saved_handlers.get(signum, signal.SIG_DFL)
        if callable(prev) and prev is not signal.default_int_handler:
            # The program has a handler of its own (checkpoint, then stop): it decides when and how its runs
            # end, not this handler under its feet while it winds down. A run the signal's handling then
            # ends by an exception, or leaves open at the exit, ends KILLED.
            with self._lock:
                for run in self._active.values():
                    run._signalled = f"received {signal.Signals(signum).name}"
            prev(signum, frame)
            return
        self._in_signal = True
        try:
            self._end_all("KILLED", f"received {signal.Signals(signum).name}", signalled=True)
        finally:
            self._in_signal = False
        self._restore_signal_handlers()
        if callable(prev):
            prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)

    # -- queries ---------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunInfo:
        return _store.get_run(self.platform, self.ctx, run_id)

    def search_runs(
        self,
        experiment: str | list[str] | None = None,
        filter: str | None = None,
        order_by: list[str] | None = None,
        max_results: int = 1000,
    ) -> list[RunInfo]:
        """Runs matching ``filter`` such as ``"metrics.rougeL > 0.3 and params.lr = '1e-4'"``, sorted by
        ``order_by`` such as ``["metrics.rougeL DESC", "start_time"]``."""
        return _search_runs(self.platform, self.ctx, experiment, filter, order_by, max_results)

    def compare_runs(self, run_ids: Sequence[str]) -> Comparison:
        if isinstance(run_ids, str) or len(run_ids) < 1:
            raise UsageError("compare_runs needs a list of run ids")
        runs = [self.get_run(r) for r in run_ids]
        params = sorted({k for r in runs for k in r.params})
        metrics = sorted({k for r in runs for k in r.metrics})
        differing = [k for k in params if len({r.params.get(k) for r in runs}) > 1]
        return Comparison(runs, params, metrics, differing)

    def metric_history(
        self, run_id: str, keys: Sequence[str] | str | None = None
    ) -> dict[str, list[MetricPoint]]:
        """Every point of the run's metrics, or of ``keys`` (a list, or one key such as ``"loss"``)."""
        return _store.metric_history(self.platform, self.ctx, run_id, keys)

    def list_artifacts(self, run_id: str) -> list[tuple[str, str, int]]:
        return _store.list_run_artifacts(self.platform, self.ctx, run_id)

    def download_artifacts(
        self,
        run_id: str,
        path: str = "",
        dest: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Verified copies of a run's artifacts under ``path`` (a folder such as ``"model"``, one artifact
        such as ``"recipe.yaml"``, or ``""`` for all) in ``dest`` (default: a new temp directory, which the
        caller removes). Returns the local path of what was asked for. A non-empty ``dest`` is refused
        unless ``overwrite``."""
        if dest is not None:
            return _store.download_artifacts(self.platform, self.ctx, run_id, path, dest, overwrite=overwrite)
        target = Path(tempfile.mkdtemp(prefix="yard-artifacts-"))
        try:
            return _store.download_artifacts(self.platform, self.ctx, run_id, path, target)
        except BaseException:
            try:
                target.rmdir()  # still empty: nothing is moved in unless every file verified
            except OSError:
                pass
            raise

    def list_experiments(self) -> list[tuple[str, int]]:
        return _store.list_experiments(self.platform, self.ctx)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and its checkpoints in this home (see :func:`_store.delete_run`)."""
        _store.delete_run(self.platform, self.ctx, run_id)

    def reap_stale_runs(self) -> list[str]:
        return _store.reap_stale_runs(self.platform, self.ctx)


def _at_exit(ref: weakref.ReferenceType[Client]) -> None:
    """Interpreter exit: flush (bounded) and end what is still open, so nothing stays RUNNING. After an
    uncaught exception that is FAILED (KILLED for KeyboardInterrupt) with the exception as reason;
    a run whose earlier end did not commit gets the status that end asked for."""
    client = ref()
    if client is None:
        return
    with client._lock:
        for run in client._active.values():
            if run._signalled is not None and run._end_request is None:
                run._end_request = ("KILLED", run._signalled)  # _end_all ends it as asked
    status, reason = _exit_status()
    client._end_all(status, reason, deadline=_exit_deadline(client.platform.settings.flush_timeout_s))


# When the interpreter's exit hooks began: every client's runs (and _flush_at_exit) flush against one
# deadline, flush_timeout_s after it, so the exit waits on a store that is down for one timeout, not one per
# run.
_EXIT_STARTED: float | None = None


def _exit_deadline(timeout: float) -> float:
    global _EXIT_STARTED
    if _EXIT_STARTED is None:
        _EXIT_STARTED = time.monotonic()
    return _EXIT_STARTED + timeout


def _exit_status() -> tuple[str, str]:
    # The interpreter stores an uncaught exception in sys.last_exc (3.12+) / sys.last_value before it
    # runs atexit hooks; SystemExit never lands there. An interactive session keeps the last error of
    # any statement it survived, so it says nothing about how the session ended: ignore it there.
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if not isinstance(exc, BaseException) or hasattr(sys, "ps1") or sys.flags.interactive:
        return "FINISHED", "process exited with the run open"
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    return status, f"uncaught {type(exc).__name__}: {exc}"[:2000]


def _warn(message: str, stacklevel: int = 2) -> None:
    """``warnings.warn`` that cannot raise. Under ``-W error`` the warning was raised out of the loop that
    ends every run (close, exit, the signal handler), leaving the rest RUNNING, and out of ``__exit__`` in
    place of the exception that ended the run; then the message goes to the log instead."""
    try:
        warnings.warn(message, stacklevel=stacklevel)
    except Exception:
        log.warning(message)


def _flush_at_exit(run: Run) -> None:
    """A run whose final flush timed out (store outage) gets one more bounded wait at exit."""
    deadline = _exit_deadline(run.client.platform.settings.flush_timeout_s)
    try:
        run.flush(max(0.0, deadline - time.monotonic()))
    except YardError as exc:
        _warn(f"modelyard: exiting with metrics not stored: {exc}")


# -- module-level helpers ------------------------------------------------------------------------------------
def _active() -> Run:
    run = active_run()
    if run is None and _INHERITED is not None:
        raise orphan_error(_INHERITED)
    if run is None:
        raise UsageError("no active run: call modelyard.start_run(...) first (or use a Client's run)")
    return run


def start_run(
    experiment: str | None = None,
    *,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, object] | None = None,
    nested: bool = False,
    run_id: str | None = None,
    capture: bool = True,
) -> Run:
    """Start a run with the client of the active run, or a new ``Client()`` from settings (closed again when
    its last run ends)."""
    client = _CURRENT.get()
    if client is not None and client._closed:  # closed from another thread or context since
        client = None
    owned = client is None
    if client is None:
        client = Client()
        client._close_when_idle = True
    try:
        return client.start_run(
            experiment, name=name, params=params, tags=tags, nested=nested, run_id=run_id, capture=capture
        )
    except BaseException:
        if owned:
            client.close()
        raise


def end_run(status: str = "FINISHED") -> None:
    _active().end(status)


def active_run() -> Run | None:
    client = _CURRENT.get()
    return client.active_run() if client is not None else None


def log_param(key: str, value: object) -> None:
    _active().log_param(key, value)


def log_params(params: Mapping[str, object]) -> None:
    _active().log_params(params)


def log_metric(key: str, value: float, step: int = 0, timestamp: int | None = None) -> None:
    _active().log_metric(key, value, step, timestamp)


def log_metrics(metrics: Mapping[str, float], step: int = 0, timestamp: int | None = None) -> None:
    _active().log_metrics(metrics, step, timestamp)


def set_tag(key: str, value: object) -> None:
    _active().set_tag(key, value)


def set_tags(tags: Mapping[str, object]) -> None:
    _active().set_tags(tags)


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> list[str]:
    return _active().log_artifact(path, artifact_path)


def log_dict(data: Mapping[str, Any] | Sequence[Any], name: str) -> str:
    return _active().log_dict(data, name)


def log_figure(figure: Any, name: str) -> str:
    return _active().log_figure(figure, name)


def flush() -> None:
    """Block until every metric logged so far is committed: the active run's and those of the other runs
    its client has open (the parent of a nested run, ...)."""
    _active().client.flush()
