"""``yard init`` (idempotent set-up of a home) and ``yard doctor`` (what is installed and configured)."""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata as md
import json
import os
import platform as _pyplatform
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from modelyard.config import CONFIG_FILE, Settings, load_settings, write_home_config
from modelyard.core._blobs import S3_STAGING_PREFIX, BlobBackend, S3Backend
from modelyard.core._crypto import MasterKey, load_master_key_file, write_master_key_file
from modelyard.core._db import missing_sqlite_file
from modelyard.core._keys import MASTER_KEY_ID
from modelyard.core._models import Membership, Meta, Project, User
from modelyard.core._paths import private_dirs
from modelyard.core._platform import (
    STORE_MARKER,
    SYSTEM_PROJECT,
    Context,
    Platform,
    os_user,
    utcnow,
)
from modelyard.core._rbac import Role
from modelyard.core._redact import redact_url
from modelyard.errors import ConfigError, YardError


@dataclass
class InitReport:
    home: str
    region: str
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def init_home(settings: Settings | None = None, *, region: str | None = None) -> InitReport:
    """Create the home (0700), master key (0600), metadata store, artifact store marker, the default
    project and the OS user as its admin. Running it again changes nothing; a conflicting region is an
    error."""
    settings = settings or load_settings()
    if region and region != settings.region:
        settings = load_settings(**{**_explicit(settings), "region": region})
    report = InitReport(str(settings.home), settings.region)
    made_key: Path | None = None
    home = settings.home
    if not home.exists():
        private_dirs(home)  # the missing parents too: in a folder others can write, they could swap the home
        report.created.append(f"home {home}")
    else:
        report.existing.append(f"home {home}")

    if settings.master_key is not None:
        MasterKey.from_b64(settings.master_key.get_secret_value())  # validate
        report.existing.append("master key (YARD_MASTER_KEY)")
    elif settings.resolved_key_file.exists():
        load_master_key_file(settings.resolved_key_file)  # validates mode and format
        report.existing.append(f"master key {settings.resolved_key_file}")
    else:
        write_master_key_file(settings.resolved_key_file, MasterKey.generate())
        report.created.append(f"master key {settings.resolved_key_file} (mode 0600)")
        made_key = settings.resolved_key_file

    platform = Platform(settings, create=True)
    try:
        try:
            _init_metadata(platform, settings, report)
        except ConfigError:  # an existing store this key cannot be for (nothing was written with it)
            if made_key is not None:
                made_key.unlink()
            raise
        _init_store_marker(platform, settings, report)
        _init_signing_key(platform, report)
    finally:
        platform.close()
    if region:
        write_home_config(settings, {"region": region})
    _remember_stores(settings, report)
    return report


# Query parameters of a store URL that carry a secret (libpq's password and sslpassword, and the like).
_SECRET_PARAMS = frozenset({"password", "sslpassword", "passwd", "pass", "secret", "token", "key"})


def _remember_stores(settings: Settings, report: InitReport) -> None:
    """Where the stores are, when the environment (or the caller) said so, goes into config.yaml: the next
    command finds them without it. A URL holding a password is not written (secrets stay out of files)."""
    from urllib.parse import parse_qsl, urlsplit

    keep: dict[str, Any] = {}
    for name in ("database_url", "artifact_uri", "s3_endpoint_url"):
        value = getattr(settings, name)
        if value is None:
            continue
        try:
            if name == "database_url":  # read as SQLAlchemy reads it (a password may hold '/', '?' or '#')
                from sqlalchemy.engine import make_url

                url = make_url(value)
                keys: list[str] = list(url.query)
                secret = bool(url.password)
            else:
                parts = urlsplit(value)
                keys = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
                secret = bool(parts.password)
            secret = secret or any(k.lower() in _SECRET_PARAMS for k in keys)
        except Exception:  # not a URL we can read: it may hold anything
            secret = True
        if secret:
            report.notes.append(
                f"{name} holds a password, so it is not saved in {CONFIG_FILE}: set YARD_{name.upper()} for "
                "every command (or keep the password elsewhere, e.g. ~/.pgpass)"
            )
        else:
            keep[name] = value
    if keep:
        write_home_config(settings, keep)


def _explicit(settings: Settings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in settings.model_fields_set}


