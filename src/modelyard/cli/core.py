"""Core commands: init, whoami, doctor, artifacts, keys, projects, users, tokens, audit."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from modelyard.cli._app import acting, app, console, print_json, region_option, table
from modelyard.errors import UsageError


@app.command()
def init(
    region: str | None = typer.Option(None, help="Region of this home's stores, e.g. me-central-1."),
) -> None:
    """Create the home, master key, metadata and artifact stores, and make you admin. Idempotent."""
    from modelyard.core import init_home

    report = init_home(region=region_option(region))
    for item in report.created:
        console.print(f"created  {item}", markup=False)
    for item in report.existing:
        console.print(f"exists   {item}", markup=False)
    for item in report.cleaned:
        console.print(f"cleaned  {item}", markup=False)
    for item in report.notes:
        console.print(f"note     {item}", markup=False)
    console.print(f"ready: home {report.home}, region {report.region}", markup=False)


@app.command()
def whoami(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show who you act as, in which project, with which role."""
    with acting() as (_, ctx):
        data = {
            "user": ctx.user,
            "project": ctx.project,
            "role": str(ctx.role),
            "region": ctx.region,
            "via": ctx.via,
        }
    if json_out:
        print_json(data)
    else:
        console.print(
            f"{ctx.user} ({ctx.role} in project {ctx.project}, region {ctx.region}, via {ctx.via})",
            markup=False,
        )


@app.command()
def doctor() -> None:
    """Print what is installed and configured: stores, keys, extras, torch/onnxruntime, GPU."""
    from modelyard.core import doctor as run_doctor

    rows = run_doctor()
    table("modelyard doctor", ["check", "value", "status"], rows)
    if any(status == "fail" for *_, status in rows):
        raise typer.Exit(1)


# -- artifacts --------------------------------------------------------------------------------------------
artifacts = typer.Typer(help="Encrypted, content-addressed artifacts.", no_args_is_help=True)
app.add_typer(artifacts, name="artifacts")


@artifacts.command("put")
def artifacts_put(
    paths: list[Path] = typer.Argument(..., help="Files or directories (stored recursively) to store."),
    name: str | None = typer.Option(None, help="Name to record for a single file (default: its name)."),
    region: str | None = typer.Option(None, help="Region the data belongs to (default: the project's)."),
) -> None:
    """Encrypt and store files in one batch. One file: print its SHA-256 digest; several: digest and name."""
    from modelyard.core import put_artifacts

    region = region_option(region)
    files, names = _expand(paths)
    if name is not None:
        if len(files) != 1:
            raise UsageError(f"--name applies to a single file, but {len(files)} files were given")
        names = [name]
    with acting() as (platform, ctx):
        infos = put_artifacts(platform, ctx, files, names=names, region=region)
    if len(infos) == 1 and paths[0].is_file():
        typer.echo(infos[0].digest)
    else:
        for info in infos:
            typer.echo(f"{info.digest}  {info.name}")


def _expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files as given; directories walked (symlinks skipped), named ``<dir>/<relative path>``."""
    files: list[Path] = []
    names: list[str] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.is_symlink():
                    files.append(child)
                    names.append(f"{path.resolve().name}/{child.relative_to(path).as_posix()}")
        elif path.is_file():
            files.append(path)
            names.append(path.name)
        else:
            raise UsageError(f"{path} is not a readable file or directory")
    if not files:
        raise UsageError(f"no files to store under {', '.join(str(p) for p in paths)}")
    return files, names


@artifacts.command("get")
def artifacts_get(
    digest: str = typer.Argument(..., help="SHA-256 digest printed by `put`."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the verified plaintext."),
) -> None:
    """Decrypt, verify and write an artifact to a file."""
    from modelyard.core import get_artifact

    with acting() as (platform, ctx):
        size = get_artifact(platform, ctx, digest, output)
    console.print(f"wrote {size} bytes to {output}", markup=False)


@artifacts.command("ls")
def artifacts_ls(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the project's artifacts."""
    from modelyard.core import list_artifacts

    with acting() as (platform, ctx):
        items = list_artifacts(platform, ctx)
    if json_out:
        print_json([vars(i) for i in items])
        return
    table(
        f"artifacts in {ctx.project}",
        ["digest", "name", "size", "region", "created", "by"],
        [(i.digest, i.name, i.size, i.region, i.created_at, i.created_by) for i in items],
    )


