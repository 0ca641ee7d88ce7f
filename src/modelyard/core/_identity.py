"""Projects (tenants), users, memberships and API tokens: services with permission checks and audit."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.config import check_name, check_region
from modelyard.core._models import Membership, Project, Token, User
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.core._rbac import Role
from modelyard.errors import AlreadyExistsError, NotFoundError, ResidencyError, UsageError


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class MemberInfo:
    user: str
    role: Role
    disabled: bool


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    project: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())


# -- projects ---------------------------------------------------------------------------------------------


def create_project(platform: Platform, ctx: Context, name: str, *, region: str | None = None) -> Project:
    """A new tenant; its creator becomes its admin. Its region must be the store's region."""
    resource = f"project:{name}"
    platform.authorize_installation(ctx, "project.create", resource)
    try:
        _name(name, "project")
        region = region or ctx.region
        try:
            check_region(region)
        except ValueError as exc:  # a malformed name is a usage error, not another region
            raise UsageError(str(exc)) from None
        store_region = platform.meta("region")
        if region != store_region:
            raise ResidencyError(
                f"project region {region!r} differs from this installation's region {store_region!r}; "
                "a project's metadata and data stay in its region: use an installation in that region"
            )
    except (UsageError, ResidencyError) as exc:
        raise platform.refuse(ctx, "project.create", resource, exc) from None
    with platform.mutate(ctx, "project.create", resource, {"region": region}) as s:
        if s.execute(select(Project).where(Project.name == name)).first():
            raise AlreadyExistsError(f"project {name!r} already exists")
        proj = Project(name=name, region=region, created_at=utcnow(), created_by=ctx.user)
        s.add(proj)
        try:
            s.flush()
        except IntegrityError:  # PostgreSQL: created by another transaction since the check above
            raise AlreadyExistsError(f"project {name!r} already exists") from None
        s.add(Membership(user_id=ctx.user_id, project_id=proj.id, role=str(Role.ADMIN)))
    return proj


def list_projects(platform: Platform, ctx: Context) -> list[tuple[Project, Role]]:
    """Projects the actor is a member of; others are invisible."""
    with platform.db.read() as s:
        rows = s.execute(
            select(Project, Membership.role)
            .join(Membership, Membership.project_id == Project.id)
            .where(Membership.user_id == ctx.user_id)
            .order_by(Project.name)
        ).all()
    return [(p, Role.parse(r)) for p, r in rows]


# -- users ------------------------------------------------------------------------------------------------


def _user(s: Session, name: str) -> User:
    user = s.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        raise NotFoundError(f"user {name!r} does not exist; add it with `yard users add {name} --role ROLE`")
    return user


def add_user(platform: Platform, ctx: Context, name: str, role: str | Role) -> MemberInfo:
    """Create the user if needed and make it a member of ctx's project with ``role``."""
    resource = f"user:{name}"
    platform.authorize(ctx, "user.manage", resource)
    try:
        _name(name, "user")
        parsed = Role.parse(role)
    except UsageError as exc:
        raise platform.refuse(ctx, "user.manage", resource, exc) from None
    with platform.mutate(ctx, "user.manage", resource, {"role": str(parsed), "op": "add"}) as s:
        user = s.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            try:
                with s.begin_nested():
                    user = User(name=name, created_at=utcnow(), disabled=False)
                    s.add(user)
            except IntegrityError:  # PostgreSQL: another admin made the account since the check above
                user = s.execute(select(User).where(User.name == name)).scalar_one()
        if s.get(Membership, (user.id, ctx.project_id)) is not None:
            raise AlreadyExistsError(
                f"user {name!r} is already a member of {ctx.project!r}; change the role with "
                f"`yard users set-role {name} ROLE`"
            )
        s.add(Membership(user_id=user.id, project_id=ctx.project_id, role=str(parsed)))
        try:
            s.flush()
        except IntegrityError:  # PostgreSQL: added by another admin since the check above
            raise AlreadyExistsError(f"user {name!r} is already a member of {ctx.project!r}") from None
    return MemberInfo(name, parsed, False)


