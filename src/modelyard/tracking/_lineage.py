"""The lineage graph: edges between object references, recorded inside the writes that create them.

References are strings with a kind prefix: ``dataset:name@3``, ``run:<id>``, ``artifact:<sha256>`` and,
from the registry on, ``model:name@2`` and ``deployment:...``. An edge ``src -> dst`` says dst was made
from (or with) src. Edges belong to a project; nothing crosses tenants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from modelyard.core._db import insert_for
from modelyard.core._models import (
    Dataset,
    DatasetVersion,
    LineageEdge,
    ModelVersion,
    RegisteredModel,
    Run,
)
from modelyard.core._platform import Context, Platform, utcnow
from modelyard.errors import NotFoundError, UsageError

KINDS = ("dataset", "run", "artifact", "model", "deployment")
_REF_RE = re.compile(r"^(?P<kind>[a-z]+):(?P<id>[A-Za-z0-9][A-Za-z0-9._@:/-]{0,290})\Z")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")
_VERSIONED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}@[0-9]+\Z")
# How edges spell a version (dataset_ref, model_ref): 1-9 digits, no leading zero.
_VERSION_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})@(?P<number>[1-9][0-9]{0,8})\Z")
MAX_DEPTH = 50
_CHUNK = 10_000  # references per IN list, well under every backend's bound-parameter limit


def dataset_ref(name: str, version: int) -> str:
    return f"dataset:{name}@{version}"


def run_ref(run_id: str) -> str:
    return f"run:{run_id}"


def artifact_ref(digest: str) -> str:
    return f"artifact:{digest}"


def model_ref(name: str, version: int) -> str:
    return f"model:{name}@{version}"


def parse_ref(text: str) -> str:
    """Canonical reference for what a user typed: ``kind:id``, a bare run id, a bare sha256 (artifact) or
    ``name@N`` (dataset version)."""
    if not isinstance(text, str) or not text:
        raise UsageError("expected an object reference such as dataset:name@3, run:<id> or artifact:<sha256>")
    if _RUN_ID_RE.match(text):
        return run_ref(text)
    if _DIGEST_RE.match(text):
        return artifact_ref(text)
    if _VERSIONED_RE.match(text):
        return f"dataset:{text}"
    m = _REF_RE.match(text)
    if m is None or m["kind"] not in KINDS:
        raise UsageError(
            f"{text!r} is not an object reference; expected one of "
            + ", ".join(f"{k}:..." for k in KINDS)
            + " (e.g. dataset:name@3, run:<32-hex id>, artifact:<sha256>)"
        )
    return text


def add_edges(s: Session, ctx: Context, edges: Iterable[tuple[str, str, str]]) -> None:
    """Record (src, dst, relation) edges in the caller's transaction; an edge already present is kept."""
    now = utcnow()
    rows = [
        {
            "project_id": ctx.project_id,
            "src": parse_ref(src),
            "dst": parse_ref(dst),
            "relation": relation,
            "created_at": now,
            "created_by": ctx.user,
        }
        for src, dst, relation in edges
    ]
    if not rows:
        return
    insert = insert_for(s)
    for i in range(0, len(rows), 500):
        s.execute(insert(LineageEdge).values(rows[i : i + 500]).on_conflict_do_nothing())


@dataclass
class LineageNode:
    ref: str
    relation: str = ""
    children: list[LineageNode] = field(default_factory=list)
    truncated: bool = False  # depth limit reached or already shown above (cycles, shared inputs)


