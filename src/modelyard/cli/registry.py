"""``yard models ...`` (registry) and ``yard gates check`` (quality gates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelyard.cli._app import acting, app, console, err_console, print_json, table, usage

models_app = typer.Typer(
    help="Model registry: register, ls, show, verify, promote, rollback, alias, history, card, download.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
gates_app = typer.Typer(
    help="Quality gates: metric, fairness, robustness, latency and size checks.", no_args_is_help=True
)
app.add_typer(gates_app, name="gates")


def _quiet_transformers() -> None:
    """No tqdm bars from transformers on stderr while a command loads a model (errors stay one line)."""
    try:
        import transformers
    except ImportError:  # ONNX-only installs have no transformers
        return
    hf_logging: Any = transformers.utils.logging
    hf_logging.disable_progress_bar()


def _aliases(shown: dict[str, str], unverified: list[str]) -> str:
    """Aliases (name -> how to show it), those whose signed record does not check marked: resolving them
    is refused."""
    return ", ".join(
        text + (" (unverified: refused)" if a in unverified else "") for a, text in shown.items()
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@models_app.command("register")
def register(
    source: str = typer.Argument(
        ..., metavar="RUN|MODEL_DIR", help="A finished run's id, or a model directory."
    ),
    name: str = typer.Option(..., "--name", "-n", help="Model name."),
    description: str = typer.Option("", "--description", "-d", help="Intended use, shown on the model card."),
    parent: str | None = typer.Option(None, "--parent", help="NAME@V this version was derived from."),
    eval_report: Path | None = typer.Option(None, "--eval-report", help="report.json for a model directory."),
) -> None:
    """Register a new immutable, signed version of NAME."""
    from modelyard.registry import register as do_register

    with acting() as (platform, ctx):
        info = do_register(
            platform, ctx, source, name, description=description, parent=parent, eval_report=eval_report
        )
    console.print(
        f"{info.spec}: {info.files} files, {_mb(info.bytes)}, {info.format} ({info.variant}), "
        f"signed by key {info.key_id}",
        markup=False,
    )


@models_app.command("ls")
def ls(
    name: str | None = typer.Argument(None, help="List this model's versions instead of the models."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the project's models, or the versions of NAME."""
    from modelyard.registry import list_models, list_versions

    with acting() as (platform, ctx):
        if name is None:
            models = list_models(platform, ctx)
        else:
            versions = list_versions(platform, ctx, name)
    if name is None:
        if json_out:
            print_json([vars(m) for m in models])
            return
        table(
            None,
            ["model", "versions", "latest", "aliases", "created by"],
            [
                (
                    m.name,
                    m.versions,
                    m.latest or "-",
                    _aliases({a: f"{a}->{v}" for a, v in m.aliases.items()}, m.unverified) or "-",
                    m.created_by,
                )
                for m in models
            ],
        )
        return
    if json_out:
        print_json([v.as_dict() for v in versions])
        return
    table(
        None,
        ["version", "variant", "size", "metrics", "aliases", "parent", "by", "created"],
        [
            (
                v.version,
                v.variant,
                _mb(v.bytes),
                " ".join(f"{k}={x:.3f}" for k, x in sorted(v.metrics.items())),
                _aliases({a: a for a in v.aliases}, v.unverified) or "-",
                v.parent or "-",
                v.created_by,
                v.created_at.strftime("%Y-%m-%d %H:%M"),
            )
            for v in versions
        ],
    )


