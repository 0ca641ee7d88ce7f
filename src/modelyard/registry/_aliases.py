"""Aliases (``staging``, ``production``, any name) pointing at versions, their history, promotion behind
quality gates and four eyes, one-command rollback, and signed attestations.

* A protected alias (``production``) changes only by :func:`promote`: the approver role, held by someone
  other than the version's author (four eyes), a gate policy, and every gate passing. The gate result is
  stored first as a signed attestation naming the version's manifest digest.
* Every change appends an :class:`AliasEvent`. ``set``/``promote`` push a version, ``rollback`` pops one,
  ``delete`` empties the alias; replaying the events gives the stack a rollback pops, so rolling back twice
  goes two versions back, never forth again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.core._models import (
    AliasEvent,
    Attestation,
    AuditRecord,
    Job,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    Run,
)
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.core._signing import Signer, canonical
from modelyard.errors import (
    GateFailedError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
    YardError,
)
from modelyard.registry._versions import (
    ALIAS_FORMAT,
    _model,
    check_alias,
    check_model_name,
    checked_alias,
    iter_attestations,
    model_ref,
    parse_spec,
    read_manifest,
    resolve_row,
    signed_attestation,
    verify,
)

log = logging.getLogger(__name__)

#: aliases that only a gated, four-eyes promotion may move
PROTECTED = frozenset({"production"})


@dataclass
class AliasChange:
    name: str
    alias: str
    version: int | None
    previous: int | None
    action: str


@dataclass
class AliasEventInfo:
    alias: str
    action: str
    version: int | None
    previous: int | None
    reason: str
    at: datetime
    by: str


def _alias_resource(name: str, alias: str) -> str:
    return f"model:{name}#{alias}"


#: how many earlier versions an alias record keeps for rollback (each rollback pops one)
STACK_LIMIT = 100


def _stack(
    platform: Platform, s: Session, ctx: Context, model: RegisteredModel, alias: str
) -> list[list[Any]]:
    """The versions a rollback would return to and their manifest digests, oldest first, ending with the
    current one: from the alias's signed record (checked), so a row or history edited in the database cannot
    make a rollback land on a version the alias never held. Empty when the alias points nowhere."""
    current = s.get(ModelAlias, (model.id, alias))
    row = s.get(ModelVersion, current.version_id) if current is not None else None
    if current is None or row is None:
        return []
    body = checked_alias(platform, s, ctx, model, current, row)
    return [*body["stack"], [row.version, row.manifest_digest]]


def _locked_model(s: Session, ctx: Context, name: str) -> RegisteredModel:
    """The model, its row locked for the rest of the transaction: alias changes of one model happen one at
    a time (SQLite's single writer does that anyway; on PostgreSQL two could interleave, and the record
    that committed last would name an event that is not the alias's latest)."""
    model = _model(s, ctx, name)
    s.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    return model


def _point(
    platform: Platform,
    s: Session,
    ctx: Context,
    signer: Signer | None,
    model: RegisteredModel,
    alias: str,
    row: ModelVersion | None,
    action: str,
    reason: str,
    checked: list[list[Any]] | None = None,
) -> AliasChange:
    """Move the alias (None: delete it), append its event and sign the new record. ``set``/``promote`` push
    the version on the signed stack, ``rollback`` pops the current one; ``checked`` is the stack the caller
    already read from the checked record in this transaction."""
    current = s.get(ModelAlias, (model.id, alias))
    previous = None
    stack: list[list[Any]] = checked or []
    if current is not None:
        prev_row = s.get(ModelVersion, current.version_id)
        previous = prev_row.version if prev_row is not None else None
        if row is not None and checked is None:
            try:
                stack = _stack(platform, s, ctx, model, alias)
            except IntegrityError as exc:  # unsigned (older) or altered: pointing it again is the remedy
                log.warning("%s@%s: earlier versions dropped: %s", model.name, alias, exc.message)
    if action == "rollback":
        stack = stack[:-2]  # the version rolled back to becomes the record's own
    elif row is not None and stack[-1:] == [[row.version, row.manifest_digest]]:
        stack = stack[:-1]  # pointed again at what it holds: a rollback must still go back, not stay
    now = utcnow()
    version = row.version if row is not None else None
    event = AliasEvent(
        model_id=model.id,
        alias=alias,
        action=action,
        version=version,
        previous=previous,
        reason=reason,
        at=now,
        by=ctx.user,
    )
    s.add(event)
    s.flush()  # its id is signed: the record must be the one its latest change wrote
    if row is None:
        if current is not None:
            s.delete(current)
        return AliasChange(model.name, alias, version, previous, action)
    assert signer is not None
    body = canonical(
        {
            "format": ALIAS_FORMAT,
            "project": ctx.project,
            "model": model.name,
            "alias": alias,
            "version": row.version,
            "manifest": row.manifest_digest,
            "stack": stack[-STACK_LIMIT:],
            "event": event.id,
            "action": action,
            "at": now.isoformat(),
            "by": ctx.user,
        }
    )
    if current is None:
        current = ModelAlias(model_id=model.id, alias=alias)
        s.add(current)
    current.version_id, current.updated_at, current.updated_by = row.id, now, ctx.user
    current.body, current.signature, current.key_id = body.decode("utf-8"), signer.sign(body), signer.key_id
    return AliasChange(model.name, alias, version, previous, action)


def makers(platform: Platform, ctx: Context, spec: str) -> tuple[str, dict[str, str]]:
    """The manifest digest of ``spec`` and who made it, for four eyes: user -> what they did. Who registered
    it and who ran the run that trained it or submitted the job that ran it (an approver must not get their
    own model approved by having someone else register their run), and the same of every version it
    derives from (an INT8 variant someone else optimised holds the weights its parent's run trained).
    Read from the signed manifests: a row edited to name no run (the column older versions leave empty)
    would hide the trainer; a deleted run's trainer is read from the audit log (:func:`_trainer`)."""
    made: dict[str, str] = {}
    digest = ""
    derived: str | None = None
    seen: set[str] = set()
    next_spec: str | None = spec
    while next_spec is not None and next_spec not in seen:
        info, manifest = read_manifest(platform, ctx, next_spec)
        seen.add(next_spec)
        digest = digest or info.manifest_digest
        what = info.spec if derived is None else f"{info.spec}, which {derived} derives from,"
        made.setdefault(str(manifest["created_by"]), f"registered {what}")
        lineage = manifest.get("lineage") or {}
        if lineage.get("run"):
            made.setdefault(_trainer(platform, ctx, lineage["run"], what), f"trained {what}")
            for job, user in _job_submitters(platform, ctx, lineage["run"]):
                made.setdefault(user, f"submitted job {job}, which trained {what}")
        derived = derived or info.spec
        next_spec = lineage.get("parent")
    return digest, made


def _trainer(platform: Platform, ctx: Context, run_id: str, what: str) -> str:
    """Who ran the run: its row, or once the run was deleted (by its trainer, say, after someone else
    registered it) the audit record that created it. PermissionDeniedError when neither says."""
    with platform.db.read() as s:
        trainer = s.scalar(select(Run.user).where(Run.id == run_id))
        if trainer is None:  # the run's first write is its creation
            trainer = s.scalar(
                select(AuditRecord.actor)
                .where(
                    AuditRecord.project == ctx.project,
                    AuditRecord.action == "run.write",
                    AuditRecord.resource == f"run:{run_id}",
                    AuditRecord.outcome == "ok",
                )
                .order_by(AuditRecord.seq)
                .limit(1)
            )
    if trainer is None:
        raise PermissionDeniedError(
            f"who trained {what} is not known (its run {run_id} was deleted and the audit log holds no "
            "record of it), so four eyes cannot be checked; register a retrained version",
            action="model.approve",
        )
    return trainer


def _job_submitters(platform: Platform, ctx: Context, run_id: str) -> list[tuple[int, str]]:
    """(job, who submitted it) of the queued jobs that ran the run: a job runs with its worker's identity,
    so the run names the worker, but the submitter chose what it trains. From the job rows, and from the
    audit records of the runs attached to jobs (a deleted run's job no longer names it)."""
    attached = f'%"run":"{run_id}"%'  # canonical detail JSON; a run id is hex, nothing LIKE would expand
    with platform.db.read() as s:
        rows = s.execute(
            select(Job.id, Job.submitted_by).where(Job.project_id == ctx.project_id, Job.run_id == run_id)
        )
        found = {(job, user) for job, user in rows}
        for resource, detail in s.execute(
            select(AuditRecord.resource, AuditRecord.detail).where(
                AuditRecord.project == ctx.project,
                AuditRecord.action.in_(("job.write", "worker.run")),
                AuditRecord.resource.like("job:%"),
                AuditRecord.outcome == "ok",
                AuditRecord.detail.like(attached),
            )
        ):
            owner, job = json.loads(detail).get("owner"), resource.removeprefix("job:")
            if isinstance(owner, str) and job.isdigit():
                found.add((int(job), owner))
    return sorted(found)


def _targets(s: Session, model_id: int) -> dict[str, int]:
    """Each alias of the model and the version row it points at."""
    rows = s.execute(select(ModelAlias.alias, ModelAlias.version_id).where(ModelAlias.model_id == model_id))
    return {a: v for a, v in rows}


def _verified(platform: Platform, ctx: Context, spec: str, action: str, resource: str) -> str:
    """Verify the version an alias is about to point at (every file, signature, attestations); a failure is
    refused on record. Returns its manifest digest, for the commit to check it is still that version."""
    try:
        return verify(platform, ctx, spec).manifest_digest
    except YardError as exc:
        raise platform.refuse(ctx, action, resource, exc) from None


def _check_reason(platform: Platform, ctx: Context, action: str, resource: str, reason: str) -> None:
    if not isinstance(reason, str) or len(reason) > 1000:
        raise platform.refuse(ctx, action, resource, UsageError("reason: at most 1000 characters"))


def set_alias(platform: Platform, ctx: Context, spec: str, alias: str, *, reason: str = "") -> AliasChange:
    """Point ``alias`` at the version ``spec`` names (engineer). Protected aliases need :func:`promote`."""
    name, _ = parse_spec(spec)
    alias = check_alias(alias)
    resource = _alias_resource(name, alias)
    _check_reason(platform, ctx, "model.deploy", resource, reason)
    if alias in PROTECTED:
        platform.authorize(ctx, "model.deploy", resource)
        raise platform.refuse(
            ctx,
            "model.deploy",
            resource,
            UsageError(
                f"{alias!r} is a protected alias: use `yard models promote {spec} --to {alias}` "
                "(quality gates and a second person's approval)"
            ),
        )
    detail: dict[str, Any] = {"spec": spec}
    platform.authorize(ctx, "model.deploy", resource)
    manifest = _verified(platform, ctx, spec, "model.deploy", resource)
    signer = Signer(platform)
    with platform.mutate(ctx, "model.deploy", resource, detail) as s:
        _locked_model(s, ctx, name)
        model, row = resolve_row(platform, s, ctx, spec)
        if row.manifest_digest != manifest:
            raise UsageError(f"{spec} changed while it was being verified")
        change = _point(platform, s, ctx, signer, model, alias, row, "set", reason)
        detail.update(version=change.version, previous=change.previous)
    return change


def delete_alias(platform: Platform, ctx: Context, name: str, alias: str, *, reason: str = "") -> AliasChange:
    name, alias = check_model_name(name), check_alias(alias)
    resource = _alias_resource(name, alias)
    action = "model.approve" if alias in PROTECTED else "model.deploy"
    _check_reason(platform, ctx, action, resource, reason)
    detail: dict[str, Any] = {}
    with platform.mutate(ctx, action, resource, detail) as s:
        model = _locked_model(s, ctx, name)
        if s.get(ModelAlias, (model.id, alias)) is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        change = _point(platform, s, ctx, None, model, alias, None, "delete", reason)
        detail["previous"] = change.previous
    return change


GateRunner = Callable[[Platform, Context, str], tuple[bool, str]]


def promote(
    platform: Platform,
    ctx: Context,
    spec: str,
    alias: str,
    *,
    gates: GateRunner | None = None,
    reason: str = "",
) -> AliasChange:
    """Move ``alias`` to the version ``spec`` names, once the version verifies and ``gates`` pass.

    ``gates(platform, ctx, "name@v")`` runs the quality gates, stores their signed attestation and returns
    (passed, summary of failed checks). For a protected alias it is required, and the actor needs the
    approver role and must not be the version's author."""
    name, _ = parse_spec(spec)
    alias = check_alias(alias)
    resource = _alias_resource(name, alias)
    protected = alias in PROTECTED
    action = "model.approve" if protected else "model.deploy"
    platform.authorize(ctx, action, resource)
    _check_reason(platform, ctx, action, resource, reason)
    detail: dict[str, Any] = {}
    # What fails before the transaction is an attempt on record too: a missing version, a tampered alias or
    # four eyes refused, a gate run's RuntimeError from torch an error.
    with platform.attempt(ctx, action, resource, detail):
        with platform.db.read() as s:
            model, row = resolve_row(platform, s, ctx, spec)
            exact = f"{model.name}@{row.version}"
            author, manifest = row.created_by, row.manifest_digest
            # What relative gates compare with ("rougeL >= production - 0.01"): checked again at the commit.
            compared = _targets(s, model.id)
        detail.update(version=row.version, author=author)
        # Four eyes only where it applies: who made a version may be unknowable (makers refuses then).
        signed, made_by = makers(platform, ctx, exact) if protected else (manifest, {})
        if signed != manifest:  # as at the commit: immutable unless tampered with
            raise UsageError(f"{exact} changed while it was being promoted")
        made = made_by.get(ctx.user)
        if made is not None:
            raise PermissionDeniedError(
                f"{ctx.user} {made} and cannot also approve it for {alias!r} (four eyes): "
                "another user with the approver role must promote it",
                action=action,
            )
        if protected and gates is None:
            raise UsageError(
                f"promotion to {alias!r} runs the quality gates: give a gate policy "
                f"(`yard models promote {exact} --to {alias} --policy gates.yaml`)"
            )
        verify(platform, ctx, exact)
        if gates is not None:
            passed, summary = gates(platform, ctx, exact)
            detail["gates"] = "passed" if passed else "failed"
            if not passed:
                raise GateFailedError(
                    f"{exact} failed its quality gates, not promoted to {alias!r}: {summary}"
                )
        signer = Signer(platform)
    with platform.mutate(ctx, action, resource, detail) as s:
        model, row = resolve_row(platform, s, ctx, exact)
        if row.manifest_digest != manifest:  # immutable versions make this unreachable unless tampered with
            raise UsageError(f"{exact} changed while it was being promoted")
        if gates is not None and not _has_passing(platform, s, row, "gates"):
            raise GateFailedError(f"{exact}: no passing gate attestation was recorded")
        # On PostgreSQL two promotions would otherwise both read the aliases as they were and both commit.
        _locked_model(s, ctx, model.name)
        # e.g. a concurrent promotion: the gates compared the candidate with another version
        moved = sorted(a for a, v in _targets(s, model.id).items() ^ compared.items())
        if gates is not None and moved:
            raise GateFailedError(
                f"{model.name}@{moved[0]} moved while the gates of {exact} ran; promote again to gate it "
                "against the version it now points at"
            )
        change = _point(platform, s, ctx, signer, model, alias, row, "promote", reason)
        detail["previous"] = change.previous
    return change


def rollback(platform: Platform, ctx: Context, name: str, alias: str, *, reason: str = "") -> AliasChange:
    """Point ``alias`` back at the version it pointed at before its current one (engineer)."""
    name, alias = check_model_name(name), check_alias(alias)
    resource = _alias_resource(name, alias)
    _check_reason(platform, ctx, "model.deploy", resource, reason)
    detail: dict[str, Any] = {}
    platform.authorize(ctx, "model.deploy", resource)
    try:
        with platform.db.read() as s:
            stack = _stack(platform, s, ctx, _model(s, ctx, name), alias)
        if len(stack) < 2:
            raise UsageError(f"{name}@{alias} has no earlier version to roll back to")
        back, signed = stack[-2]
        # Every byte of the version rolled back to is checked first: serving would refuse a tampered one
        # when it loads it and keep the version being rolled away from, with no word at the rollback.
        manifest = verify(platform, ctx, f"{name}@{back}").manifest_digest
        if manifest != signed:  # the version was replaced (deleted and registered again under its number)
            raise IntegrityError(
                f"{name}@{back} is not the version {name}@{alias} pointed at before (another manifest)",
                file="alias",
            )
        signer = Signer(platform)
    except YardError as exc:
        raise platform.refuse(ctx, "model.deploy", resource, exc) from None
    with platform.mutate(ctx, "model.deploy", resource, detail) as s:
        model = _locked_model(s, ctx, name)
        if _stack(platform, s, ctx, model, alias) != stack:
            raise UsageError(f"{name}@{alias} moved during the rollback; look at its history and try again")
        target = s.execute(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == back)
        ).scalar_one_or_none()
        if target is None:
            raise NotFoundError(f"{name}@{back}, the version before, no longer exists")
        if target.manifest_digest != manifest:
            raise UsageError(f"{name}@{back} changed while it was being verified")
        change = _point(platform, s, ctx, signer, model, alias, target, "rollback", reason, stack)
        detail.update(version=change.version, previous=change.previous)
    return change


