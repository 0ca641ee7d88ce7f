"""Ending a run when the store fails, symlinks in artifacts, secrets in the command line and in refused
params, and heartbeats that do not depend on the writer host's clock."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from modelyard.core import Platform
from modelyard.core._models import AuditRecord, RunArtifact, RunParam
from modelyard.core._models import Run as RunRow
from modelyard.errors import BackendError, UnsafePathError, UsageError
from modelyard.testing import make_platform
from modelyard.tracking import Client, _store, _writer
from modelyard.tracking._system import redact_argv


# -- 1. an end that cannot be recorded ---------------------------------------------------------------------
def test_store_outage_during_end_keeps_the_run_open_and_retries(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = Platform(
        platform.settings.model_copy(
            update={
                "run_heartbeat_s": 0.05,
                "run_heartbeat_timeout_s": 1.0,
                "metric_flush_s": 0.05,
                "flush_timeout_s": 0.3,
            }
        )
    )
    client = Client(platform=fast)
    try:
        run = client.start_run("outage", capture=False)
        run.log_metric("loss", 1.0, step=0)
        run.flush()

        def down(*args: object, **kwargs: object) -> None:
            raise BackendError("store unavailable (simulated outage)")

        # Metric batches and the final status fail; heartbeats still get through.
        monkeypatch.setattr(_writer, "write_metric_batch", down)
        monkeypatch.setattr(_store, "end_run", down)
        run.log_metric("loss", 2.0, step=1)
        with pytest.raises(BackendError):
            run.end()
        assert run.status == "RUNNING"  # nothing was recorded, so the handle does not claim it
        assert client._active == {run.id: run}  # kept: a second end() or the exit retries it
        assert client.active_run() is None  # but it is no longer the run new metrics go to
        with pytest.raises(UsageError, match="is ending"):
            run.log_metric("loss", 3.0, step=2)
        # Once ending began its heartbeat stopped: had the process died, the reaper takes the run.
        deadline = time.monotonic() + 30
        while client.get_run(run.id).status == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get_run(run.id).status == "FAILED"

        monkeypatch.undo()  # the store is back: ending again records the status and the last point
        run.flush(timeout=30)  # the writer may be in its retry backoff (up to 2 s), longer than 0.3 s
        run.end()
        info = client.get_run(run.id)
        assert (info.status, info.metrics) == ("FINISHED", {"loss": 2.0})
        assert run.status == "FINISHED" and not client._active
        run._writer._thread.join(10)
        assert not run._writer.alive
    finally:
        client.close()
        fast.close()


# -- 3. symlinks in artifacts ----------------------------------------------------------------------------
@pytest.fixture
def outputs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY")
    out = tmp_path / "outputs"
    (out / "sub").mkdir(parents=True)
    (out / "model.txt").write_text("weights")
    (out / "sub" / "eval.txt").write_text("eval")
    yield out, secret


def _link_cases(out: Path, secret: Path) -> list[tuple[Path, Path]]:
    """(path to log, the link the error must name), one case per way a link can hide."""
    cases = []
    (out / "sub" / "leak.txt").symlink_to(secret)  # a file link deep inside
    cases.append((out, out / "sub" / "leak.txt"))
    other = out.parent / "other"
    other.mkdir()
    (other / "a.txt").write_text("a")
    (other / "linkdir").symlink_to(secret.parent, target_is_directory=True)  # a directory link inside
    cases.append((other, other / "linkdir"))
    top_file = out.parent / "top.txt"
    top_file.symlink_to(secret)  # the path given is itself a link to a file
    cases.append((top_file, top_file))
    top_dir = out.parent / "topdir"
    top_dir.symlink_to(out, target_is_directory=True)  # ... or to a directory
    cases.append((top_dir, top_dir))
    return cases


def test_symlinks_in_artifacts_are_refused_before_anything_is_stored(
    client: Client, outputs: tuple[Path, Path]
) -> None:
    out, secret = outputs
    art_root = client.platform.settings.home / "artifacts"
    before = sorted(p for p in art_root.rglob("*") if p.is_file()) if art_root.exists() else []
    with client.start_run("links", capture=False) as run:
        for path, link in _link_cases(out, secret):
            with pytest.raises(UnsafePathError, match="symbolic link") as err:
                run.log_artifact(path)
            assert str(link) in str(err.value)
    after = sorted(p for p in art_root.rglob("*") if p.is_file()) if art_root.exists() else []
    assert after == before  # nothing uploaded, not even the regular files next to the link
    with client.platform.db.read() as s:
        assert s.scalar(select(func.count()).select_from(RunArtifact)) == 0
        refused = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.resource == f"run:{run.id}", AuditRecord.outcome == "refused"
            )
        ).all()
    assert len(refused) == 4 and all("symbolic link" in d for d in refused)


def test_a_directory_without_links_is_still_logged(client: Client, outputs: tuple[Path, Path]) -> None:
    out, _ = outputs
    with client.start_run("nolinks", capture=False) as run:
        run.log_artifact(out, artifact_path="o")
        run.log_artifact(out / "model.txt")
    paths = [p for p, _, _ in client.list_artifacts(run.id)]
    assert paths == ["model.txt", "o/model.txt", "o/sub/eval.txt"]


# -- 4. secrets on the command line ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "cmd"),
    [
        (["train.py", "--hf-token", "hf_abc", "--lr", "1e-4"], "train.py --hf-token *** --lr 1e-4"),
        (["train.py", "--password=hunter2"], "train.py --password=***"),
        (["train.py", "--DB_PASSWD", "x y"], "train.py --DB_PASSWD ***"),
        (["train.py", "API_KEY=sk-1", "db.secret=s"], "train.py API_KEY=*** db.secret=***"),
        (["t.py", "--Authorization", "Bearer z", "--apikey=q"], "t.py --Authorization *** --apikey=***"),
        (["t.py", "--client-credential", "c", "--pwd", "p"], "t.py --client-credential *** --pwd ***"),
        (["t.py", "--use-auth", "--epochs", "3"], "t.py --use-auth --epochs 3"),  # a flag: no value
        (["t.py", "--db", "postgresql://u:pw@h/d"], "t.py --db 'postgresql://u:***@h/d'"),
        (["t.py", "postgresql://u:p@ss@h/d?x=a@b"], "t.py 'postgresql://u:***@h/d?x=a@b'"),  # raw "@" in it
        # SQLAlchemy takes '/' and '#' in a password, urllib '@'; the user may be empty: all were shown
        (["t.py", "--db", "postgresql://u:p/w#x@h/d"], "t.py --db 'postgresql://u:***@h/d'"),
        (["t.py", "--db", "postgresql://u:p@ss@h/d"], "t.py --db 'postgresql://u:***@h/d'"),
        (["t.py", "redis://:pw@h/0"], "t.py 'redis://:***@h/0'"),
        (
            ["t.py", "--db", "postgresql://u@h/d?password=pw&sslmode=require"],
            "t.py --db 'postgresql://u@h/d?password=***&sslmode=require'",
        ),
        (
            ["t.py", "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&v=1"],
            "t.py 'https://b.s3.amazonaws.com/k?X-Amz-Signature=***&v=1'",
        ),
        (["t.py", "--name", "a b", "--token"], "t.py --name 'a b' --token"),
        # recognisable wherever they are: a yard token's secret (its id stays), an Authorization value
        (["t.py", "yard_0123456789ab_s3cr-et_x"], "t.py 'yard_0123456789ab_***'"),
        (["t.py", "-H", "Authorization: Bearer abc.def"], "t.py -H 'Authorization: Bearer ***'"),
        (["t.py", "--passphrase", "x", "--db-pass=y"], "t.py --passphrase *** --db-pass=***"),
        (["t.py", "--passes", "3", "--compass", "n"], "t.py --passes 3 --compass n"),  # not secrets
        # names that merely contain a secret word's letters: ML options whose values a run should show
        (
            ["t.py", "--tokenizer", "t5-small", "--max_tokens", "512", "--author", "a", "--monkey=1"],
            "t.py --tokenizer t5-small --max_tokens 512 --author a --monkey=1",
        ),
        (["t.py", "--accessToken", "t", "CLIENTSECRET=s"], "t.py --accessToken *** CLIENTSECRET=***"),
        (
            ["t.py", "--openaikey", "sk-1", "WANDBKEY=z", "--monkey", "m"],
            "t.py --openaikey *** WANDBKEY=*** --monkey m",
        ),
        # Hydra overrides that add a key (+k=v, ++k=v), and a NAME=value given inline to an innocent
        # option (--env=HF_TOKEN=..., --set=db.password=...): all were stored as they were
        (
            ["t.py", "+wandb.api_key=k1", "++trainer.hf_token=k2", "+lr=0.1"],
            "t.py +wandb.api_key=*** ++trainer.hf_token=*** +lr=0.1",
        ),
        (
            ["t.py", "--env=HF_TOKEN=k3", "--set=db.password=k4", "--set=lr=0.1"],
            "t.py --env=HF_TOKEN=*** --set=db.password=*** --set=lr=0.1",
        ),
        # JSON given as an argument: its secret-named keys, at any depth (it was stored as it was)
        (
            ["t.py", "--hub-kwargs", '{"token": "hf_k5", "revision": "main"}', "--x", '[{"api_key": "k6"}]'],
            """t.py --hub-kwargs '{"token":"***","revision":"main"}' --x '[{"api_key":"***"}]'""",
        ),
        (["t.py", '{"lr": 0.1}', "{not json"], """t.py '{"lr": 0.1}' '{not json'"""),  # as it was
    ],
)
def test_secret_arguments_are_redacted(argv: list[str], cmd: str) -> None:
    assert redact_argv(argv) == cmd


def test_the_cmd_tag_holds_no_secret(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["train.py", "--hf-token", "hf_SECRET1", "--api-key=SECRET2", "WANDB_API_KEY=SECRET3", "--lr=1"]
    monkeypatch.setattr(sys, "argv", argv)
    with client.start_run("capture") as run:
        pass
    cmd = client.get_run(run.id).tags["cmd"]
    assert "SECRET" not in cmd
    assert cmd == "train.py --hf-token *** --api-key=*** WANDB_API_KEY=*** --lr=1"


def test_an_argument_that_is_not_utf8_does_not_stop_the_run(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python decodes the bytes of `train.py caf\xe9.csv` to a lone surrogate, which no store can hold:
    # every start_run with capture (the default) of such a command failed with a UnicodeEncodeError.
    monkeypatch.setattr(sys, "argv", ["train.py", b"caf\xe9.csv".decode("utf-8", "surrogateescape")])
    with client.start_run("capture") as run:
        pass
    assert client.get_run(run.id).tags["cmd"] == "train.py 'caf\\udce9.csv'"


# -- 6. a refused param change keeps the values out of the audit chain --------------------------------------
def test_a_refused_param_change_audits_the_key_but_not_the_values(client: Client) -> None:
    with client.start_run("params", capture=False) as run:
        run.log_param("hf_token", "OLD-SECRET-VALUE")
        with pytest.raises(UsageError, match="params cannot change") as err:
            run.log_param("hf_token", "NEW-SECRET-VALUE")
    assert "hf_token" in str(err.value) and "SECRET-VALUE" not in str(err.value)
    with client.platform.db.read() as s:
        records = s.execute(
            select(AuditRecord.outcome, AuditRecord.detail).where(AuditRecord.resource == f"run:{run.id}")
        ).all()
    refused = [d for o, d in records if o == "refused"]
    assert len(refused) == 1 and "hf_token" in refused[0]
    assert not any("SECRET-VALUE" in d for _, d in records)


# -- 5. heartbeats and the reaper use the database server's clock -------------------------------------------
@pytest.mark.postgres
def test_a_host_with_a_skewed_clock_is_not_reaped_and_reaps_correctly(
    postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_platform(home, database_url=postgres_url)
    try:
        p.settings = p.settings.model_copy(update={"run_heartbeat_timeout_s": 60.0})
        ctx = p.context()
        real = _store.utcnow
        # A writer host whose clock lags an hour creates a run and sends a heartbeat ...
        monkeypatch.setattr(_store, "utcnow", lambda: real() - timedelta(hours=1))
        alive = _store.create_run(p, ctx, "skew")
        _store.heartbeat(p, alive)
        monkeypatch.setattr(_store, "utcnow", real)
        # ... a host with a correct clock does not reap it: the heartbeat is fresh by the server's clock.
        assert _store.reap_stale_runs(p, ctx) == []
        # A run that really went silent two minutes ago (by the server's clock) ...
        dead = _store.create_run(p, ctx, "skew")
        with p.db.write() as s:
            ago = func.now() - timedelta(minutes=2)
            s.execute(update(RunRow).where(RunRow.id == dead).values(heartbeat_at=ago, stale_at=ago))
        # ... is reaped even by a host whose clock lags an hour.
        monkeypatch.setattr(_store, "utcnow", lambda: real() - timedelta(hours=1))
        assert _store.reap_stale_runs(p, ctx) == [dead]
        monkeypatch.setattr(_store, "utcnow", real)
        with p.db.read() as s:
            statuses = dict(s.execute(select(RunRow.id, RunRow.status)).all())
            beat = s.scalar(select(RunRow.heartbeat_at).where(RunRow.id == alive))
        assert statuses == {alive: "RUNNING", dead: "FAILED"}
        assert isinstance(beat, datetime) and abs(beat - real()) < timedelta(minutes=5)
    finally:
        p.close()


def test_sqlite_heartbeats_keep_the_local_utc_clock(platform: Platform) -> None:
    ctx = platform.context()
    run_id = _store.create_run(platform, ctx, "local")
    _store.heartbeat(platform, run_id)
    assert _store.reap_stale_runs(platform, ctx) == []  # fresh, compared in one consistent format
    with platform.db.write() as s:
        ago = _store.utcnow() - timedelta(hours=1)
        s.execute(update(RunRow).values(heartbeat_at=ago, stale_at=ago))
    assert _store.reap_stale_runs(platform, ctx) == [run_id]


def test_a_run_is_judged_by_its_own_processes_timeout_not_the_reapers(platform: Platform) -> None:
    """A process that raised YARD_RUN_HEARTBEAT_TIMEOUT_S for long pauses had its run reaped by any
    other command running with the default (helper-24); a run from before stale_at existed is judged by
    the reaper's timeout, as it was."""
    patient = Platform(platform.settings.model_copy(update={"run_heartbeat_timeout_s": 3600.0}))
    try:
        ctx = patient.context()
        slow = _store.create_run(patient, ctx, "patience")
        _store.heartbeat(patient, slow)
        old = _store.create_run(platform, ctx, "patience")
        with platform.db.write() as s:  # ten minutes silent: past the default 60 s, within the hour
            ago = _store.utcnow() - timedelta(minutes=10)
            s.execute(update(RunRow).values(heartbeat_at=ago))
            s.execute(update(RunRow).where(RunRow.id == old).values(stale_at=None))
        assert _store.reap_stale_runs(platform, ctx) == [old]
        with platform.db.read() as s:
            assert s.scalar(select(RunRow.status).where(RunRow.id == slow)) == "RUNNING"
    finally:
        patient.close()


