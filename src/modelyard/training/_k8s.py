"""Kubernetes backend of the job queue: a ``batch/v1`` Job manifest for a submission, applied with the
official ``kubernetes`` client (optional: ``pip install 'modelyard[k8s]'``).

The pod needs nothing from the submitting machine: the recipe travels in a pod annotation, mounted as a
file through a downward-API volume; the stores are reached through their URLs (PostgreSQL and an
S3-compatible bucket: a SQLite file or a local folder on the submitter's disk would be unreachable); and
every secret is a reference to a Kubernetes Secret (``secretKeyRef``), never a value: the master key, the
API token the job acts with, the database password (libpq reads ``PGPASSWORD``; it is removed from the
URL) and the S3 credentials.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from modelyard.core._home import _SECRET_PARAMS
from modelyard.core._platform import Context, Platform
from modelyard.core._redact import redact_url
from modelyard.errors import BackendError, ConfigError, UsageError, ValidationError

log = logging.getLogger("modelyard.jobs")
RECIPE_ANNOTATION = "modelyard.dev/recipe"
# A nonce per submission on the Job: a create that got no answer is ours only if the Job found carries it.
SUBMISSION_ANNOTATION = "modelyard.dev/submission"
POD_NAME_ENV = "YARD_POD_NAME"  # the pod's name (downward API), expanded by Kubernetes in the command
RECIPE_DIR = "/etc/modelyard"
WORK_DIR = "/work"
# The Secret's keys and the environment variables they become. Optional ones may be missing from it.
SECRET_KEYS: tuple[tuple[str, str, bool], ...] = (
    ("YARD_MASTER_KEY", "master-key", False),
    ("YARD_TOKEN", "token", False),
    ("PGPASSWORD", "database-password", True),
    ("AWS_ACCESS_KEY_ID", "aws-access-key-id", True),
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key", True),
)
MAX_RECIPE_ANNOTATION = 200_000  # bytes: Kubernetes allows 256 KiB of annotations (UTF-8) per object
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
# A DNS subdomain (at most 253 characters): dot-separated DNS labels. "a..b" passed a looser pattern and the
# API server refused the Job.
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
# The image reference grammar of the kubelet and Docker (distribution/reference): a repository in upper
# case, an empty tag or a short digest passed a looser pattern, and the pod then waited in InvalidImageName
# for ever. The optional registry host may have capitals and a port; the repository path may not.
_HOST_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z"
)


def _image_name(image: str) -> str:
    """The repository of an image reference (host and path), without its tag and digest."""
    name = image.partition("@")[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name


def _label(value: str) -> str:
    """A valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:63].strip("._-")
    return cleaned or "x"