def set_role(platform: Platform, ctx: Context, name: str, role: str | Role) -> MemberInfo:
    resource = f"user:{name}"
    platform.authorize(ctx, "user.manage", resource)
    try:
        parsed = Role.parse(role)
    except UsageError as exc:
        raise platform.refuse(ctx, "user.manage", resource, exc) from None
    with platform.mutate(ctx, "user.manage", resource, {"role": str(parsed), "op": "set-role"}) as s:
        user = _user(s, name)
        member = s.get(Membership, (user.id, ctx.project_id))
        if member is None:
            raise NotFoundError(f"user {name!r} is not a member of {ctx.project!r}")
        if user.id == ctx.user_id and parsed < Role.ADMIN:
            raise UsageError("you cannot lower your own role; ask another admin")
        member.role = str(parsed)
    return MemberInfo(name, parsed, user.disabled)


def remove_user(platform: Platform, ctx: Context, name: str) -> MemberInfo:
    """Take the user out of ctx's project and revoke its tokens for the project (clients and servers
    re-check them on every write). The account and its records stay, as audit needs them."""
    resource = f"user:{name}"
    platform.authorize(ctx, "user.manage", resource)
    detail: dict[str, object] = {"op": "remove"}
    with platform.mutate(ctx, "user.manage", resource, detail) as s:
        user = _user(s, name)
        member = s.get(Membership, (user.id, ctx.project_id))
        if member is None:
            raise NotFoundError(f"user {name!r} is not a member of {ctx.project!r}")
        if user.id == ctx.user_id:
            raise UsageError("you cannot remove yourself from the project; ask another admin")
        role = Role.parse(member.role)
        s.delete(member)
        # Revoked, not merely unusable while the membership is gone: re-adding the user later must not
        # bring a leaked token back.
        detail["tokens_revoked"] = s.execute(
            update(Token)
            .where(Token.user_id == user.id, Token.project_id == ctx.project_id, Token.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]  # audited: mutate writes this dict at the commit
    return MemberInfo(name, role, user.disabled)


def set_disabled(platform: Platform, ctx: Context, name: str, disabled: bool) -> MemberInfo:
    """Disable (or enable again) an account in every project: its local logins and all its tokens are
    refused, and open clients and servers stop writing for it. An account is installation-wide, so this
    needs an installation admin; nothing of the account is deleted."""
    resource = f"user:{name}"
    op = "disable" if disabled else "enable"
    platform.authorize_installation(ctx, "user.manage", resource)
    if not isinstance(disabled, bool):
        raise platform.refuse(ctx, "user.manage", resource, UsageError("disabled must be True or False"))
    with platform.mutate(ctx, "user.manage", resource, {"op": op}) as s:
        user = _user(s, name)
        if user.id == ctx.user_id:
            raise UsageError(f"you cannot {op} your own account; ask another installation admin")
        user.disabled = disabled
        member = s.get(Membership, (user.id, ctx.project_id))
        role = Role.parse(member.role) if member is not None else Role.VIEWER
    return MemberInfo(name, role, disabled)


def list_users(platform: Platform, ctx: Context) -> list[MemberInfo]:
    platform.authorize(ctx, "user.read", f"project:{ctx.project}")
    with platform.db.read() as s:
        rows = s.execute(
            select(User, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == ctx.project_id)
            .order_by(User.name)
        ).all()
    return [MemberInfo(u.name, Role.parse(r), u.disabled) for u, r in rows]


# -- tokens -----------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+)([smhdw])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MAX_DURATION = timedelta(days=36525)


def parse_duration(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``2w``; ``never`` for no expiry."""
    if text.strip().lower() == "never":
        return None
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"duration {text!r} is not valid; expected e.g. 30d, 12h, 90m, 2w or never")
    try:
        delta = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    except OverflowError:
        delta = _MAX_DURATION + timedelta(days=1)
    if delta > _MAX_DURATION:
        raise UsageError(f"duration {text!r} is longer than 100 years; use `never` for no expiry")
    return delta


def create_token(
    platform: Platform, ctx: Context, user: str, *, expires_in: timedelta | None = timedelta(days=90)
) -> tuple[TokenInfo, str]:
    """Returns the token's info and the secret token string. The string is not stored and not shown again."""
    action = "token.create.self" if user == ctx.user else "token.manage"
    resource = f"user:{user}"
    platform.authorize(ctx, action, resource)  # a missing role is reported before the token rule
    if ctx.via.startswith("token:"):
        # A token must not mint longer-lived or broader tokens (a 1-hour token would become permanent).
        raise platform.refuse(
            ctx,
            action,
            resource,
            UsageError("tokens cannot be created with a token; create them from a local (OS user) session"),
        )
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    with platform.mutate(ctx, action, resource, {"token": token_id}) as s:
        target = _user(s, user)
        if s.get(Membership, (target.id, ctx.project_id)) is None:
            raise NotFoundError(f"user {user!r} is not a member of {ctx.project!r}")
        tok = Token(
            id=token_id,
            user_id=target.id,
            project_id=ctx.project_id,
            secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=now,
            expires_at=now + expires_in if expires_in else None,
            created_by=ctx.user,
        )
        s.add(tok)
    info = TokenInfo(token_id, user, ctx.project, now, tok.expires_at, None)
    return info, f"yard_{token_id}_{secret}"


_TOKEN_ID = re.compile(r"[0-9a-f]{1,64}")


def revoke_token(platform: Platform, ctx: Context, token_id: str) -> TokenInfo:
    """Revoke a token by its id, or by the whole ``yard_<id>_<secret>`` string (its holder may have only
    that): the secret is dropped before anything is looked up, said or audited."""
    if isinstance(token_id, str) and token_id.startswith("yard_"):
        token_id = token_id.split("_")[1] if token_id.count("_") >= 2 else ""
    if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
        # Not echoed: it may be a mangled secret.
        raise platform.refuse(
            ctx,
            "token.manage",
            "token:?",
            UsageError("expected a token id (the hex id `yard tokens ls` shows) or the whole yard_... token"),
        )
    with platform.db.read() as s:
        tok = s.get(Token, token_id)
        owner = s.get(User, tok.user_id) if tok else None
    own = tok is not None and tok.user_id == ctx.user_id
    action = "token.revoke.self" if own else "token.manage"
    with platform.mutate(ctx, action, f"token:{token_id}") as s:
        tok = s.get(Token, token_id)
        if tok is None or tok.project_id != ctx.project_id:
            raise NotFoundError(f"token {token_id!r} not found in project {ctx.project!r}")
        if tok.revoked_at is None:
            tok.revoked_at = utcnow()
        revoked = tok.revoked_at
        expires = tok.expires_at
        created = tok.created_at
    return TokenInfo(
        token_id,
        owner.name if owner else "?",
        ctx.project,
        as_utc(created),
        as_utc(expires) if expires else None,
        as_utc(revoked),
    )


def list_tokens(platform: Platform, ctx: Context) -> list[TokenInfo]:
    """Admins see the project's tokens; everyone else sees their own."""
    with platform.db.read() as s:
        stmt = (
            select(Token, User.name)
            .join(User, User.id == Token.user_id)
            .where(Token.project_id == ctx.project_id)
            .order_by(Token.created_at)
        )
        if ctx.role < Role.ADMIN:
            stmt = stmt.where(Token.user_id == ctx.user_id)
        rows = s.execute(stmt).all()
    return [
        TokenInfo(
            t.id,
            name,
            ctx.project,
            as_utc(t.created_at),
            as_utc(t.expires_at) if t.expires_at else None,
            as_utc(t.revoked_at) if t.revoked_at else None,
        )
        for t, name in rows
    ]
