"""SQLAlchemy 2 ORM models of the metadata store. Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Store-wide facts (region, owner) written by ``yard init``."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    region: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class Membership(Base):
    """A user's role in one project. Roles are per project: tenants never share permissions."""

    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))


class Token(Base):
    """API token. Only a SHA-256 of the secret is kept; the token itself is shown once."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))


class AuditRecord(Base):
    """Append-only, hash-chained. ``seq`` is assigned under the head lock, so it has no gaps."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[str] = mapped_column(String(32), index=True)  # ISO-8601 UTC, part of the hash
    actor: Mapped[str] = mapped_column(String(160), index=True)
    project: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the last sequence number and hash. Locking it serialises appends on every backend,
    and comparing it with the log's tail reveals deleted trailing records."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class Blob(Base):
    """One stored, encrypted payload per plaintext digest. The wrapped data key lives here, not in the
    object, so rotating the master key is one transaction and never rewrites payloads. A packed blob
    (small files of a dataset add) is the byte range ``pack_offset``/``pack_length`` of the shared
    object ``object_name``; an unpacked one (both NULL) is the whole object."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    object_name: Mapped[str] = mapped_column(String(256), index=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    region: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pack_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pack_length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CondemnedObject(Base):
    """An object no blob row named that a collection is deleting or has deleted (``yard gc``). Kept: a writer
    that uploaded it and has not claimed it yet must find it here, inside its own transaction, and give up."""

    __tablename__ = "condemned_objects"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    condemned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Artifact(Base):
    """A project's reference to a blob. Access control is by project: a digest alone opens nothing."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("project_id", "digest", "name", name="uq_artifact_ref"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    region: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


# -- tracking (issue 3) ---------------------------------------------------------------------------------
_BIGINT = BigInteger().with_variant(Integer, "sqlite")


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_experiment_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


class Run(Base):
    """One execution. ``heartbeat_at`` and ``stale_at`` are refreshed by the owning process; a RUNNING run
    past its ``stale_at`` is reaped to FAILED, so a killed process never leaves a run RUNNING."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), index=True)
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # heartbeat_at + the owning process's timeout: each process may set its own (long pauses)
    stale_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user: Mapped[str] = mapped_column(String(160))
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class RunParam(Base):
    __tablename__ = "run_params"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunTag(Base):
    __tablename__ = "run_tags"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunMetric(Base):
    """Every logged point. ``value`` is NULL for NaN (SQLite cannot store NaN); ``ts`` is epoch ms."""

    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_key_step", "run_id", "key", "step"),)
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float | None] = mapped_column(Double, nullable=True)
    step: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[int] = mapped_column(BigInteger)


class RunLatestMetric(Base):
    """The point with the highest (step, ts) per run and key: what search filters and sorts on."""

    __tablename__ = "run_latest_metrics"
    # Search: metric conditions and sorts read (key, value) ranges of this index, never the table.
    __table_args__ = (Index("ix_run_latest_metrics_key_value", "key", "value", "run_id"),)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[float | None] = mapped_column(Double, nullable=True)
    step: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[int] = mapped_column(BigInteger)


class MetricBatch(Base):
    """Idempotency key of a flushed metric batch: a retry after a lost commit acknowledgement finds its
    batch id already recorded and writes nothing twice."""

    __tablename__ = "metric_batches"
    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)


class RunArtifact(Base):
    __tablename__ = "run_artifacts"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- datasets (issue 3) ---------------------------------------------------------------------------------
class Dataset(Base):
    """``last_version`` is bumped in the transaction that adds a version: numbers are gapless, never
    reused after a delete, and concurrent adds serialise on this row."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_dataset_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(64))
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