@artifacts.command("rm")
def artifacts_rm(digest: str = typer.Argument(..., help="SHA-256 digest.")) -> None:
    """Remove the project's references to an artifact."""
    from modelyard.core import delete_artifact

    with acting() as (platform, ctx):
        n = delete_artifact(platform, ctx, digest)
    console.print(f"removed {n} reference(s) to {digest}", markup=False)


@app.command("gc")
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be deleted; delete nothing."),
    min_age: str = typer.Option(
        "1h", "--min-age", help="Keep unreferenced blobs younger than this (e.g. 1h, 30m, 2d; 0 for none)."
    ),
    orphan_min_age: str = typer.Option(
        "24h",
        "--orphan-min-age",
        help="Keep objects that no blob names (a crashed write's) younger than this (at least --min-age).",
    ),
    repack_below: float = typer.Option(
        0.5,
        "--repack-below",
        min=0.0,
        max=1.0,
        help="Rewrite packs whose live blobs fill less than this fraction of them (0: never).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Delete stored files that no dataset version, model version, run or artifact refers to any more.

    Blobs are shared by every project, so this is for admins of the system project. A deleted blob's key
    goes with it: its bytes are unreadable from then on, even where they stay inside a shared pack. Then
    objects that no blob names at all (left by a write that died before recording them, or by a failed
    delete) are deleted too, and packs of small files that are mostly dead are rewritten with their live
    blobs only. Last, this home's training checkpoints of runs that are FINISHED or deleted (plain files of
    the user's data) are deleted; those of RUNNING, FAILED or KILLED runs stay for resume."""
    from modelyard.core import collect_garbage
    from modelyard.core._checkpoints import checkpoints_dir

    age, orphan_age = _age("--min-age", min_age), _age("--orphan-min-age", orphan_min_age)
    with acting() as (platform, ctx):
        report = collect_garbage(
            platform, ctx, min_age=age, dry_run=dry_run, orphan_min_age=orphan_age, repack_below=repack_below
        )
        checkpoints = checkpoints_dir(platform.settings.home)
    if json_out:
        print_json(report.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {report.blobs} unreferenced blob(s), {report.bytes:,} bytes"
        + ("" if dry_run else f", {report.objects} object(s)")
        + f"; kept {report.live} referenced"
        + (f" and {report.young} younger than {min_age}" if age else ""),  # --min-age 0 keeps none for youth
        markup=False,
    )
    if report.orphans:
        console.print(
            f"{verb} {report.orphans} object(s) no blob named, {report.orphan_bytes:,} bytes", markup=False
        )
    if report.uploads:
        aborted = "would abort" if dry_run else "aborted"
        console.print(f"{aborted} {report.uploads} unfinished upload(s) of interrupted writes", markup=False)
    if report.repacked:
        console.print(
            f"{'would repack' if dry_run else 'repacked'} {report.repacked} pack(s) less than "
            f"{repack_below:.0%} live, {report.repacked_bytes:,} dead bytes",
            markup=False,
        )
    if report.staging:
        console.print(f"removed {report.staging} day-old temp file(s) of interrupted writes", markup=False)
    if report.checkpoints:
        console.print(
            f"{verb} the checkpoints of {report.checkpoints} finished or deleted run(s) in {checkpoints}",
            markup=False,
        )
    if report.failed_checkpoints:
        console.print(
            f"warning: the checkpoints of {report.failed_checkpoints} finished or deleted run(s) could not "
            f"be deleted (plain files of their training data); see the log and delete them in {checkpoints}",
            markup=False,
        )
    if report.unknown_checkpoints:
        names = ", ".join(report.unknown_checkpoints[:10]) + (
            ", ..." if len(report.unknown_checkpoints) > 10 else ""
        )
        console.print(f"left alone in {checkpoints} (not a run's checkpoints): {names}", markup=False)
    if report.failed_objects:
        console.print(
            f"warning: {report.failed_objects} object(s) could not be deleted (their keys are gone, so they "
            "are unreadable); see the log. A later `yard gc` deletes them once older than --orphan-min-age",
            markup=False,
        )


def _age(option: str, value: str) -> timedelta:
    from modelyard.core import parse_duration

    zero = re.fullmatch(r"0+[smhdw]?", value.strip().lower()) is not None  # 0, 0s, 0h ...
    age = timedelta(0) if zero else parse_duration(value)
    if age is None:
        raise UsageError(f"{option} never would keep everything; give a duration, or use --dry-run")
    return age


# -- keys -------------------------------------------------------------------------------------------------
keys = typer.Typer(help="Master key status and rotation; model signing keys.", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("ls")
def keys_ls() -> None:
    """Show the master key id and where it comes from (never the key), and the signing keys' public keys."""
    with acting() as (platform, ctx):
        platform.authorize(ctx, "key.read", "key:master")
        ring = platform.keyring
        rows = [("master (AES-256-GCM key wrapping)", ring.current.key_id, ring.source, "")]
        from modelyard.core._signing import list_signing_keys

        rows += [
            (
                "signing (Ed25519)" + (", active" if k.active else ""),
                k.id,
                f"created {k.created_at:%Y-%m-%d} by {k.created_by}",
                k.public_key,
            )
            for k in list_signing_keys(platform)
        ]
    table("keys", ["key", "id", "source", "public key"], rows)


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-wrap every data key under a new master key; the old key opens nothing afterwards."""
    from modelyard.core import rotate_master_key

    with acting() as (platform, ctx):
        old, new, count = rotate_master_key(platform, ctx)
    console.print(f"rotated master key {old} -> {new}; re-wrapped {count} data key(s)", markup=False)


# -- projects ---------------------------------------------------------------------------------------------
projects = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
app.add_typer(projects, name="projects")


@projects.command("create")
def projects_create(
    name: str = typer.Argument(...),
    region: str | None = typer.Option(None, help="Region (default: the installation's)."),
) -> None:
    """Create a project; you become its admin."""
    from modelyard.core import create_project

    region = region_option(region)
    with acting() as (platform, ctx):
        proj = create_project(platform, ctx, name, region=region)
    console.print(f"created project {proj.name} (region {proj.region})", markup=False)


@projects.command("ls")
def projects_ls() -> None:
    """List the projects you are a member of."""
    from modelyard.core import list_projects

    with acting() as (platform, ctx):
        rows = [(p.name, p.region, str(role)) for p, role in list_projects(platform, ctx)]
    table("projects", ["project", "region", "your role"], rows)


# -- users ------------------------------------------------------------------------------------------------
users = typer.Typer(help="Users and their roles in the project.", no_args_is_help=True)
app.add_typer(users, name="users")


@users.command("add")
def users_add(
    name: str = typer.Argument(...),
    role: str = typer.Option(..., help="viewer, scientist, engineer, approver or admin."),
) -> None:
    """Add a user to the project with a role."""
    from modelyard.core import add_user

    with acting() as (platform, ctx):
        info = add_user(platform, ctx, name, role)
    console.print(f"added {info.user} as {info.role} in {ctx.project}", markup=False)


@users.command("set-role")
def users_set_role(name: str = typer.Argument(...), role: str = typer.Argument(...)) -> None:
    """Change a member's role."""
    from modelyard.core import set_role

    with acting() as (platform, ctx):
        info = set_role(platform, ctx, name, role)
    console.print(f"{info.user} is now {info.role} in {ctx.project}", markup=False)


@users.command("rm")
def users_rm(name: str = typer.Argument(...)) -> None:
    """Take a user out of the project (its tokens for the project stop working)."""
    from modelyard.core import remove_user

    with acting() as (platform, ctx):
        info = remove_user(platform, ctx, name)
    console.print(f"removed {info.user} ({info.role}) from {ctx.project}", markup=False)


@users.command("disable")
def users_disable(name: str = typer.Argument(...)) -> None:
    """Disable an account in every project: its logins and tokens are refused (installation admins)."""
    from modelyard.core import set_disabled

    with acting() as (platform, ctx):
        info = set_disabled(platform, ctx, name, True)
    console.print(f"disabled {info.user}: its logins and tokens are refused in every project", markup=False)


@users.command("enable")
def users_enable(name: str = typer.Argument(...)) -> None:
    """Enable a disabled account again (installation admins)."""
    from modelyard.core import set_disabled

    with acting() as (platform, ctx):
        info = set_disabled(platform, ctx, name, False)
    console.print(f"enabled {info.user}", markup=False)


@users.command("ls")
def users_ls(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the project's members."""
    from modelyard.core import list_users

    with acting() as (platform, ctx):
        members = list_users(platform, ctx)
    if json_out:
        print_json([{"user": m.user, "role": str(m.role), "disabled": m.disabled} for m in members])
        return
    table(
        f"users in {ctx.project}",
        ["user", "role", "disabled"],
        [(m.user, str(m.role), m.disabled) for m in members],
    )


# -- tokens -----------------------------------------------------------------------------------------------
tokens = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)
app.add_typer(tokens, name="tokens")


@tokens.command("create")
def tokens_create(
    user: str = typer.Option(..., "--user", help="User the token acts as."),
    expires: str = typer.Option("90d", help="Lifetime: 30d, 12h, 2w, or never."),
) -> None:
    """Create a token. It is printed once on stdout and cannot be shown again."""
    from modelyard.core import create_token, parse_duration

    lifetime = parse_duration(expires)
    with acting() as (platform, ctx):
        info, secret = create_token(platform, ctx, user, expires_in=lifetime)
    until = info.expires_at.isoformat() if info.expires_at else "never"
    print(
        f"token {info.id} for {info.user} in {info.project}, expires {until}; copy it now:", file=sys.stderr
    )
    typer.echo(secret)


@tokens.command("revoke")
def tokens_revoke(token_id: str = typer.Argument(..., help="Token id (the part after yard_).")) -> None:
    """Revoke a token immediately."""
    from modelyard.core import revoke_token

    with acting() as (platform, ctx):
        info = revoke_token(platform, ctx, token_id)
    console.print(f"revoked token {info.id} of {info.user}", markup=False)


@tokens.command("ls")
def tokens_ls() -> None:
    """List tokens (admins: the project's; others: their own)."""
    from modelyard.core import list_tokens

    with acting() as (platform, ctx):
        items = list_tokens(platform, ctx)
    table(
        "tokens",
        ["id", "user", "created", "expires", "state"],
        [
            (
                t.id,
                t.user,
                t.created_at,
                t.expires_at or "never",
                "active" if t.active else ("revoked" if t.revoked_at else "expired"),
            )
            for t in items
        ],
    )


# -- audit ------------------------------------------------------------------------------------------------
audit = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit, name="audit")


def _since(value: str | None) -> str | None:
    """ISO date/time, or a look-back like 1h or 7d."""
    if value is None:
        return None
    from modelyard.core import parse_duration

    try:
        when = datetime.fromisoformat(value)
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    except ValueError:
        try:
            delta = parse_duration(value)
        except UsageError:
            raise UsageError(
                f"--since {value!r}: expected an ISO date/time (2026-11-01T12:00) or 1h, 7d"
            ) from None
        if delta is None:
            return None
        when = datetime.now(UTC) - delta
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@audit.command("ls")
def audit_ls(
    since: str | None = typer.Option(None, help="ISO date/time or look-back (1h, 7d)."),
    actor: str | None = typer.Option(None, help="Only records of this user."),
    limit: int = typer.Option(
        200, min=1, max=1_000_000, help="At most this many records: the newest, oldest first."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List audit records of the project (the newest --limit of them)."""
    from modelyard.core import list_records

    with acting() as (platform, ctx):
        recs = list_records(platform, ctx, since=_since(since), actor=actor, limit=limit)
    if json_out:
        print_json(recs)
        return
    table(
        f"audit log of {ctx.project}",
        ["seq", "time", "actor", "action", "resource", "outcome"],
        [(r["seq"], r["ts"], r["actor"], r["action"], r["resource"], r["outcome"]) for r in recs],
    )


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 and name the first broken record on any tampering."""
    from modelyard.core import verify_chain

    with acting() as (platform, ctx):
        result = verify_chain(platform, ctx)
    if not result.ok:
        from modelyard.errors import IntegrityError

        raise IntegrityError(
            f"audit chain broken at record {result.broken_seq}: {result.reason} "
            f"({result.checked} records verified before it)"
        )
    console.print(f"audit chain intact: {result.checked} records verified", markup=False)


@audit.command("export")
def audit_export(
    fmt: str = typer.Option("jsonl", "--format", help="Only jsonl for now."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default stdout)."),
    all_projects: bool = typer.Option(False, "--all-projects", help="Admins: every project's records."),
) -> None:
    """Export records with their hashes, one JSON object per line."""
    import json

    from modelyard.core import list_records
    from modelyard.core._paths import write_file

    if fmt != "jsonl":
        raise UsageError(f"--format {fmt!r} is not supported; expected jsonl")
    with acting() as (platform, ctx):
        recs = list_records(platform, ctx, all_projects=all_projects)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
    if output is None:
        sys.stdout.write(lines)
    else:
        try:
            write_file(output, lines)
        except OSError as exc:
            raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
        console.print(f"wrote {len(recs)} records to {output}", markup=False)