@models_app.command("show")
def show(
    spec: str = typer.Argument(..., metavar="NAME[@V|@ALIAS]"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output (with the manifest)."),
) -> None:
    """A version: files, lineage, metrics, aliases, gate results and signature (checked)."""
    from modelyard.registry import attestations, read_manifest

    with acting() as (platform, ctx):
        info, manifest = read_manifest(platform, ctx, spec)
        # Signatures checked: this is shown beside "signature checked", and a verdict is what it claims.
        gates = attestations(platform, ctx, info.spec, kind="gates")
    if json_out:
        print_json({**info.as_dict(), "manifest": manifest, "gates": gates})
        return
    console.print(f"{info.spec}  ({info.format}, {info.variant})", markup=False)
    lineage = manifest.get("lineage") or {}
    rows = [
        ("aliases", _aliases({a: a for a in info.aliases}, info.unverified) or "-"),
        ("size", f"{_mb(info.bytes)} in {info.files} files"),
        ("metrics", " ".join(f"{k}={v:.4f}" for k, v in sorted(info.metrics.items())) or "-"),
        ("run", lineage.get("run") or "-"),
        ("datasets", ", ".join(lineage.get("datasets") or []) or "-"),
        ("parent", lineage.get("parent") or "-"),
        ("author", info.created_by),
        ("created", info.created_at.isoformat(timespec="seconds")),
        ("manifest", info.manifest_digest),
        ("signed by", f"key {info.key_id} (signature checked)"),
    ]
    bad = [g for g in gates if not g["verified"]]
    if bad:  # no verdict at all: a newer altered one may be hiding a failed run behind an older pass
        failing = (f"attestation {g['id']} failed its signature check: {g['problem']}" for g in bad)
        rows.append(("gates", "; ".join(failing)))
    elif gates:
        last = gates[-1]
        rows.append(
            (
                "gates",
                f"{'passed' if last['passed'] else 'FAILED'} ({last['created_at'][:19]}, "
                f"attestation {last['id']}, signature checked)",
            )
        )
    for key, value in rows:
        console.print(f"  {key:<10}{value}", markup=False)
    table(
        "files",
        ["path", "size", "sha256"],
        [(f["path"], f["size"], f["sha256"][:16]) for f in manifest["files"]],
    )


@models_app.command("verify")
def verify(spec: str = typer.Argument(..., metavar="NAME[@V|@ALIAS]")) -> None:
    """Recompute every file's SHA-256 from the store and check the signatures; exit 1 naming any mismatch."""
    from modelyard.registry import verify as do_verify

    with acting() as (platform, ctx):
        r = do_verify(platform, ctx, spec)
    console.print(
        f"{r.spec}: ok — {r.files} files ({r.bytes:,} bytes) match manifest {r.manifest_digest[:16]}…, "
        f"signature by key {r.key_id} valid, {r.attestations} attestation(s) valid",
        markup=False,
    )


@models_app.command("promote")
def promote(
    spec: str = typer.Argument(..., metavar="NAME@V"),
    to: str = typer.Option(..., "--to", help="Alias to move, e.g. staging or production."),
    policy: Path | None = typer.Option(None, "--policy", help="Gate policy YAML (required for production)."),
    reason: str = typer.Option("", "--reason", "-m", help="Why; kept in the alias history."),
) -> None:
    """Move an alias to a version after its gates pass (production: an approver, not its maker)."""
    from modelyard.registry import promote as do_promote

    runner = None
    _quiet_transformers()
    reports: list[Any] = []
    if policy is not None:
        from modelyard.evaluation import check_gates, load_policy

        gates = load_policy(policy)

        def runner(platform: Any, ctx: Any, exact: str) -> tuple[bool, str]:
            reports.append(check_gates(platform, ctx, exact, gates))
            return reports[-1].passed, reports[-1].summary()

    with acting() as (platform, ctx):
        change = do_promote(platform, ctx, spec, to, gates=runner, reason=reason)
    was = f" (was {change.previous})" if change.previous is not None else ""
    console.print(f"{change.name}@{change.alias} -> {change.version}{was}", markup=False)
    for check in reports[-1].checks if reports else []:
        if check.note.startswith("skipped"):  # e.g. a relative check naming an alias that is not there
            err_console.print(f"note: {check.name} {check.note}", markup=False)


@models_app.command("rollback")
def rollback(
    name: str = typer.Argument(...),
    alias: str = typer.Option("production", "--alias", help="Alias to move back."),
    reason: str = typer.Option("", "--reason", "-m"),
) -> None:
    """Point ALIAS back at the version it pointed at before (audited)."""
    from modelyard.registry import rollback as do_rollback

    with acting() as (platform, ctx):
        change = do_rollback(platform, ctx, name, alias, reason=reason)
    console.print(
        f"{change.name}@{change.alias} -> {change.version} (rolled back from {change.previous})", markup=False
    )


@models_app.command("alias")
def alias(
    spec: str = typer.Argument(..., metavar="NAME@V"),
    alias_name: str = typer.Argument(..., metavar="ALIAS"),
    delete: bool = typer.Option(False, "--delete", help="Remove ALIAS instead (SPEC is then NAME)."),
    reason: str = typer.Option("", "--reason", "-m"),
) -> None:
    """Point ALIAS at a version without gates (not for protected aliases such as production)."""
    from modelyard.registry import delete_alias, set_alias

    with acting() as (platform, ctx):
        if delete:
            change = delete_alias(platform, ctx, spec.split("@", 1)[0], alias_name, reason=reason)
        else:
            change = set_alias(platform, ctx, spec, alias_name, reason=reason)
    target = "removed" if change.version is None else f"-> {change.version}"
    console.print(f"{change.name}@{change.alias} {target}", markup=False)


@models_app.command("history")
def history(
    name: str = typer.Argument(...),
    alias_name: str | None = typer.Option(None, "--alias"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Every alias change of NAME, oldest first."""
    from modelyard.registry import history as do_history

    with acting() as (platform, ctx):
        events = do_history(platform, ctx, name, alias_name)
    if json_out:
        print_json([vars(e) for e in events])
        return
    table(
        None,
        ["when", "alias", "action", "version", "previous", "by", "reason"],
        [
            (
                e.at.isoformat(timespec="seconds"),
                e.alias,
                e.action,
                e.version if e.version is not None else "-",
                e.previous if e.previous is not None else "-",
                e.by,
                e.reason,
            )
            for e in events
        ],
    )


@models_app.command("card")
def card(
    spec: str = typer.Argument(..., metavar="NAME[@V|@ALIAS]"),
    output: Path = typer.Option(Path("."), "--output", "-o", help="Directory for card.md and card.html."),
) -> None:
    """Write the model card (Markdown and HTML) of a verified version."""
    from modelyard.core._paths import write_file
    from modelyard.registry import model_card

    with acting() as (platform, ctx):
        c = model_card(platform, ctx, spec)
    if output.exists() and not output.is_dir():
        raise usage(f"--output {output} is a file; give a directory for card.md and card.html")
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_file(output / "card.md", c.markdown())
        write_file(output / "card.html", c.html())
    except OSError as exc:
        raise usage(f"cannot write the card into --output {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {output / 'card.md'} and {output / 'card.html'}", markup=False)


@models_app.command("download")
def download(
    spec: str = typer.Argument(..., metavar="NAME[@V|@ALIAS]"),
    dest: Path = typer.Argument(..., metavar="DIR", help="New or empty directory."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a non-empty DIR, replacing the version's files there."
    ),
) -> None:
    """Write a version's files into DIR, every byte verified (DIR appears only when all verified)."""
    from modelyard.registry import download as do_download

    with acting() as (platform, ctx):
        info, path = do_download(platform, ctx, spec, dest, overwrite=overwrite)
    console.print(f"{info.spec}: {info.files} files verified in {path}", markup=False)


@gates_app.command("check")
def gates_check(
    spec: str = typer.Argument(..., metavar="NAME[@V|@ALIAS]"),
    policy: Path = typer.Option(..., "--policy", help="Gate policy YAML, e.g. examples/flan-t5/gates.yaml."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate a version against a gate policy; store the signed result; exit 1 if any check fails."""
    from modelyard.evaluation import check_gates, load_policy

    pol = load_policy(policy)
    _quiet_transformers()
    with acting() as (platform, ctx):
        report = check_gates(platform, ctx, spec, pol)
    if json_out:
        print_json({**report.to_dict(), "attestation": report.attestation})
    else:
        table(
            f"gates of {report.spec}",
            ["check", "value", "bound", "result"],
            [
                (
                    c.name,
                    "-" if c.value is None else f"{c.value:.4g}",
                    "-" if c.bound is None else f"{c.op} {c.bound:.4g}",
                    (
                        "pass"
                        if c.passed
                        else f"FAIL by {abs(c.margin):.4g}"
                        if c.margin is not None
                        else "FAIL"
                    )
                    + (f" ({c.note})" if c.note else ""),
                )
                for c in report.checks
            ],
        )
        verdict = "passed" if report.passed else f"FAILED: {report.summary()}"
        console.print(f"{report.spec}: gates {verdict} (attestation {report.attestation})", markup=False)
    if not report.passed:
        raise typer.Exit(1)
