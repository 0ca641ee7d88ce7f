"""Bad input gets a clear error and changes nothing; tenants and roles are enforced."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.core import Platform, Role, add_user, create_project, create_token
from modelyard.core._models import AuditRecord, Run, RunMetric, RunParam, RunTag
from modelyard.errors import BackendError, NotFoundError, PermissionDeniedError, UsageError, ValidationError
from modelyard.tracking import Client
from modelyard.tracking import Run as LiveRun


def _counts(platform: Platform) -> tuple[int, ...]:
    with platform.db.read() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) or 0 for m in (Run, RunParam, RunTag, RunMetric)
        )


@pytest.fixture
def run(client: Client) -> Iterator[LiveRun]:
    with client.start_run("v", capture=False) as r:
        yield r


HOSTILE_KEYS = [
    "",
    "k" * 251,
    "../etc/passwd",
    "/abs",
    "a\x00b",
    "a;DROP TABLE runs",
    "a'b",
    "ключ",
    " padded ",
    "a\nb",
    "a#b",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused_everywhere(client: Client, run: LiveRun, key: str) -> None:
    before = _counts(client.platform)
    with pytest.raises(ValidationError, match="not valid"):
        run.log_metric(key, 1.0)
    with pytest.raises(ValidationError, match="not valid"):
        run.log_metrics({"ok": 1.0, key: 2.0})  # all or nothing
    with pytest.raises(ValidationError, match="not valid"):
        run.set_tag(key, "v")
    with pytest.raises(ValidationError, match="not valid"):
        run.log_param(key, "v")
    run.flush()
    assert _counts(client.platform) == before
    assert run.buffered == 0


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1.0", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        ([1], "must be a number"),
        (10**400, "does not fit in a float"),
    ],
)
def test_bad_metric_values(run: LiveRun, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        run.log_metric("x", value)  # type: ignore[arg-type]
    assert run.buffered == 0


@pytest.mark.parametrize(
    ("step", "match"), [(1.5, "integer"), ("3", "integer"), (True, "bool"), (2**64, "64 bits")]
)
def test_bad_steps(run: LiveRun, step: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        run.log_metric("x", 1.0, step=step)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=match):
        run.log_metrics({"x": 1.0}, step=step)  # type: ignore[arg-type]


@pytest.mark.parametrize("ts", [-1, 1.5, "now", 2**60])
def test_bad_timestamps(run: LiveRun, ts: object) -> None:
    with pytest.raises(ValidationError, match="timestamp"):
        run.log_metric("x", 1.0, timestamp=ts)  # type: ignore[arg-type]


def test_numpy_numbers_are_accepted(run: LiveRun) -> None:
    np = pytest.importorskip("numpy")
    run.log_metric("x", np.float32(0.5), step=np.int64(3))
    run.log_metrics({"y": np.float64(1.0)}, step=np.int32(1))
    run.flush()


def test_any_real_number_float_can_convert_is_accepted(client: Client, run: LiveRun) -> None:
    from decimal import Decimal
    from fractions import Fraction

    run.log_metric("dec", Decimal("0.5"))
    run.log_metrics({"frac": Fraction(1, 4), "dnan": Decimal("NaN")})
    run.flush()
    assert client.get_run(run.id).metrics == {"dec": 0.5, "frac": 0.25, "dnan": None}
    for value, match in [(Decimal("Infinity"), "finite"), (Decimal("sNaN"), "signaling NaN")]:
        with pytest.raises(ValidationError, match=match):
            run.log_metric("x", value)
    np = pytest.importorskip("numpy")
    with pytest.raises(ValidationError, match="must be a number, got bool"):
        run.log_metric("x", np.bool_(True))  # a bool stays refused, numpy's too
    assert run.buffered == 0


def test_bad_params_tags_and_names(client: Client, run: LiveRun) -> None:
    before = _counts(client.platform)
    with pytest.raises(ValidationError, match="at most 6000"):
        run.log_param("big", "x" * 6001)
    with pytest.raises(ValidationError, match="NUL"):
        run.set_tag("t", "a\x00b")
    with pytest.raises(ValidationError, match="bytes"):
        run.set_tag("t", b"raw")
    with pytest.raises(ValidationError, match="mapping"):
        run.log_params(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="experiment name"):
        client.start_run("../x", nested=True)
    with pytest.raises(ValidationError, match="experiment name"):
        client.start_run("", nested=True)
    with pytest.raises(ValidationError, match="cannot be written as text"):
        run.log_param("huge", 10**5000)
    # A lone surrogate (an undecodable byte of a file name) is not UTF-8: a raw UnicodeEncodeError before.
    with pytest.raises(ValidationError, match="not valid Unicode"):
        run.log_param("data", "caf\udce9.csv")
    with pytest.raises(ValidationError, match="not valid Unicode"):
        client.start_run("v", tags={"src": "\ud800"}, nested=True)
    for name in ("a\x00b", "two\nlines"):  # PostgreSQL refused the NUL with a raw DataError
        with pytest.raises(ValidationError, match="printable"):
            client.start_run("v", name=name, nested=True)
    assert _counts(client.platform) == before


def test_bad_artifacts_are_clear_errors(run: LiveRun, tmp_path: Path) -> None:
    """helper-24: each of these raised a raw library error."""
    with pytest.raises(ValidationError, match="not YAML-serialisable"):
        run.log_dict({"a": object()}, "c.yaml")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with pytest.raises(ValidationError, match=r"cannot write \.exe"):
        run.log_figure(Figure(), "plot.exe")
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(UsageError, match="artifact_path must be a string"):
        run.log_artifact(src, artifact_path=5)  # type: ignore[arg-type]
    assert run.log_figure(Figure(), "plot.SVG")  # the suffix's case does not matter


def test_unknown_and_malformed_run_ids(client: Client) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        client.get_run("0" * 32)
    for bad in ("x", "../" * 11, "0" * 31, 42):
        with pytest.raises(UsageError, match="not a run id"):
            client.get_run(bad)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        client.start_run(run_id="f" * 32)
    with pytest.raises(NotFoundError):
        client.delete_run("f" * 32)
    with pytest.raises(UsageError, match="final status"):
        client.start_run("x", capture=False).end("DONE")
    client.close()


def test_another_projects_run_reads_as_not_found(platform: Platform, client: Client) -> None:
    with client.start_run("mine", capture=False) as mine:
        mine.log_metric("x", 1.0)
    create_project(platform, client.ctx, "other")
    other = Client(platform=platform, project="other")
    try:
        for call in (
            lambda: other.get_run(mine.id),
            lambda: other.metric_history(mine.id),
            lambda: other.start_run(run_id=mine.id),
            lambda: other.delete_run(mine.id),
            lambda: other.list_artifacts(mine.id),
        ):
            with pytest.raises(NotFoundError):
                call()
        assert other.search_runs() == []
    finally:
        other.close()
    assert client.get_run(mine.id).status == "FINISHED"


def test_viewer_reads_but_cannot_write(platform: Platform, client: Client) -> None:
    with client.start_run("roles", capture=False) as run:
        run.log_metric("x", 1.0)
    add_user(platform, client.ctx, "vera", Role.VIEWER)
    _, viewer_token = create_token(platform, client.ctx, "vera")
    add_user(platform, client.ctx, "sam", Role.SCIENTIST)
    _, scientist_token = create_token(platform, client.ctx, "sam")
    before = _counts(platform)
    with Client(platform=platform, token=viewer_token) as viewer:
        assert viewer.ctx.user == "vera"
        assert viewer.get_run(run.id).metrics == {"x": 1.0}
        with pytest.raises(PermissionDeniedError, match=r"run\.write"):
            viewer.start_run("roles", capture=False)
        with pytest.raises(PermissionDeniedError, match=r"run\.write"):
            viewer.start_run(run_id=run.id)
        with pytest.raises(PermissionDeniedError, match=r"run\.delete"):
            viewer.delete_run(run.id)
    with (
        Client(platform=platform, token=scientist_token) as scientist,
        pytest.raises(PermissionDeniedError, match=r"run\.delete"),
    ):
        scientist.delete_run(run.id)
    assert _counts(platform) == before
    with platform.db.read() as s:
        denied = s.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.outcome == "denied")
        )
    assert denied == 4


def test_a_lowered_role_or_a_revoked_token_stops_a_client_that_is_already_open(
    platform: Platform, client: Client
) -> None:
    """The role is resolved once, when the client opens: it kept logging metrics, params, tags and
    artifacts after its user became a viewer and its token was revoked (helper-24)."""
    from modelyard.core._identity import revoke_token, set_role

    add_user(platform, client.ctx, "sam", Role.SCIENTIST)
    info, token = create_token(platform, client.ctx, "sam")
    sam = Client(platform=platform, token=token)
    run = sam.start_run("revoke", capture=False)
    run.log_metric("before", 1.0)
    run.flush()
    set_role(platform, client.ctx, "sam", Role.VIEWER)
    with pytest.raises(PermissionDeniedError, match="now viewer"):
        run.log_param("p", "x")
    with pytest.raises(PermissionDeniedError, match="now viewer"):
        run.set_tag("t", "x")
    run.log_metric("after", 2.0)
    with pytest.raises(BackendError, match=r"metric writing stopped.*now viewer"):
        run.flush(timeout=10)  # the writer gave up: retrying cannot help
    set_role(platform, client.ctx, "sam", Role.SCIENTIST)
    revoke_token(platform, client.ctx, info.id)
    with pytest.raises(PermissionDeniedError, match="was revoked"):
        run.log_dict({"a": 1}, "a.json")
    stored = client.get_run(run.id)
    assert (stored.metrics, stored.params, stored.tags) == ({"before": 1.0}, {}, {})
    assert client.list_artifacts(run.id) == []
    with platform.db.read() as s:
        denied = s.scalars(select(AuditRecord.detail).where(AuditRecord.outcome == "denied")).all()
    assert len(denied) == 4  # the param, the tag, the metric batch, the artifact
    with pytest.raises(PermissionDeniedError):
        run.end()
    sam.close()


def test_logging_to_an_ended_run_is_an_error(client: Client) -> None:
    with client.start_run("ended", capture=False) as run:
        pass
    with pytest.raises(UsageError, match="has ended"):
        run.log_metric("x", 1.0)
    with pytest.raises(UsageError, match="has ended"):
        run.log_metrics({"x": 1.0})
    assert client.active_run() is None


def test_arguments_of_the_wrong_type_are_usage_errors(client: Client, run: LiveRun) -> None:
    """Each of these raised a raw TypeError ('int' object is not iterable, unsupported operand ...)."""
    calls = [
        lambda: client.metric_history(run.id, 5),  # type: ignore[arg-type]
        lambda: client.search_runs(5),  # type: ignore[arg-type]
        lambda: run.flush("5"),  # type: ignore[arg-type]
        lambda: run.flush(math.nan),
        lambda: client.flush(-1),
        lambda: run.log_artifact(None),  # type: ignore[arg-type]
        lambda: run.log_artifact(5),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(UsageError):
            call()
