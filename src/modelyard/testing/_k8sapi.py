"""A fake Kubernetes API server for tests: the few ``batch/v1`` and ``v1`` calls the job backend makes, served
over HTTP so that the real ``kubernetes`` client (kubeconfig, serialisation, errors) runs against it. The
test plays the cluster's part: it fails, completes or deletes a Job and puts its pods in a waiting state.
No control loop runs: nothing changes unless the test changes it."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_NOW = "2026-01-01T00:00:00Z"


# Equality (``key=value``) and set (``key in (a,b)``) terms of a label selector, comma-separated.
_TERM = re.compile(r"\s*([^,=\s]+)\s*(?:=\s*([^,]*)|\s+in\s+\(([^)]*)\))\s*(?:,|$)")


def _selected(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    pos = 0
    while pos < len(selector):
        m = _TERM.match(selector, pos)
        if m is None:
            raise ValueError(f"the fake cluster cannot read the label selector {selector!r}")
        key, value, values = m.groups()
        allowed = {value.strip()} if value is not None else {v.strip() for v in values.split(",")}
        if labels.get(key) not in allowed:
            return False
        pos = m.end()
    return True


class FakeCluster:
    """The cluster's state, shared with the server thread; ``namespace/name`` names a Job."""

    def __init__(self) -> None:
        self.url = ""
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # namespace/pod name -> pod
        self.deleted: list[str] = []  # Jobs deleted through the API
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call
        # "jobs" or "pods", or "jobs:NAMESPACE" or "pods:NAMESPACE" -> the status every call on them gets
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()

    # -- the cluster's side ---------------------------------------------------------------------------------
    def fail(self, job: str, reason: str = "BackoffLimitExceeded", message: str = "") -> None:
        self._condition(job, "Failed", reason, message or "Job has reached the specified backoff limit")

    def complete(self, job: str) -> None:
        self._condition(job, "Complete", "", "")

    def remove(self, job: str) -> None:
        """Deleted behind modelyard's back (kubectl delete, or the TTL controller)."""
        with self.lock:
            del self.jobs[job]

    def waiting_pod(self, job: str, reason: str, message: str = "", *, unschedulable: bool = False) -> str:
        """A Pending pod of ``job``: its container waits with ``reason``, or it cannot be scheduled."""
        namespace, _, name = job.partition("/")
        with self.lock:
            owner = self.jobs[job]
            pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
            template = owner["spec"]["template"]
            container = template["spec"]["containers"][0]
            status: dict[str, Any] = {"phase": "Pending"}
            if unschedulable:
                status["conditions"] = [
                    {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
                ]
            else:
                status["containerStatuses"] = [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ]
            self.pods[f"{namespace}/{pod_name}"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "labels": {**template["metadata"].get("labels", {}), "job-name": name},
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": owner["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                    "creationTimestamp": _NOW,
                },
                "spec": template["spec"],
                "status": status,
            }
        return pod_name

    def _condition(self, job: str, kind: str, reason: str, message: str) -> None:
        with self.lock:
            cond = {"type": kind, "status": "True", "lastTransitionTime": _NOW}
            cond.update({k: v for k, v in (("reason", reason), ("message", message)) if v})
            self.jobs[job]["status"] = {"conditions": [cond]}

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        return path

    # -- the API --------------------------------------------------------------------------------------------
    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        selector = parse_qs(parts.query).get("labelSelector", [""])[0]
        with self.lock:
            self.requests.append((method, parts.path))
            if m := _JOBS.match(parts.path):
                if code := self.refused.get("jobs") or self.refused.get(f"jobs:{m.group(1)}"):
                    return _status(code, "refused by the test")
                return self._jobs(method, m.group(1), m.group(2), selector, body)
            if (m := _PODS.match(parts.path)) and method == "GET":
                if code := self.refused.get("pods") or self.refused.get(f"pods:{m.group(1)}"):
                    return _status(code, "refused by the test")
                items = [p for p in self.pods.values() if p["metadata"]["namespace"] == m.group(1)]
                return 200, _list("PodList", "v1", [p for p in items if _selected(p, selector)])
        return _status(404, f"the fake cluster does not serve {method} {parts.path}")

    def _jobs(
        self, method: str, namespace: str, name: str | None, selector: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if name is None and method == "GET":
            items = [j for j in self.jobs.values() if j["metadata"]["namespace"] == namespace]
            return 200, _list("JobList", "batch/v1", [j for j in items if _selected(j, selector)])
        if name is None and method == "POST":
            job = json.loads(body)
            key = f"{namespace}/{job['metadata']['name']}"
            if key in self.jobs:
                return _status(409, f'jobs.batch "{job["metadata"]["name"]}" already exists')
            job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_NOW)
            job["status"] = {}
            self.jobs[key] = job
            return 201, job
        key = f"{namespace}/{name}"
        if key not in self.jobs:
            return _status(404, f'jobs.batch "{name}" not found')
        if method == "GET":
            return 200, self.jobs[key]
        if method == "DELETE":
            del self.jobs[key]
            self.deleted.append(key)
            for pod in [k for k, p in self.pods.items() if p["metadata"]["labels"].get("job-name") == name]:
                del self.pods[pod]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return _status(405, f"{method} is not served")


def _list(kind: str, api: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1"}, "items": items}


def _status(code: int, message: str) -> tuple[int, dict[str, Any]]:
    reasons = {403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists"}
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reasons.get(code, "InternalError"),
        "code": code,
    }


@contextlib.contextmanager
def fake_kubernetes() -> Iterator[FakeCluster]:
    """Serve a :class:`FakeCluster` on a free 127.0.0.1 port (``cluster.url``) until the block ends."""
    cluster = FakeCluster()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = cluster.handle(self.command, self.path, self.rfile.read(length))
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-kubernetes", daemon=True)
    thread.start()
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
