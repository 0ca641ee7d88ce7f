"""Serving: `yard serve` with dynamic batching, `yard serve --no-batching` and `mlflow models serve` of the
same INT8 ONNX model, under closed-loop load at several client concurrencies, in one run.

What is built (untimed): the ``tiny`` recipe (``modelyard.testing.TINY_RECIPE``) trained for
``--train-steps`` steps in a fresh home, exported with :func:`modelyard.optimize.export_onnx`, quantised
with :func:`modelyard.optimize.quantize_int8`, registered as ``bench@1`` with alias ``live``.

The servers, one at a time (each started, measured at every concurrency, stopped before the next starts):

* **yard**: ``python -m modelyard.cli serve --config serve.yaml`` serving ``bench@live``: one uvicorn
  worker, ``threads: 1`` (ONNX Runtime intra-op threads), dynamic batching with ``--max-batch-size`` (16)
  and ``--max-wait-ms`` (0), yard's defaults; auth ON with a real viewer token (``create_token``), the
  prediction log at yard's default sample rate (``--log-sample``, 1.0: every prediction is redacted and
  stored by a background thread of the server).
* **yard-nobatch**: the same with ``batching.enabled: false`` (``--no-batching``): every input runs alone.
* **mlflow**: the same INT8 directory as an ``mlflow.pyfunc`` model (models-from-code, no pickle; the ONNX
  files are its artifacts) whose ``load_context`` builds :class:`modelyard.serving.OnnxSeq2Seq` with one
  intra-op thread and whose ``predict`` generates for the DataFrame's rows, saved with
  ``mlflow.pyfunc.save_model`` and served with ``mlflow models serve -m PATH --env-manager local -w 1``
  (one uvicorn worker; MLflow runs each request's ``predict`` in the event loop's default thread pool, so
  requests overlap there, as they do out of the box). Body: ``{"dataframe_split": ..., "params":
  {"max_new_tokens": N}}`` to ``/invocations``.

Every server decodes greedily with the same ``--max-new-tokens`` (32), gets ``OMP_NUM_THREADS=1`` and, where
the machine has at least two CPUs, is pinned (``sched_setaffinity``, inherited by its children) to the same
CPU set (``--server-cpus``, default: the last CPU) while the load generator is pinned to the others, so every
server has the same CPU budget and does not compete with its clients.

The load generator is this process (asyncio, uvloop when installed), with one ``httpx.AsyncClient`` and one
keep-alive connection per simulated client (a shared client's pool scans all its connections on every request
and became the bottleneck at 128). ``c`` clients each send one input per request in a loop, the same texts
(``make_examples`` sources, ``--inputs`` distinct ones, client ``k`` sending texts ``k, k+c, ...``) to every
server. Per point: every client first completes one request (connections open), then ``--warmup`` seconds
unmeasured, then ``--seconds`` measured; requests completed inside the window count (requests/s = completed /
seconds), their latencies (client side, request sent to body read) give p50 and p99; errors are non-200
answers and transport failures. ``= solo`` is the share of answers identical to what the same model generates
for that input alone in this process. For yard, batch sizes come from the difference of its /metrics
``yard_batch_size`` histogram across the window (the largest only up to its bucket bound); server CPU (the
server's process tree, psutil) and this process's CPU are read across the window too: server CPU per request
compares efficiency, and a client near 100% would limit what it can measure.

Goal (issue 6): at concurrency 32, yard with batching serves at least 3x MLflow's requests/s with a lower p99.

Run: ``python benchmarks/serving.py`` (about 4 minutes here); shrink it with ``--concurrency 1,8 --seconds 3
--servers yard,mlflow --train-steps 100``; ``--repeat N`` measures every point N times (server order
rotated, a fresh server per repeat) and shows medians; ``--cache DIR`` keeps the built model for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SERVERS = ("yard", "yard-nobatch", "mlflow")
MODEL = "bench"

# The MLflow model as models-from-code (MLflow 3's recommended form): this source, written to a file, is
# the model; nothing is pickled.
MLFLOW_MODEL_CODE = '''\
import mlflow
from mlflow.pyfunc import PythonModel


class YardOnnxSeq2Seq(PythonModel):
    """modelyard's ONNX Runtime seq2seq runner over the INT8 files stored as this model's artifacts."""

    def load_context(self, context):
        from modelyard.serving import OnnxSeq2Seq

        threads = int((context.model_config or {}).get("threads", 1))
        self.model = OnnxSeq2Seq(context.artifacts["onnx"], intra_op_threads=threads)

    def predict(self, context, model_input, params=None):
        texts = [str(t) for t in model_input["text"]]
        n = int((params or {}).get("max_new_tokens", 32))
        return self.model.generate(texts, max_new_tokens=n, batch_size=len(texts))


mlflow.models.set_model(YardOnnxSeq2Seq())
'''


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # nearest rank
    return ordered[int(rank) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    home: Path
    int8: Path
    token: str  # a viewer's API token of the home's default project
    mlflow_model: Path | None


def build(root: Path, args: argparse.Namespace, console: Console) -> Built:
    """Train, export, quantise and register the model under ``root``; with ``--cache`` reuse what an
    earlier run built there."""
    import torch

    from modelyard import registry
    from modelyard.config import load_settings
    from modelyard.core import Platform, Role, create_token
    from modelyard.optimize import export_onnx, quantize_int8
    from modelyard.testing import actor, trained_model

    root.mkdir(parents=True, exist_ok=True)
    done = root / "built.json"  # holds the viewer's token: 0600
    if done.exists():
        saved = json.loads(done.read_text())
        console.print(f"  reusing the model built in {root}")
        home, int8, token = Path(saved["home"]), Path(saved["int8"]), saved["token"]
    else:
        # one thread: with two on a shared two-core machine, PyTorch's OpenMP barriers stall whenever one of
        # its threads is descheduled (see cpu_inference.py's notes)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        trained = trained_model(root / "train", steps=args.train_steps)
        console.print(
            f"  trained the tiny recipe, {args.train_steps} steps, in {time.perf_counter() - t0:.0f} s"
        )
        t0 = time.perf_counter()
        int8 = quantize_int8(export_onnx(trained.model_dir, root / "onnx-fp32"), root / "onnx-int8")
        console.print(f"  exported and quantised to INT8 in {time.perf_counter() - t0:.0f} s")
        home = trained.home
        with Platform(load_settings(home=home)) as platform:
            admin = platform.context()
            info = registry.register(platform, admin, int8, MODEL)
            registry.set_alias(platform, admin, info.spec, "live")
            viewer = actor(platform, admin, "bench-client", Role.VIEWER)
            _, token = create_token(platform, admin, viewer.user)
        done.touch(mode=0o600)
        done.write_text(json.dumps({"home": str(home), "int8": str(int8), "token": token}))
    mlflow_model = None
    if "mlflow" in args.servers:
        mlflow_model = root / "mlflow-model"
        if not mlflow_model.exists():
            save_mlflow_model(root, int8, mlflow_model, args)
    return Built(home, int8, token, mlflow_model)


def save_mlflow_model(root: Path, int8: Path, path: Path, args: argparse.Namespace) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    code = root / "mlflow_model_code.py"
    code.write_text(MLFLOW_MODEL_CODE)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", args.max_new_tokens)]),
    )
    # MLflow's advice on type hints and input examples does not apply here (the signature is explicit); it
    # forces its warnings on ("once"), so its stderr is set aside while it saves
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(code),
            artifacts={"onnx": str(int8)},
            model_config={"threads": args.threads},
            signature=signature,
            pip_requirements=["onnxruntime", "tokenizers", "numpy"],  # no inference run (env-manager local)
        )


# -- servers ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str  # the predict endpoint
    headers: dict[str, str]
    body: Callable[[str], bytes]
    output: Callable[[Any], str]
    metrics_url: str | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and what it started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _popen(cmd: list[str], env: dict[str, str], log: Path, cpus: set[int] | None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin
        )


def _wait_ready(server: Server, url: str, timeout: float = 180) -> Server:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{server.name} did not get ready:\n{server.log.read_text()[-4000:]}")
        time.sleep(0.25)


def _base_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YARD_", "MLFLOW_"))}
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, NO_COLOR="1")
    return env


def start_yard(
    name: str, built: Built, root: Path, args: argparse.Namespace, cpus: set[int] | None
) -> Server:
    import yaml

    port = free_port()
    config = {
        "models": [f"{MODEL}@live"],
        "host": "127.0.0.1",
        "port": port,
        "workers": 1,
        "auth": True,
        "threads": args.threads,
        "batching": {
            "enabled": name == "yard",
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "max_queue": max(1024, args.max_batch_size),
        },
        "logging": {"sample": args.log_sample},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = _base_env(args)
    env["YARD_HOME"] = str(built.home)
    log = root / f"{name}.log"
    proc = _popen([sys.executable, "-m", "modelyard.cli", "serve", "--config", str(path)], env, log, cpus)
    base = f"http://127.0.0.1:{port}"
    n = args.max_new_tokens
    server = Server(
        name,
        proc,
        log,
        f"{base}/v1/models/{MODEL}:predict",
        {"authorization": f"Bearer {built.token}", "content-type": "application/json"},
        lambda text: json.dumps({"inputs": [text], "parameters": {"max_new_tokens": n}}).encode(),
        lambda data: str(data["outputs"][0]),
        metrics_url=f"{base}/metrics",
    )
    return _wait_ready(server, f"{base}/readyz")


def start_mlflow(built: Built, root: Path, args: argparse.Namespace, cpus: set[int] | None) -> Server:
    assert built.mlflow_model is not None
    port = free_port()
    env = _base_env(args)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(built.mlflow_model)]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = root / "mlflow.log"
    proc = _popen(cmd, env, log, cpus)
    base = f"http://127.0.0.1:{port}"
    n = args.max_new_tokens

    def body(text: str) -> bytes:
        frame = {"columns": ["text"], "data": [[text]]}
        return json.dumps({"dataframe_split": frame, "params": {"max_new_tokens": n}}).encode()

    server = Server(
        "mlflow",
        proc,
        log,
        f"{base}/invocations",
        {"content-type": "application/json"},
        body,
        lambda data: str(data["predictions"][0]),
    )
    return _wait_ready(server, f"{base}/ping")


def start(name: str, built: Built, root: Path, args: argparse.Namespace, cpus: set[int] | None) -> Server:
    if name == "mlflow":
        return start_mlflow(built, root, args, cpus)
    return start_yard(name, built, root, args, cpus)


# -- the load generator -----------------------------------------------------------------------------------


@dataclass
class Point:
    server: str
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    same: int = 0
    batch: dict[float, float] = field(default_factory=dict)  # yard_batch_size bucket bound -> count
    batch_sum: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the server's processes in the window
    client_cpu: float = 0.0  # CPU seconds of this process in the window

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def batch_count(self) -> float:
        return max(self.batch.values(), default=0.0)


def scrape_batches(text: str) -> tuple[dict[float, float], float]:
    """Cumulative ``yard_batch_size`` bucket counts (summed over versions) and the sum of batch sizes."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = collections.defaultdict(float)
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "yard_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return dict(buckets), total


