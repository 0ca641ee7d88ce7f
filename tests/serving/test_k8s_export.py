"""`yard serve --export k8s DIR` and `yard deploy` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.testing import Yard

CLUSTER = [
    "--cluster-database-url",
    "postgresql+psycopg://yard:hunter2@db.internal:5432/yard",
    "--cluster-artifact-uri",
    "s3://models/yard",
]


def test_exported_manifests_are_valid_kubernetes_objects(yard: Yard, tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    assert yard("init").code == 0
    out = tmp_path / "k8s"
    r = yard(
        "serve",
        "support@production",
        "--export",
        "k8s",
        out,
        "--image",
        "registry.example/yard-serve:1",
        "--replicas",
        "3",
        "--namespace",
        "ml",
        *CLUSTER,
    )
    assert r.code == 0, r.err
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}
    assert set(docs) == {"configmap", "deployment", "service", "horizontalpodautoscaler"}
    for doc in docs.values():
        kv.validate(doc, kv.latest_version(), strict=True)  # the bundled schemas: offline
    dep = docs["deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["YARD_DATABASE_URL"]["value"] == "postgresql+psycopg://yard@db.internal:5432/yard"
    )  # no password
    assert env["YARD_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "master-key"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["namespace"] == "ml"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["home"]["emptyDir"] == {"sizeLimit": "20Gi"}  # a pod cannot fill its node's disk
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "2Gi"}
    # ... and the scheduler places it only on a node with that much disk free (as a training job's /work)
    assert container["resources"]["requests"]["ephemeral-storage"] == "22Gi"
    served = yaml.safe_load(docs["configmap"]["data"]["serve.yaml"])
    assert (
        served["models"] == ["support@production"] and served["auth"] is True and served["host"] == "0.0.0.0"
    )
    assert served["workers"] == 1 and served["replicated"] is True  # feedback waits for other replicas
    metrics = docs["horizontalpodautoscaler"]["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    assert any(m.get("pods", {}).get("metric", {}).get("name") == "yard_queue_depth" for m in metrics)
    docker = (out / "Dockerfile").read_text()
    assert (
        "modelyard[serve" in docker and "torch" not in docker.split("no torch")[1] and "USER 10001" in docker
    )


def test_a_connection_cap_makes_the_liveness_probe_tcp(yard: Yard, tmp_path: Path) -> None:
    """Past max_connections /healthz is a 503 too: an HTTP liveness probe had busy pods restarted."""
    assert yard("init").code == 0
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": ["support@production"], "limits": {"max_connections": 4}}))
    out = tmp_path / "k8s"
    r = yard("serve", "--config", config, "--export", "k8s", out, *CLUSTER)
    assert r.code == 0, r.err
    dep = yaml.safe_load((out / "deployment.yaml").read_text())
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 10}
    victim = tmp_path / "victim"  # a link planted in the export folder is replaced, not written through
    victim.write_text("keep me")
    (out / "Dockerfile").unlink()
    (out / "Dockerfile").symlink_to(victim)
    assert yard("serve", "--config", config, "--export", "k8s", out, *CLUSTER).code == 0
    assert victim.read_text() == "keep me" and "USER 10001" in (out / "Dockerfile").read_text()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_metrics_auth_drops_the_scrape_annotations(yard: Yard, tmp_path: Path) -> None:
    """Scraping by annotation sends no token: with metrics_auth it would collect only 401s."""
    assert yard("init").code == 0
    annotations = {}
    for metrics_auth in (False, True):
        config = tmp_path / f"serve-{metrics_auth}.yaml"
        config.write_text(yaml.safe_dump({"models": ["support@production"], "metrics_auth": metrics_auth}))
        out = tmp_path / f"k8s-{metrics_auth}"
        assert yard("serve", "--config", config, "--export", "k8s", out, *CLUSTER).code == 0
        dep = yaml.safe_load((out / "deployment.yaml").read_text())
        annotations[metrics_auth] = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[False]["prometheus.io/scrape"] == "true" and annotations[True] == {}


def test_export_and_serve_refuse_what_is_unsafe(yard: Yard, tmp_path: Path) -> None:
    assert yard("init").code == 0
    r = yard("serve", "m@production", "--no-auth", "--host", "0.0.0.0")
    assert r.code == 2 and "loopback" in r.error
    r = yard("serve", "m@production", "--no-auth", "--export", "k8s", tmp_path / "k", *CLUSTER)
    assert r.code == 2 and "API tokens" in r.error
    r = yard("serve", "m@production", "--export", "k8s", tmp_path / "k")  # a SQLite home: unreachable
    assert r.code == 2 and "PostgreSQL" in r.error
    for endpoint in ("http://AKIA:s3cret@minio:9000", "http://minio:9000/?Password=s3cret"):
        env = {"YARD_S3_ENDPOINT_URL": endpoint}  # would be a plain value in the Deployment
        r = yard("serve", "m@production", "--export", "k8s", tmp_path / "k", *CLUSTER, env=env)
        assert r.code == 2 and "carries credentials" in r.error and "s3cret" not in r.error
    r = yard("serve", "m@production", "--export", "k8s", tmp_path / "k", *CLUSTER, "--secret", "Bad Name!")
    assert r.code == 2 and "not a valid Kubernetes Secret name" in r.error  # every secretKeyRef names it
    env = {"YARD_S3_ENDPOINT_URL": "http://[minio:9000"}  # an unpaired bracket: said, not a ValueError
    r = yard("serve", "m@production", "--export", "k8s", tmp_path / "k", *CLUSTER, env=env)
    assert r.code == 2 and "S3 endpoint URL 'http://[minio:9000' is not a valid URL" in r.error
    r = yard(
        "serve",
        "m@production",
        "--export",
        "k8s",
        tmp_path / "k",
        *CLUSTER[:2],
        "--cluster-artifact-uri",
        "s3://[b/p",
    )
    assert r.code == 2 and "is not a valid URL" in r.error
    assert not (tmp_path / "k").exists()
    r = yard("serve", "m@production")
    assert r.code == 1 and "not found" in r.error  # checked before a server starts


def test_yard_deploy(yard: Yard, model_dir: Path) -> None:
    assert yard("init").code == 0
    assert yard("models", "register", model_dir, "--name", "m").code == 0
    r = yard("deploy", "m", "--version", "1", "--mode", "canary", "--weight", "10")
    assert r.code == 0 and "canary m@1 at 10%" in r.out
    r = yard("deploy", "m", "--mode", "off")
    assert r.code == 0 and "no candidate" in r.out
    r = yard("deploy", "m", "--version", "9")
    assert r.code == 1 and "no version 9" in r.error
    r = yard("deploy", "m", "--version", "1", "--weight", "150")
    assert r.code == 2 and "weight" in r.error
    r = yard("deploy", "m", "--version", "1", "--mode", "blue")
    assert r.code == 2 and "mode" in r.error
    r = yard("deploy", "m", "--version", "1", "--mode", "off")  # the version was silently ignored
    assert r.code == 2 and "leave out the version" in r.error
