"""Roles and the one permission table. Every service asks :func:`allowed`; nothing else decides."""

from __future__ import annotations

from enum import IntEnum

from modelyard.errors import UsageError


class Role(IntEnum):
    """Ordered: a role can do everything the roles below it can."""

    VIEWER = 10
    SCIENTIST = 20
    ENGINEER = 30
    APPROVER = 40
    ADMIN = 50

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        if isinstance(value, Role):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise UsageError(f"unknown role {value!r}; expected one of: {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


# action -> least role allowed to perform it (in the actor's project). Later stages add their actions here.
PERMISSIONS: dict[str, Role] = {
    "project.read": Role.VIEWER,
    "project.create": Role.ADMIN,
    "artifact.read": Role.VIEWER,
    "artifact.write": Role.SCIENTIST,
    "artifact.delete": Role.ENGINEER,
    "artifact.gc": Role.ADMIN,  # installation-wide: blobs are shared by every project
    "user.read": Role.VIEWER,
    "user.manage": Role.ADMIN,
    "token.create.self": Role.VIEWER,
    "token.revoke.self": Role.VIEWER,
    "token.manage": Role.ADMIN,
    "audit.read": Role.APPROVER,
    "key.read": Role.VIEWER,
    "key.rotate": Role.ADMIN,
    "run.read": Role.VIEWER,
    "run.write": Role.SCIENTIST,
    "run.delete": Role.ENGINEER,
    "dataset.read": Role.VIEWER,
    "dataset.write": Role.SCIENTIST,
    "dataset.delete": Role.ENGINEER,
    "dataset.delete.force": Role.ADMIN,
    "lineage.read": Role.VIEWER,
    # Registry: register versions and attest gate results as a scientist; move aliases (and roll them back)
    # as an engineer; protected aliases (production) move only by an approver's gated promotion.
    "model.read": Role.VIEWER,
    # Serving: a client's token predicts and posts feedback (telemetry, not audited one by one); changing what
    # servers route (deploy a canary, roll it back) is an engineer's, like moving an alias.
    "model.predict": Role.VIEWER,
    "model.register": Role.SCIENTIST,
    "model.deploy": Role.ENGINEER,
    "model.approve": Role.APPROVER,
    # Job queue: submit and cancel your own jobs as a scientist; cancelling someone else's job and running
    # a worker (which executes queued jobs with the worker's own identity) are operations work.
    "job.read": Role.VIEWER,
    "job.write": Role.SCIENTIST,
    "job.cancel": Role.SCIENTIST,
    "job.cancel.any": Role.ENGINEER,
    "worker.run": Role.ENGINEER,
}


def required_role(action: str) -> Role:
    try:
        return PERMISSIONS[action]
    except KeyError:
        # An unknown action is a programming error; refusing is the safe default.
        raise UsageError(f"unknown action {action!r}: add it to modelyard.core PERMISSIONS") from None


def allowed(role: Role, action: str) -> bool:
    return role >= required_role(action)