def tree_cpu(pid: int) -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def drive(
    server: Server,
    texts: Sequence[str],
    reference: dict[str, str],
    concurrency: int,
    args: argparse.Namespace,
) -> Point:
    import httpx

    point = Point(server.name, concurrency, args.seconds)
    bodies = [server.body(t) for t in texts]
    # One client (one keep-alive connection) per simulated user: httpcore's pool walks every connection of
    # the pool on each request start and finish (a socket check per idle one), so one shared client with
    # 128 connections spent ~20 ms of CPU per request here and, not the server, set the pace at 128 users.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(args.request_timeout)
    tls = ssl.create_default_context()  # unused (plain http), but shared: each default one costs ~20 ms
    clients = [
        httpx.AsyncClient(limits=limits, timeout=timeout, headers=server.headers, verify=tls)
        for _ in range(concurrency)
    ]
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout) as side:
        for c in clients:
            await stack.enter_async_context(c)
        # every client opens its connection with one request before the clock starts
        await asyncio.gather(
            *(c.post(server.url, content=bodies[k % len(bodies)]) for k, c in enumerate(clients))
        )
        began = loop.time()
        start_at, end_at = began + args.warmup, began + args.warmup + args.seconds

        async def snapshot() -> tuple[float, float, float, dict[float, float], float]:
            batches: dict[float, float] = {}
            total = 0.0
            if server.metrics_url is not None:
                batches, total = scrape_batches((await side.get(server.metrics_url)).text)
            return time.process_time(), tree_cpu(server.proc.pid), loop.time(), batches, total

        async def watch() -> None:
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            before = await snapshot()
            await asyncio.sleep(max(0.0, end_at - loop.time()))
            after = await snapshot()
            point.client_cpu = after[0] - before[0]
            point.server_cpu = after[1] - before[1]
            point.batch = {le: after[3].get(le, 0.0) - before[3].get(le, 0.0) for le in after[3]}
            point.batch_sum = after[4] - before[4]

        async def client_loop(k: int) -> None:
            client, i = clients[k], k
            while loop.time() < end_at:
                j = i % len(bodies)
                i += concurrency
                t0 = loop.time()
                try:
                    response = await client.post(server.url, content=bodies[j])
                except httpx.HTTPError as exc:
                    if start_at <= loop.time() <= end_at:
                        point.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.01)
                    continue
                t1 = loop.time()
                if not start_at <= t1 <= end_at:
                    continue
                if response.status_code != 200:
                    point.errors[str(response.status_code)] += 1
                    continue
                point.latencies.append(t1 - t0)
                point.same += server.output(response.json()) == reference[texts[j]]

        await asyncio.gather(watch(), *(client_loop(k) for k in range(concurrency)))
    return point


