"""Helpers for the serving tests: what `served` holds, and a real `yard serve` process.

Versions of model ``srv`` in the session's home: 1 = ONNX FP32, 2 = ONNX INT8, 3 = a broken ONNX variant
(its tokenizer maps the word "normalise", which every example input holds, to an id past the embedding
table, so onnxruntime fails on it: a real model fault, as a bad export or a mismatched tokenizer gives)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml


@dataclass(frozen=True)
class Served:
    home: Path
    token: str  # a viewer of the default project
    other_token: str  # a member of another project
    engineer: str  # an engineer's token (deployments)


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


def start_server(served: Served, tmp_path: Path, **config: object) -> Server:
    """`yard serve` in its own process with ``config`` (a serve config), ready when /readyz says so."""
    port = free_port()
    data = {"models": ["srv@live"], "port": port, "alias_poll_s": 0.2, **config}
    path = tmp_path / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(YARD_HOME=str(served.home), OMP_NUM_THREADS="1", NO_COLOR="1")
    log = tmp_path / f"serve-{port}.log"
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli", "serve", "--config", str(path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"yard serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, proc, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"yard serve did not get ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
