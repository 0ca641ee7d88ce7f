"""Users, projects and API tokens: random, shown once, stored hashed, expiring, revocable."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard.core import (
    Platform,
    Role,
    add_user,
    create_project,
    create_token,
    list_projects,
    list_tokens,
    list_users,
    parse_duration,
    revoke_token,
    set_role,
)
from modelyard.core._models import Token
from modelyard.errors import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    ResidencyError,
    UsageError,
)


def test_local_mode_os_user_is_admin_of_their_home(platform: Platform) -> None:
    ctx = platform.context()
    assert ctx.role is Role.ADMIN and ctx.project == "default" and ctx.via == "local"


def test_token_is_random_shown_once_and_stored_hashed(platform: Platform) -> None:
    admin = platform.context()
    add_user(platform, admin, "alice", Role.SCIENTIST)
    info1, token1 = create_token(platform, admin, "alice")
    _, token2 = create_token(platform, admin, "alice")
    assert token1 != token2 and token1.startswith(f"yard_{info1.id}_")
    secret = token1.split("_", 2)[2]
    with platform.db.read() as s:
        row = s.get(Token, info1.id)
        assert row is not None
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    db_files = Path(str(platform.db.engine.url.database)).parent.glob("yard.db*")  # with -wal and -shm
    assert all(secret.encode() not in f.read_bytes() for f in db_files)
    ctx = platform.context(token=token1)
    assert (ctx.user, ctx.role, ctx.via) == ("alice", Role.SCIENTIST, f"token:{info1.id}")


def test_revoked_token_is_refused(platform: Platform) -> None:
    admin = platform.context()
    add_user(platform, admin, "alice", Role.VIEWER)
    info, token = create_token(platform, admin, "alice")
    revoke_token(platform, admin, info.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        platform.context(token=token)
    assert [t.active for t in list_tokens(platform, admin)] == [False]


def test_a_token_revoked_by_its_whole_string_keeps_its_secret_out_of_the_audit(platform: Platform) -> None:
    import json

    from modelyard.core import list_records

    admin = platform.context()
    add_user(platform, admin, "alice", Role.VIEWER)
    info, token = create_token(platform, admin, "alice")
    secret = token.split("_", 2)[2]
    # Neither an id nor a whole token (a copy missing its prefix, cut short): refused, not echoed, nothing
    # revoked.
    for bad in (f"{info.id}_{secret}", f"yard_{info.id}", f"{info.id} {secret}"):
        with pytest.raises(UsageError, match="expected a token id") as exc:
            revoke_token(platform, admin, bad)
        assert secret[:8] not in exc.value.message
    assert platform.context(token=token).user == "alice"
    revoked = revoke_token(platform, admin, token)  # the whole token: its holder may have only that
    assert revoked.id == info.id and revoked.revoked_at is not None
    with pytest.raises(AuthenticationError, match="revoked"):
        platform.context(token=token)
    records = json.dumps(list_records(platform, admin), default=str)
    assert secret not in records and secret[:8] not in records
    assert f"token:{info.id}" in records


def test_expired_token_is_refused(platform: Platform) -> None:
    admin = platform.context()
    add_user(platform, admin, "alice", Role.VIEWER)
    _, token = create_token(platform, admin, "alice", expires_in=timedelta(microseconds=1))
    with pytest.raises(AuthenticationError, match="expired"):
        platform.context(token=token)


@pytest.mark.parametrize("token", ["", "garbage", "yard_", "yard_abc", "yard_abc_def", "Bearer x"])
def test_malformed_or_unknown_tokens_are_refused(platform: Platform, token: str) -> None:
    with pytest.raises(AuthenticationError):
        platform.context(token=token or "x")


def test_tampered_secret_is_refused(platform: Platform) -> None:
    admin = platform.context()
    _, token = create_token(platform, admin, admin.user)
    with pytest.raises(AuthenticationError, match="unknown"):
        platform.context(token=token[:-2] + ("aa" if not token.endswith("aa") else "bb"))


def test_token_from_settings_env(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = platform.context()
    add_user(platform, admin, "alice", Role.ENGINEER)
    _, token = create_token(platform, admin, "alice")
    monkeypatch.setenv("YARD_TOKEN", token)
    with Platform() as p:
        assert p.context().user == "alice"


def test_token_is_bound_to_its_project(platform: Platform) -> None:
    admin = platform.context()
    create_project(platform, admin, "acme")
    acme = platform.context(project="acme")
    _, token = create_token(platform, acme, admin.user)
    assert platform.context(token=token).project == "acme"
    with pytest.raises(UsageError, match="acme"):  # an explicit other project is an error, not ignored
        platform.context(token=token, project="default")


def test_users_add_ls_set_role(platform: Platform) -> None:
    admin = platform.context()
    add_user(platform, admin, "bob", "scientist")
    with pytest.raises(AlreadyExistsError):
        add_user(platform, admin, "bob", "viewer")
    set_role(platform, admin, "bob", "approver")
    assert {(m.user, m.role) for m in list_users(platform, admin)} == {
        (admin.user, Role.ADMIN),
        ("bob", Role.APPROVER),
    }
    with pytest.raises(UsageError, match="unknown role"):
        add_user(platform, admin, "carol", "superuser")
    with pytest.raises(UsageError):
        add_user(platform, admin, "../carol", "viewer")
    with pytest.raises(NotFoundError):
        set_role(platform, admin, "nobody", "viewer")
    with pytest.raises(UsageError, match="own role"):
        set_role(platform, admin, admin.user, "viewer")


def test_os_user_without_account(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modelyard.core._platform.os_user", lambda: "stranger")
    with pytest.raises(AuthenticationError, match="yard users add stranger"):
        platform.context()


def test_a_uid_without_a_passwd_entry_is_not_whoever_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Containers run with --user N often have no passwd entry: local mode must not fall back to $USER
    (helper-25 acted as the installation's admin that way)."""
    import pwd

    from modelyard.core._platform import os_user

    def missing(uid: int) -> object:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", missing)
    monkeypatch.setenv("USER", "root")
    monkeypatch.setenv("LOGNAME", "root")
    assert os_user() == f"uid-{os.geteuid()}"


