"""``yard serve`` (the REST server, or its Kubernetes manifests) and ``yard deploy`` (candidate traffic)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from modelyard.cli._app import acting, app, console, err_console, usage


@app.command("serve")
def serve(
    specs: list[str] = typer.Argument(
        None, metavar="NAME@ALIAS...", help="Models to serve (NAME@ALIAS or NAME@V)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Serve config YAML (flags override it)."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8000)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes."),
    no_auth: bool = typer.Option(False, "--no-auth", help="No API tokens (only on 127.0.0.1)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", min=1),
    max_wait_ms: float | None = typer.Option(None, "--max-wait-ms", min=0),
    no_batching: bool = typer.Option(False, "--no-batching", help="Run every input alone (for comparison)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Inference threads per model."),
    export: str | None = typer.Option(
        None, "--export", help="k8s: write manifests to DIR (the last argument) instead of serving."
    ),
    image: str = typer.Option("modelyard-serve:latest", "--image", help="Image named in exported manifests."),
    replicas: int = typer.Option(2, "--replicas", min=1, help="Replicas in exported manifests."),
    namespace: str = typer.Option("default", "--namespace", help="Namespace of exported manifests."),
    secret: str = typer.Option("modelyard", "--secret", help="Kubernetes Secret the pods read keys from."),
    cluster_database_url: str | None = typer.Option(
        None, "--cluster-database-url", help="export: PostgreSQL URL as the cluster reaches it."
    ),
    cluster_artifact_uri: str | None = typer.Option(
        None, "--cluster-artifact-uri", help="export: s3:// artifact store as the cluster reaches it."
    ),
) -> None:
    """Serve registered versions over REST: dynamic batching, tokens, canaries, Prometheus metrics."""
    from modelyard.serving._config import load_config, parse_config

    specs = list(specs or [])
    target = None
    if export is not None:
        if export != "k8s":
            raise usage(f"--export {export!r}: only k8s is supported")
        # DIR is the last argument: a lone NAME@ALIAS would be taken for it, leaving no model to serve.
        if not specs or (len(specs) == 1 and config is None):
            raise usage(
                "--export k8s needs the directory to write to after the models: "
                "yard serve NAME@ALIAS --export k8s DIR"
            )
        target = Path(specs.pop())
    data: dict[str, Any] = load_config(config).model_dump(mode="json") if config is not None else {}
    if specs:
        data["models"] = list(specs)
    for key, value in (("host", host), ("port", port), ("workers", workers), ("threads", threads)):
        if value is not None:
            data[key] = value
    if no_auth:
        data["auth"] = False
    batching = dict(data.get("batching", {}))
    if max_batch_size is not None:
        batching["max_batch_size"] = max_batch_size
    if max_wait_ms is not None:
        batching["max_wait_ms"] = float(max_wait_ms)
    if no_batching:
        batching["enabled"] = False
    data["batching"] = batching
    if "models" not in data:
        raise usage("name the models to serve (yard serve NAME@ALIAS) or give --config FILE")
    cfg = parse_config(data, source="yard serve")
    if target is not None:
        from modelyard.serving._k8s import export_k8s

        with acting() as (platform, _ctx):
            files = export_k8s(
                platform,
                cfg,
                target,
                image=image,
                replicas=replicas,
                namespace=namespace,
                secret_name=secret,
                database_url=cluster_database_url,
                artifact_uri=cluster_artifact_uri,
            )
        for f in files:
            console.print(f"wrote {f}", markup=False)
        return
    with acting() as (platform, ctx):  # fail fast (unknown model, no permission) before uvicorn starts
        from modelyard.registry import show

        for spec in cfg.models:
            platform.authorize(ctx, "model.read", f"model:{spec}")
            show(platform, ctx, spec)
    _run(cfg)


def _run(cfg: Any) -> None:
    import uvicorn

    err_console.print(
        f"serving {', '.join(cfg.models)} on http://{cfg.host}:{cfg.port} "
        f"({cfg.workers} worker(s), auth {'on' if cfg.auth else 'OFF'})",
        markup=False,
    )
    from modelyard.serving._http import uvicorn_options

    server = uvicorn_options(cfg)
    if cfg.workers == 1:
        # One process keeps its metrics in memory: a PROMETHEUS_MULTIPROC_DIR left in the environment
        # would make prometheus_client write files there (or fail at start-up when it is gone).
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        from modelyard.serving import create_app

        uvicorn.run(create_app(cfg), **server)
        return
    import shutil
    import tempfile

    os.environ["YARD_SERVE_CONFIG"] = json.dumps(cfg.model_dump(mode="json"))
    os.environ["YARD_SERVE_PARENT"] = str(os.getpid())  # a worker that outlives this process stops itself
    # Each worker has its own metrics; prometheus_client's multiprocess mode merges them in every scrape.
    # The directory is fresh and private (mode 0700): stale files would add old counts to the new ones.
    # Workers are spawned, so they import prometheus_client after this is set.
    metrics_dir = tempfile.mkdtemp(prefix="yard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        # What uvicorn.run does for workers > 1, keeping the supervisor to learn why it stopped: a worker
        # that cannot load its models makes it stop all of them, and that must not exit 0.
        from uvicorn.config import STARTUP_FAILURE
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config(
            "modelyard.serving._app:app_from_env", factory=True, workers=cfg.workers, **server
        )
        sock = config.bind_socket()
        try:
            supervisor = Multiprocess(config, sockets=[sock])
            supervisor.run()
        finally:
            sock.close()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            from modelyard.errors import YardError

            raise YardError("a worker could not start serving (its error is above); all workers stopped")
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command("deploy")
def deploy(
    name: str = typer.Argument(..., help="Served model name."),
    version: int | None = typer.Option(None, "--version", "-v", help="Candidate version."),
    mode: str = typer.Option("canary", "--mode", help="ab, canary, shadow, or off (no candidate)."),
    weight: int = typer.Option(
        10,
        "--weight",
        help="Percent of traffic for ab and canary (over 50: an approver, not its maker; passing gates).",
    ),
    reason: str = typer.Option("", "--reason", "-m"),
) -> None:
    """Route part of NAME's traffic to a candidate version; every server of NAME follows within seconds."""
    from modelyard.serving import deploy as do_deploy

    with acting() as (platform, ctx):
        info = do_deploy(platform, ctx, name, version=version, mode=mode, weight=weight, reason=reason)
    if info.mode == "off":
        console.print(f"{name}: no candidate (generation {info.generation})", markup=False)
    else:
        console.print(
            f"{name}: {info.mode} {name}@{info.candidate} at {info.weight}% (generation {info.generation})",
            markup=False,
        )