def run_load(
    server: Server,
    texts: Sequence[str],
    reference: dict[str, str],
    concurrency: int,
    args: argparse.Namespace,
) -> Point:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(drive(server, texts, reference, concurrency, args))


def check_outputs(server: Server, texts: Sequence[str], reference: dict[str, str]) -> int:
    """Sequential requests: how many of ``texts`` the server answers exactly as the local model alone."""
    import httpx

    same = 0
    with httpx.Client(headers=server.headers, timeout=60) as client:
        for text in texts:
            response = client.post(server.url, content=server.body(text))
            response.raise_for_status()
            same += server.output(response.json()) == reference[text]
    return same


# -- reporting --------------------------------------------------------------------------------------------


def batch_summary(points: Sequence[Point]) -> str:
    """Mean batch size over the windows of ``points`` and the largest, known up to its histogram bucket."""
    buckets: dict[float, float] = collections.defaultdict(float)
    for p in points:
        for le, n in p.batch.items():
            buckets[le] += n
    count = max(buckets.values(), default=0.0)  # the +Inf bucket: every batch
    if not count:
        return "-"
    mean = sum(p.batch_sum for p in points) / count
    largest = min(le for le, n in buckets.items() if n >= count)
    return f"{mean:.1f} (<={largest:g})"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(points: Sequence[Point]) -> dict[str, float]:
    """Medians over repeats of one (server, concurrency)."""
    return {
        "rps": median([p.rps for p in points]),
        "p50": median([percentile(p.latencies, 50) for p in points if p.latencies]),
        "p99": median([percentile(p.latencies, 99) for p in points if p.latencies]),
        "errors": float(sum(sum(p.errors.values()) for p in points)),
        "requests": float(sum(len(p.latencies) for p in points)),
        "same": sum(p.same for p in points) / max(1, sum(len(p.latencies) for p in points)),
        "server_cpu": median([p.server_cpu / p.seconds for p in points]),
        "cpu_ms": median([p.server_cpu / max(1, len(p.latencies)) * 1000 for p in points]),
        "client_cpu": median([p.client_cpu / p.seconds for p in points]),
    }


