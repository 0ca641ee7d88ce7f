"""Registered models and their immutable, signed versions.

A version is a manifest: canonical JSON naming the project, model and version number, every file (path,
size, SHA-256), the lineage (run, dataset versions, recipe, code commit, parent version), the evaluation
(report digest and overall metrics) and, for optimised variants, a benchmark record. The manifest is
stored as an encrypted blob named by its digest and signed with the installation's Ed25519 key; the files
are blobs of the encrypted artifact store. One transaction claims the blobs, numbers the version (the row
lock of ``UPDATE models SET last_version = last_version + 1``, plus a unique constraint: no gaps or
duplicates under concurrency), records it, its lineage edges and the audit record.

Reading a version back (``verify``, ``download``, ``load``) checks the signature against the manifest
bytes, the row's columns against the manifest, and every file's bytes against its digest; an
:class:`~modelyard.errors.IntegrityError` names the file or record that does not match.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from modelyard.config import check_name
from modelyard.core import _gc
from modelyard.core._artifacts import StagedBlob
from modelyard.core._db import insert_for
from modelyard.core._models import (
    AliasEvent,
    Attestation,
    Dataset,
    DatasetVersion,
    LineageEdge,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
)
from modelyard.core._paths import temp_prefix
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.core._signing import Signer, canonical, verify_signature
from modelyard.errors import (
    BackendError,
    IntegrityError,
    NotFoundError,
    UnsafePathError,
    UsageError,
    YardError,
)
from modelyard.registry._files import ModelFile, model_format, scan_model_dir

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "modelyard.model-version/1"
ALIAS_FORMAT = "modelyard.alias/1"
_SPEC_RE = re.compile(r"^(?P<name>[^@]+)(?:@(?P<ref>[^@]+))?\Z")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{6,32}\Z")  # a run id, or a unique prefix of it (as `yard runs ls` shows)
_VARIANT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
LATEST = "latest"


# -- names and specs --------------------------------------------------------------------------------------


def check_model_name(name: str) -> str:
    try:
        return check_name(name, "model")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias == LATEST:
        raise UsageError(
            f"alias {alias!r} is not valid: use 1-64 lower-case letters, digits, '_' or '-', starting with a "
            f"letter ({LATEST!r} is reserved for the newest version)"
        )
    return alias


def parse_spec(text: str) -> tuple[str, int | str | None]:
    """``NAME`` (newest), ``NAME@3`` or ``NAME@alias`` -> (name, version number, alias or None)."""
    m = _SPEC_RE.match(text) if isinstance(text, str) else None
    expected = "expected NAME, NAME@VERSION or NAME@ALIAS, such as support-t5@3 or support-t5@production"
    if m is None:
        raise UsageError(f"{text!r} is not a model version; {expected}")
    name = check_model_name(m["name"])
    ref = m["ref"]
    if ref is None or ref == LATEST:
        return name, None
    if ref.isascii() and ref.isdigit():
        if len(ref) > 9 or int(ref) < 1:
            raise UsageError(f"{text!r}: versions are 1, 2, 3, ...; {expected}")
        return name, int(ref)
    return name, check_alias(ref)


def model_ref(name: str, version: int) -> str:
    return f"model:{name}@{version}"


# -- results ----------------------------------------------------------------------------------------------


@dataclass
class VersionInfo:
    name: str
    version: int
    format: str
    variant: str
    files: int
    bytes: int
    metrics: dict[str, float]
    run_id: str | None
    parent: str | None  # "name@v"
    manifest_digest: str
    key_id: str
    description: str
    created_at: datetime
    created_by: str
    aliases: list[str] = field(default_factory=list)
    # Those of ``aliases`` whose signed record does not check (as in ModelInfo): resolving them is refused.
    unverified: list[str] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["created_at"] = self.created_at.isoformat()
        return out


@dataclass
class ModelInfo:
    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    created_at: datetime
    created_by: str
    # Aliases whose signed record does not check (altered, or unsigned from an older home): listed as the
    # row says, but resolving them is refused.
    unverified: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    spec: str
    manifest_digest: str
    key_id: str
    files: int
    bytes: int
    attestations: int


# -- internal reads -------------------------------------------------------------------------------------


def _model(s: Session, ctx: Context, name: str) -> RegisteredModel:
    row = s.execute(
        select(RegisteredModel).where(
            RegisteredModel.project_id == ctx.project_id, RegisteredModel.name == name
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(
            f"model {name!r} not found in project {ctx.project!r}; list them with `yard models ls`"
        )
    return row


def resolve_row(
    platform: Platform, s: Session, ctx: Context, spec: str
) -> tuple[RegisteredModel, ModelVersion]:
    """The model and version row ``spec`` names; an alias's signed record is checked (``checked_alias``)."""
    name, ref = parse_spec(spec)
    model = _model(s, ctx, name)
    q = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if isinstance(ref, str):
        alias = s.get(ModelAlias, (model.id, ref))
        if alias is None:
            raise NotFoundError(f"model {name!r} has no alias {ref!r}; see `yard models show {name}`")
        row = s.get(ModelVersion, alias.version_id)
        if row is not None:
            checked_alias(platform, s, ctx, model, alias, row)
    elif ref is None:
        row = s.execute(q.order_by(ModelVersion.version.desc()).limit(1)).scalar_one_or_none()
    else:
        row = s.execute(q.where(ModelVersion.version == ref)).scalar_one_or_none()
    if row is None:
        what = f"version {ref}" if isinstance(ref, int) else "versions"
        raise NotFoundError(f"model {name!r} has no {what}; see `yard models show {name}`")
    return model, row