def cpu_quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def memory_quantity(n: int) -> str:
    for suffix, size in (("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


# Memory of a Kubernetes job submitted without --memory: per CPU asked for (the ratio of general-purpose
# cloud nodes), at least MIN. A pod must have a limit: without one a runaway job can take its node.
MEMORY_PER_CPU = 4 << 30
MIN_MEMORY = 1 << 30
# What the pod's own worker process (Python, SQLAlchemy, the store client) needs beside the job: the
# container is given the job's memory plus this, so the worker stops a job that outgrows its share with
# "memory limit exceeded" before the kernel's OOM killer takes the job (or the worker) without a word.
WORKER_MEMORY = 256 << 20


def default_memory(cpus: float) -> int:
    """Bytes a Kubernetes job gets without ``--memory``: 4 GiB per CPU (whole MiB), at least 1 GiB."""
    return max(MIN_MEMORY, math.ceil(cpus * (MEMORY_PER_CPU >> 20)) << 20)


def cluster_database_url(url: str) -> str:
    """The database URL the pods use, without its password (that comes from the Secret as PGPASSWORD).
    Only PostgreSQL: a SQLite file on this machine is not reachable from a cluster."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            f"database URL {redact_url(url)!r} is not a URL; expected postgresql://USER@HOST/DB"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise UsageError(
            f"the kubernetes backend needs a PostgreSQL metadata store that the cluster can reach, not "
            f"{parsed.get_backend_name()}; pass --cluster-database-url postgresql://USER@HOST/DB "
            "(or set YARD_DATABASE_URL)"
        )
    if any(k.lower() in _SECRET_PARAMS for k in parsed.query):  # password, sslpassword, ...
        raise UsageError(
            "put the database password in the Secret (key database-password), not in the URL query"
        )
    # URL.set(password=None) means "unchanged"; the named-tuple _replace really drops it.
    return parsed._replace(password=None).render_as_string(hide_password=False)


def _split(url: str, what: str) -> Any:
    try:
        return urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": an unpaired bracket or a bad literal
        raise UsageError(f"the {what} {url!r} is not a valid URL") from None


def cluster_artifact_uri(uri: str) -> str:
    parts = _split(uri, "artifact store URI")
    # No user info (a credential would be a plain value in the manifest); no query or fragment, which the
    # artifact store refuses, so the pod could only fail.
    if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc or parts.query or parts.fragment:
        raise UsageError(
            f"the kubernetes backend needs an S3-compatible artifact store that the cluster can reach, "
            f"not {redact_url(uri)!r}; pass --cluster-artifact-uri s3://BUCKET/PREFIX "
            "(or set YARD_ARTIFACT_URI)"
        )
    return uri


def cluster_s3_endpoint(url: str) -> str:
    """The S3 endpoint URL as the pods get it: a plain value in the manifest, so it must carry no credentials
    (they come from the Secret as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."""
    keys = [k.lower() for k, _ in parse_qsl(_split(url, "S3 endpoint URL").query, keep_blank_values=True)]
    if "@" in url or any(k in _SECRET_PARAMS for k in keys):
        raise UsageError("the S3 endpoint URL carries credentials; put them in the Secret instead")
    return url


def container_command(req: Any, job_id: int | None) -> list[str]:
    """A recorded job's pod runs ``yard worker --job ID``: the worker runs the job's command from the job's
    row and mirrors it there (RUNNING, the log, the exit code, heartbeats; ``--resume`` on a retried train
    job), and also prints the output for ``kubectl logs``. A dry-run manifest has no row: its pod runs the
    command on the mounted recipe and the store knows nothing of it."""
    if job_id is not None:  # named after its pod (POD_NAME_ENV), which the reaper's reasons then name
        return [
            "python",
            "-m",
            "modelyard.cli",
            "worker",
            "--job",
            str(job_id),
            "--name",
            f"$({POD_NAME_ENV})",
        ]
    # Kubernetes expands $(VAR) in a command from the container's environment (the Secret's values too);
    # "$$" is its escape for "$", so the arguments reach the command as they were given.
    args = [arg.replace("$", "$$") for arg in req.args]
    return ["python", "-m", "modelyard.cli", req.command, f"{RECIPE_DIR}/recipe.yaml", *args]


def job_name(command: str, job_id: int | None) -> str:
    return f"yard-{command}-{job_id}" if job_id is not None else f"yard-{command}-{uuid.uuid4().hex[:10]}"


def job_manifest(
    platform: Platform,
    ctx: Context,
    req: Any,  # modelyard.training._jobs.JobRequest
    *,
    image: str | None = None,
    namespace: str = "default",
    secret_name: str = "modelyard",  # noqa: S107 (the name of a Kubernetes Secret, not a value)
    database_url: str | None = None,
    artifact_uri: str | None = None,
    job_id: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job whose pod runs the job (:func:`container_command`) with the requested CPUs,
    memory (:func:`default_memory` if none) and ``nvidia.com/gpu`` as requests and limits, and its /work
    bounded by ``job_work_disk`` (also its ``ephemeral-storage`` request); ``backoffLimit`` is the job's
    max retries."""
    from modelyard import __version__

    settings = platform.settings
    image = image or settings.job_image or f"modelyard:{__version__.replace('+', '-')}"  # a tag has no "+"
    if len(image) > 1024 or not _IMAGE.match(image) or len(_image_name(image)) > 255:
        raise ValidationError(f"image {image!r} is not a valid container image reference")
    if not _DNS_LABEL.match(namespace):
        raise ValidationError(f"namespace {namespace!r} is not a valid Kubernetes name (a DNS label)")
    if len(secret_name) > 253 or not _SECRET_NAME.match(secret_name):
        raise ValidationError(f"secret {secret_name!r} is not a valid Kubernetes Secret name")
    db = cluster_database_url(database_url or settings.resolved_database_url)
    store = cluster_artifact_uri(artifact_uri or settings.resolved_artifact_uri)
    size = len(req.recipe.encode("utf-8"))  # the API server counts bytes, not characters
    if size > MAX_RECIPE_ANNOTATION:
        raise ValidationError(
            f"recipe {req.recipe_name!r} has {size} bytes; a Kubernetes job carries at most "
            f"{MAX_RECIPE_ANNOTATION} (it travels in a pod annotation)"
        )
    name = name or job_name(req.command, job_id)
    if not _DNS_LABEL.match(name):
        raise ValidationError(f"job name {name!r} is not a valid Kubernetes name (a DNS label)")
    from modelyard.training._jobs import priority_name

    env: list[dict[str, Any]] = [
        {"name": "YARD_DATABASE_URL", "value": db},
        {"name": "YARD_ARTIFACT_URI", "value": store},
        {"name": "YARD_REGION", "value": ctx.region},
        {"name": "YARD_PROJECT", "value": ctx.project},
        {"name": "YARD_HOME", "value": f"{WORK_DIR}/home"},
        {"name": "HOME", "value": WORK_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if settings.s3_endpoint_url:
        env.append({"name": "YARD_S3_ENDPOINT_URL", "value": cluster_s3_endpoint(settings.s3_endpoint_url)})
    if job_id is not None:
        env.append({"name": "YARD_JOB_ID", "value": str(job_id)})
        env.append({"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env += [
        {
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key, "optional": optional}},
        }
        for var, key, optional in SECRET_KEYS
    ]
    # Limits equal the requests (QoS class Guaranteed): the job gets what it asked for, as on a worker, and
    # no more; a runaway job cannot take its node's memory or CPUs from the pods beside it.
    memory = memory_quantity((req.memory or default_memory(req.cpus)) + WORKER_MEMORY)
    requests = {"cpu": cpu_quantity(req.cpus), "memory": memory}
    limits = dict(requests)
    # The scheduler places a pod by its requests: without this it would count /work as free and put a job
    # on a node whose disk cannot hold it (the emptyDir's sizeLimit only evicts, after the node filled).
    # No limit: a container's ephemeral-storage limit excludes emptyDirs, and sizeLimit bounds /work.
    requests["ephemeral-storage"] = memory_quantity(settings.job_work_disk)
    if req.gpus:
        limits["nvidia.com/gpu"] = str(req.gpus)  # extended resources: requests default to limits
    resources: dict[str, Any] = {"requests": requests, "limits": limits}
    labels = {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "job",
        "modelyard.dev/project": _label(ctx.project),
        "modelyard.dev/command": req.command,
        "modelyard.dev/priority": priority_name(req.priority),
    }
    if job_id is not None:
        labels["modelyard.dev/job-id"] = str(job_id)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # On SIGTERM the worker stops the job (SIGTERM, SIGKILL after job_kill_grace_s) and hands it back
        # (SUBMITTED); the cluster must not SIGKILL the pod first, or the reaper counts a failed attempt.
        "terminationGracePeriodSeconds": math.ceil(settings.job_kill_grace_s) + 30,
        # Numeric ids: with runAsNonRoot alone the kubelet refuses an image whose USER is a name (it cannot
        # tell that it is not root). fsGroup makes /work, a fresh emptyDir, writable by that group.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.job_run_as_user,
            "runAsGroup": settings.job_run_as_group,
            "fsGroup": settings.job_run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The job talks to the stores, never to the Kubernetes API: no service account token to steal.
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": req.command,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": container_command(req, job_id),
                "workingDir": WORK_DIR,
                "env": env,
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True},
                    {"name": "work", "mountPath": WORK_DIR},
                ],
            }
        ],
        "volumes": [
            {
                "name": "recipe",
                "downwardAPI": {
                    "items": [
                        {
                            "path": "recipe.yaml",
                            "fieldRef": {"fieldPath": f"metadata.annotations['{RECIPE_ANNOTATION}']"},
                        }
                    ]
                },
            },
            # Bounded: past it the kubelet evicts the pod, rather than the job filling its node's disk.
            {"name": "work", "emptyDir": {"sizeLimit": memory_quantity(settings.job_work_disk)}},
        ],
    }
    if req.gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if job_id is not None:
        metadata["annotations"] = {SUBMISSION_ANNOTATION: uuid.uuid4().hex}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": req.max_retries,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {RECIPE_ANNOTATION: req.recipe}},
                "spec": pod_spec,
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (the recipe) as literal blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def manifest_yaml(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=1000)