def parse_cpus(value: str) -> set[int]:
    cpus: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds of load before each point"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements per point; medians are shown")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=256, help="distinct input texts")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (every server)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="yard's batching.max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="yard's batching.max_wait_ms")
    parser.add_argument(
        "--log-sample", type=float, default=1.0, help="yard's logging.sample (share of predictions stored)"
    )
    parser.add_argument(
        "--server-cpus",
        default=None,
        help="CPUs the servers are pinned to, e.g. 1 or 2-3 (default: the last CPU when there are 2 or "
        "more, the load generator on the rest); empty: no pinning",
    )
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client timeout in seconds")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="build the model (home, ONNX files, MLflow model) in this directory and reuse it next time",
    )
    args = parser.parse_args()
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown or not args.servers:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency takes whole numbers separated by commas, e.g. 1,8,32")
    if not levels or min(levels) < 1:
        parser.error("--concurrency needs at least one client count >= 1")
    if "mlflow" in args.servers:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            print("mlflow: not installed (pip install -e '.[bench]'), skipped", file=sys.stderr)
            args.servers.remove("mlflow")
            if not args.servers:
                return

    available = os.sched_getaffinity(0)
    if args.server_cpus is None:
        server_cpus = {max(available)} if len(available) >= 2 else set()
    else:
        server_cpus = parse_cpus(args.server_cpus)
    client_cpus = (available - server_cpus) or available

    console = Console(width=None if sys.stdout.isatty() else 170)  # piped: keep the table whole
    console.print(
        f"load average {os.getloadavg()[0]:.1f}, {len(available)} CPUs; servers pinned to "
        f"{sorted(server_cpus) or 'all'}, load generator to {sorted(client_cpus)}; "
        f"ONNX threads {args.threads}; {args.max_new_tokens} new tokens; "
        f"{args.seconds:g} s per point after {args.warmup:g} s warm-up"
    )
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from modelyard.serving import OnnxSeq2Seq
    from modelyard.training import make_examples

    texts = [r["source"] for r in make_examples(args.inputs, seed=7)]
    points: dict[tuple[str, int], list[Point]] = collections.defaultdict(list)
    checks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="yard-bench-serve-", dir=args.workdir) as tmp:
        root = Path(tmp)
        if args.cache is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
        built = build(args.cache.resolve() if args.cache is not None else root / "model", args, console)
        local = OnnxSeq2Seq(built.int8, intra_op_threads=args.threads)
        reference = {
            t: local.generate([t], max_new_tokens=args.max_new_tokens, batch_size=1)[0] for t in texts
        }
        distinct = len(set(reference.values()))
        console.print(f"  {len(texts)} inputs, {distinct} distinct outputs from the local model")
        del local
        os.sched_setaffinity(0, client_cpus)
        for rep in range(args.repeat):
            order = args.servers[rep % len(args.servers) :] + args.servers[: rep % len(args.servers)]
            for name in order:
                t0 = time.perf_counter()
                server = start(name, built, root, args, server_cpus)
                try:
                    console.print(f"  {name}: ready in {time.perf_counter() - t0:.1f} s")
                    if rep == 0:
                        checks[name] = check_outputs(server, texts[:16], reference)
                    for c in levels:
                        point = run_load(server, texts, reference, c, args)
                        points[name, c].append(point)
                        errors = ", ".join(f"{k}: {v}" for k, v in point.errors.items()) or "none"
                        console.print(
                            f"  {name} c={c}: {point.rps:.1f} req/s, "
                            f"p50 {percentile(point.latencies, 50) * 1000 if point.latencies else 0:.0f} ms, "
                            f"p99 {percentile(point.latencies, 99) * 1000 if point.latencies else 0:.0f} ms, "
                            f"errors {errors}"
                        )
                finally:
                    server.stop()
        os.sched_setaffinity(0, available)

    summary = {key: summarise(pts) for key, pts in points.items()}
    table = Table(
        title=f"INT8 ONNX tiny T5, greedy, {args.max_new_tokens} new tokens, one input per request "
        f"({args.seconds:g} s per point, repeat {args.repeat}, medians)"
    )
    for col in (
        "server",
        "clients",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s vs mlflow",
        "p99 vs mlflow",
        "batch mean (max)",
        "server CPU",
        "CPU ms/req",
        "client CPU",
        "= solo",
    ):
        table.add_column(col, justify="left" if col == "server" else "right", no_wrap=col == "server")
    for name in args.servers:
        for c in levels:
            s = summary[name, c]
            ref = summary.get(("mlflow", c))
            vs = f"{s['rps'] / ref['rps']:.2f}x" if ref and ref["rps"] > 0 and name != "mlflow" else "-"
            p99_vs = f"{s['p99'] / ref['p99']:.2f}x" if ref and name != "mlflow" and ref["p99"] > 0 else "-"
            table.add_row(
                name,
                str(c),
                f"{s['rps']:.1f}",
                f"{s['p50'] * 1000:.0f}",
                f"{s['p99'] * 1000:.0f}",
                f"{s['errors']:.0f}",
                vs,
                p99_vs,
                batch_summary(points[name, c]) if name == "yard" else "-",
                f"{s['server_cpu']:.0%}",
                f"{s['cpu_ms']:.1f}",
                f"{s['client_cpu']:.0%}",
                f"{s['same']:.0%}",
            )
        if name != args.servers[-1]:
            table.add_section()
    console.print(table)
    console.print(
        "req/s vs mlflow: ratio of requests/s (higher is better); p99 vs mlflow: ratio of p99 (lower is "
        "better); server CPU: cores used by the server; = solo: answers identical to the model's answer for "
        "the input alone (INT8 batches are not bit-identical to solo runs: see benchmarks/README.md)"
    )
    for name, same in checks.items():
        console.print(f"{name}: {same}/16 sequential answers identical to the local model generating alone")
    console.print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if ("yard", 32) in summary and ("mlflow", 32) in summary:
        y, m = summary["yard", 32], summary["mlflow", 32]
        ratio = y["rps"] / m["rps"] if m["rps"] > 0 else float("inf")
        met = ratio >= 3.0 and y["p99"] < m["p99"]
        console.print(
            f"goal: at 32 clients yard serves {ratio:.2f}x MLflow's requests/s (>= 3x) with p99 "
            f"{y['p99'] * 1000:.0f} ms vs {m['p99'] * 1000:.0f} ms (lower): {'met' if met else 'missed'}"
        )
    else:
        console.print("goal: needs yard and mlflow at concurrency 32 (not measured in this run)")


if __name__ == "__main__":
    main()