def checked_alias(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, alias: ModelAlias, row: ModelVersion
) -> dict[str, Any]:
    """The alias's signed body, checked: signed by this installation, naming this project, model, alias,
    version and manifest, and written with the alias's latest event (a database writer restoring an earlier
    signed record would also have to delete the history after it). IntegrityError otherwise."""
    what = f"{model.name}@{alias.alias}"
    if alias.body is None or alias.signature is None or alias.key_id is None:
        raise IntegrityError(
            f"{what}: the alias record is not signed (it was set before aliases were signed, or its "
            f"signature was removed); point it again: `yard models alias {model.name}@V {alias.alias}`, or "
            f"`yard models promote {model.name}@V --to {alias.alias}` for a protected alias",
            file="alias",
        )
    verify_signature(
        platform, s, alias.key_id, alias.body.encode("utf-8"), alias.signature, what=f"{what}: alias record"
    )
    body: dict[str, Any] = json.loads(alias.body)
    expected = {
        "format": ALIAS_FORMAT,
        "project": ctx.project,
        "model": model.name,
        "alias": alias.alias,
        "version": row.version,
        "manifest": row.manifest_digest,
    }
    _compare_signed(expected, body, f"{what}: the alias points at", "signed record", "alias")
    latest = s.scalar(
        select(func.max(AliasEvent.id)).where(
            AliasEvent.model_id == model.id, AliasEvent.alias == alias.alias
        )
    )
    if body.get("event") != latest:
        raise IntegrityError(
            f"{what}: the alias record is not the one its latest change wrote (an earlier record was "
            "restored, or its history was altered); the registry's database was altered",
            file="alias",
        )
    return body


def _compare_signed(
    expected: dict[str, Any], signed: dict[str, Any], says: str, record: str, file: str
) -> None:
    """IntegrityError naming the first database column that differs from what the signed record holds."""
    for key, value in expected.items():
        if signed.get(key) != value:
            raise IntegrityError(
                f"{says} {key}={value!r} but its {record} says {signed.get(key)!r}; "
                "the registry's database was altered",
                file=file,
            )


def _aliases_of(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, row: ModelVersion
) -> tuple[list[str], list[str]]:
    """The aliases whose row points at the version, and those of them whose signed record does not check
    (shown marked, as `yard models ls` does: a row repointed in the database is not the alias's word)."""
    aliases, unverified = [], []
    for alias in s.scalars(
        select(ModelAlias).where(ModelAlias.version_id == row.id).order_by(ModelAlias.alias)
    ):
        aliases.append(alias.alias)
        if not _alias_verifies(platform, s, ctx, model, alias, row):
            unverified.append(alias.alias)
    return aliases, unverified


