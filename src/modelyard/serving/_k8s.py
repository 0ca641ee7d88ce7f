"""``yard serve NAME@ALIAS --export k8s DIR``: a Deployment, a Service, a HorizontalPodAutoscaler, the
serve config as a ConfigMap, and a Dockerfile for a slim serving image (ONNX Runtime, no torch).

Replicas reach the platform through its URLs (PostgreSQL and an S3-compatible store), with every secret a
reference to a Kubernetes Secret (the job queue's convention: master key, the token the server acts as,
database password, S3 credentials). Readiness is ``/readyz`` (models loaded and warmed), liveness
``/healthz``. The autoscaler targets CPU and the per-pod ``yard_queue_depth`` metric (through a metrics
adapter such as prometheus-adapter); pods are annotated for Prometheus scraping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.core._platform import Platform
from modelyard.errors import UsageError, ValidationError
from modelyard.serving._config import ServeConfig

CONFIG_DIR = "/etc/modelyard"
HOME_DISK, TMP_DISK = 20 << 30, 2 << 30  # emptyDir bounds of a serving pod (bytes)
DOCKERFILE = """\
# A slim serving image: ONNX Runtime, tokenizers and numpy; no torch, no transformers.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 yard
RUN pip install --no-cache-dir "modelyard[serve,postgres,s3]"
USER 10001
WORKDIR /home/yard
ENV YARD_HOME=/home/yard/.modelyard PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["yard", "serve", "--config", "/etc/modelyard/serve.yaml"]
"""


def manifests(
    platform: Platform,
    config: ServeConfig,
    *,
    image: str,
    replicas: int = 2,
    namespace: str = "default",
    secret_name: str = "modelyard",  # noqa: S107 (the name of a Kubernetes Secret, not a value)
    max_replicas: int = 10,
    queue_target: int = 32,
    database_url: str | None = None,
    artifact_uri: str | None = None,
) -> list[dict[str, Any]]:
    from modelyard.registry._versions import parse_spec
    from modelyard.training._k8s import (
        _DNS_LABEL,
        _IMAGE,
        _SECRET_NAME,
        SECRET_KEYS,
        _label,
        cluster_artifact_uri,
        cluster_database_url,
        cluster_s3_endpoint,
        memory_quantity,
    )

    if not _IMAGE.match(image):
        raise ValidationError(f"image {image!r} is not a valid container image reference")
    if not _DNS_LABEL.match(namespace):
        raise ValidationError(f"namespace {namespace!r} is not a valid Kubernetes name (a DNS label)")
    if not _SECRET_NAME.match(secret_name):  # it is written into every secretKeyRef, as a job's is
        raise ValidationError(f"secret {secret_name!r} is not a valid Kubernetes Secret name")
    if not config.auth:
        raise ValidationError(
            "a server in a cluster listens beyond loopback: it must check API tokens (drop --no-auth)"
        )
    first = parse_spec(config.models[0])[0]
    name = _label(f"yard-serve-{first}".lower()).replace(".", "-").replace("_", "-")[:63].strip("-")
    settings = platform.settings
    served = config.model_copy(  # one worker per pod; replicas (and the autoscaler's) answer side by side
        update={"host": "0.0.0.0", "port": 8000, "workers": 1, "replicated": True}  # noqa: S104 (in a pod)
    )
    labels = {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "serving",
        "modelyard.dev/model": _label(first),
    }
    env: list[dict[str, Any]] = [
        {
            "name": "YARD_DATABASE_URL",
            "value": cluster_database_url(database_url or settings.resolved_database_url),
        },
        {
            "name": "YARD_ARTIFACT_URI",
            "value": cluster_artifact_uri(artifact_uri or settings.resolved_artifact_uri),
        },
        {"name": "YARD_REGION", "value": settings.region},
        {"name": "YARD_PROJECT", "value": config.project or settings.project},
        *[
            {
                "name": var,
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key, "optional": optional}},
            }
            for var, key, optional in SECRET_KEYS
        ],
    ]
    if settings.s3_endpoint_url:  # a plain value: refused if it carries credentials, as for a job
        env.append({"name": "YARD_S3_ENDPOINT_URL", "value": cluster_s3_endpoint(settings.s3_endpoint_url)})
    # Past max_connections every request is a 503, /healthz too: an HTTP liveness probe would have a busy
    # pod restarted (and its load moved to the next one). A TCP probe still says the process is there.
    alive: dict[str, Any] = (
        {"tcpSocket": {"port": "http"}}
        if served.limits.max_connections
        else {"httpGet": {"path": "/healthz", "port": "http"}}
    )
    probe = {**alive, "periodSeconds": 10}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    # Scraping by annotation sends no token: with metrics_auth it would only collect 401s,
                    # so the scrape job (a ServiceMonitor with a viewer's token) is the operator's to add.
                    "annotations": {}
                    if config.metrics_auth
                    else {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8000",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 60,  # in-flight requests finish
                    # The server talks to the stores, never to the Kubernetes API: no token to steal.
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "serve",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "env": env,
                            "resources": {
                                # Disk as a training job's /work: the scheduler must not count the
                                # emptyDirs below as free and place the pod on a node that cannot hold
                                # them (sizeLimit only evicts, after the node filled). The root file
                                # system is read-only: the emptyDirs are all the pod writes, but logs.
                                "requests": {
                                    "cpu": "1",
                                    "memory": "1Gi",
                                    "ephemeral-storage": memory_quantity(HOME_DISK + TMP_DISK),
                                },
                                "limits": {"memory": "4Gi"},
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": probe,
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                {"name": "home", "mountPath": "/home/yard"},
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (the pod's own emptyDir)
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": name}},
                        # Bounded, or a pod could fill its node's disk: home holds the verified copies
                        # of the versions served (stable and candidate), /tmp only scratch. Past a bound
                        # the kubelet evicts the pod; raise it in the exported file for larger models.
                        {"name": "home", "emptyDir": {"sizeLimit": memory_quantity(HOME_DISK)}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": memory_quantity(TMP_DISK)}},
                    ],
                },
            },
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {"serve.yaml": json.dumps(served.model_dump(mode="json"), indent=2)},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": dict(labels), "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas,
            "maxReplicas": max(replicas, max_replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "yard_queue_depth"},
                        "target": {"type": "AverageValue", "averageValue": str(queue_target)},
                    },
                },
            ],
        },
    }
    return [config_map, deployment, service, hpa]


def export_k8s(platform: Platform, config: ServeConfig, out_dir: str | Path, **options: Any) -> list[Path]:
    """Write the manifests (one YAML file each; ``options`` as :func:`manifests` takes them) and the
    Dockerfile into ``out_dir``; returns the files."""
    from modelyard.core._paths import write_file
    from modelyard.training._k8s import manifest_yaml

    docs = manifests(platform, config, **options)  # refused options create nothing, not even the folder
    out = Path(out_dir)
    files = {f"{m['kind'].lower()}.yaml": manifest_yaml(m) for m in docs} | {"Dockerfile": DOCKERFILE}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_file(out / name, text)
    except OSError as exc:
        raise UsageError(f"cannot write the manifests into {out}: {exc.strerror or exc}") from None
    return [out / name for name in files]
