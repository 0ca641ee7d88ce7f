"""Deployments: what a model's servers route besides its stable version (the alias they serve).

``yard deploy NAME --version V --weight 10 --mode canary`` records the decision in the metadata store;
every server (worker, replica) polls it and follows: it loads and warms the candidate, then routes
``weight`` percent of requests to it (``ab``, ``canary``: sticky by request key) or copies every request to
it without answering with it (``shadow``). ``--mode off`` removes the candidate. A canary that breaches its
SLOs is switched off by the server that saw it (audited with the reason); the others follow on their next
poll. Changing a deployment needs the engineer role (``model.deploy``), like moving an alias.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.orm import Session

from modelyard.core._db import insert_for
from modelyard.core._models import CanaryOutcome, Deployment
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import GateFailedError, PermissionDeniedError, UsageError, YardError
from modelyard.serving._routing import Shared, SloWindow

log = logging.getLogger("modelyard.serving")

# Latencies kept per shared row: a p95 from a uniform sample of this many is within a few ms of the
# exact one, and a row stays small whatever the traffic.
SHARED_LATENCIES = 1000

MODES = ("ab", "canary", "shadow", "off")
# An engineer may try a version on up to half of the traffic; more takes what promotion takes (an approver
# who is not its author, and a passing gate run).
MAX_UNAPPROVED_WEIGHT = 50


@dataclass(frozen=True)
class DeploymentInfo:
    model: str
    mode: str
    candidate: int | None
    weight: int
    generation: int
    reason: str
    updated_at: datetime
    updated_by: str
    # The generation that put the current candidate in (kept while only its weight or mode changes): the
    # key of its shared SLO window. None without a candidate.
    candidate_generation: int | None = None


def _info(row: Deployment) -> DeploymentInfo:
    return DeploymentInfo(
        row.model,
        row.mode,
        row.candidate,
        row.weight,
        row.generation,
        row.reason,
        as_utc(row.updated_at),
        row.updated_by,
        row.candidate_generation,
    )


def deploy(
    platform: Platform,
    ctx: Context,
    name: str,
    *,
    version: int | None,
    mode: str = "canary",
    weight: int = 10,
    reason: str = "",
) -> DeploymentInfo:
    """Route ``weight`` percent of ``name``'s traffic to ``version`` in ``mode`` (``off``: no candidate)."""
    from modelyard.registry._versions import check_model_name, resolve_row

    name = check_model_name(name)
    resource = f"deployment:{name}"
    platform.authorize(ctx, "model.deploy", resource)
    try:
        if mode not in MODES:
            raise UsageError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if mode != "off" and (version is None or isinstance(version, bool) or not isinstance(version, int)):
            raise UsageError(f"mode {mode} needs the candidate's version number (--version V)")
        if mode == "off" and version is not None:  # it was ignored: the user may think V is now serving
            raise UsageError("mode off removes the candidate: leave out the version (--version)")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise UsageError(f"weight must be a whole percentage from 0 to 100, got {weight!r}")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise UsageError("reason: at most 1000 characters")
    except UsageError as exc:
        raise platform.refuse(ctx, "model.deploy", resource, exc) from None
    candidate = None if mode == "off" else version
    majority = candidate is not None and mode in ("ab", "canary") and weight > MAX_UNAPPROVED_WEIGHT
    if majority:  # a candidate answering most requests is a promotion in all but name
        platform.authorize(ctx, "model.approve", resource)
    if candidate is not None:
        # Every byte checked, as before an alias moves: servers refuse to load a version that fails, and
        # retried it each minute while the deployment said it was live.
        from modelyard.registry import verify

        try:
            verify(platform, ctx, f"{name}@{candidate}")
        except YardError as exc:
            raise platform.refuse(ctx, "model.deploy", resource, exc) from None
    detail: dict[str, Any] = {"mode": mode, "version": candidate, "weight": weight}
    signed: tuple[str, dict[str, str]] | None = None
    if majority:  # four eyes reads who made it (and its parents) from the signed manifests, not the rows
        from modelyard.registry._aliases import makers

        try:
            signed = makers(platform, ctx, f"{name}@{candidate}")
        except YardError as exc:
            raise platform.refuse(ctx, "model.deploy", resource, exc) from None
    with platform.mutate(ctx, "model.deploy", resource, detail) as s:
        if majority:  # mutate re-checks model.deploy only: an approver demoted since ctx was resolved
            platform.recheck(s, ctx, "model.approve")
        if candidate is not None:
            # it must exist in this project
            _, version_row = resolve_row(platform, s, ctx, f"{name}@{candidate}")
            if signed is not None:
                if version_row.manifest_digest != signed[0]:
                    raise UsageError(f"{name}@{candidate} changed while it was being deployed")
                _check_promotable(platform, s, ctx, f"{name}@{candidate}", version_row, signed[1], weight)
        now = utcnow()
        s.execute(
            insert_for(s)(Deployment)
            .values(
                project_id=ctx.project_id,
                model=name,
                mode="off",
                candidate=None,
                weight=0,
                generation=0,
                reason="",
                updated_at=now,
                updated_by=ctx.user,
            )
            .on_conflict_do_nothing(index_elements=["project_id", "model"])
        )
        s.execute(
            update(Deployment)
            .where(Deployment.project_id == ctx.project_id, Deployment.model == name)
            .values(
                mode=mode,
                candidate=candidate,
                weight=weight if mode != "off" else 0,
                generation=Deployment.generation + 1,
                # A new candidate (or one back after "off") starts a new SLO window; a weight or mode change
                # keeps it. SET expressions read the row as it was before this UPDATE.
                candidate_generation=None
                if candidate is None
                else case(
                    (
                        or_(
                            Deployment.candidate.is_(None),
                            Deployment.candidate != candidate,
                            Deployment.candidate_generation.is_(None),
                        ),
                        Deployment.generation + 1,
                    ),
                    else_=Deployment.candidate_generation,
                ),
                reason=reason,
                updated_at=now,
                updated_by=ctx.user,
            )
        )
        row = s.get(Deployment, (ctx.project_id, name))
        assert row is not None
        _forget_outcomes(s, ctx, name, keep=row.candidate_generation)
        return _info(row)