def _init_metadata(platform: Platform, settings: Settings, report: InitReport) -> None:
    """Bootstrap a fresh store: region, owner, master key id, the first project and its admin.

    On an existing store this only checks: running `yard init` must never grant anyone a role or create a
    project (that is what `yard users add` and `yard projects create`, with their checks, are for)."""
    owner = os_user()
    with platform.db.write() as s:
        existing_region = s.get(Meta, "region")
        if existing_region is not None:
            if existing_region.value != settings.region:
                raise ConfigError(
                    f"this home's metadata store is in region {existing_region.value!r}, not "
                    f"{settings.region!r}; a store keeps its region: use a new YARD_HOME for another region"
                )
            recorded = s.get(Meta, MASTER_KEY_ID)
            if recorded is not None and platform.keyring.known(recorded.value) is None:
                raise ConfigError(
                    f"this home's store is encrypted under master key {recorded.value}, but the configured "
                    f"key is {platform.keyring.current.key_id}; point YARD_MASTER_KEY_FILE (or "
                    "YARD_MASTER_KEY) at the key with that id"
                )
            report.existing.append(f"metadata store {platform.db.safe_url}")
            return
        now = utcnow()
        s.add_all(
            [
                Meta(key="region", value=settings.region),
                Meta(key="owner", value=owner),
                Meta(key="created_at", value=now.isoformat()),
                Meta(key=SYSTEM_PROJECT, value=settings.project),
                Meta(key=MASTER_KEY_ID, value=platform.keyring.current.key_id),
            ]
        )
        report.created.append(f"metadata store {platform.db.safe_url}")
        proj = Project(name=settings.project, region=settings.region, created_at=now, created_by=owner)
        user = s.execute(select(User).where(User.name == owner)).scalar_one_or_none() or User(
            name=owner, created_at=now, disabled=False
        )
        s.add_all([proj, user])
        s.flush()
        s.add(Membership(user_id=user.id, project_id=proj.id, role=str(Role.ADMIN)))
        report.created += [f"project {settings.project!r}", f"user {owner!r} (admin)"]
        ctx = Context(owner, user.id, proj.name, proj.id, proj.region, Role.ADMIN)
        platform.audit(
            ctx,
            "home.init",
            f"home:{settings.home}",
            "ok",
            {"region": settings.region, "created": report.created},
            session=s,
        )


def _init_store_marker(platform: Platform, settings: Settings, report: InitReport) -> None:
    if not platform.backend.exists(STORE_MARKER):
        marker = {"format": 1, "region": settings.region, "created_at": utcnow().isoformat()}
        platform.backend.write_bytes(STORE_MARKER, json.dumps(marker).encode())
        report.created.append(f"artifact store {settings.resolved_artifact_uri}")
        return
    region = platform.store_region  # a marker that is not JSON or names no region: a ConfigError saying so
    if region != settings.region:
        raise ConfigError(
            f"artifact store {settings.resolved_artifact_uri} is in region {region!r}, "
            f"not {settings.region!r}; point YARD_ARTIFACT_URI at a store in {settings.region!r}"
        )
    report.existing.append(f"artifact store {settings.resolved_artifact_uri}")
    swept = sweep_backend_staging(platform.backend)
    if swept:
        report.cleaned.append(f"{swept} stale temp file(s) left by interrupted writes")


def _init_signing_key(platform: Platform, report: InitReport) -> None:
    """The Ed25519 key that signs model versions (a home made before the registry gets one now)."""
    from modelyard.core._signing import ACTIVE, ensure_signing_key

    if platform.meta(ACTIVE) is not None:
        report.existing.append(f"signing key {platform.meta(ACTIVE)}")
        return
    report.created.append(f"signing key {ensure_signing_key(platform)} (Ed25519)")


def sweep_staging(staging: Path, *, older_than: float = 86_400) -> int:
    """Remove what interrupted writes left in staging: temp files, and the work directories of dataset adds
    and anonymisations. A writer keeps touching what it writes, so an entry whose newest file is a day old
    belongs to no live writer; nothing in staging is referenced by the metadata store."""
    cutoff = time.time() - older_than
    removed = 0
    for entry in staging.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                continue
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
            elif entry.is_dir() and _newest_mtime(entry) < cutoff:
                shutil.rmtree(entry)
                removed += 1
    return removed


def sweep_backend_staging(backend: BlobBackend) -> int:
    """``sweep_staging`` of the backend's staging directory; for an S3 store also the staging directories
    that killed processes of this user left in the temp directory (each process stages in its own, removed
    only at a clean exit, so sweeping the current one alone never found them)."""
    removed = sweep_staging(backend.staging_dir())
    if isinstance(backend, S3Backend):
        removed += sweep_abandoned_staging(Path(tempfile.gettempdir()), S3_STAGING_PREFIX)
    return removed


def sweep_abandoned_staging(parent: Path, prefix: str, *, older_than: float = 86_400) -> int:
    """Remove this user's directories ``parent/prefix*`` whose newest entry is a day old: a live process
    keeps touching what it writes there, and one idle that long makes its directory again when needed."""
    cutoff = time.time() - older_than
    removed = 0
    for entry in parent.glob(glob.escape(prefix) + "*"):
        with contextlib.suppress(OSError):
            st = entry.lstat()  # not a link, and ours: the temp directory is shared with other users
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and _newest_mtime(entry) < cutoff:
                shutil.rmtree(entry)
                removed += 1
    return removed