def _walk(s: Session, project_id: int, ref: str, *, upstream: bool, depth: int) -> LineageNode:
    root = LineageNode(ref)
    seen = {ref}
    frontier = [root]
    for _ in range(depth):
        if not frontier:
            break
        by_ref = {n.ref: n for n in frontier}
        near, far = (LineageEdge.dst, LineageEdge.src) if upstream else (LineageEdge.src, LineageEdge.dst)
        refs = list(by_ref)
        rows: list[Any] = []
        # In chunks: a dataset version read by 66,000 runs made one IN list over PostgreSQL's limit of
        # 65,535 bound parameters, and the walk (`yard lineage show`, `yard data rm`) failed.
        for i in range(0, len(refs), _CHUNK):
            rows += s.execute(
                select(LineageEdge.id, near, far, LineageEdge.relation).where(
                    LineageEdge.project_id == project_id, near.in_(refs[i : i + _CHUNK])
                )
            ).all()
        rows.sort(key=lambda row: row[0])
        frontier = []
        for _, here, there, relation in rows:
            child = LineageNode(there, relation)
            by_ref[here].children.append(child)
            if there in seen:
                child.truncated = True
            else:
                seen.add(there)
                frontier.append(child)
    # The depth limit cut these; say so of those that have more (one query per chunk, not per node).
    more = _with_edges(s, project_id, [n.ref for n in frontier], upstream=upstream)
    for n in frontier:
        n.truncated = n.truncated or n.ref in more
    return root


def _with_edges(s: Session, project_id: int, refs: list[str], *, upstream: bool) -> set[str]:
    col = LineageEdge.dst if upstream else LineageEdge.src
    out: set[str] = set()
    for i in range(0, len(refs), _CHUNK):
        out.update(
            s.scalars(
                select(col)
                .distinct()
                .where(LineageEdge.project_id == project_id, col.in_(refs[i : i + _CHUNK]))
            )
        )
    return out


def lineage(
    platform: Platform, ctx: Context, ref: str, *, depth: int = 10
) -> tuple[LineageNode, LineageNode]:
    """(upstream tree, downstream tree) of ``ref`` in ctx's project."""
    ref = parse_ref(ref)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise UsageError(f"depth must be an integer between 1 and {MAX_DEPTH}, got {depth!r}")
    platform.authorize(ctx, "lineage.read", ref)
    with platform.db.read() as s:
        up = _walk(s, ctx.project_id, ref, upstream=True, depth=depth)
        down = _walk(s, ctx.project_id, ref, upstream=False, depth=depth)
        # Edges outlive what they name (a removed version keeps its history), so only an object with no
        # edges at all is looked up: a typo must not read as "nothing recorded".
        if not up.children and not down.children and _exists(s, ctx.project_id, ref) is False:
            listing = {"dataset": "yard data ls", "run": "yard runs ls", "model": "yard models ls"}
            hint = listing[ref.partition(":")[0]]
            raise NotFoundError(f"{ref} not found in project {ctx.project!r}; list what exists with `{hint}`")
        return up, down


def _exists(s: Session, project_id: int, ref: str) -> bool | None:
    """Whether the dataset version, run or model version ``ref`` exists in the project; None for kinds
    that have no row of their own to look up (artifacts, deployments)."""
    kind, _, ident = ref.partition(":")
    q: Select[Any]
    if kind == "run":
        q = select(Run.id).where(Run.project_id == project_id, Run.id == ident)
    elif kind in ("dataset", "model"):
        m = _VERSION_RE.match(ident)
        if m is None:  # no version is spelled so (a number past any row's would not even bind in SQLite)
            return False
        name, number = m["name"], int(m["number"])
        if kind == "dataset":
            q = (
                select(DatasetVersion.id)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(Dataset.project_id == project_id, Dataset.name == name)
                .where(DatasetVersion.version == number)
            )
        else:
            q = (
                select(ModelVersion.id)
                .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
                .where(RegisteredModel.project_id == project_id, RegisteredModel.name == name)
                .where(ModelVersion.version == number)
            )
    else:
        return None
    return s.execute(q.limit(1)).first() is not None


def downstream_refs(s: Session, project_id: int, ref: str, *, depth: int = MAX_DEPTH) -> set[str]:
    """Every reference reachable downstream of ``ref`` (e.g. the models built from a dataset version)."""
    out: set[str] = set()

    def visit(node: LineageNode) -> None:
        for c in node.children:
            out.add(c.ref)
            visit(c)

    visit(_walk(s, project_id, ref, upstream=False, depth=depth))
    return out