def _alias_verifies(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, alias: ModelAlias, row: ModelVersion
) -> bool:
    """Whether the alias's signed record checks; listings show an alias that does not as unverified."""
    try:
        checked_alias(platform, s, ctx, model, alias, row)
    except IntegrityError:
        return False
    return True


def _info(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, row: ModelVersion
) -> VersionInfo:
    parent = None
    if row.parent_id is not None:
        p = s.get(ModelVersion, row.parent_id)
        if p is not None:
            pm = s.get(RegisteredModel, p.model_id)
            parent = f"{pm.name if pm else '?'}@{p.version}"
    aliases, unverified = _aliases_of(platform, s, ctx, model, row)
    return VersionInfo(
        name=model.name,
        version=row.version,
        format=row.format,
        variant=row.variant,
        files=row.files,
        bytes=row.bytes,
        metrics=json.loads(row.metrics or "{}"),
        run_id=row.run_id,
        parent=parent,
        manifest_digest=row.manifest_digest,
        key_id=row.key_id,
        description=row.description,
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
        aliases=aliases,
        unverified=unverified,
    )


# -- register ---------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """What a registration stores: the model files and what the manifest says about them."""

    root: Path
    files: list[ModelFile]
    lineage: dict[str, Any]
    eval_report: bytes | None = None
    run_id: str | None = None


def _run_source(platform: Platform, ctx: Context, run_id: str, work: Path) -> _Source:
    """A finished run's ``model/`` artifacts, eval report and recipe, with its dataset inputs and code."""
    from modelyard.tracking._store import download_artifacts, get_run, list_run_artifacts, resolve_run_id

    run_id = resolve_run_id(platform, ctx, run_id)
    run = get_run(platform, ctx, run_id)
    if run.status != "FINISHED":
        raise UsageError(f"run {run_id} is {run.status}; only a FINISHED run's model can be registered")
    artifacts = list_run_artifacts(platform, ctx, run_id)
    paths = {p for p, _, _ in artifacts}
    if not any(p.startswith("model/") for p in paths):
        raise NotFoundError(f"run {run_id} stored no model (no artifacts under model/)")
    root = download_artifacts(platform, ctx, run_id, "model", work / "model")
    report = None
    if "eval/report.json" in paths:
        report = download_artifacts(platform, ctx, run_id, "eval/report.json", work / "eval").read_bytes()
    lineage = _run_lineage(platform, ctx, run_id, run, artifacts)
    return _Source(root, scan_model_dir(root), lineage, report, run_id)


def _run_lineage(
    platform: Platform, ctx: Context, run_id: str, run: Any = None, artifacts: Any = None
) -> dict[str, Any]:
    """What a run records of where a model came from: the run, its experiment, datasets, recipe, code.
    ``run`` and ``artifacts`` (its artifact listing) when the caller has read them already."""
    from modelyard.tracking._lineage import run_ref
    from modelyard.tracking._store import get_run, list_run_artifacts, resolve_run_id

    if run is None:
        run_id = resolve_run_id(platform, ctx, run_id)
        run = get_run(platform, ctx, run_id)
    if artifacts is None:
        artifacts = list_run_artifacts(platform, ctx, run_id)
    recipe = next((d for p, d, _ in artifacts if p == "recipe.yaml"), None)
    with platform.db.read() as s:
        datasets = sorted(
            s.scalars(
                select(LineageEdge.src).where(
                    LineageEdge.project_id == ctx.project_id,
                    LineageEdge.dst == run_ref(run_id),
                    LineageEdge.src.like("dataset:%"),
                )
            )
        )
    code = None
    if "git.commit" in run.tags:
        code = {"commit": run.tags["git.commit"], "dirty": run.tags.get("git.dirty") == "true"}
    return {
        "run": run_id,
        "experiment": run.experiment,
        "datasets": [d.removeprefix("dataset:") for d in datasets],
        "recipe": recipe,
        "code": code,
    }


