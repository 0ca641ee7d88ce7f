"""A fake Kubernetes API server for tests: the few ``batch/v1`` and ``v1`` calls the job backend makes, served
over HTTP so that the real ``kubernetes`` client (kubeconfig, serialisation, errors) runs against it. The
test plays the cluster's part: it fails, completes or deletes a Job and puts its pods in a waiting state.
No control loop runs: nothing changes unless the test changes it."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?\Z")
_CORE = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|events)\Z")
_NOW = "2026-01-01T00:00:00Z"


# Equality (``key=value``) and set (``key in (a,b)``) terms of a label selector, comma-separated.
_TERM = re.compile(r"\s*([^,=\s]+)\s*(?:=\s*([^,]*)|\s+in\s+\(([^)]*)\))\s*(?:,|$)")


def _fields(obj: dict[str, Any], selector: str) -> bool:
    """A field selector of ``path.to.field=value`` terms, comma-separated."""
    for term in filter(None, selector.split(",")):
        path, _, value = term.partition("=")
        found: Any = obj
        for part in path.strip().split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value.strip():
            return False
    return True


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
        self.events: list[dict[str, Any]] = []
        self.create_delay = 0.0  # seconds a create waits, after the Job exists, before it answers
        self.create_lost = False  # with create_delay: the create is never acted on (nor answered in time)
        self.create_status = 0  # a status a create answers with after creating the Job (504: the API
        # server's own timeout while the create goes on)
        self.create_deferred = False  # with create_status: the Job lands just after the next request
        self._landing: tuple[str, dict[str, Any]] | None = None
        self.deleted: list[str] = []  # Jobs deleted through the API
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call
        # "jobs", "pods" or "events", or "jobs:NAMESPACE" and so on -> the status every call on them gets
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

    def recreate(self, job: str) -> None:
        """Removed, then created again by someone else under the same name: another UID, no status."""
        with self.lock:
            self.jobs[job]["metadata"]["uid"] = str(uuid.uuid4())
            self.jobs[job]["status"] = {}

    def failed_create(self, job: str, message: str, *, when: str = _NOW, uid: str | None = None) -> None:
        """The Job controller could not create a pod (quota, admission): a ``FailedCreate`` event on the Job
        (by default this Job's UID; ``uid`` for an earlier Job of the same name)."""
        namespace, _, name = job.partition("/")
        with self.lock:
            self.events.append(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "namespace": namespace,
                        "name": name,
                        "uid": uid or self.jobs[job]["metadata"]["uid"],
                    },
                    "reason": "FailedCreate",
                    "message": message,
                    "type": "Warning",
                    "count": 1,
                    "firstTimestamp": when,
                    "lastTimestamp": when,
                }
            )

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
        query = parse_qs(parts.query)
        selector = query.get("labelSelector", [""])[0]
        with self.lock:
            self.requests.append((method, parts.path))
            landing, self._landing = self._landing, None
            if m := _JOBS.match(parts.path):
                if code := self.refused.get("jobs") or self.refused.get(f"jobs:{m.group(1)}"):
                    return _status(code, "refused by the test")
                try:
                    return self._jobs(method, m.group(1), m.group(2), selector, body)
                finally:  # a deferred create lands once the next request was served, unless its name is
                    if landing is not None:  # taken by then (the losing create fails, unseen)
                        self.jobs.setdefault(*landing)
            if (m := _CORE.match(parts.path)) and method == "GET":
                namespace, kind = m.groups()
                if code := self.refused.get(kind) or self.refused.get(f"{kind}:{namespace}"):
                    return _status(code, "refused by the test")
                if kind == "events":
                    fields = query.get("fieldSelector", [""])[0]
                    items = [e for e in self.events if e["metadata"]["namespace"] == namespace]
                    return 200, _list("EventList", "v1", [e for e in items if _fields(e, fields)])
                items = [p for p in self.pods.values() if p["metadata"]["namespace"] == namespace]
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
                return _status(409, f'jobs.batch "{job["metadata"]["name"]}" already exists', "AlreadyExists")
            job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_NOW)
            job["status"] = {}
            if self.create_status and self.create_deferred:
                self._landing = (key, job)
                return _status(self.create_status, "Timeout: request did not complete within the timeout")
            self.jobs[key] = job
            if self.create_status:
                return _status(self.create_status, "Timeout: request did not complete within the timeout")
            return 201, job
        key = f"{namespace}/{name}"
        if key not in self.jobs:
            return _status(404, f'jobs.batch "{name}" not found')
        if method == "GET":
            return 200, self.jobs[key]
        if method == "DELETE":
            uid = ((json.loads(body) if body else {}).get("preconditions") or {}).get("uid")
            if uid and uid != self.jobs[key]["metadata"]["uid"]:
                return _status(409, f"Precondition failed: UID in precondition: {uid}")
            del self.jobs[key]
            self.deleted.append(key)
            for pod in [k for k, p in self.pods.items() if p["metadata"]["labels"].get("job-name") == name]:
                del self.pods[pod]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return _status(405, f"{method} is not served")


def _list(kind: str, api: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1"}, "items": items}


def _status(code: int, message: str, reason: str = "") -> tuple[int, dict[str, Any]]:
    reasons = {403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 504: "Timeout"}
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reasons.get(code, "InternalError"),
        "code": code,
    }


@contextlib.contextmanager
def fake_kubernetes() -> Iterator[FakeCluster]:
    """Serve a :class:`FakeCluster` on a free 127.0.0.1 port (``cluster.url``) until the block ends."""
    cluster = FakeCluster()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.command == "POST" and cluster.create_lost:
                time.sleep(cluster.create_delay)
                self.close_connection = True
                return
            code, payload = cluster.handle(self.command, self.path, body)
            if self.command == "POST" and code == 201 and cluster.create_delay:
                time.sleep(cluster.create_delay)  # created, but the answer comes too late
            data = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up waiting (a create_delay past its timeout)
                self.close_connection = True

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
