"""A store outage mid-run: a real TCP proxy in front of PostgreSQL is closed and reopened."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from modelyard.core import Platform
from modelyard.core._models import RunMetric
from modelyard.errors import BackendError
from modelyard.testing import make_platform
from modelyard.tracking import Client, MetricWriterWarning, _writer

WORKER = Path(__file__).with_name("worker.py")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Proxy:
    """Forwards 127.0.0.1:<port> to a target; ``down()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        assert self._listener is not None
        # shutdown() wakes the accept() blocked in the kernel; close() alone would leave it listening.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def proxied(postgres_url: str, home: Path) -> Iterator[tuple[Platform, Proxy, Platform]]:
    """(platform through the proxy, the proxy, platform straight to the database)."""
    direct = make_platform(home, database_url=postgres_url)
    url = make_url(postgres_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # A short heartbeat and flush so the outage is felt at once.
    settings = direct.settings.model_copy(
        update={"database_url": via, "metric_flush_s": 0.1, "run_heartbeat_s": 0.2, "flush_timeout_s": 1.0}
    )
    proxied_platform = Platform(settings)
    yield proxied_platform, proxy, direct
    proxied_platform.close()
    direct.close()


def test_outage_buffers_warns_and_loses_nothing(
    proxied: tuple[Platform, Proxy, Platform],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform, proxy, direct = proxied
    monkeypatch.setattr(_writer, "OUTAGE_WARN_S", 0.5)  # the 60 s tolerance, shortened
    caplog.set_level(logging.WARNING, logger="modelyard.tracking")
    with Client(platform=platform) as client:
        run = client.start_run("outage", capture=False)
        for i in range(1000):
            run.log_metric("loss", float(i), step=i)
        run.flush()
        proxy.down()
        with pytest.warns(MetricWriterWarning, match=f"run {run.id} cannot reach the metadata store"):
            for i in range(1000, 3000):  # logging keeps returning while the store is away
                run.log_metric("loss", float(i), step=i)
            deadline = time.monotonic() + 20
            while "cannot reach the metadata store" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        assert f"run {run.id} cannot reach the metadata store" in caplog.text
        assert "buffered in memory" in caplog.text and "none is dropped" in caplog.text
        with pytest.raises(BackendError, match="not yet durable"):
            run.flush(timeout=0.5)  # a clear error; the points stay buffered
        assert run.buffered == 2000
        proxy.up()
        run.flush(timeout=30)
        assert run.buffered == 0
        run.end()
    with direct.db.read() as s:
        steps = s.scalars(select(RunMetric.step).where(RunMetric.run_id == run.id)).all()
        assert s.scalar(select(func.count()).select_from(RunMetric)) == 3000
    assert sorted(steps) == list(range(3000))  # every acknowledged point, each once


def test_the_heartbeat_is_sent_again_as_soon_as_the_store_is_back(
    proxied: tuple[Platform, Proxy, Platform],
) -> None:
    """An outage near the heartbeat timeout left the run's next beat up to run_heartbeat_s after the store
    came back, and any reaper in between marked the live run FAILED for the rest of its training. The
    first batch that commits after an outage is now followed by a beat at once."""
    from modelyard.core._models import Run as RunRow

    via, proxy, direct = proxied
    quiet = {"run_heartbeat_s": 600.0, "run_heartbeat_timeout_s": 3600.0}
    platform = Platform(via.settings.model_copy(update=quiet))

    def beat_at(run_id: str) -> object:
        with direct.db.read() as s:
            return s.scalar(select(RunRow.heartbeat_at).where(RunRow.id == run_id))

    try:
        with Client(platform=platform) as client, client.start_run("beat", capture=False) as run:
            first = beat_at(run.id)
            proxy.down()
            run.log_metric("loss", 1.0)
            deadline = time.monotonic() + 20
            while run._writer.last_error is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert run._writer.last_error is not None  # the writer saw the outage
            proxy.up()
            run.flush(timeout=30)
            deadline = time.monotonic() + 20
            while beat_at(run.id) == first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert beat_at(run.id) != first
    finally:
        platform.close()


def test_warnings_turned_into_errors_do_not_stop_the_writer(
    proxied: tuple[Platform, Proxy, Platform],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under `-W error` (or pytest's filterwarnings = error) the outage warning raised inside the writer
    thread and killed it: every point logged after that was accepted and never written, and flush() said
    "metric writing stopped"."""
    import warnings

    platform, proxy, direct = proxied
    monkeypatch.setattr(_writer, "OUTAGE_WARN_S", 0.2)
    caplog.set_level(logging.WARNING, logger="modelyard.tracking")
    with Client(platform=platform) as client, warnings.catch_warnings():
        warnings.simplefilter("error", MetricWriterWarning)
        run = client.start_run("strict", capture=False)
        proxy.down()
        run.log_metric("loss", 1.0, step=0)
        deadline = time.monotonic() + 20
        while "cannot reach the metadata store" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "cannot reach the metadata store" in caplog.text
        run.log_metric("loss", 0.5, step=1)
        proxy.up()
        run.flush(timeout=30)
        run.end()
    with direct.db.read() as s:
        steps = s.scalars(select(RunMetric.step).where(RunMetric.run_id == run.id)).all()
    assert sorted(steps) == [0, 1]


def test_the_exit_waits_for_the_store_once_for_all_open_runs(
    proxied: tuple[Platform, Proxy, Platform],
) -> None:
    # Each open run's flush at exit waited flush_timeout_s on its own: N runs kept a process whose store
    # was down alive for N timeouts. One deadline, flush_timeout_s from the exit, now covers them all.
    platform, proxy, _ = proxied
    timeout, count = 2.0, 4
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(
        YARD_HOME=str(platform.settings.home),
        YARD_DATABASE_URL=str(platform.settings.database_url),
        YARD_FLUSH_TIMEOUT_S=str(timeout),
        YARD_METRIC_FLUSH_S="600",  # the points stay buffered until the exit flushes them
        YARD_SYSTEM_METRICS_S="0",
    )
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "open_runs", str(count)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().startswith("ready "), proc.stderr.read() if proc.stderr else ""
        proxy.down()
        out, err = proc.communicate("exit\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    took = float(out.rsplit("exit hooks took ", 1)[1])
    assert timeout <= took < 2 * timeout, err  # about one timeout, not count of them
    assert err.count("could not end run") == count, err  # each run still said why, store down