def _check_promotable(
    platform: Platform, s: Session, ctx: Context, spec: str, row: Any, made_by: dict[str, str], weight: int
) -> None:
    """What promotion asks of a version, asked of a candidate given more than half of the traffic."""
    from modelyard.registry._aliases import _has_passing

    made = made_by.get(ctx.user)
    if made is not None:
        raise PermissionDeniedError(
            f"{ctx.user} {made} and cannot also give it {weight}% of the traffic (four eyes): "
            f"another approver must, or keep it at {MAX_UNAPPROVED_WEIGHT}% or less",
            action="model.approve",
        )
    if not _has_passing(platform, s, row, "gates"):
        raise GateFailedError(
            f"{spec} has no passing gate run: `yard gates check {spec} --policy gates.yaml` first, or keep "
            f"it at {MAX_UNAPPROVED_WEIGHT}% of the traffic or less"
        )


def current(platform: Platform, ctx: Context, name: str) -> DeploymentInfo | None:
    """The deployment servers of ``name`` follow (None: only the stable version)."""
    with platform.db.read() as s:
        row = s.execute(
            select(Deployment).where(Deployment.project_id == ctx.project_id, Deployment.model == name)
        ).scalar_one_or_none()
        return _info(row) if row is not None else None


def deployed_since(platform: Platform, ctx: Context, name: str, version: int, since: datetime) -> bool:
    """Whether ``version`` of ``name`` was deployed as a candidate (any mode but off) at or after ``since``,
    whatever came after it (a rollback, another candidate). The deployments row holds only the present;
    the history is the audit chain, where every committed deploy wrote its record in its own transaction."""
    from modelyard.core._models import AuditRecord

    stamp = as_utc(since).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the chain's format: ISO text sorts by time
    with platform.db.read() as s:
        details = s.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.action == "model.deploy",
                AuditRecord.resource == f"deployment:{name}",
                AuditRecord.project == ctx.project,
                AuditRecord.outcome == "ok",
                AuditRecord.ts >= stamp,
            )
        )
        for text in details:
            detail = json.loads(text)
            if detail.get("version") == version and detail.get("mode", "off") != "off":
                return True
    return False


def rollback_candidate(platform: Platform, ctx: Context, name: str, key: int, reason: str) -> bool:
    """A server's automatic rollback of a candidate that breached its SLOs: switch the deployment off if the
    candidate the server judged (window ``key``, its ``candidate_generation``) is still deployed, whatever
    weight or mode changes came since, and audit it with the reason. Not authorised against the server's
    role on purpose: any server of the model may take its own candidate out of traffic, never put one in.
    Returns whether this call switched it off (False: already off, or another candidate is deployed)."""
    detail: dict[str, Any] = {"automatic": True, "reason": reason, "candidate_generation": key}
    with platform.db.write() as s:
        result: Any = s.execute(
            update(Deployment)
            .where(
                Deployment.project_id == ctx.project_id,
                Deployment.model == name,
                Deployment.candidate_generation == key,
                Deployment.mode != "off",
            )
            .values(
                mode="off",
                candidate=None,
                candidate_generation=None,
                weight=0,
                generation=Deployment.generation + 1,
                reason=f"automatic rollback: {reason}",
                updated_at=utcnow(),
                updated_by=ctx.user,
            )
        )
        changed = int(result.rowcount or 0)
        if changed:
            _forget_outcomes(s, ctx, name, keep=None)
            platform.audit(ctx, "model.deploy", f"deployment:{name}", "ok", detail, session=s)
    return bool(changed)


