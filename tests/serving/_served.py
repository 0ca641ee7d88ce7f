"""Helpers for the serving tests: what `served` holds, and a real `yard serve` process.

Versions of model ``srv`` in the session's home: 1 = ONNX FP32, 2 = ONNX INT8, 3 = a broken ONNX variant
(its tokenizer maps the word "normalise", which every example input holds, to an id past the embedding
table, so onnxruntime fails on it: a real model fault, as a bad export or a mismatched tokenizer gives)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml


@dataclass(frozen=True)
class Served:
    home: Path
    token: str  # a viewer of the default project
    other_token: str  # a member of another project
    engineer: str  # an engineer's token (deployments up to half of the traffic)
    approver: str  # an approver's token who registered nothing (a gated candidate at any weight)


def break_graph(onnx_dir: Path) -> None:
    """An export whose encoder graph is not ONNX (its manifest matches, so only loading it fails)."""
    from modelyard.serving._format import META_NAME, describe_files

    (onnx_dir / "encoder.onnx").write_bytes(b"not an onnx graph")
    meta = json.loads((onnx_dir / META_NAME).read_text())
    meta["files"] = describe_files(onnx_dir)
    (onnx_dir / META_NAME).write_text(json.dumps(meta))


def break_tokenizer(onnx_dir: Path, word: str) -> None:
    from modelyard.serving._format import META_NAME, describe_files

    tok = json.loads((onnx_dir / "tokenizer.json").read_text())
    tok["model"]["vocab"].append([f"▁{word}", 0.0])  # id = vocabulary size: past the embedding table
    (onnx_dir / "tokenizer.json").write_text(json.dumps(tok))
    meta = json.loads((onnx_dir / META_NAME).read_text())
    meta["files"] = describe_files(onnx_dir)
    (onnx_dir / META_NAME).write_text(json.dumps(meta))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: Path


def launch(served: Served, tmp_path: Path, *, env: dict[str, str] | None = None, **config: object) -> Server:
    """`yard serve` in its own process (and process group) with ``config`` (a serve config, ``workers``
    included) and ``env`` added to its environment; see :func:`start_server` to wait until it is ready."""
    port = free_port()
    data = {"models": ["srv@live"], "port": port, "alias_poll_s": 0.2, **config}
    path = tmp_path / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(data))
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("YARD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    environ.update(YARD_HOME=str(served.home), OMP_NUM_THREADS="1", NO_COLOR="1", **(env or {}))
    log = tmp_path / f"serve-{port}.log"
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli", "serve", "--config", str(path)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() can reach workers it left behind
        )
    return Server(f"http://127.0.0.1:{port}", proc, log)


def start_server(
    served: Served, tmp_path: Path, *, env: dict[str, str] | None = None, **config: object
) -> Server:
    """:func:`launch`, ready when /readyz says so (with several workers: when one of them is)."""
    server = launch(served, tmp_path, env=env, **config)
    proc, log = server.proc, server.log
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"yard serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(server, timeout=0)
            raise AssertionError(f"yard serve did not get ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            yield int(entry.name), fields[0], int(fields[1]), int(fields[2])


def descendants(pid: int) -> set[int]:
    """Every running process below ``pid`` (zombies have exited and do not count)."""
    children: dict[int, list[int]] = {}
    for child, state, parent, _ in _processes():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def group(server: Server) -> set[int]:
    """Running processes of the server's process group: the server and every worker it started, also one
    that outlived it (an orphan is adopted by another parent but keeps its group)."""
    return {pid for pid, state, _, pgrp in _processes() if pgrp == server.proc.pid and state != "Z"}


def terminate(server: Server, timeout: float = 30) -> int | None:
    """SIGTERM to `yard serve` (as a process manager sends it); its exit code, None if still running."""
    server.proc.terminate()
    try:
        return server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def stop(server: Server, timeout: float = 30) -> int:
    """:func:`terminate`, then SIGKILL to whatever of its process group is left. Returns its exit code."""
    terminate(server, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    return server.proc.wait()


def metric(server: Server, name: str) -> dict[str, float]:
    """The samples of one metric family from ``/metrics``: {"name{labels}": value}."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