def _metrics(report: bytes | None) -> dict[str, float]:
    if report is None:
        return {}
    try:
        data = json.loads(report)
        overall = data["overall"]
        metrics = {
            str(k): float(v)
            for k, v in overall.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise UsageError(
            f"the evaluation report is malformed ({type(exc).__name__}: {exc}); expected modelyard's "
            "report.json, whose 'overall' maps metric names to numbers"
        ) from None
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:  # NaN would be signed into the manifest and break every JSON reader of it
        raise UsageError(f"the evaluation report's {', '.join(bad)} is not a finite number")
    return metrics


def _benchmark(benchmark: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The benchmark record as the manifest will hold it: a mapping of names to JSON values."""
    if not benchmark:
        return None
    if not isinstance(benchmark, Mapping) or not all(isinstance(k, str) for k in benchmark):
        raise UsageError("benchmark must map names to numbers or text, such as {'p50_ms': 12.5}")
    try:  # NaN or an infinity would be signed into the manifest, which no strict JSON reader then reads
        body: dict[str, Any] = json.loads(json.dumps(dict(benchmark), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"benchmark must be JSON with finite numbers: {exc}") from None
    return body


def register(
    platform: Platform,
    ctx: Context,
    source: str | os.PathLike[str],
    name: str,
    *,
    description: str = "",
    parent: str | None = None,
    variant: str | None = None,
    eval_report: str | os.PathLike[str] | bytes | None = None,
    benchmark: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    trained_by: str | None = None,
) -> VersionInfo:
    """Register the model of a finished run (``source`` = its id) or a model directory as the next version
    of ``name``. Only safetensors/ONNX weights, JSON/YAML configs and tokenizer files are accepted; a
    pickle is refused before anything is stored. ``parent`` (``name@v``) marks a derived version
    (optimised, pruned, distilled)."""
    name = check_model_name(name)
    resource = f"model:{name}"
    platform.authorize(ctx, "model.register", resource)
    if not isinstance(description, str) or len(description) > 4000:
        raise platform.refuse(
            ctx, "model.register", resource, UsageError("description: at most 4000 characters")
        )
    if variant is not None and (not isinstance(variant, str) or not _VARIANT_RE.match(variant)):
        raise platform.refuse(
            ctx,
            "model.register",
            resource,
            UsageError(f"variant {variant!r} is not valid: 1-64 lower-case letters, digits, '.', '_' or '-'"),
        )
    # Before anything is looked up in the store (a run's recipe, the files' digests): see core/_gc.py.
    since = _gc.generation(platform)
    with tempfile.TemporaryDirectory(prefix="yard-register-") as tmp:
        try:
            text = os.fspath(source)
            if _RUN_ID_RE.match(text) and not Path(text).exists():
                src = _run_source(platform, ctx, text, Path(tmp))
            else:
                root = Path(text)
                src = _Source(
                    root, scan_model_dir(root), {"run": None, "datasets": [], "recipe": None, "code": None}
                )
            claimed = lineage.get("run") if lineage else None
            if claimed:  # the run's own lineage, checked and recorded on the row
                from modelyard.tracking._store import resolve_run_id

                claimed = resolve_run_id(platform, ctx, str(claimed))
                actual = src.run_id or (resolve_run_id(platform, ctx, trained_by) if trained_by else None)
                if actual is not None and actual != claimed:
                    raise UsageError(
                        f"lineage names run {claimed[:8]}, but run {actual[:8]} trained this model"
                    )
                trained_by = claimed
            if trained_by is not None and src.run_id is None:
                # A directory whose weights a run trained (an optimised variant): that run's lineage.
                from_run = _run_lineage(platform, ctx, trained_by)
                src.lineage.update(from_run)
                src.run_id = from_run["run"]
            if lineage:
                src.lineage.update({k: v for k, v in lineage.items() if k != "run"})
            with platform.db.read() as s:  # now, not only after every file was staged (encrypted) for nothing
                _require_datasets(s, ctx, src.lineage.get("datasets") or [], lock=False)
            if isinstance(eval_report, bytes):
                src.eval_report = eval_report
            elif eval_report is not None:
                try:
                    src.eval_report = Path(eval_report).read_bytes()
                except OSError as exc:  # not "cannot read SOURCE", below: name the file that is missing
                    raise UsageError(
                        f"cannot read the evaluation report {eval_report}: {exc.strerror or exc}"
                    ) from None
            metrics = _metrics(src.eval_report)
            bench = _benchmark(benchmark)
            fmt = model_format(src.files)
            if variant is None:
                variant = _default_variant(src.root, fmt)
            parent_row: ModelVersion | None = None
            parent_spec: str | None = None
            if parent is not None:
                with platform.db.read() as s:
                    pm, parent_row = resolve_row(platform, s, ctx, parent)
                    parent_spec = f"{pm.name}@{parent_row.version}"
        except YardError as exc:
            raise platform.refuse(ctx, "model.register", resource, exc) from None
        except OSError as exc:
            raise platform.refuse(
                ctx, "model.register", resource, UsageError(f"cannot read {source}: {exc.strerror or exc}")
            ) from None
        src.lineage["parent"] = parent_spec
        return _store_version(
            platform,
            ctx,
            name,
            src,
            fmt=fmt,
            variant=variant,
            metrics=metrics,
            description=description,
            parent_row=parent_row,
            benchmark=bench,
            since=since,
        )


def _default_variant(root: Path, fmt: str) -> str:
    if fmt != "onnx":
        return "fp32"
    try:
        info = json.loads((root / "onnx.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "onnx-fp32"
    return "onnx-int8" if "int8" in str(info.get("quantization", "")) else "onnx-fp32"


def _store_version(
    platform: Platform,
    ctx: Context,
    name: str,
    src: _Source,
    *,
    fmt: str,
    variant: str,
    metrics: dict[str, float],
    description: str,
    parent_row: ModelVersion | None,
    benchmark: dict[str, Any] | None,
    since: int,
) -> VersionInfo:
    from modelyard.tracking._lineage import add_edges, run_ref

    store = platform.artifacts
    resource = f"model:{name}"
    try:
        signer = Signer(platform)
        staged = store.stage_files([f.local for f in src.files], region=ctx.region)
        extra = [store.stage(io.BytesIO(src.eval_report), region=ctx.region)] if src.eval_report else []
    except YardError as exc:
        raise platform.refuse(ctx, "model.register", resource, exc) from None
    except OSError as exc:  # sealing into the store's staging area (disk full, permissions): as artifact puts
        failure = BackendError(f"storing {resource} failed: {exc}")
        raise platform.refuse(ctx, "model.register", resource, failure) from exc
    report_digest = extra[0].digest if extra else None
    detail: dict[str, Any] = {
        "files": len(src.files),
        "bytes": sum(f.size for f in src.files),
        "variant": variant,
    }
    everything: list[StagedBlob] = [*staged, *extra]
    claimed: set[str] = set()
    committed = False
    xid: str | None = None
    manifest_blob: StagedBlob | None = None
    try:
        with platform.mutate(ctx, "model.register", resource, detail) as s:
            collected = _gc.fence(s, since)
            claimed = store.claim(s, everything, collected=collected)
            if collected:  # what it found stored may be gone: its files, its report, its run's recipe
                reused = {b.digest for b in everything}
                if src.lineage.get("recipe"):
                    reused.add(src.lineage["recipe"])
                _gc.require_stored(s, reused, f"model {name}")
            _require_datasets(s, ctx, src.lineage.get("datasets") or [])
            xid = store.transaction_id(s)
            model_id = _ensure_model(s, ctx, name)
            version = s.execute(
                update(RegisteredModel)
                .where(RegisteredModel.id == model_id)
                .values(last_version=RegisteredModel.last_version + 1)
                .returning(RegisteredModel.last_version)
            ).scalar_one()
            now = utcnow()
            manifest = {
                "format": MANIFEST_FORMAT,
                "project": ctx.project,
                "model": name,
                "version": version,
                "weights": fmt,
                "variant": variant,
                "files": [
                    {"path": f.path, "size": b.size, "sha256": b.digest}
                    for f, b in zip(src.files, staged, strict=True)
                ],
                "lineage": src.lineage,
                "eval": {"report": report_digest, "metrics": metrics},
                "benchmark": benchmark,
                "description": description,
                "created_at": now.isoformat(),
                "created_by": ctx.user,
            }
            body = canonical(manifest)
            try:
                manifest_blob = store.stage(io.BytesIO(body), region=ctx.region)
            except OSError as exc:  # a BackendError: mutate records it as refused, with its code
                raise BackendError(f"storing {resource} failed: {exc}") from exc
            claimed |= store.claim(s, [manifest_blob], collected=collected)
            row = ModelVersion(
                model_id=model_id,
                version=version,
                manifest_digest=manifest_blob.digest,
                signature=signer.sign(body),
                key_id=signer.key_id,
                format=fmt,
                variant=variant,
                parent_id=parent_row.id if parent_row is not None else None,
                run_id=src.run_id,
                files=len(src.files),
                bytes=sum(b.size for b in staged),
                metrics=json.dumps(metrics, sort_keys=True),
                description=description,
                created_at=now,
                created_by=ctx.user,
            )
            s.add(row)
            s.flush()
            detail.update(version=version, manifest=manifest_blob.digest)
            ref = model_ref(name, version)
            edges = [(run_ref(src.run_id), ref, "registered")] if src.run_id else []
            edges += [(f"dataset:{d}", ref, "trained-on") for d in src.lineage.get("datasets") or []]
            if src.lineage.get("parent"):
                edges.append((f"model:{src.lineage['parent']}", ref, "derived"))
            add_edges(s, ctx, edges)
            model = s.get(RegisteredModel, model_id)
            assert model is not None
            info = _info(platform, s, ctx, model, row)
        committed = True
    finally:
        blobs = [*everything, *([manifest_blob] if manifest_blob is not None else [])]
        try:
            store.discard(blobs, committed=committed, claimed=claimed, xid=xid)
        except Exception as exc:
            if not committed:
                raise
            log.warning("model %s: version stored, but removing unreferenced objects failed: %s", name, exc)
    return info


def _require_datasets(s: Session, ctx: Context, specs: Sequence[str], *, lock: bool = True) -> None:
    """Refuse a model whose data is gone: ``data rm`` refuses while a model depends on a version, which a
    version deleted before its run's model is registered would escape. The rows are locked (FOR SHARE) until
    the version and its lineage edges commit; ``data rm`` locks the row it deletes before it reads them.
    ``lock=False``: the early check, before the files are staged (the locked one runs again at the write)."""
    from modelyard.data._versions import parse_spec

    for spec in specs:
        name, version = parse_spec(spec)
        query = (
            select(DatasetVersion.id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(
                Dataset.project_id == ctx.project_id, Dataset.name == name, DatasetVersion.version == version
            )
        )
        found = s.execute(query.with_for_update(read=True) if lock else query).first()
        if found is None:
            raise NotFoundError(
                f"dataset version {spec} the model was trained on no longer exists (deleted after its run "
                "read it): a model is not registered on data that is gone; train it again on a version "
                "that exists"
            )


def _ensure_model(s: Session, ctx: Context, name: str) -> int:
    s.execute(
        insert_for(s)(RegisteredModel)
        .values(
            project_id=ctx.project_id, name=name, last_version=0, created_at=utcnow(), created_by=ctx.user
        )
        .on_conflict_do_nothing(index_elements=["project_id", "name"])
    )
    return _model(s, ctx, name).id


# -- read -------------------------------------------------------------------------------------------------


def list_models(platform: Platform, ctx: Context) -> list[ModelInfo]:
    platform.authorize(ctx, "model.read", f"project:{ctx.project}")
    with platform.db.read() as s:
        models = s.scalars(
            select(RegisteredModel)
            .where(RegisteredModel.project_id == ctx.project_id)
            .order_by(RegisteredModel.name)
        ).all()
        out = []
        for m in models:
            versions = s.scalars(select(ModelVersion.version).where(ModelVersion.model_id == m.id)).all()
            aliases: dict[str, int] = {}
            unverified: list[str] = []
            for alias, row in s.execute(
                select(ModelAlias, ModelVersion)
                .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
                .where(ModelAlias.model_id == m.id)
                .order_by(ModelAlias.alias)
            ):
                aliases[alias.alias] = row.version
                if not _alias_verifies(platform, s, ctx, m, alias, row):
                    unverified.append(alias.alias)
            out.append(
                ModelInfo(
                    m.name,
                    len(versions),
                    max(versions, default=None),
                    aliases,
                    as_utc(m.created_at),
                    m.created_by,
                    unverified,
                )
            )
        return out


def list_versions(platform: Platform, ctx: Context, name: str) -> list[VersionInfo]:
    name = check_model_name(name)
    platform.authorize(ctx, "model.read", f"model:{name}")
    with platform.db.read() as s:
        model = _model(s, ctx, name)
        rows = s.scalars(
            select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.version)
        ).all()
        return [_info(platform, s, ctx, model, r) for r in rows]


def show(platform: Platform, ctx: Context, spec: str) -> VersionInfo:
    platform.authorize(ctx, "model.read", f"model:{spec}")
    with platform.db.read() as s:
        model, row = resolve_row(platform, s, ctx, spec)
        return _info(platform, s, ctx, model, row)


def read_manifest(platform: Platform, ctx: Context, spec: str) -> tuple[VersionInfo, dict[str, Any]]:
    """The version and its manifest, the signature and the row checked against it."""
    platform.authorize(ctx, "model.read", f"model:{spec}")
    with platform.db.read() as s:
        model, row = resolve_row(platform, s, ctx, spec)
        info = _info(platform, s, ctx, model, row)
        return info, _checked_manifest(platform, s, ctx, model, row)


def _checked_manifest(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, row: ModelVersion
) -> dict[str, Any]:
    spec = f"{model.name}@{row.version}"
    try:
        body = b"".join(platform.artifacts.iter_bytes(row.manifest_digest))
    except IntegrityError as exc:
        raise IntegrityError(
            f"{spec}: the manifest failed verification: {exc.message}", file="manifest"
        ) from exc
    verify_signature(platform, s, row.key_id, body, row.signature, what=f"{spec}: manifest")
    manifest: dict[str, Any] = json.loads(body)
    parent = s.get(ModelVersion, row.parent_id) if row.parent_id is not None else None
    parent_model = s.get(RegisteredModel, parent.model_id) if parent is not None else None
    lineage = manifest.get("lineage") or {}
    # Every column the card, the listings and four eyes read: a database edit shows here, not there.
    expected = {
        "format": MANIFEST_FORMAT,
        "project": ctx.project,
        "model": model.name,
        "version": row.version,
        "weights": row.format,
        "variant": row.variant,
        "created_by": row.created_by,
        "description": row.description,
        "metrics": json.loads(row.metrics or "{}"),
        "parent": f"{parent_model.name}@{parent.version}" if parent and parent_model else None,
    }
    if row.run_id is not None:  # NULL: versions registered with lineage={"run": ...} before 2026-12-06
        expected["run"] = row.run_id
    signed = {
        **manifest,
        "metrics": (manifest.get("eval") or {}).get("metrics") or {},
        "run": lineage.get("run"),
        "parent": lineage.get("parent"),
    }
    _compare_signed(expected, signed, f"{spec}: the record says", "signed manifest", "manifest")
    files = manifest.get("files") or []
    if row.files != len(files) or row.bytes != sum(int(f["size"]) for f in files):
        raise IntegrityError(
            f"{spec}: the record's file count or size differs from its signed manifest", file="manifest"
        )
    return manifest


def iter_attestations(s: Session, row: ModelVersion) -> Iterator[Attestation]:
    yield from s.scalars(select(Attestation).where(Attestation.version_id == row.id).order_by(Attestation.id))


def signed_attestation(
    platform: Platform, s: Session, spec: str, row: ModelVersion, a: Attestation
) -> dict[str, Any]:
    """The attestation's signed body, its signature checked, and checked to be about this version: the
    ``kind`` and ``passed`` columns, which promotion and deployment select by, must say what it says."""
    what = f"{spec}: attestation {a.id}"
    verify_signature(platform, s, a.key_id, a.body.encode("utf-8"), a.signature, what=what)
    body: dict[str, Any] = json.loads(a.body)
    if body.get("manifest") != row.manifest_digest:
        raise IntegrityError(f"{what} is about another manifest", file="attestation")
    # bool(): a body signed with passed=1 (the SDK took any truthy value once) still matches its row.
    if body.get("kind") != a.kind or bool(body.get("passed")) is not bool(a.passed):
        raise IntegrityError(
            f"{what}: the record says kind={a.kind!r} passed={bool(a.passed)} but its signed body says "
            f"kind={body.get('kind')!r} passed={body.get('passed')!r}; the registry's database was altered",
            file="attestation",
        )
    return body


def verify(platform: Platform, ctx: Context, spec: str) -> VerifyReport:
    """Recompute every file's digest from the store, check the manifest signature and every attestation.
    IntegrityError names the first file or record that does not match."""
    info, manifest = read_manifest(platform, ctx, spec)
    store = platform.artifacts
    total = 0
    for f in manifest["files"]:
        size = 0
        try:
            for chunk in store.iter_bytes(f["sha256"]):  # decrypts and re-checks the SHA-256
                size += len(chunk)
        except (IntegrityError, NotFoundError) as exc:
            raise IntegrityError(
                f"{info.spec}: file {f['path']} failed verification: {exc.message}", file=f["path"]
            ) from exc
        if size != int(f["size"]):
            raise IntegrityError(
                f"{info.spec}: file {f['path']} has {size} bytes, not {f['size']}", file=f["path"]
            )
        total += size
    with platform.db.read() as s:
        _, row = resolve_row(platform, s, ctx, info.spec)
        attestations = list(iter_attestations(s, row))
        for a in attestations:
            signed_attestation(platform, s, info.spec, row, a)
    return VerifyReport(
        info.spec, info.manifest_digest, info.key_id, len(manifest["files"]), total, len(attestations)
    )


def download(
    platform: Platform, ctx: Context, spec: str, dest: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[VersionInfo, Path]:
    """Write the version's files into ``dest`` (created; must be empty unless ``overwrite``): each file is
    decrypted and checked against its digest into a temp directory beside ``dest``, moved into place only
    once all verified."""
    from modelyard.core._paths import safe_join, safe_key

    info, manifest = read_manifest(platform, ctx, spec)
    target = Path(dest)
    if target.is_symlink():  # as data checkout and runs download: the files would land where it points
        raise UnsafePathError(f"{target} is a symbolic link; download into a real directory")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not overwrite)):
        raise UsageError(
            f"{target} exists and is not an empty directory; choose another, or pass --overwrite "
            "(overwrite=True in Python) to replace the version's files in it"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot write into {target}: {exc.strerror or exc}; choose another directory"
        ) from None
    try:
        keys = [safe_key(f["path"], what="model file") for f in manifest["files"]]
        pairs = [(f["sha256"], safe_join(work, key)) for f, key in zip(manifest["files"], keys, strict=True)]
        for _, path in pairs:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            platform.artifacts.get_many(pairs)
        except (IntegrityError, NotFoundError) as exc:
            bad = next((f["path"] for f in manifest["files"] if f["sha256"] in exc.message), "a file")
            raise IntegrityError(
                f"{info.spec}: file {bad} failed verification: {exc.message}", file=bad
            ) from exc
        if not target.exists():
            os.replace(work, target)
        else:
            # Every destination checked before any file moves: a symlinked folder planted in the target
            # (tok -> /elsewhere) would otherwise receive the files it names. Joined by key: safe_join
            # returns resolved paths, which are not "relative to" a relative (or symlinked) temp directory.
            try:
                moves = [(path, safe_join(target, key)) for (_, path), key in zip(pairs, keys, strict=True)]
            except UnsafePathError as exc:
                link = exc.details.get("link", "a path below it")
                raise UnsafePathError(
                    f"cannot download into {target}: {link} is a symbolic link, and links are not followed; "
                    "download into a directory without symbolic links"
                ) from None
            for path, dest_path in moves:
                dest_path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info, target


def eval_report(platform: Platform, ctx: Context, spec: str) -> dict[str, Any] | None:
    """The version's evaluation report (verified against the digest its signed manifest names)."""
    _, manifest = read_manifest(platform, ctx, spec)
    digest = (manifest.get("eval") or {}).get("report")
    if not digest:
        return None
    data: dict[str, Any] = json.loads(b"".join(platform.artifacts.iter_bytes(digest)))
    return data


def all_versions(s: Session, model_id: int) -> Sequence[ModelVersion]:
    return s.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.version)
    ).all()
