"""Each role boundary: the forbidden action is refused, nothing changes, and the refusal is audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from modelyard.core import (
    PERMISSIONS,
    Context,
    Platform,
    Role,
    add_user,
    create_project,
    create_token,
    delete_artifact,
    get_artifact,
    list_artifacts,
    list_records,
    put_artifact,
    revoke_token,
    rotate_master_key,
    set_role,
)
from modelyard.core._models import Artifact, AuditRecord, Blob, Membership, Project, Token, User
from modelyard.errors import NotFoundError, PermissionDeniedError, UsageError
from modelyard.testing import actor


def _state(platform: Platform) -> dict[str, Any]:
    """Everything a refused action must leave unchanged (audit log excluded)."""
    with platform.db.read() as s:
        return {
            table.__tablename__: s.scalar(select(func.count()).select_from(table))
            for table in (Artifact, Blob, Membership, Project, Token, User)
        } | {"roles": sorted(s.execute(select(Membership.user_id, Membership.role)).all())}


def _last_audit(platform: Platform) -> AuditRecord:
    with platform.db.read() as s:
        return s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()


def _assert_refused(platform: Platform, who: Context, action: str, call: Callable[[], Any]) -> None:
    before = _state(platform)
    objects_before = sorted(platform.backend.list("objects/"))
    with pytest.raises(PermissionDeniedError) as info:
        call()
    assert str(PERMISSIONS[action]) in info.value.message  # says which role is needed
    assert _state(platform) == before
    assert sorted(platform.backend.list("objects/")) == objects_before
    rec = _last_audit(platform)
    assert (rec.actor, rec.action, rec.outcome) == (who.user, action, "denied")


@pytest.fixture
def admin(platform: Platform) -> Context:
    return platform.context()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(b"model weights" * 100)
    return path


def test_roles_are_ordered() -> None:
    assert Role.VIEWER < Role.SCIENTIST < Role.ENGINEER < Role.APPROVER < Role.ADMIN


def test_viewer_cannot_write(platform: Platform, admin: Context, data: Path) -> None:
    viewer = actor(platform, admin, "vera", Role.VIEWER)
    _assert_refused(platform, viewer, "artifact.write", lambda: put_artifact(platform, viewer, data))


def test_viewer_can_read(platform: Platform, admin: Context, data: Path, tmp_path: Path) -> None:
    info = put_artifact(platform, admin, data)
    viewer = actor(platform, admin, "vera", Role.VIEWER)
    assert [a.digest for a in list_artifacts(platform, viewer)] == [info.digest]
    get_artifact(platform, viewer, info.digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data.read_bytes()


def test_scientist_can_write_but_not_delete(platform: Platform, admin: Context, data: Path) -> None:
    sci = actor(platform, admin, "sam", Role.SCIENTIST)
    info = put_artifact(platform, sci, data)
    _assert_refused(platform, sci, "artifact.delete", lambda: delete_artifact(platform, sci, info.digest))
    eng = actor(platform, admin, "erin", Role.ENGINEER)
    assert delete_artifact(platform, eng, info.digest) == 1


def test_scientist_cannot_approve(platform: Platform, admin: Context) -> None:
    sci = actor(platform, admin, "sam", Role.SCIENTIST)
    _assert_refused(
        platform, sci, "model.approve", lambda: platform.authorize(sci, "model.approve", "model:m@1")
    )
    approver = actor(platform, admin, "ada", Role.APPROVER)
    platform.authorize(approver, "model.approve", "model:m@1")  # allowed: no exception


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SCIENTIST, Role.ENGINEER, Role.APPROVER])
def test_only_admins_manage_users(platform: Platform, admin: Context, role: Role) -> None:
    who = actor(platform, admin, "someone", role)
    _assert_refused(platform, who, "user.manage", lambda: add_user(platform, who, "eve", Role.ADMIN))
    _assert_refused(platform, who, "user.manage", lambda: set_role(platform, who, "someone", Role.ADMIN))


def test_non_admin_cannot_mint_tokens_for_others(platform: Platform, admin: Context) -> None:
    sci = actor(platform, admin, "sam", Role.SCIENTIST)
    add_user(platform, admin, "ada", Role.APPROVER)
    _assert_refused(platform, sci, "token.manage", lambda: create_token(platform, sci, "ada"))
    with pytest.raises(UsageError, match="cannot be created with a token"):
        create_token(platform, sci, "sam")  # a token never mints tokens, not even for itself
    assert _last_audit(platform).outcome == "refused"
    local_sam = dataclasses.replace(sci, via="local")  # sam at his own OS account
    info, token = create_token(platform, local_sam, "sam")  # self-service is allowed
    assert platform.context(token=token).user == "sam"
    assert info.user == "sam"


def test_non_admin_cannot_revoke_others_tokens(platform: Platform, admin: Context) -> None:
    sci = actor(platform, admin, "sam", Role.SCIENTIST)
    info, _ = create_token(platform, admin, "root")
    _assert_refused(platform, sci, "token.manage", lambda: revoke_token(platform, sci, info.id))


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SCIENTIST, Role.ENGINEER, Role.APPROVER])
def test_only_admins_rotate_keys(platform: Platform, admin: Context, role: Role) -> None:
    who = actor(platform, admin, "someone", role)
    key_before = platform.settings.resolved_key_file.read_bytes()
    _assert_refused(platform, who, "key.rotate", lambda: rotate_master_key(platform, who))
    assert platform.settings.resolved_key_file.read_bytes() == key_before


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SCIENTIST, Role.ENGINEER])
def test_audit_log_needs_approver(platform: Platform, admin: Context, role: Role) -> None:
    who = actor(platform, admin, "someone", role)
    _assert_refused(platform, who, "audit.read", lambda: list_records(platform, who))
    approver = actor(platform, admin, "ada", Role.APPROVER)
    assert list_records(platform, approver)


def test_only_admins_create_projects(platform: Platform, admin: Context) -> None:
    eng = actor(platform, admin, "erin", Role.ENGINEER)
    _assert_refused(platform, eng, "project.create", lambda: create_project(platform, eng, "side"))


def test_no_one_reads_another_projects_objects(platform: Platform, admin: Context, data: Path) -> None:
    info = put_artifact(platform, admin, data)
    create_project(platform, admin, "acme")
    acme_admin = platform.context(project="acme")
    outsider = actor(platform, acme_admin, "olga", Role.ADMIN)  # admin, but of acme only
    assert outsider.project == "acme"
    assert list_artifacts(platform, outsider) == []
    with pytest.raises(NotFoundError):
        get_artifact(platform, outsider, info.digest, Path("/nonexistent/never-written"))
    with pytest.raises(NotFoundError):
        delete_artifact(platform, outsider, info.digest)
