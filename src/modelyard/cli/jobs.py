"""``yard jobs ...`` (submit, ls, show, logs, cancel) and ``yard worker``: the job queue."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

from modelyard.cli._app import acting, app, console, err_console, plain, print_json, table

jobs_app = typer.Typer(
    help="Job queue: submit training jobs, list them, follow their logs, cancel them.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@jobs_app.command("submit")
def submit(
    recipe: Path = typer.Argument(
        ..., metavar="RECIPE.yaml", help="The recipe (validated now, stored in the job)."
    ),
    args: list[str] | None = typer.Argument(
        None, metavar="[-- ARGS]...", help="Extra arguments for the command, after `--`."
    ),
    command: str = typer.Option("train", "--command", "-c", help="train, tune or eval."),
    cpus: float = typer.Option(1.0, "--cpus", help="CPU cores the job needs (e.g. 2 or 0.5)."),
    gpus: int = typer.Option(0, "--gpus", help="GPUs the job needs."),
    memory: str | None = typer.Option(None, "--memory", help="Memory the job needs, e.g. 8G or 512M."),
    priority: str = typer.Option("normal", "--priority", help="low, normal, high or urgent."),
    max_retries: int | None = typer.Option(
        None, "--max-retries", help="Retries after a worker dies mid-job (default YARD_JOB_MAX_RETRIES, 2)."
    ),
    backend: str = typer.Option("local", "--backend", help="local (the queue) or kubernetes."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="kubernetes: write the Job manifest, apply nothing."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="kubernetes: manifest file (default stdout)."
    ),
    image: str | None = typer.Option(
        None, "--image", help="kubernetes: container image (default YARD_JOB_IMAGE)."
    ),
    namespace: str = typer.Option("default", "--namespace", help="kubernetes: namespace."),
    secret: str = typer.Option(
        "modelyard", "--secret", help="kubernetes: Secret holding master-key, token, database-password, ..."
    ),
    cluster_database_url: str | None = typer.Option(
        None, "--cluster-database-url", help="kubernetes: PostgreSQL URL as the cluster reaches it."
    ),
    cluster_artifact_uri: str | None = typer.Option(
        None, "--cluster-artifact-uri", help="kubernetes: s3:// artifact store as the cluster reaches it."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Queue a job (`yard jobs submit recipe.yaml --cpus 2 --memory 8G --priority high`); prints its id."""
    from modelyard.errors import UsageError
    from modelyard.training._jobs import BACKENDS, submit_job, submit_kubernetes_job
    from modelyard.training._k8s import manifest_yaml

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    if backend == "local":
        k8s_only = {
            "--dry-run": dry_run,
            "--output": output,
            "--image": image,
            "--cluster-database-url": cluster_database_url,
            "--cluster-artifact-uri": cluster_artifact_uri,
        }
        given = [name for name, value in k8s_only.items() if value]
        if given:
            raise UsageError(f"{given[0]} is an option of --backend kubernetes")
    opts: dict[str, Any] = {
        "command": command,
        "args": args,
        "cpus": cpus,
        "gpus": gpus,
        "memory": memory,
        "priority": priority,
        "max_retries": max_retries,
    }
    with acting() as (platform, ctx):
        if backend == "local":
            info = submit_job(platform, ctx, recipe, **opts)
        else:
            manifest, submitted = submit_kubernetes_job(
                platform,
                ctx,
                recipe,
                **opts,
                image=image,
                namespace=namespace,
                secret_name=secret,
                database_url=cluster_database_url,
                artifact_uri=cluster_artifact_uri,
                dry_run=dry_run,
            )
            text = manifest_yaml(manifest)
            if output is not None:
                from modelyard.core._paths import write_file

                try:
                    write_file(output, text)
                except OSError as exc:
                    raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
                err_console.print(f"wrote {output}", markup=False)
            elif dry_run and not json_out:
                sys.stdout.write(text)
            if submitted is None:
                if json_out:  # stdout is one JSON document: the manifest (kubectl takes JSON as well)
                    print_json(manifest)
                return
            info = submitted
    if json_out:
        print_json(info.to_dict())
        return
    where = f"kubernetes job {info.external_id}" if info.external_id else "queued"
    err_console.print(
        plain(f"job {info.id} {where}: {info.command} {info.recipe_name} (priority {info.priority_name})"),
        markup=False,
    )
    console.print(str(info.id), markup=False)