def test_a_timeout_shorter_than_the_heartbeat_interval_does_not_reap_live_runs(platform: Platform) -> None:
    """YARD_RUN_HEARTBEAT_TIMEOUT_S=5 (to notice crashes sooner) with the default 10 s heartbeat made every
    live run stale between two beats, so any reaper (its own get_run included) marked it FAILED while it
    trained. The writer now beats at least three times per timeout."""
    settings = {"run_heartbeat_s": 600.0, "run_heartbeat_timeout_s": 1.5, "system_metrics_s": 0.0}
    quick = Platform(platform.settings.model_copy(update=settings))
    try:
        with Client(platform=quick) as client, client.start_run("beats", capture=False) as run:
            with quick.db.read() as s:
                first = s.scalar(select(RunRow.heartbeat_at).where(RunRow.id == run.id))
            beat = first
            for _ in range(200):  # a beat is due within 0.5 s; give a loaded machine 10 s
                time.sleep(0.05)
                with quick.db.read() as s:
                    beat = s.scalar(select(RunRow.heartbeat_at).where(RunRow.id == run.id))
                if beat != first:
                    break
            assert beat != first, "no heartbeat within 10 s"
    finally:
        quick.close()


# -- an exception message that no store can hold as it is -------------------------------------------------
def test_a_run_failing_with_a_nul_or_bad_byte_in_its_reason_still_ends(any_platform: Platform) -> None:
    # Python turns undecodable bytes of a file name into lone surrogates; a message may hold a NUL.
    # Neither can be stored (not UTF-8; PostgreSQL refuses NUL): the end failed and the run stayed RUNNING.
    client = Client(platform=any_platform)
    name = "/nonexistent/caf\udce9.csv"  # what b"caf\xe9.csv" from a latin-1 disk decodes to
    try:
        with pytest.raises(FileNotFoundError), client.start_run("reasons", capture=False) as run:
            Path(name).read_bytes()
        info = client.get_run(run.id)
        assert info.status == "FAILED"
        assert info.reason is not None and info.reason.endswith("'/nonexistent/caf\\udce9.csv'")
        with pytest.raises(ValueError), client.start_run("reasons", capture=False) as run:
            raise ValueError("a\x00b")
        assert client.get_run(run.id).status == "FAILED"
        assert client.get_run(run.id).reason == "ValueError: a\\x00b"
        with pytest.raises(UsageError, match="reason must be a string"):
            _store.end_run(any_platform, client.ctx, run.id, "FAILED", 5)  # type: ignore[arg-type]
    finally:
        client.close()


