"""Deployments: what a model's servers route besides its stable version (the alias they serve).

``yard deploy NAME --version V --weight 10 --mode canary`` records the decision in the metadata store;
every server (worker, replica) polls it and follows: it loads and warms the candidate, then routes
``weight`` percent of requests to it (``ab``, ``canary``: sticky by request key) or copies every request to
it without answering with it (``shadow``). ``--mode off`` removes the candidate. A canary that breaches its
SLOs is switched off by the server that saw it (audited with the reason); the others follow on their next
poll. Changing a deployment needs the engineer role (``model.deploy``), like moving an alias.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from modelyard.core._db import insert_for
from modelyard.core._models import CanaryOutcome, Deployment
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import UsageError
from modelyard.serving._routing import Shared

# Latencies kept per shared row: a p95 from a uniform sample of this many is within a few ms of the
# exact one, and a row stays small whatever the traffic.
SHARED_LATENCIES = 1000

MODES = ("ab", "canary", "shadow", "off")


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
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise UsageError(f"weight must be a whole percentage from 0 to 100, got {weight!r}")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise UsageError("reason: at most 1000 characters")
    except UsageError as exc:
        raise platform.refuse(ctx, "model.deploy", resource, exc) from None
    candidate = None if mode == "off" else version
    detail: dict[str, Any] = {"mode": mode, "version": candidate, "weight": weight}
    with platform.mutate(ctx, "model.deploy", resource, detail) as s:
        if candidate is not None:
            resolve_row(s, ctx, f"{name}@{candidate}")  # the version must exist in this project
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
                reason=reason,
                updated_at=now,
                updated_by=ctx.user,
            )
        )
        row = s.get(Deployment, (ctx.project_id, name))
        assert row is not None
        return _info(row)


def current(platform: Platform, ctx: Context, name: str) -> DeploymentInfo | None:
    """The deployment servers of ``name`` follow (None: only the stable version)."""
    with platform.db.read() as s:
        row = s.execute(
            select(Deployment).where(Deployment.project_id == ctx.project_id, Deployment.model == name)
        ).scalar_one_or_none()
        return _info(row) if row is not None else None


def rollback_candidate(platform: Platform, ctx: Context, name: str, generation: int, reason: str) -> bool:
    """A server's automatic rollback of a candidate that breached its SLOs: switch the deployment off if it
    is still the one the server followed (``generation``), and audit it with the reason. Not authorised
    against the server's role on purpose: any server of the model may take its own candidate out of
    traffic, never put one in. Returns whether this call switched it off."""
    detail: dict[str, Any] = {"automatic": True, "reason": reason, "generation": generation}
    with platform.db.write() as s:
        result: Any = s.execute(
            update(Deployment)
            .where(
                Deployment.project_id == ctx.project_id,
                Deployment.model == name,
                Deployment.generation == generation,
                Deployment.mode != "off",
            )
            .values(
                mode="off",
                candidate=None,
                weight=0,
                generation=Deployment.generation + 1,
                reason=f"automatic rollback: {reason}",
                updated_at=utcnow(),
                updated_by=ctx.user,
            )
        )
        changed = int(result.rowcount or 0)
        if changed:
            platform.audit(ctx, "model.deploy", f"deployment:{name}", "ok", detail, session=s)
    return bool(changed)


def share_outcomes(
    platform: Platform,
    ctx: Context,
    name: str,
    generation: int,
    server: str,
    mine: Shared,
    *,
    window_s: float,
) -> list[Shared]:
    """Record this server's new outcomes of ``name``'s candidate (deployment ``generation``) and return the
    other servers' rows of the last ``window_s`` seconds, so that every worker and replica judges the canary
    on the same requests. Rows older than two windows go whenever rows are added. Like rollback_candidate,
    not authorised against the server's role: it only informs the servers' own SLO checks."""
    now = utcnow()
    if mine.requests:
        latencies = mine.latencies
        if len(latencies) > SHARED_LATENCIES:
            latencies = random.sample(latencies, SHARED_LATENCIES)
        with platform.db.write() as s:
            s.add(
                CanaryOutcome(
                    project_id=ctx.project_id,
                    model=name,
                    generation=generation,
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
                    CanaryOutcome.ts < now - timedelta(seconds=2 * window_s),
                )
            )
    with platform.db.read() as s:  # an idle server only reads: no write lock every second
        rows = s.execute(
            select(CanaryOutcome.ts, CanaryOutcome.requests, CanaryOutcome.errors, CanaryOutcome.latencies)
            .where(
                CanaryOutcome.project_id == ctx.project_id,
                CanaryOutcome.model == name,
                CanaryOutcome.generation == generation,
                CanaryOutcome.server != server,
                CanaryOutcome.ts >= now - timedelta(seconds=window_s),
            )
            .order_by(CanaryOutcome.id)
        ).all()
    # float() of each: a malformed row fails this share (logged by the caller), never a request's SLO check.
    return [
        Shared(as_utc(ts).timestamp(), int(n), int(errors), [float(ms) for ms in json.loads(lat)])
        for ts, n, errors, lat in rows
    ]