def _forget_outcomes(s: Session, ctx: Context, name: str, *, keep: int | None) -> None:
    """Shared canary outcomes of candidates that are no longer deployed go with their deployment."""
    where = [CanaryOutcome.project_id == ctx.project_id, CanaryOutcome.model == name]
    if keep is not None:
        where.append(CanaryOutcome.generation != keep)
    s.execute(delete(CanaryOutcome).where(*where))


# -- the canary's SLO window, pooled by every worker and replica of a model ---------------------------------
# A row is one server's outcomes over about share_s. Rows are data other processes wrote, so each is
# checked before it counts: one no server could have written (negative counts, more errors than requests,
# NaN, a huge list) is skipped, so a broken writer can neither hide a breach that way nor break the p95.
# Rows dated ahead of the store's clock are ignored and deleted. The store's writers are trusted beyond
# that: whoever can write plausible rows can also deploy.
MAX_ROW_REQUESTS = 10_000_000
MAX_ROW_TEXT = SHARED_LATENCIES * 24
FUTURE = timedelta(seconds=60)


def add_outcomes(
    platform: Platform, ctx: Context, name: str, key: int, server: str, mine: Shared, *, window_s: float
) -> None:
    """Record this server's new outcomes of ``name``'s candidate (window ``key``); rows older than two
    windows, or dated in the future, go on the way. Like rollback_candidate, not authorised against the
    server's role: it only informs the servers' own SLO checks."""
    latencies = mine.latencies
    if len(latencies) > SHARED_LATENCIES:
        latencies = random.sample(latencies, SHARED_LATENCIES)
    with platform.db.write() as s:
        now = platform.db.now()
        s.add(
            CanaryOutcome(
                project_id=ctx.project_id,
                model=name,
                generation=key,
                server=server,
                ts=now,
                requests=mine.requests,
                errors=mine.errors,
                latencies=json.dumps([round(ms, 2) for ms in latencies]),
            )
        )
        s.execute(
            delete(CanaryOutcome).where(
                CanaryOutcome.project_id == ctx.project_id,
                CanaryOutcome.model == name,
                or_(
                    CanaryOutcome.ts < now - timedelta(seconds=2 * window_s),
                    CanaryOutcome.ts > now + FUTURE,
                ),
            )
        )


def other_outcomes(
    platform: Platform, ctx: Context, name: str, key: int, server: str, *, window_s: float
) -> tuple[list[Shared], int]:
    """The other servers' rows of window ``key`` from the last ``window_s`` seconds, and how many rows were
    skipped as malformed."""
    with platform.db.read() as s:  # a plain read: an idle server takes no write lock every second
        now = platform.db.now()
        rows = s.execute(
            select(CanaryOutcome.requests, CanaryOutcome.errors, CanaryOutcome.latencies)
            .where(
                CanaryOutcome.project_id == ctx.project_id,
                CanaryOutcome.model == name,
                CanaryOutcome.generation == key,
                CanaryOutcome.server != server,
                CanaryOutcome.ts >= now - timedelta(seconds=window_s),
                CanaryOutcome.ts <= now + FUTURE,
            )
            .order_by(CanaryOutcome.id)
        ).all()
    valid = [_parse_row(n, errors, text) for n, errors, text in rows]
    return [r for r in valid if r is not None], sum(r is None for r in valid)


def _parse_row(n: object, errors: object, text: object) -> Shared | None:
    if not (isinstance(n, int) and isinstance(errors, int) and 0 <= errors <= n <= MAX_ROW_REQUESTS):
        return None
    if not isinstance(text, str) or len(text) > MAX_ROW_TEXT:
        return None
    try:
        values = json.loads(text)
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) > min(n - errors, SHARED_LATENCIES):
        return None
    latencies = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            return None
        latencies.append(float(v))
    return Shared(n, errors, latencies)


async def share_window(platform: Platform, ctx: Context, name: str, window: SloWindow, server: str) -> None:
    """One turn of a server's share loop for one model: store this server's new outcomes, then fetch the
    others'. The window is touched only here, on the event loop; the store is called in a thread. Outcomes
    are offered again only when storing them failed (a failed fetch after a stored row would otherwise
    store them twice); a failed fetch leaves the window to this server's own outcomes."""
    window_s = window.slo.window_s
    mine = window.take_unshared()
    if mine.requests:
        try:
            await asyncio.to_thread(
                add_outcomes, platform, ctx, name, window.key, server, mine, window_s=window_s
            )
        except Exception as exc:
            window.untake(mine)
            log.warning("serving %s: could not store canary outcomes: %s", name, exc)
    try:
        others, skipped = await asyncio.to_thread(
            other_outcomes, platform, ctx, name, window.key, server, window_s=window_s
        )
    except Exception as exc:
        window.set_others([])
        log.warning("serving %s: could not read other servers' canary outcomes: %s", name, exc)
        return
    window.set_others(others)
    if skipped and not window.warned:
        window.warned = True
        log.warning("serving %s: skipped %d malformed canary outcome rows in the store", name, skipped)