def _newest_mtime(directory: Path) -> float:
    newest = directory.stat().st_mtime
    for root, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


# -- doctor -----------------------------------------------------------------------------------------------

EXTRAS = {
    "train": ["torch", "transformers", "sentencepiece", "optuna", "sacrebleu", "rouge-score", "safetensors"],
    "optimize": ["onnx", "onnxruntime"],
    "serve": ["fastapi", "uvicorn", "onnxruntime", "prometheus-client"],
    "postgres": ["psycopg"],
    "s3": ["boto3"],
    "bench": ["dvc"],
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _gpu() -> str:
    # Only doctor pays for importing torch; `yard --help` never does.
    if _version("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return f"CUDA: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
            return "none (torch sees no CUDA device)"
        except Exception as exc:  # a broken torch install should not break doctor
            return f"unknown (torch failed to import: {exc})"
    return "present (nvidia-smi found; torch not installed)" if shutil.which("nvidia-smi") else "none"


def doctor(settings: Settings | None = None) -> list[tuple[str, str, str]]:
    """Rows of (check, value, status) where status is ok, warn or fail. Never raises for a broken setup."""
    from modelyard import __version__

    settings = settings or load_settings()
    rows: list[tuple[str, str, str]] = [
        ("modelyard", __version__, "ok"),
        ("python", f"{_pyplatform.python_version()} ({_pyplatform.platform()})", "ok"),
        _home_row(settings.home),
        ("region", settings.region, "ok"),
    ]
    rows.append(_key_row(settings))
    rows.extend(_store_rows(settings))
    for extra, dists in EXTRAS.items():
        missing = [d for d in dists if _version(d) is None]
        rows.append(
            (
                f"extra [{extra}]",
                "installed" if not missing else f"missing {', '.join(missing)}",
                "ok" if not missing else "warn",
            )
        )
    for dist in ("torch", "onnxruntime"):
        rows.append((dist, _version(dist) or "not installed", "ok" if _version(dist) else "warn"))
    rows.append(("gpu", _gpu(), "ok"))
    return rows


def _home_row(home: Path) -> tuple[str, str, str]:
    """The home must be private: it holds checkpoints --resume loads and caches of decrypted data. `yard init`
    makes it 0700; a home made beforehand (or chmod-ed since) keeps whatever mode it had."""
    if not home.is_dir():
        return ("home", str(home), "fail")
    mode = home.stat().st_mode & 0o777
    if os.name == "posix" and mode & 0o077:
        return ("home", f"{home} (mode {mode:04o}: others can read or write it; chmod 700 {home})", "warn")
    return ("home", str(home), "ok")


def _store_rows(settings: Settings) -> list[tuple[str, str, str]]:
    missing = missing_sqlite_file(settings.resolved_database_url)
    if missing is not None:  # opening it would create the home and an empty store: doctor changes nothing
        return [
            (
                "metadata store",
                f"{redact_url(settings.resolved_database_url)}: {missing} does not exist; run `yard init`",
                "fail",
            ),
            ("artifact store", f"{redact_url(settings.resolved_artifact_uri)} (not checked)", "warn"),
        ]
    rows: list[tuple[str, str, str]] = []
    platform: Platform | None = None
    try:
        platform = Platform(settings, migrate=False)
        rev = platform.db.current_revision()
        from modelyard.core._db import head_revision

        state = "ok" if rev == head_revision() else "warn"
        rows.append(("metadata store", f"{platform.db.safe_url} (schema {rev or 'none'})", state))
        try:
            rows.append(
                (
                    "artifact store",
                    f"{redact_url(settings.resolved_artifact_uri)} (region {platform.store_region})",
                    "ok",
                )
            )
        except YardError as exc:
            rows.append(
                ("artifact store", f"{redact_url(settings.resolved_artifact_uri)}: {exc.message}", "fail")
            )
        if rev is not None:
            try:
                ctx = platform.context()
                rows.append(("identity", f"{ctx.user} ({ctx.role} in {ctx.project}, via {ctx.via})", "ok"))
            except YardError as exc:
                rows.append(("identity", exc.message, "warn"))
    except YardError as exc:
        rows.append(("metadata store", exc.message, "fail"))
    finally:
        if platform is not None:
            platform.close()
    return rows


def _key_row(settings: Settings) -> tuple[str, str, str]:
    try:
        if settings.master_key is not None:
            key = MasterKey.from_b64(settings.master_key.get_secret_value())
            return ("master key", f"from YARD_MASTER_KEY, id {key.key_id}", "ok")
        path = settings.resolved_key_file
        if not path.exists():
            return ("master key", f"missing ({path}); run `yard init`", "fail")
        key = load_master_key_file(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        return ("master key", f"{path} (mode {mode:04o}), id {key.key_id}", "ok")
    except YardError as exc:
        return ("master key", exc.message, "fail")