def history(platform: Platform, ctx: Context, name: str, alias: str | None = None) -> list[AliasEventInfo]:
    name = check_model_name(name)
    if alias is not None:
        alias = check_alias(alias)
    platform.authorize(ctx, "model.read", f"model:{name}")
    with platform.db.read() as s:
        model = _model(s, ctx, name)
        q = select(AliasEvent).where(AliasEvent.model_id == model.id)
        if alias is not None:
            q = q.where(AliasEvent.alias == alias)
        return [
            AliasEventInfo(e.alias, e.action, e.version, e.previous, e.reason, as_utc(e.at), e.by)
            for e in s.scalars(q.order_by(AliasEvent.id))
        ]


# -- attestations -----------------------------------------------------------------------------------------


def _has_passing(platform: Platform, s: Session, row: ModelVersion, kind: str) -> bool:
    """Whether the version's latest ``kind`` attestation passed, as its signed body says (every one of them
    checked: an edited ``passed`` or ``kind`` column must not turn a failed gate run into a passing one,
    nor hide a newer failed one). IntegrityError if one was altered."""
    spec = f"version {row.version}"
    last = None
    for a in iter_attestations(s, row):
        body = signed_attestation(platform, s, spec, row, a)
        if body["kind"] == kind:
            last = body
    return last is not None and bool(last["passed"])