@dataclass(frozen=True)
class _Api:
    """The kubernetes client, configured: its package, an ApiClient, and the API server it talks to."""

    k8s: Any
    client: Any
    host: str  # which cluster: recorded with every job created, compared before trusting what is missing

    def batch(self) -> Any:
        return self.k8s.client.BatchV1Api(self.client)

    def core(self) -> Any:
        return self.k8s.client.CoreV1Api(self.client)

    def errors(self) -> tuple[type[Exception], ...]:
        """What a call raises when the cluster refuses it, cannot be reached or answers nonsense."""
        import urllib3

        return (self.k8s.client.exceptions.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


def _client() -> _Api:
    try:
        k8s: Any = importlib.import_module("kubernetes")  # untyped: Any, as its objects are here
    except ImportError:
        raise ConfigError(
            "the kubernetes backend needs the kubernetes client: pip install 'modelyard[k8s]' "
            "(or write the manifest with --dry-run and apply it with kubectl)"
        ) from None
    config = k8s.client.Configuration()
    try:
        try:
            k8s.config.load_incluster_config(client_configuration=config)
        except k8s.config.ConfigException:
            # KUBECONFIG as it is now: the client reads it once, when it is first imported.
            path = os.environ.get("KUBECONFIG") or None
            k8s.config.load_kube_config(config_file=path, client_configuration=config)
    except Exception as exc:  # missing, unreadable, not YAML, the wrong shape: no usable configuration
        raise ConfigError(
            f"no usable Kubernetes configuration (in-cluster or kubeconfig): {type(exc).__name__}: {exc}"
        ) from None
    config.retries = 0  # one try per call, not urllib3's four: a dead cluster costs one timeout
    return _Api(k8s, k8s.client.ApiClient(config), str(config.host))


# (connect, read) seconds per call: an unreachable cluster is an error, not a hang. Creating a Job may wait
# on admission webhooks (30 s at most by default); a read timeout there would leave the Job unrecorded.
_TIMEOUT = (3.0, 10.0)
_CREATE_TIMEOUT = (3.0, 60.0)


def _why(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"{status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Submitted:
    """Where a job went: its Job's ``namespace/name``, the cluster (API server URL) and the Job's UID. A name
    can be reused once the Job is gone; a UID never is."""

    external_id: str
    cluster: str | None
    uid: str | None = None


def apply_manifest(manifest: dict[str, Any]) -> Submitted:
    """Create the Job in its namespace. A create without a confirmation (no answer: a timeout, a dropped
    connection; or a server-side failure: the API server's own 504 while the create goes on behind it, an
    etcd timeout, a gateway's 502/503) may still create the Job, so it is sent once more: the name makes a
    second create fail if the first one landed, and a Job of that name is this submission's only if it
    carries the manifest's :data:`SUBMISSION_ANNOTATION`. Only a 4xx refusal means nothing was created."""
    api = _client()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    unconfirmed: Exception | None = None
    while True:
        try:
            created = api.batch().create_namespaced_job(namespace, manifest, _request_timeout=_CREATE_TIMEOUT)
        except api.errors() as exc:
            status = getattr(exc, "status", None) or 0
            if status == 409:  # a Job of that name exists: an earlier try of ours (a gateway's too), or not
                created = _existing(api, manifest, exc, unconfirmed)
            elif 400 <= status < 500 and status not in (408, 429):
                raise BackendError(f"Kubernetes did not create job {namespace}/{name}: {_why(exc)}") from None
            elif unconfirmed is None:  # once more
                unconfirmed = exc
                continue
            else:
                created = _existing(api, manifest, exc, unconfirmed)
        return Submitted(f"{namespace}/{name}", api.host, created.metadata.uid or None)


def _existing(api: _Api, manifest: dict[str, Any], cause: Exception, unconfirmed: Exception | None) -> Any:
    """The Job of the manifest's name, read back after ``cause`` (a 409, or a create never confirmed), if it
    carries this submission's nonce; else a :class:`BackendError` that says what may exist."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    nonce = (manifest["metadata"].get("annotations") or {}).get(SUBMISSION_ANNOTATION)
    check = f"`kubectl get job {name} -n {namespace}`"
    try:
        job = api.batch().read_namespaced_job(name, namespace, _request_timeout=_TIMEOUT)
    except api.errors() as exc:
        absent = getattr(exc, "status", None) == 404
        if absent and unconfirmed is None:  # a 409, then deleted: not ours
            raise BackendError(f"Kubernetes did not create job {namespace}/{name}: {_why(cause)}") from None
        seen = "has no Job of that name yet" if absent else f"no read ({_why(exc)})"
        raise BackendError(
            f"Kubernetes did not confirm the creation of job {namespace}/{name} "
            f"({_why(unconfirmed or cause)}) and {seen}; nothing was recorded, but a create still under way "
            f"may make one: check with {check} and delete it"
        ) from None
    if nonce is None or (job.metadata.annotations or {}).get(SUBMISSION_ANNOTATION) != nonce:
        raise BackendError(
            f"Kubernetes did not create job {namespace}/{name}: a Job of that name that is not this "
            f"submission's exists ({_why(cause)}); nothing was recorded"
        )
    log.warning(
        "the creation of Kubernetes job %s/%s was not confirmed (%s), but the cluster has it: recorded",
        namespace,
        name,
        _why(unconfirmed or cause),
    )
    return job


def delete_job(external_id: str, uid: str | None = None, cluster: str | None = None) -> None:
    """Delete a Job (and its pods) created by :func:`apply_manifest`; one already gone is fine. With its
    ``uid``, a Job of the same name that is another one (the name was reused) is left alone; with its
    ``cluster``, a configuration that reaches another cluster is an error, not a delete there."""
    api = _client()
    if cluster and cluster != api.host:
        raise BackendError(
            f"Kubernetes job {external_id} was submitted to {cluster}, but this machine's Kubernetes "
            f"configuration reaches {api.host}; switch to that cluster's context and cancel again"
        )
    namespace, _, name = external_id.partition("/")
    body = api.k8s.client.V1DeleteOptions(
        propagation_policy="Background",
        preconditions=api.k8s.client.V1Preconditions(uid=uid) if uid else None,
    )
    try:
        api.batch().delete_namespaced_job(name, namespace, body=body, _request_timeout=_TIMEOUT)
    except api.errors() as exc:
        status = getattr(exc, "status", None)
        if status == 409 and uid:
            log.warning("Kubernetes job %s is another Job now (UID not %s): left alone", external_id, uid)
        elif status != 404:
            raise BackendError(f"Kubernetes could not delete job {external_id}: {_why(exc)}") from None


# -- what the cluster says about submitted jobs --------------------------------------------------------------
@dataclass(frozen=True)
class ClusterJob:
    """One Job as the cluster reports it: ``state`` is active, failed, complete or gone; ``detail`` is the
    failure's reason, or for an active Job why its pod waits (image pull, scheduling), if it does."""

    state: str
    detail: str = ""


# Waiting reasons that only mean "starting": anything else (ErrImagePull, ImagePullBackOff,
# CreateContainerConfigError for a missing Secret key, ...) is worth showing.
_STARTING = {"ContainerCreating", "PodInitializing"}
_SELECTOR = "app.kubernetes.io/name=modelyard,app.kubernetes.io/component=job"  # our Jobs and their pods


def _pod_job(pod: Any) -> tuple[str, str | None]:
    """The name of the Job a pod belongs to, and that Job's UID where the pod says it."""
    for ref in pod.metadata.owner_references or ():
        if ref.kind == "Job":
            return str(ref.name), ref.uid or None
    labels = pod.metadata.labels or {}
    uid = labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")
    return str(labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""), uid or None


def _pod_waiting(pod: Any) -> str:
    """Why a pending pod does not run, or ""."""
    status = pod.status
    if status is None or status.phase != "Pending":
        return ""
    for c in status.container_statuses or ():
        waiting = c.state.waiting if c.state is not None else None
        if waiting is not None and waiting.reason and waiting.reason not in _STARTING:
            return f"pod {pod.metadata.name}: {waiting.reason}" + (
                f": {waiting.message}" if waiting.message else ""
            )
    for cond in status.conditions or ():
        if cond.type == "PodScheduled" and cond.status == "False":
            return f"pod {pod.metadata.name}: {cond.reason or 'not scheduled'}" + (
                f": {cond.message}" if cond.message else ""
            )
    return ""


def _state(job: Any) -> tuple[str, str]:
    for cond in (job.status.conditions if job.status is not None else None) or ():
        if cond.status != "True":
            continue
        if cond.type == "Failed":
            return "failed", ": ".join(x for x in (cond.reason, cond.message) if x) or "failed"
        if cond.type == "Complete":
            return "complete", ""
    return "active", ""


def cluster_jobs(jobs: Mapping[int, Submitted]) -> dict[int, ClusterJob]:
    """What the cluster says about Jobs created by :func:`apply_manifest`, by job id. One list of Jobs and one
    of pods per namespace, however many jobs, selected by their job-id labels (and one list of events where
    a Job has no pod at all).

    Only jobs created in the cluster this machine's configuration reaches are asked about: elsewhere a Job
    of the same name could be another one, and a missing one says nothing (their state is "elsewhere"). A
    Job missing from the list and from a read by name is gone, and so is one whose name now belongs to a
    Job with another UID. A namespace the cluster does not answer for is left out with a warning; jobs left
    out are unknown. Raises :class:`ConfigError` without a client or a usable configuration."""
    api = _client()
    wanted: dict[str, dict[str, tuple[int, str | None]]] = {}
    out: dict[int, ClusterJob] = {}
    for job_id, sub in jobs.items():
        if sub.cluster != api.host:
            where = (
                f"submitted to {sub.cluster}" if sub.cluster else "submitted before clusters were recorded"
            )
            out[job_id] = ClusterJob(
                "elsewhere", f"{where}; this machine's Kubernetes configuration reaches {api.host}"
            )
            continue
        namespace, _, name = sub.external_id.partition("/")
        wanted.setdefault(namespace, {})[name] = (job_id, sub.uid)
    for namespace, names in sorted(wanted.items()):
        try:
            out.update(_namespace_jobs(api, namespace, names))
        except api.errors() as exc:
            log.warning("could not ask Kubernetes about the jobs of namespace %s: %s", namespace, _why(exc))
            if not isinstance(exc, api.k8s.client.exceptions.ApiException):
                break  # not an answer: the cluster is unreachable, every namespace would wait as long
    return out


def _namespace_jobs(
    api: _Api, namespace: str, wanted: dict[str, tuple[int, str | None]]
) -> dict[int, ClusterJob]:
    ids = ",".join(str(i) for i, _ in sorted(wanted.values()))
    selector = f"{_SELECTOR},modelyard.dev/job-id in ({ids})"
    listed = api.batch().list_namespaced_job(namespace, label_selector=selector, _request_timeout=_TIMEOUT)
    found = {job.metadata.name: job for job in listed.items or () if job.metadata.name in wanted}
    out: dict[int, ClusterJob] = {}
    for name in set(wanted) - set(found):
        try:  # labels can be edited: missing means no Job of that name at all
            found[name] = api.batch().read_namespaced_job(name, namespace, _request_timeout=_TIMEOUT)
        except api.errors() as exc:
            if getattr(exc, "status", None) != 404:
                raise
            out[wanted[name][0]] = ClusterJob("gone")
    for name, job in list(found.items()):
        uid = wanted[name][1]
        if uid and job.metadata.uid != uid:  # ours was removed and the name reused
            del found[name]
            out[wanted[name][0]] = ClusterJob(
                "gone", f"its name belongs to another Job now (UID {job.metadata.uid})"
            )
    active = {name for name, job in found.items() if _state(job)[0] == "active"}
    waiting = _waiting(api, namespace, selector, {name: found[name] for name in active}) if active else {}
    for name, job in found.items():
        state, detail = _state(job)
        out[wanted[name][0]] = ClusterJob(state, detail or waiting.get(name, ""))
    return out


def _waiting(api: _Api, namespace: str, selector: str, active: dict[str, Any]) -> dict[str, str]:
    """Why active Jobs do not run yet: their pending pods' reasons, or for a Job with no pod at all, its
    latest ``FailedCreate`` event (a quota, an admission webhook, a missing ServiceAccount refused the pod).
    These only explain a wait: a list the cluster refuses is a warning, and the Jobs' states still stand."""
    try:
        pods = api.core().list_namespaced_pod(namespace, label_selector=selector, _request_timeout=_TIMEOUT)
    except api.errors() as exc:
        log.warning("could not list the pods of namespace %s: %s", namespace, _why(exc))
        return {}
    waiting: dict[str, str] = {}
    podless = set(active)
    for pod in pods.items or ():
        job_name, uid = _pod_job(pod)
        if job_name not in active or (uid and uid != active[job_name].metadata.uid):
            continue  # another Job's, or a leftover of an earlier Job of the same name
        podless.discard(job_name)
        if why := _pod_waiting(pod):
            waiting[job_name] = why
    if not podless:
        return waiting
    try:
        events = api.core().list_namespaced_event(
            namespace, field_selector="involvedObject.kind=Job,reason=FailedCreate", _request_timeout=_TIMEOUT
        )
    except api.errors() as exc:
        log.warning("could not list the events of namespace %s: %s", namespace, _why(exc))
        return waiting
    latest: dict[str, Any] = {}
    for event in events.items or ():
        obj = event.involved_object
        if obj is None or obj.name not in podless or (obj.uid and obj.uid != active[obj.name].metadata.uid):
            continue  # another Job's, or an earlier Job's of the same name
        if obj.name not in latest or _when(event) >= _when(latest[obj.name]):
            latest[obj.name] = event
    for name, event in latest.items():
        waiting[name] = f"job {name}: {event.reason}" + (f": {event.message}" if event.message else "")
    return waiting


def _when(event: Any) -> datetime:
    when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return when if isinstance(when, datetime) else datetime.min.replace(tzinfo=UTC)