def test_the_current_directory_is_logged_under_its_name(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path('.').name is '' (and Path('out/..').name is '..'): log_artifact('.') built '/a.txt' and was
    # refused as "an absolute path", and 'out/..' as a '..' segment, for a plain directory.
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("a")
    monkeypatch.chdir(out)
    with client.start_run("cwd", capture=False) as run:
        run.log_artifact(".")
        assert [p for p, _, _ in client.list_artifacts(run.id)] == ["out/a.txt"]
        (out / "sub" / "b.txt").write_text("b")
        run.log_artifact("sub/..")
    assert [p for p, _, _ in client.list_artifacts(run.id)] == ["out/a.txt", "out/sub/b.txt"]


def test_two_files_with_one_normalised_name_are_refused(any_platform: Platform, tmp_path: Path) -> None:
    # Artifact names are stored in Unicode NFC, so 'café.txt' written composed and decomposed (two files
    # on Linux) became one name: PostgreSQL failed with a raw CardinalityViolation, SQLite kept one file.
    import unicodedata

    out = tmp_path / "out"
    out.mkdir()
    for form, text in (("NFC", "composed"), ("NFD", "decomposed")):
        (out / unicodedata.normalize(form, "café.txt")).write_text(text)
    if len(list(out.iterdir())) != 2:
        pytest.skip("this filesystem normalises file names itself")
    with (
        Client(platform=any_platform) as client,
        client.start_run("nfc", capture=False) as run,
        pytest.raises(UsageError, match="same artifact name"),
    ):
        run.log_artifact(out)
    assert client.list_artifacts(run.id) == []


def test_params_past_the_drivers_bind_limits_in_one_call(any_platform: Platform) -> None:
    """The check that no param changed read every key back in one IN list: 40,000 params in one log_params
    passed SQLite's 32,766 bound variables (and 70,000 PostgreSQL's 65,535) and the call failed."""
    params = {f"p{i}": str(i) for i in range(40_000 if any_platform.db.dialect == "sqlite" else 70_000)}
    with Client(any_platform) as client, client.start_run("wide", capture=False) as run:
        run.log_params(params)
        run.log_params(params)  # the same again is no change
        with pytest.raises(UsageError, match=r"'p7' of run .* already has a different value"):
            run.log_params({"p7": "changed"})
    with any_platform.db.read() as s:
        stored = select(func.count()).select_from(RunParam).where(RunParam.run_id == run.id)
        assert s.scalar(stored) == len(params)


def test_a_run_does_not_log_modelyards_own_files(client: Client, tmp_path: Path) -> None:
    """log_artifact(".") from the folder holding the home stored the master key and the database as the
    run's artifacts, for every viewer of the project (`yard artifacts put` and `data add` refused them)."""
    home = client.platform.settings.home
    mine = home.parent / "notes.txt"
    mine.write_text("mine")
    with client.start_run("own", capture=False) as run:
        for target in (
            home.parent,
            home,
            home / "keys",
            client.platform.settings.resolved_key_file,
            home / "yard.db",
        ):
            with pytest.raises(UsageError, match="modelyard's own"):
                run.log_artifact(target)
        assert run.log_artifact(mine)  # the user's own files still go in
    assert [a[0] for a in client.list_artifacts(run.id)] == ["notes.txt"]