def attest(
    platform: Platform, ctx: Context, spec: str, kind: str, result: Mapping[str, Any], *, passed: bool
) -> int:
    """Store a signed statement about a version. Returns the attestation id. A ``gates`` statement made
    by hand, not by a gate run, weighs like an approval (a card shows it, a deployment over half of the
    traffic relies on it), so it takes the approver role; ``yard gates check`` stores its own."""
    action = "model.approve" if kind == "gates" else "model.register"
    # Four eyes, as for an approval: whoever made the version vouching that it passed would let a second
    # approver's deployment rest on its maker's word. `yard gates check` (measured) is open to them.
    vouch = kind == "gates" and passed is True
    return store_attestation(platform, ctx, spec, kind, result, passed=passed, action=action, vouch=vouch)


def store_attestation(
    platform: Platform,
    ctx: Context,
    spec: str,
    kind: str,
    result: Mapping[str, Any],
    *,
    passed: bool,
    action: str = "model.register",
    vouch: bool = False,
) -> int:
    """:func:`attest` for the code that produced the result itself (the gate runner). ``vouch``: a passing
    statement made by hand, refused to whoever made the version."""
    problem = None
    if not isinstance(passed, bool):  # signed as written: 1 would never match the row's boolean again
        problem = f"passed must be True or False, not {passed!r}"
    elif not isinstance(kind, str) or not kind.strip() or len(kind) > 32 or not kind.isprintable():
        # 32: its column's width (PostgreSQL refuses longer with a driver error inside the write)
        problem = f"an attestation kind is a short name (at most 32 characters) such as 'gates', not {kind!r}"
    elif not isinstance(result, Mapping):
        problem = f"an attestation result is a mapping, not {type(result).__name__}"
    else:
        try:  # what is signed; an encoder error inside the write was no clear refusal
            canonical(dict(result))
        except (TypeError, ValueError) as exc:
            problem = (
                "an attestation result must be JSON: text keys and text, numbers, booleans, None, lists "
                f"and mappings as values ({exc})"
            )
    if problem is not None:
        raise platform.refuse(ctx, action, f"model:{spec}", UsageError(problem)) from None
    checked = None  # the manifest four eyes was checked for: an alias may move before the write
    if vouch:
        platform.authorize(ctx, action, f"model:{spec}")  # the role first: makers are no viewer's business
        try:
            checked, made_by = makers(platform, ctx, spec)
            made = made_by.get(ctx.user)
            if made is not None:
                raise PermissionDeniedError(
                    f"{ctx.user} {made} and cannot also attest that it passed its gates (four eyes): run "
                    f"`yard gates check {spec} --policy gates.yaml`, or another approver may attest",
                    action=action,
                )
        except YardError as exc:
            raise platform.refuse(ctx, action, f"model:{spec}", exc) from None
    signer = Signer(platform)
    detail: dict[str, Any] = {"kind": kind, "passed": passed}
    with platform.mutate(ctx, action, f"model:{spec}", detail) as s:
        model, row = resolve_row(platform, s, ctx, spec)
        if checked is not None and row.manifest_digest != checked:
            raise UsageError(f"{spec} changed while it was being checked (four eyes); attest again")
        now = utcnow()
        body = canonical(
            {
                "kind": kind,
                "subject": model_ref(model.name, row.version),
                "manifest": row.manifest_digest,
                "passed": passed,
                "result": dict(result),
                "created_at": now.isoformat(),
                "created_by": ctx.user,
            }
        )
        a = Attestation(
            version_id=row.id,
            kind=kind,
            passed=passed,
            body=body.decode("utf-8"),
            signature=signer.sign(body),
            key_id=signer.key_id,
            created_at=now,
            created_by=ctx.user,
        )
        s.add(a)
        s.flush()
        detail["attestation"] = a.id
        return a.id


def attestations(
    platform: Platform, ctx: Context, spec: str, kind: str | None = None
) -> list[dict[str, Any]]:
    """The version's attestations (``kind`` only, if given), newest last, each one's signature checked.
    One that checks is its signed body plus ``id`` and ``verified: True``; one that does not (its body or
    columns edited in the database) is only ``id``, ``verified: False`` and the ``problem``: nobody's word,
    so it is listed whatever ``kind`` its columns name (an edited ``kind`` must not hide it)."""
    platform.authorize(ctx, "model.read", f"model:{spec}")
    with platform.db.read() as s:
        model, row = resolve_row(platform, s, ctx, spec)
        found: list[dict[str, Any]] = []
        for a in iter_attestations(s, row):
            try:
                body = signed_attestation(platform, s, f"{model.name}@{row.version}", row, a)
            except IntegrityError as exc:
                found.append({"id": a.id, "verified": False, "problem": exc.message})
                continue
            if kind is None or body["kind"] == kind:
                found.append({"id": a.id, **body, "verified": True})
        return found
