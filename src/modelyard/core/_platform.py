"""The platform handle and the acting context.

Every service function takes a :class:`Context` (who acts, in which project). :meth:`Platform.authorize`
and :meth:`Platform.mutate` are the one place where permissions are checked and audit records written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.config import Settings, load_settings
from modelyard.core import _audit
from modelyard.core._db import MetadataStore, missing_sqlite_file
from modelyard.core._models import Membership, Meta, Project, Token, User
from modelyard.core._rbac import Role, allowed, required_role
from modelyard.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
    YardError,
)

if TYPE_CHECKING:
    from modelyard.core._artifacts import ArtifactStore
    from modelyard.core._blobs import BlobBackend
    from modelyard.core._keys import Keyring

log = logging.getLogger(__name__)

STORE_MARKER = "store.json"
# A refused token or account is audited at most once per this many seconds (per token or account and
# reason): a client retrying a revoked token every few milliseconds must not flood the log or its writer.
AUTH_AUDIT_EVERY_S = 60.0
# meta key: the project whose admins administer the installation (keys, projects, the whole audit log).
SYSTEM_PROJECT = "system_project"


@dataclass(frozen=True)
class Context:
    """Who is acting, in which project, with which role there."""

    user: str
    user_id: int
    project: str
    project_id: int
    region: str
    role: Role
    via: str = "local"  # "local" (OS user) or "token:<id>"


def os_user() -> str:
    """The account this process runs as. Not getpass.getuser(): that trusts $USER and $LOGNAME, so anyone
    could act (and be audited) as anyone in local mode by setting an environment variable."""
    try:
        import pwd
    except ImportError:  # not POSIX: no effective uid to go by
        import getpass

        return getpass.getuser()
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (containers run with --user N, OpenShift): the uid, never $USER
        return f"uid-{uid}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; treat them as the UTC we stored."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Platform:
    """Settings plus lazily opened stores. Cheap to create; nothing heavy happens until it is used."""

    def __init__(
        self, settings: Settings | None = None, *, migrate: bool = True, create: bool = False
    ) -> None:
        self.settings = settings or load_settings()
        missing = missing_sqlite_file(self.settings.resolved_database_url)
        if missing is not None and not create:
            # Opening would create an empty store and its folder with the umask's mode; only `yard init`
            # (create=True) sets a home up, private and complete.
            raise ConfigError(
                f"no modelyard home at {self.settings.home}: its metadata store {missing} does not exist; "
                "run `yard init` first, or point YARD_HOME (or YARD_DATABASE_URL) at an initialised home"
            )
        self.db = MetadataStore(self.settings.resolved_database_url, migrate=migrate)
        self._auth_audited: dict[tuple[str, str], float] = {}
        self._auth_lock = threading.Lock()

    @classmethod
    def open(cls, **overrides: Any) -> Platform:
        return cls(load_settings(**overrides))

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stores -----------------------------------------------------------------------------------------
    @cached_property
    def backend(self) -> BlobBackend:
        from modelyard.core._blobs import open_backend

        return open_backend(
            self.settings.resolved_artifact_uri, s3_endpoint_url=self.settings.s3_endpoint_url
        )

    @cached_property
    def keyring(self) -> Keyring:
        from modelyard.core._keys import Keyring, settle

        keyring = Keyring.load(self.settings)
        settle(keyring, self.db)  # a rotation interrupted before its key-file move is finished here
        return keyring

    @cached_property
    def artifacts(self) -> ArtifactStore:
        from modelyard.core._artifacts import ArtifactStore

        return ArtifactStore(self.backend, self.db, self.keyring, region=self.store_region)

    @cached_property
    def store_region(self) -> str:
        """The artifact store's region, from the marker ``yard init`` wrote into the store itself."""
        from modelyard.errors import NotFoundError as _NF

        try:
            marker = json.loads(self.backend.read_bytes(STORE_MARKER))
        except _NF:
            raise ConfigError(
                f"artifact store {self.settings.resolved_artifact_uri} is not initialised; run `yard init`"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"artifact store marker {STORE_MARKER} is corrupt: {exc}") from exc
        if not isinstance(marker, dict) or not isinstance(marker.get("region"), str):
            raise ConfigError(
                f"artifact store marker {STORE_MARKER} in {self.settings.resolved_artifact_uri} is corrupt: "
                'expected {"region": "..."}; restore it from a backup'
            )
        return str(marker["region"])

    def meta(self, key: str) -> str | None:
        with self.db.read() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    # -- identity -----------------------------------------------------------------------------------------
    def context(self, *, token: str | None = None, project: str | None = None) -> Context:
        """Resolve the actor: an API token if given (or YARD_TOKEN), else the OS user (local mode)."""
        if token is None and self.settings.token is not None:
            token = self.settings.token.get_secret_value()
        if token:
            ctx = self._context_from_token(token)
            if project is not None and project != ctx.project:
                raise UsageError(
                    f"the API token acts in project {ctx.project!r}, not {project!r}; "
                    "drop --project or use a token of that project"
                )
            return ctx
        name = os_user()
        project_name = project or self.settings.project
        with self.db.read() as s:
            row = s.execute(
                select(User, Project, Membership)
                .join(Membership, Membership.user_id == User.id)
                .join(Project, Project.id == Membership.project_id)
                .where(User.name == name, Project.name == project_name)
            ).first()
            if row is None:
                if s.execute(select(User).where(User.name == name)).first() is None:
                    raise AuthenticationError(
                        f"OS user {name!r} has no account in this home; run `yard init` as the owner, "
                        f"or ask an admin to run `yard users add {name} --role viewer`"
                    )
                if s.execute(select(Project.id).where(Project.name == project_name)).first() is None:
                    raise NotFoundError(
                        f"project {project_name!r} does not exist in this home; `yard projects create "
                        f"{project_name}` makes it, or choose another with YARD_PROJECT"
                    )
                raise PermissionDeniedError(
                    f"user {name!r} is not a member of project {project_name!r}; "
                    "ask an admin of that project to add you, or choose another with YARD_PROJECT"
                )
            user, proj, member = row
        if user.disabled:
            self._auth_refused(name, proj.name, f"user:{name}", "disabled", "local")
            raise AuthenticationError(f"user {name!r} is disabled")
        return Context(name, user.id, proj.name, proj.id, proj.region, Role.parse(member.role))

    def _context_from_token(self, token: str) -> Context:
        try:
            prefix, token_id, secret = token.split("_", 2)
        except ValueError:
            prefix = token_id = secret = ""
        if prefix != "yard" or not token_id or not secret:
            raise AuthenticationError(
                "malformed API token; expected the yard_<id>_<secret> string shown once"
            )
        with self.db.read() as s:
            row = s.execute(
                select(Token, User, Project, Membership)
                .join(User, User.id == Token.user_id)
                .join(Project, Project.id == Token.project_id)
                .outerjoin(
                    Membership,
                    (Membership.user_id == Token.user_id) & (Membership.project_id == Token.project_id),
                )
                .where(Token.id == token_id)
            ).first()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        # Compare even when the id is unknown, so the comparison's timing does not reveal which ids exist.
        # (A refusal of a known id is audited, a database write, at most once a minute per id and reason:
        # that first attempt is slower. Ids are 48 random bits and not secret; the secret half is.)
        stored = row[0].secret_hash if row else "0" * 64
        matches = hmac.compare_digest(digest, stored)
        if row is None:  # nobody to attribute it to, so not audited (made-up ids could flood the log)
            raise AuthenticationError("unknown API token")
        tok, user, proj, member = row
        why = None
        if not matches:
            why, message = "wrong secret", "unknown API token"  # as for an unknown id: nothing confirmed
        elif tok.revoked_at is not None:
            why, message = "revoked", f"API token {tok.id} was revoked"
        elif tok.expires_at is not None and as_utc(tok.expires_at) <= utcnow():
            why = "expired"
            message = f"API token {tok.id} expired at {as_utc(tok.expires_at).isoformat()}"
        elif user.disabled or member is None:
            why = "no access"
            message = f"API token {tok.id} belongs to a user without access to {proj.name!r}"
        if why is not None:
            # With a wrong secret the caller is not the owner, only someone who knows the id: recorded as
            # unauthenticated, the owner named in the detail (no "alice: denied" for a stranger's guess).
            actor = "unauthenticated" if why == "wrong secret" else user.name
            self._auth_refused(actor, proj.name, f"token:{tok.id}", why, f"token:{tok.id}", owner=user.name)
            raise AuthenticationError(message)
        return Context(
            user.name,
            user.id,
            proj.name,
            proj.id,
            proj.region,
            Role.parse(member.role),
            via=f"token:{tok.id}",
        )

    def _auth_refused(
        self, actor: str, project: str, resource: str, reason: str, via: str, *, owner: str | None = None
    ) -> None:
        """Audit a refused token or account ("auth", outcome "denied"), rate-limited per resource and
        reason. Best effort: a store that cannot take the record must not turn the refusal into another
        error."""
        now = time.monotonic()
        with self._auth_lock:
            last = self._auth_audited.get((resource, reason))
            if last is not None and now - last < AUTH_AUDIT_EVERY_S:
                return
            if len(self._auth_audited) >= 10_000:
                self._auth_audited.clear()
            self._auth_audited[(resource, reason)] = now
        entry = {
            "actor": actor,
            "project": project,
            "action": "auth",
            "resource": resource,
            "outcome": "denied",
            "detail": {"reason": reason, "via": via} | ({"owner": owner} if owner else {}),
        }
        try:
            with self.db.write() as s:
                _audit.append_many(s, [entry])
        except Exception as exc:  # the refusal the caller gets matters more than this record
            log.warning("could not audit a refused login of %s: %s", resource, exc)

    # -- the one place for permission checks and audit records ------------------------------------------
    def audit(
        self,
        ctx: Context,
        action: str,
        resource: str,
        outcome: str,
        detail: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> None:
        self.audit_many(ctx, action, [(resource, detail)], outcome, session=session)

    def audit_many(
        self,
        ctx: Context,
        action: str,
        items: list[tuple[str, dict[str, Any] | None]],
        outcome: str,
        session: Session | None = None,
    ) -> None:
        """One record per (resource, detail), in ``session`` if given (to commit with the mutation)."""
        entries = [
            {
                "actor": ctx.user,
                "project": ctx.project,
                "action": action,
                "resource": resource,
                "outcome": outcome,
                "detail": {**(detail or {}), "via": ctx.via},
            }
            for resource, detail in items
        ]
        if session is not None:
            _audit.append_many(session, entries)
        else:
            with self.db.write() as s:
                _audit.append_many(s, entries)

    def authorize(self, ctx: Context, action: str, resource: str) -> None:
        """Raise PermissionDeniedError (and audit the refusal) unless ctx's role allows the action."""
        if allowed(ctx.role, action):
            return
        need = required_role(action)
        self.audit(ctx, action, resource, "denied", {"role": str(ctx.role), "required": str(need)})
        raise PermissionDeniedError(
            f"{ctx.user} ({ctx.role} in project {ctx.project!r}) may not {action} {resource}; "
            f"it needs the {need} role or higher — ask a project admin to grant it",
            action=action,
            required_role=str(need),
        )

    def recheck(self, s: Session, ctx: Context, action: str) -> None:
        """Check ``ctx`` against the store, in the write's own transaction: a context is resolved once, and
        a long-lived client or server must not keep writing after its role was lowered, its user disabled
        or removed, or its token revoked or expired."""
        q = (
            select(Membership.role, User.disabled)
            .join(User, User.id == Membership.user_id)
            .where(Membership.user_id == ctx.user_id, Membership.project_id == ctx.project_id)
        )
        row = s.execute(q).first()
        token = s.get(Token, ctx.via.removeprefix("token:")) if ctx.via.startswith("token:") else None
        why = None
        if row is None or row.disabled:
            why = f"{ctx.user} no longer has access to project {ctx.project!r}"
        elif not allowed(Role.parse(row.role), action):
            why = f"{ctx.user} is now {row.role} in project {ctx.project!r} and may not {action}"
        elif ctx.via.startswith("token:") and (token is None or token.revoked_at is not None):
            why = f"API token {ctx.via.removeprefix('token:')} was revoked"
        elif token is not None and token.expires_at is not None and as_utc(token.expires_at) <= utcnow():
            why = f"API token {token.id} has expired"
        if why is not None:
            raise PermissionDeniedError(why, action=action)

    def authorize_installation(self, ctx: Context, action: str, resource: str) -> None:
        """Installation-wide actions (master key, projects, every project's audit log) need the admin role
        in the system project: a tenant's admin administers only their tenant."""
        self.authorize(ctx, action, resource)
        system = self.meta(SYSTEM_PROJECT)
        if ctx.project == system:
            return
        self.audit(ctx, action, resource, "denied", {"role": str(ctx.role), "required": f"admin of {system}"})
        raise PermissionDeniedError(
            f"{action} affects the whole installation: only admins of project {system!r} may do it "
            f"(you act in {ctx.project!r}; an admin of {system!r} runs it with -p {system})",
            action=action,
        )

    def refuse(self, ctx: Context, action: str, resource: str, error: YardError) -> YardError:
        """Audit a refused mutation (bad input, residency, conflict) and hand the error back to raise. An
        authorization failure that is not a role (four eyes) is ``denied``, as a missing role is."""
        self.record_failure(ctx, action, resource, error)
        return error

    def record_failure(
        self, ctx: Context, action: str, resource: str, exc: Exception, detail: dict[str, Any] | None = None
    ) -> None:
        """The record of a mutation that was attempted and failed: our error is ``refused`` (``denied`` for
        an authorization rule) with its code and message, any other is an ``error`` named by its type."""
        if isinstance(exc, YardError):
            outcome = "denied" if isinstance(exc, PermissionDeniedError) else "refused"
            extra: dict[str, Any] = {"code": exc.code, "message": exc.message}
        else:
            outcome, extra = "error", {"error": type(exc).__name__}
        self.audit(ctx, action, resource, outcome, {**(detail or {}), **extra})

    @contextlib.contextmanager
    def attempt(
        self, ctx: Context, action: str, resource: str, detail: dict[str, Any] | None = None
    ) -> Iterator[None]:
        """Work a mutation needs before its transaction (verifying a version, running its gates), so that a
        failure there is on record as an attempt too: our error as :meth:`refuse` records it (and raised
        without its chain), any other (a RuntimeError from torch) as an ``error`` with ``detail``."""
        try:
            yield
        except YardError as exc:
            raise self.refuse(ctx, action, resource, exc) from None
        except Exception as exc:
            self.record_failure(ctx, action, resource, exc, detail)
            raise

    @contextlib.contextmanager
    def mutate(
        self, ctx: Context, action: str, resource: str, detail: dict[str, Any] | None = None
    ) -> Iterator[Session]:
        """Authorise, then run the caller's writes and the audit record in one transaction.

        On failure the transaction rolls back and a separate record notes the refusal or error, so the
        log holds every attempted mutation and the store holds none of a failed one."""
        self.authorize(ctx, action, resource)
        try:
            with self.db.write() as s:
                self.recheck(s, ctx, action)
                yield s
                self.audit(ctx, action, resource, "ok", detail, session=s)
        except Exception as exc:
            # The role it acted with is gone, or another authorization rule (four eyes), or bad input, or
            # an error that is not ours: on record with the detail the mutation would have had.
            self.record_failure(ctx, action, resource, exc, detail)
            raise

    def project_by_name(self, s: Session, name: str) -> Project:
        proj = s.execute(select(Project).where(Project.name == name)).scalar_one_or_none()
        if proj is None:
            raise NotFoundError(f"project {name!r} does not exist; list them with `yard projects ls`")
        return proj