@jobs_app.command("ls")
def ls(
    status: list[str] | None = typer.Option(None, "--status", "-s", help="Only jobs with these statuses."),
    limit: int = typer.Option(100, "--limit", "-n", help="At most this many jobs, newest first."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List jobs, newest first."""
    from modelyard.training._jobs import format_memory, list_jobs

    with acting() as (platform, ctx):
        jobs = list_jobs(platform, ctx, statuses=status, limit=limit)
    if json_out:
        print_json([j.to_dict() for j in jobs])
        return
    rows = [
        [
            j.id,
            j.status,
            j.command,
            j.recipe_name,
            j.priority_name,
            f"{_fmt(j.cpus)}/{j.gpus}/{format_memory(j.memory) if j.memory else '-'}",
            j.attempts,
            (j.run_id or "")[:12],
            j.worker or j.external_id,
            _fmt(j.submitted_at),
            j.submitted_by,
        ]
        for j in jobs
    ]
    columns = ["job", "status", "command", "recipe", "priority", "cpu/gpu/mem", "attempts", "run", "worker"]
    table(f"jobs ({len(jobs)})", [*columns, "submitted", "by"], rows)


@jobs_app.command("show")
def show(
    job: str = typer.Argument(..., help="Job id."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A job's attributes."""
    from modelyard.training._jobs import get_job

    with acting() as (platform, ctx):
        info = get_job(platform, ctx, job)
    if json_out:
        print_json(info.to_dict())
        return
    table(f"job {info.id}", ["attribute", "value"], [(k, _fmt(v)) for k, v in info.to_dict().items() if v])


@jobs_app.command("logs")
def logs(
    job: str = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
) -> None:
    """Print a job's output (stdout and stderr of every attempt); -f follows it to the end."""
    from modelyard.training._jobs import get_job, iter_logs

    with acting() as (platform, ctx):
        info = get_job(platform, ctx, job)
        if info.backend != "local" and info.status == "SUBMITTED" and (info.attempts == 0 or info.waiting):
            # Its pod stores the output once it runs; what keeps a pod from starting is in the cluster.
            namespace, _, name = (info.external_id or "").partition("/")
            why = f" ({info.waiting})" if info.waiting else ""
            state = "has not started in Kubernetes yet" if not info.attempts else "waits for its next attempt"
            hint = f"kubectl describe job/{name} -n {namespace}"
            err_console.print(plain(f"job {info.id} {state}{why}; if it stays so, see {hint}"), markup=False)
        attempt = 0
        for chunk in iter_logs(
            platform, ctx, info.id, follow=follow, poll_s=min(0.5, platform.settings.job_poll_s)
        ):
            if chunk.attempt != attempt:
                if attempt:
                    sys.stdout.flush()
                    err_console.print(f"--- attempt {chunk.attempt} ---", markup=False)
                attempt = chunk.attempt
            sys.stdout.write(chunk.data)
            sys.stdout.flush()
        if follow:
            final = get_job(platform, ctx, info.id)
            if final.status != "SUBMITTED":
                err_console.print(
                    plain(f"job {final.id} {final.status}" + (f": {final.reason}" if final.reason else "")),
                    markup=False,
                )


@jobs_app.command("cancel")
def cancel(job: str = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a queued or running job (a running one gets SIGTERM, then SIGKILL after the grace period)."""
    from modelyard.training._jobs import cancel_job, cancel_pending

    with acting() as (platform, ctx):
        info = cancel_job(platform, ctx, job)
    console.print(plain(f"job {info.id} cancelled ({info.reason})"), markup=False)
    if info.status == "CANCELLED" and cancel_pending(info):
        namespace, _, name = (info.external_id or "").partition("/")
        err_console.print(
            f"warning: its Kubernetes job is still in the cluster; a pod of it that starts runs nothing. The "
            f"next `yard jobs ls`, `show` or `cancel` that reaches the cluster deletes it; or now: "
            f"kubectl delete job {name} -n {namespace}",
            markup=False,
        )


@app.command("worker")
def worker(
    cpus: float | None = typer.Option(None, "--cpus", help="CPU cores to offer (default: all)."),
    gpus: int | None = typer.Option(
        None, "--gpus", help="GPUs to offer (default: CUDA_VISIBLE_DEVICES or nvidia-smi)."
    ),
    memory: str | None = typer.Option(None, "--memory", help="Memory to offer, e.g. 32G (default: all)."),
    name: str | None = typer.Option(
        None, "--name", help="Worker name in the job rows (default host:pid:random)."
    ),
    max_jobs: int | None = typer.Option(None, "--max-jobs", help="Stop after claiming this many jobs."),
    exit_when_idle: bool = typer.Option(
        False, "--exit-when-idle", help="Stop when nothing runs and nothing that fits is queued."
    ),
    job: str | None = typer.Option(
        None,
        "--job",
        help="Run this one Kubernetes job (what its pod runs) with the resources it asked for, mirror its "
        "status and output into the store, print the output too, and exit with its exit status.",
    ),
) -> None:
    """Run queued jobs of the project while their CPUs, GPUs and memory fit; SIGTERM or Ctrl-C hands running
    jobs back to the queue."""
    from modelyard.training._jobs import Worker, format_memory

    def echo(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    with acting() as (platform, ctx):
        w = Worker(
            platform,
            ctx,
            cpus=cpus,
            gpus=gpus,
            memory=memory,
            name=name,
            max_jobs=max_jobs,
            exit_when_idle=exit_when_idle,
            # Its lines name other people's recipe files and carry reasons: shown, never obeyed.
            log=lambda msg: err_console.print(plain(msg), markup=False),
            job=job,
            echo=echo if job is not None else None,
        )
        err_console.print(
            f"worker {w.name}: project {ctx.project}, {w.cpus:g} cpus, {len(w.gpu_ids)} gpus, "
            f"{format_memory(w.memory)} memory" + (f", job {w.job_id} only" if w.job_id else ""),
            markup=False,
        )
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: w.stop())
        try:
            claimed = w.run()  # Ctrl-C: run() stops its jobs and hands them back before it re-raises
        finally:
            signal.signal(signal.SIGTERM, previous)
    if w.job_id is None:
        err_console.print(f"worker {w.name}: stopped after {claimed} job(s)", markup=False)
        return
    if not claimed:  # cancelled, or finished by an earlier pod: a retry of the pod must not run it again
        err_console.print(f"job {w.job_id} is not waiting to run: `yard jobs show {w.job_id}`", markup=False)
        return
    code = w.exit_code or 0
    raise typer.Exit(128 - code if code < 0 else code)  # the cluster counts a failed pod towards backoffLimit