class DatasetVersion(Base):
    """A manifest (JSON lines of path, size, sha256, sorted by path) stored as a blob, plus the profile
    (schema and statistics of tabular members, JSON) used by diff and as the drift reference."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="uq_dataset_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    manifest_digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"))
    files: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text, default="")
    region: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(Text, default="{}")
    source_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


# -- lineage (issue 3) ----------------------------------------------------------------------------------
class LineageEdge(Base):
    """``src`` -> ``dst`` between object references such as ``dataset:name@3``, ``run:<id>``,
    ``artifact:<sha256>`` and, later, ``model:name@2`` and ``deployment:...``."""

    __tablename__ = "lineage_edges"
    __table_args__ = (UniqueConstraint("project_id", "src", "dst", "relation", name="uq_lineage_edge"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    src: Mapped[str] = mapped_column(String(300), index=True)
    dst: Mapped[str] = mapped_column(String(300), index=True)
    relation: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


# -- job queue (issue 4) --------------------------------------------------------------------------------
class Job(Base):
    """A queued command (``train``, ``tune`` or ``eval`` of a stored recipe). Workers claim QUEUED rows
    with ``SELECT ... FOR UPDATE SKIP LOCKED`` (SQLite: inside ``BEGIN IMMEDIATE``), highest ``priority``
    first, then oldest; the claiming worker refreshes ``heartbeat_at``, and a RUNNING job whose heartbeat
    is stale goes back to QUEUED (``retries`` + 1) or to FAILED past ``max_retries``. ``attempts`` counts
    claims. ``backend`` is ``local`` (the queue) or ``kubernetes`` (handed to a cluster, never claimed)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_queue", "project_id", "status", "priority", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    command: Mapped[str] = mapped_column(String(16))
    args: Mapped[str] = mapped_column(Text)  # JSON list of strings
    recipe: Mapped[str] = mapped_column(Text)  # the YAML text, validated at submit
    recipe_name: Mapped[str] = mapped_column(String(256))
    backend: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str | None] = mapped_column(String(320), nullable=True)  # namespace/name
    cluster: Mapped[str | None] = mapped_column(String(512), nullable=True)  # the API server it went to
    cluster_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its Job's metadata.uid
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[float] = mapped_column(Double)
    gpus: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(BigInteger)  # bytes; 0 = not stated
    max_retries: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_by: Mapped[str] = mapped_column(String(160))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When a RUNNING job counts as lost: set with each heartbeat by its worker, by that worker's timeout.
    stale_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobLog(Base):
    """A chunk of a job's combined stdout and stderr, in ``id`` order per job (one writer per attempt)."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[str] = mapped_column(Text)


# -- model registry (issue 5) ---------------------------------------------------------------------------
class SigningKey(Base):
    """An Ed25519 key of the installation. The private half is wrapped by the master key like a data key
    (and re-wrapped by a rotation); the public half is here for anyone to verify with. ``meta.signing_key``
    names the key new signatures use; retired keys still verify old ones."""

    __tablename__ = "signing_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # first 32 hex of sha256(public key)
    public_key: Mapped[str] = mapped_column(String(64))  # raw 32 bytes, hex
    master_key_id: Mapped[str] = mapped_column(String(32))
    wrapped_private: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


class RegisteredModel(Base):
    """A named model of a project. ``last_version`` is bumped in the transaction that registers a version
    (as for datasets): numbers are gapless, never reused, and concurrent registrations serialise here."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_model_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


class ModelVersion(Base):
    """An immutable version: a signed manifest (canonical JSON stored as a blob) of its files, lineage,
    evaluation and benchmark. The columns repeat what listing and search need; the manifest is the truth
    and ``verify`` checks the columns against it. Nothing updates a row after it is written."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    manifest_digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"))
    signature: Mapped[str] = mapped_column(String(128))  # Ed25519 over the manifest bytes, hex
    key_id: Mapped[str] = mapped_column(ForeignKey("signing_keys.id"))
    format: Mapped[str] = mapped_column(String(16))  # safetensors | onnx
    variant: Mapped[str] = mapped_column(String(64))  # fp32, onnx-fp32, onnx-int8, pruned-0.3, distilled
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    files: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON: overall evaluation metrics
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


class ModelAlias(Base):
    """``alias`` of a model points at one of its versions; every change is also an AliasEvent. ``body`` is
    canonical JSON naming the version's manifest digest and the versions a rollback returns to, signed like
    manifests: resolving the alias checks it, so a database edit cannot repoint it (NULL: made before
    2026-12-07, refused until the alias is pointed again)."""

    __tablename__ = "model_aliases"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(160))
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class AliasEvent(Base):
    """The alias history, append-only: ``set`` and ``promote`` push a version, ``rollback`` pops one,
    ``delete`` clears the alias. Rollback targets are derived by replaying it."""

    __tablename__ = "model_alias_events"
    __table_args__ = (Index("ix_alias_events", "model_id", "alias", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # what the alias points at after
    previous: Mapped[int | None] = mapped_column(Integer, nullable=True)  # ... and before
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(160))


class Attestation(Base):
    """A signed statement about a version, e.g. the result of its quality gates: ``body`` is canonical
    JSON naming the version's manifest digest, signed like manifests."""

    __tablename__ = "model_attestations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # gates
    passed: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(ForeignKey("signing_keys.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(160))


# -- serving and monitoring (issue 6) ----------------------------------------------------------------------
class Deployment(Base):
    """What servers of a model should route besides its stable version: a candidate version with a traffic
    weight and a mode (``ab``, ``canary``, ``shadow``; ``off`` for none). Servers poll it, so every worker
    and replica follows one decision; ``generation`` increases with every change."""

    __tablename__ = "deployments"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    candidate: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weight: Mapped[int] = mapped_column(Integer)  # percent of traffic (ab, canary); shadow copies all
    generation: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(160))
    # The generation that put the current candidate in; its shared SLO window's key (CanaryOutcome).
    candidate_generation: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Prediction(Base):
    """A served prediction (sampled), inputs and outputs with PII redacted, for drift and feedback."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_model_ts", "project_id", "model", "ts"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the request id (+ input index)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    route: Mapped[str] = mapped_column(String(16))  # stable, candidate, shadow
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Double)


class Feedback(Base):
    """Ground truth for a served prediction, posted by the client that asked for it."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_model_ts", "project_id", "model", "ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    prediction_id: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(160))


class CanaryOutcome(Base):
    """One server's candidate outcomes over about a second, so that every worker and replica of a model judges
    its canary on the same window (a breach shows after ``min_requests`` in all, not in each)."""

    __tablename__ = "canary_outcomes"
    __table_args__ = (Index("ix_canary_outcomes_model", "project_id", "model", "generation", "ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer)  # the candidate's Deployment.candidate_generation
    server: Mapped[str] = mapped_column(String(96))  # host:pid:nonce of the worker that saw them
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latencies: Mapped[str] = mapped_column(Text)  # JSON list of the successful requests' ms (sampled if many)