def test_projects_carry_the_installation_region(home: Path) -> None:
    from modelyard.testing import make_platform

    p = make_platform(home, region="me-central-1")
    admin = p.context()
    assert admin.region == "me-central-1"
    with pytest.raises(ResidencyError, match="me-central-1"):
        create_project(p, admin, "eu-team", region="eu-west-1")
    for bad in ("x y", "EU-WEST-1", 3):  # malformed: said as such, not as another region
        with pytest.raises(UsageError, match="must be lower-case letters, digits and '-'"):
            create_project(p, admin, "eu-team", region=bad)  # type: ignore[arg-type]
    proj = create_project(p, admin, "uae-team")
    assert proj.region == "me-central-1"
    assert [proj.name for proj, _ in list_projects(p, admin)] == ["default", "uae-team"]
    p.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)), ("never", None)],
)
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "30", "d30", "-1d", "1y", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_opening_an_uninitialised_home_creates_nothing(home: Path) -> None:
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match="yard init"):
        Platform()
    assert not home.exists()


def test_init_on_an_existing_home_grants_nothing(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.core import init_home
    from modelyard.core._models import Membership, Project, User
    from modelyard.errors import AuthenticationError

    def counts() -> tuple[int, int, int]:
        with platform.db.read() as s:
            return tuple(len(s.scalars(select(t)).all()) for t in (User, Project, Membership))  # type: ignore[return-value]

    before = counts()
    monkeypatch.setattr("modelyard.core._home.os_user", lambda: "mallory")
    monkeypatch.setattr("modelyard.core._platform.os_user", lambda: "mallory")
    report = init_home(platform.settings.model_copy(update={"project": "mallory-land"}))
    assert report.created == []
    assert counts() == before
    with pytest.raises(AuthenticationError):
        platform.context()


@pytest.mark.parametrize("text", ["99999999999d", "999999999d", "100000000w", "36526d"])
def test_parse_duration_bounds(text: str) -> None:
    with pytest.raises(UsageError, match="100 years"):
        parse_duration(text)


def test_refused_logins_of_known_tokens_are_audited_at_most_once_a_minute(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked, expired or wrong-secret token of a known id is audited ("auth", denied, with the reason
    and never the secret), once per token and reason a minute so retries cannot flood the log; an unknown
    id has nobody to attribute it to and is not audited."""
    from modelyard.core import _platform, list_records, verify_chain

    admin = platform.context()
    add_user(platform, admin, "alice", Role.VIEWER)
    revoked, token = create_token(platform, admin, "alice")
    revoke_token(platform, admin, revoked.id)
    expired, old = create_token(platform, admin, "alice", expires_in=timedelta(microseconds=1))
    live, good = create_token(platform, admin, "alice")
    wrong = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    for attempt in [token, token, token, old, old, wrong, wrong, "yard_nosuchid_x", "garbage"]:
        with pytest.raises(AuthenticationError):
            platform.context(token=attempt)

    def refused() -> list[tuple[str, str, str, str]]:
        return [
            (r["actor"], r["resource"], r["outcome"], r["detail"]["reason"])
            for r in list_records(platform, admin)
            if r["action"] == "auth"
        ]

    assert refused() == [
        ("alice", f"token:{revoked.id}", "denied", "revoked"),
        ("alice", f"token:{expired.id}", "denied", "expired"),
        ("unauthenticated", f"token:{live.id}", "denied", "wrong secret"),  # a guess, not alice
    ]
    owners = {r["detail"].get("owner") for r in list_records(platform, admin) if r["action"] == "auth"}
    assert owners == {"alice"}
    monkeypatch.setattr(_platform, "AUTH_AUDIT_EVERY_S", 0.0)  # only the rate limit held the others back
    with pytest.raises(AuthenticationError):
        platform.context(token=token)
    assert len(refused()) == 4
    records = str(list_records(platform, admin))
    assert wrong.split("_", 2)[2] not in records and good.split("_", 2)[2] not in records
    assert platform.context(token=good).user == "alice"  # the live token still works
    assert verify_chain(platform, admin).ok


def test_removing_and_disabling_users_ends_their_access_and_is_audited(platform: Platform) -> None:
    """An admin takes a member out of the project (its tokens there stop working, even in a client
    already open) and an installation admin disables an account everywhere; neither can be done to
    oneself, a project admin of another project cannot disable accounts, and every step is audited."""
    from modelyard.core import list_records, remove_user, set_disabled
    from modelyard.errors import PermissionDeniedError
    from modelyard.tracking import Client

    admin = platform.context()
    add_user(platform, admin, "bob", Role.SCIENTIST)
    _, bob_token = create_token(platform, admin, "bob")
    client = Client(platform=platform, token=bob_token)
    run = client.start_run("x", capture=False)
    run.log_param("a", 1)
    removed = remove_user(platform, admin, "bob")
    assert (removed.user, removed.role) == ("bob", Role.SCIENTIST)
    for write in (lambda: run.log_param("b", 2), run.end):  # the open client is re-checked on each write
        with pytest.raises(PermissionDeniedError, match="no longer has access"):
            write()
    client.close()
    with pytest.raises(AuthenticationError, match="revoked"):
        platform.context(token=bob_token)
    assert "bob" not in [m.user for m in list_users(platform, admin)]
    add_user(platform, admin, "bob", Role.VIEWER)  # invited again: the old token stays dead
    with pytest.raises(AuthenticationError, match="revoked"):
        platform.context(token=bob_token)
    remove_user(platform, admin, "bob")
    with pytest.raises(NotFoundError, match="not a member"):
        remove_user(platform, admin, "bob")
    with pytest.raises(UsageError, match="remove yourself"):
        remove_user(platform, admin, admin.user)

    add_user(platform, admin, "carol", Role.VIEWER)
    _, carol_token = create_token(platform, admin, "carol")
    assert set_disabled(platform, admin, "carol", True).disabled
    with pytest.raises(AuthenticationError, match="without access"):
        platform.context(token=carol_token)
    assert [m.disabled for m in list_users(platform, admin) if m.user == "carol"] == [True]
    with pytest.raises(UsageError, match="your own account"):
        set_disabled(platform, admin, admin.user, True)
    assert not set_disabled(platform, admin, "carol", False).disabled
    assert platform.context(token=carol_token).user == "carol"

    # An admin of another project is no installation admin.
    create_project(platform, admin, "other")
    add_user(platform, platform.context(project="other"), "dan", Role.ADMIN)
    _, dan_token = create_token(platform, platform.context(project="other"), "dan")
    with pytest.raises(PermissionDeniedError, match="whole installation"):
        set_disabled(platform, platform.context(token=dan_token), "carol", True)

    ops = [
        (r["resource"], r["outcome"], r["detail"].get("op"))
        for r in list_records(platform, admin)
        if r["action"] == "user.manage" and r["detail"].get("op") in ("remove", "disable", "enable")
    ]
    removals = [r["detail"] for r in list_records(platform, admin) if r["detail"].get("op") == "remove"]
    assert [d.get("tokens_revoked") for d in removals] == [1, 0, None, None]
    assert ops == [
        ("user:bob", "ok", "remove"),
        ("user:bob", "ok", "remove"),
        ("user:bob", "refused", "remove"),
        (f"user:{admin.user}", "refused", "remove"),
        ("user:carol", "ok", "disable"),
        (f"user:{admin.user}", "refused", "disable"),
        ("user:carol", "ok", "enable"),
    ]


def test_a_disabled_os_account_is_refused_and_audited(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.core import list_records, set_disabled

    admin = platform.context()
    add_user(platform, admin, "erin", Role.ENGINEER)
    set_disabled(platform, admin, "erin", True)
    monkeypatch.setattr("modelyard.core._platform.os_user", lambda: "erin")
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="disabled"):
            platform.context()
    monkeypatch.undo()
    refused = [r for r in list_records(platform, admin) if r["action"] == "auth"]
    assert [(r["actor"], r["resource"], r["detail"]["reason"]) for r in refused] == [
        ("erin", "user:erin", "disabled")
    ]


def _while_a_row_is_uncommitted(
    platform: Platform, row: dict[str, object], table: object, action: Callable[[], object]
) -> object:
    """Run ``action`` in a thread while another transaction holds an uncommitted insert of ``row`` (the
    same unique name), commit that insert once the action waits on it, and return what the action
    returned or raised: a concurrent create that checked for the name before the other one committed."""
    import threading

    from sqlalchemy import insert

    from modelyard.testing import wait_for_lock_wait

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:
            outcome.append(exc)

    with platform.db.engine.connect() as holder:
        holder.execute(insert(table).values(**row))  # type: ignore[arg-type]
        worker = threading.Thread(target=run)
        worker.start()
        wait_for_lock_wait(platform.db.engine, worker)
        holder.commit()
        worker.join()
    return outcome[0]


@pytest.mark.postgres
def test_concurrent_creates_of_one_name_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Two admins creating the same project (or adding the same new user) at once on PostgreSQL: both
    checked the name before either committed, and the second failed with SQLAlchemy's unexpected
    IntegrityError. The project is 'already exists'; the user is added (to the account the other made)."""
    from modelyard.core._models import Project, User
    from modelyard.core._platform import utcnow
    from modelyard.testing import make_platform

    p = make_platform(tmp_path / "home", database_url=postgres_url)
    try:
        ctx = p.context()
        now = utcnow()
        project = {"name": "race", "region": ctx.region, "created_at": now, "created_by": "other"}
        got = _while_a_row_is_uncommitted(p, project, Project, lambda: create_project(p, ctx, "race"))
        assert isinstance(got, AlreadyExistsError), got
        user = {"name": "newcomer", "created_at": now, "disabled": False}
        got = _while_a_row_is_uncommitted(p, user, User, lambda: add_user(p, ctx, "newcomer", "viewer"))
        assert not isinstance(got, Exception), got
        assert ("newcomer", Role.VIEWER) in [(m.user, m.role) for m in list_users(p, ctx)]
    finally:
        p.close()
