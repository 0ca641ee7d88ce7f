"""The real `yard` command line, driven in-process through ``modelyard.cli.main`` (fast) and, where only an
end-to-end run proves the point (exit codes, the console script, what gets imported), in subprocesses."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pwd
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard import __version__
from modelyard.testing import Yard

ME = pwd.getpwuid(os.geteuid()).pw_name
GENESIS = "0" * 64


@pytest.fixture
def ready(yard: Yard, home: Path) -> Path:
    """A home made by `yard init`."""
    r = yard("init")
    assert r.code == 0, r.err
    return home


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"modelyard sample payload \x00\x01\x02 " * 300)
    return path


def run_yard(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m modelyard.cli ARGS`` in a fresh interpreter, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", **(env or {})},
        timeout=120,
    )


def objects(home: Path) -> list[Path]:
    return sorted(p for p in (home / "artifacts" / "objects").rglob("*") if p.is_file())


def put(yard: Yard, path: Path, *args: str) -> str:
    r = yard("artifacts", "put", path, *args)
    assert r.code == 0, r.err
    return r.out.strip()


def audit_records(yard: Yard, *args: str) -> list[dict[str, Any]]:
    data = yard("audit", "ls", "--json", *args).json()
    assert isinstance(data, list)
    return data


def new_token(yard: Yard, user: str, *args: str) -> str:
    r = yard("tokens", "create", "--user", user, *args)
    assert r.code == 0, r.err
    return r.out.strip()


def token_id(token: str) -> str:
    return token.split("_", 2)[1]


# -- help, version, entry points ---------------------------------------------------------------------------


def test_help_lists_the_core_commands(yard: Yard) -> None:
    r = yard("--help")
    assert r.code == 0
    assert "Usage: yard" in r.out
    for command in ("init", "whoami", "doctor", "artifacts", "keys", "projects", "users", "tokens", "audit"):
        assert re.search(rf"^\s+{command}\s", r.out, re.M), command


def test_subcommand_help(yard: Yard) -> None:
    r = yard("artifacts", "--help")
    assert r.code == 0
    for command in ("put", "get", "ls", "rm"):
        assert re.search(rf"^\s+{command}\s", r.out, re.M), command


def test_no_arguments_shows_usage(yard: Yard) -> None:
    r = yard()
    assert "Usage: yard" in r.out + r.err
    assert "error:" not in r.err


def test_version(yard: Yard) -> None:
    r = yard("--version")
    assert (r.code, r.out, r.err) == (0, f"modelyard {__version__}\n", "")


def test_help_and_version_do_not_import_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        from modelyard.cli import main

        assert main(["--help"]) == 0
        assert "torch" not in sys.modules, "yard --help imported torch"
        assert main(["--version"]) == 0
        assert "torch" not in sys.modules, "yard --version imported torch"
        print("no torch")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("no torch")


def test_console_script(home: Path) -> None:
    script = Path(sys.executable).with_name("yard")
    if not script.exists():
        pytest.skip("the `yard` console script is not installed next to this interpreter")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, f"modelyard {__version__}\n")
    r = subprocess.run([str(script), "no-such-command"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ")


def test_exit_codes_end_to_end(ready: Path) -> None:
    assert run_yard("--version").returncode == 0
    usage = run_yard("no-such-command")
    assert usage.returncode == 2
    assert usage.stderr.splitlines() == [usage.stderr.strip()]
    assert usage.stderr.startswith("error: ")
    assert run_yard("artifacts", "get", "not-a-digest", "-o", ready / "x").returncode == 2
    failure = run_yard("artifacts", "get", "a" * 64, "-o", ready / "x")
    assert failure.returncode == 1
    assert failure.stderr.startswith("error: ") and "not found" in failure.stderr
    assert "Traceback" not in failure.stderr


# -- init ----------------------------------------------------------------------------------------------------


def test_a_piped_table_keeps_its_rows_whole(ready: Path) -> None:
    # Rich cuts a table at 80 columns where stdout is not a terminal; a pipe into grep needs every cell.
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "audit", "ls"],
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert re.search(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\b", done.stdout), done.stdout
    assert max(map(len, done.stdout.splitlines())) > 80


def test_piped_output_keeps_its_lines_whole(tmp_path: Path) -> None:
    # Rich wraps printed text at 80 columns where stdout is not a terminal: a line cut in two breaks grep
    # and every script reading it (`created  metadata store sqlite:////long/path` lost its path's end).
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "init"],
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1", "YARD_HOME": str(tmp_path / ("home-" + "h" * 80))},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) > 80
    assert all(line.split(maxsplit=1)[0] in ("created", "exists", "ready:", "note") for line in lines), lines


def test_init_creates_a_private_home(yard: Yard, home: Path) -> None:
    assert not home.exists()
    r = yard("init")
    assert r.code == 0, r.err
    assert "created" in r.out and "exists" not in r.out
    key = home / "keys" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "yard.db").is_file()
    assert (home / "artifacts").is_dir()


def test_init_is_idempotent(yard: Yard, ready: Path) -> None:
    key_before = (ready / "keys" / "master.key").read_bytes()
    files_before = sorted(
        p.relative_to(ready) for p in ready.rglob("*") if not p.name.endswith(("-wal", "-shm"))
    )
    audit_before = len(audit_records(yard))
    r = yard("init")
    assert r.code == 0, r.err
    assert "created" not in r.out
    assert r.out.count("exists") >= 4  # home, key, metadata store, artifact store
    assert (ready / "keys" / "master.key").read_bytes() == key_before
    assert (
        sorted(p.relative_to(ready) for p in ready.rglob("*") if not p.name.endswith(("-wal", "-shm")))
        == files_before
    )
    assert len(audit_records(yard)) == audit_before  # nothing changed, nothing to audit


def test_init_with_another_master_key_is_refused_and_leaves_no_key_behind(
    yard: Yard, ready: Path, tmp_path: Path
) -> None:
    """A mistyped key file path made `yard init` write a new key and say "ready" for a store it cannot
    read (helper-25); a wrong YARD_MASTER_KEY likewise."""
    from modelyard.core._crypto import MasterKey

    stray = tmp_path / "keys" / "master.kye"
    r = yard("init", env={"YARD_MASTER_KEY_FILE": str(stray)})
    assert r.code == 1 and "master key" in r.error and "YARD_MASTER_KEY_FILE" in r.error
    assert not stray.exists()
    r = yard("init", env={"YARD_MASTER_KEY": MasterKey.generate().to_b64()})
    assert r.code == 1 and "master key" in r.error
    assert yard("init").code == 0  # the right key still opens it


def test_init_keeps_its_region(yard: Yard, home: Path) -> None:
    r = yard("init", "--region", "me-central-1")
    assert r.code == 0, r.err
    assert "region me-central-1" in r.out
    assert yard("whoami", "--json").json()["region"] == "me-central-1"
    r = yard("init", "--region", "eu-west-1")
    assert r.code == 1
    assert "me-central-1" in r.error and "eu-west-1" in r.error
    assert "YARD_HOME" in r.error  # says how to fix it
    assert yard("init").code == 0  # the region chosen first is remembered (config.yaml)
    assert yard("whoami", "--json").json()["region"] == "me-central-1"


def test_init_remembers_stores_given_by_the_environment_but_not_a_password(
    yard: Yard, home: Path, tmp_path: Path
) -> None:
    db, objs = tmp_path / "elsewhere" / "meta.db", tmp_path / "elsewhere" / "objects"
    db.parent.mkdir()
    stores = {"YARD_DATABASE_URL": f"sqlite:///{db}", "YARD_ARTIFACT_URI": objs.as_uri()}
    r = yard("init", env=stores)
    assert r.code == 0, r.err
    assert db.is_file() and objs.is_dir() and not (home / "yard.db").exists()
    # The next command finds the stores without the variables (it said "no home" before).
    assert yard("whoami", "--json").json()["user"] == ME
    assert yard("init").out.count("created") == 0 and not (home / "yard.db").exists()
    # A URL with a password is not written to a file: init says so, and what was saved stays.
    for secret in (
        {"YARD_S3_ENDPOINT_URL": "http://user:s3cret@127.0.0.1:9000"},
        {"YARD_S3_ENDPOINT_URL": "http://127.0.0.1:9000/?Password=s3cret"},
    ):
        r = yard("init", env=secret)
        assert "holds a password" in r.out and "s3cret" not in r.out + r.err
        assert "s3cret" not in (home / "config.yaml").read_text()
    assert stat.S_IMODE((home / "config.yaml").stat().st_mode) == 0o600
    # A database password with a '/' in it (SQLAlchemy reads it whole, urlsplit would not see it).
    from modelyard.config import load_settings
    from modelyard.core._home import InitReport, _remember_stores

    for url in (
        "postgresql+psycopg://yard:s3cr/et@db:5432/yard",
        "postgresql://yard@db/yard?password=s3cret",
    ):
        report = InitReport(str(home), "local")
        _remember_stores(load_settings(home=home, database_url=url), report)
        assert report.notes and "s3cr" not in (home / "config.yaml").read_text()
    assert f"sqlite:///{db}" in (home / "config.yaml").read_text()


def test_invalid_region_is_a_usage_error(yard: Yard, home: Path) -> None:
    r = yard("init", "--region", "Mars Base!")
    assert r.code == 2
    assert "region" in r.error
    assert not home.exists()


def test_commands_before_init_create_nothing(yard: Yard, home: Path) -> None:
    r = yard("whoami")
    assert r.code == 1
    assert "yard init" in r.error
    r = yard("artifacts", "ls")
    assert r.code == 1
    assert "yard init" in r.error
    assert yard("doctor").code == 1
    assert not home.exists()
    assert yard("init").code == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_bad_database_url_scheme_lists_the_valid_ones(yard: Yard, ready: Path) -> None:
    r = yard("whoami", env={"YARD_DATABASE_URL": "mysql://root@localhost/yard"})
    assert r.code == 2
    assert "mysql" in r.error
    assert "sqlite://" in r.error and "postgresql://" in r.error


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"YARD_DATABASE_URL": "postgres ql://u:S3CRET@h/db"}, "postgres ql://u:***@h/db"),
        ({"YARD_ARTIFACT_URI": "s3://AKIA:S3CRET@bucket/p"}, "s3://AKIA:***@bucket/p"),
        ({"YARD_ARTIFACT_URI": "gs://b/p?token=S3CRET"}, "gs://b/p?token=***"),
        (
            {"YARD_ARTIFACT_URI": "s3://bucket/p", "YARD_S3_ENDPOINT_URL": "http://k:S3CRET@127.0.0.1:9"},
            "http://k:***@127.0.0.1:9",
        ),
    ],
)
def test_store_urls_in_errors_and_doctor_hide_their_secrets(
    yard: Yard, ready: Path, env: dict[str, str], shown: str
) -> None:
    """The URL was quoted whole: `invalid S3 bucket name 'AKIA:S3CRET@bucket'`, in doctor's table too."""
    for args in (("whoami",), ("doctor",), ("artifacts", "ls")):
        r = yard(*args, env=env)
        assert "S3CRET" not in r.out + r.err, args
    assert shown in yard("doctor", env=env).out.replace("\n", "")


# -- whoami, doctor ------------------------------------------------------------------------------------------


def test_whoami(yard: Yard, ready: Path) -> None:
    r = yard("whoami")
    assert r.code == 0
    assert r.out.startswith(f"{ME} (admin in project default")
    assert yard("whoami", "--json").json() == {
        "user": ME,
        "project": "default",
        "role": "admin",
        "region": "local",
        "via": "local",
    }


def test_doctor_on_an_initialised_home(yard: Yard, ready: Path) -> None:
    r = yard("doctor")
    assert r.code == 0, r.out + r.err
    out = r.out
    assert f"sqlite:///{ready / 'yard.db'}" in out
    assert (ready / "artifacts").as_uri() in out
    assert re.search(r"master key\s.*mode 0600.*id [0-9a-f]{16}", out)
    for extra in ("train", "optimize", "serve", "postgres", "s3", "bench"):
        assert f"extra [{extra}]" in out
    assert re.search(r"^\W*torch\s", out, re.M)
    assert re.search(r"^\W*onnxruntime\s", out, re.M)
    assert re.search(r"^\W*gpu\s", out, re.M)
    assert re.search(rf"identity\s.*{re.escape(ME)} \(admin in default", out)
    assert not re.search(r"\bfail\b", out)


def test_doctor_warns_of_a_home_others_can_read(yard: Yard, ready: Path) -> None:
    status = r"^\W*home\s+\W[^│]*│\s*(\w+)"  # the home row's status (this test's path says "warns")
    assert re.findall(status, yard("doctor").out, re.M) == ["ok"]  # yard init made it 0700
    ready.chmod(0o755)  # a home made beforehand keeps its mode: checkpoints and data caches inside
    r = yard("doctor", env={"COLUMNS": "300"})
    assert r.code == 0 and re.findall(status, r.out, re.M) == ["warn"]
    assert "mode 0755: others can read or write it; chmod 700" in r.out


def test_doctor_fails_on_a_broken_key(yard: Yard, ready: Path) -> None:
    (ready / "keys" / "master.key").chmod(0o644)
    r = yard("doctor")
    assert r.code == 1
    assert re.search(r"master key\s.*chmod 600.*fail", r.out)


# -- artifacts -----------------------------------------------------------------------------------------------


def test_artifacts_put_get_ls_rm(yard: Yard, ready: Path, sample: Path, tmp_path: Path) -> None:
    content = sample.read_bytes()
    r = yard("artifacts", "put", sample)
    assert r.code == 0, r.err
    digest = hashlib.sha256(content).hexdigest()
    assert r.out == f"{digest}\n"  # only the digest: `d=$(yard artifacts put f)` works

    out = tmp_path / "restored" / "weights.bin"
    r = yard("artifacts", "get", digest, "-o", out)
    assert r.code == 0, r.err
    assert out.read_bytes() == content
    assert str(len(content)) in r.out

    r = yard("artifacts", "ls")
    assert r.code == 0
    assert digest in r.out and "weights.bin" in r.out
    listed = yard("artifacts", "ls", "--json").json()
    assert isinstance(listed, list) and len(listed) == 1
    item = listed[0]
    assert item["digest"] == digest
    assert item["name"] == "weights.bin"
    assert item["size"] == len(content)
    assert item["region"] == "local"
    assert item["created_by"] == ME

    r = yard("artifacts", "rm", digest)
    assert r.code == 0, r.err
    assert yard("artifacts", "ls", "--json").json() == []
    r = yard("artifacts", "get", digest, "-o", tmp_path / "again.bin")
    assert r.code == 1
    assert "not found" in r.error
    assert not (tmp_path / "again.bin").exists()


def test_put_several_files_and_a_directory_as_one_batch(yard: Yard, ready: Path, tmp_path: Path) -> None:
    tree = tmp_path / "dataset"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.csv").write_bytes(b"x,y\n1,2\n")
    (tree / "sub" / "b.csv").write_bytes(b"x,y\n3,4\n")
    single = tmp_path / "single.bin"
    single.write_bytes(b"single")
    r = yard("artifacts", "put", tree, single)
    assert r.code == 0, r.err
    lines = [line.split("  ") for line in r.out.splitlines()]
    assert [name for _, name in lines] == ["dataset/a.csv", "dataset/sub/b.csv", "single.bin"]
    assert lines[0][0] == hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    listed = {item["name"] for item in yard("artifacts", "ls", "--json").json()}
    assert listed == {"dataset/a.csv", "dataset/sub/b.csv", "single.bin"}
    records = audit_records(yard)
    assert [r["resource"] for r in records if r["action"] == "artifact.write"][-1] == "artifacts:3 files"
    r = yard("artifacts", "put", tree, "--name", "x")
    assert r.code == 2 and "single file" in r.error
    r = yard("artifacts", "put", tmp_path / "missing")
    assert r.code == 2 and "missing" in r.error


def test_put_with_a_name_and_no_plaintext_at_rest(yard: Yard, ready: Path, tmp_path: Path) -> None:
    secret = b"TOP-SECRET-PLAINTEXT-" * 200
    src = tmp_path / "data.txt"
    src.write_bytes(secret)
    digest = put(yard, src, "--name", "datasets/v1/data.txt")
    assert [a["name"] for a in yard("artifacts", "ls", "--json").json()] == ["datasets/v1/data.txt"]
    needle = b"TOP-SECRET-PLAINTEXT"
    for path in ready.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    assert digest == hashlib.sha256(secret).hexdigest()


def test_put_refuses_a_hostile_name(yard: Yard, ready: Path, sample: Path) -> None:
    r = yard("artifacts", "put", sample, "--name", "../../etc/passwd")
    assert r.code == 2
    assert "unsafe" in r.error
    assert objects(ready) == []
    refused = [rec for rec in audit_records(yard) if rec["outcome"] == "refused"]
    assert [rec["action"] for rec in refused] == ["artifact.write"]


def test_put_of_a_missing_file_is_a_usage_error(yard: Yard, ready: Path, tmp_path: Path) -> None:
    r = yard("artifacts", "put", tmp_path / "nope.bin")
    assert r.code == 2
    assert "nope.bin" in r.error


def test_a_flipped_byte_fails_get_with_one_clear_line(
    yard: Yard, ready: Path, sample: Path, tmp_path: Path
) -> None:
    digest = put(yard, sample)
    [obj] = objects(ready)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))

    dest = tmp_path / "out.bin"
    r = yard("artifacts", "get", digest, "-o", dest)
    assert r.code == 1
    assert "corrupt" in r.error
    assert "Traceback" not in r.err
    assert r.out == ""
    assert not dest.exists()  # nothing unverified is ever written

    r = yard("--debug", "artifacts", "get", digest, "-o", dest)
    assert r.code == 1
    assert "Traceback (most recent call last)" in r.err
    assert "modelyard.errors.IntegrityError" in r.err
    assert r.err_lines[-1].startswith("error: ") and "corrupt" in r.err_lines[-1]
    assert not dest.exists()


def test_a_flipped_byte_end_to_end(yard: Yard, ready: Path, sample: Path, tmp_path: Path) -> None:
    digest = put(yard, sample)
    [obj] = objects(ready)
    data = bytearray(obj.read_bytes())
    data[-20] ^= 0x80
    obj.write_bytes(bytes(data))
    r = run_yard("artifacts", "get", digest, "-o", tmp_path / "out.bin")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "corrupt" in r.stderr
    assert not (tmp_path / "out.bin").exists()


def test_debug_from_the_environment(yard: Yard, ready: Path, tmp_path: Path) -> None:
    r = yard("artifacts", "get", "b" * 64, "-o", tmp_path / "x", env={"YARD_DEBUG": "1"})
    assert r.code == 1
    assert "Traceback" in r.err and "NotFoundError" in r.err


# -- usage errors and failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no-such-command"], "no-such-command"),
        (["artifacts", "get"], "digest"),
        (["artifacts", "get", "--output"], "--output"),
        (["artifacts", "get", "nothex", "-o", "x"], "64 lower-case hex"),
        (["artifacts", "get", "A" * 64, "-o", "x"], "64 lower-case hex"),
        (["artifacts", "rm", "abc"], "64 lower-case hex"),
        (["artifacts", "ls", "--bogus"], "--bogus"),
        (["tokens", "create", "--user", ME, "--expires", "3x"], "30d"),
        (["tokens", "create", "--user", ME, "--expires", "0d"], "30d"),
        (["tokens", "create"], "--user"),
        (["users", "add", "bob"], "--role"),
        (["users", "add", "bob", "--role", "wizard"], "viewer, scientist, engineer, approver, admin"),
        (["users", "add", "../bob", "--role", "viewer"], "not valid"),
        (["audit", "ls", "--since", "yesterday"], "1h"),
        (["audit", "ls", "--limit", "0"], "--limit"),
        (["audit", "export", "--format", "csv"], "jsonl"),
    ],
)
def test_usage_errors_exit_2_with_one_line(yard: Yard, ready: Path, args: list[str], expected: str) -> None:
    r = yard(*args)
    assert r.code == 2, r.out + r.err
    assert expected in r.error
    assert r.out == ""
    assert "Traceback" not in r.err


def test_click_usage_errors_point_at_help(yard: Yard) -> None:
    r = yard("artifacts", "get")
    assert r.code == 2
    assert "yard artifacts get --help" in r.error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["artifacts", "get", "c" * 64, "-o", "x"], "not found"),
        (["users", "set-role", "nobody", "viewer"], "does not exist"),
        (["tokens", "revoke", "000000000000"], "not found"),
        (["--project", "elsewhere", "whoami"], "project 'elsewhere' does not exist"),
    ],
)
def test_failures_exit_1_with_one_line(yard: Yard, ready: Path, args: list[str], expected: str) -> None:
    r = yard(*args)
    assert r.code == 1, r.out + r.err
    assert expected in r.error


# -- users and tokens ----------------------------------------------------------------------------------------


def test_users_add_ls_set_role(yard: Yard, ready: Path) -> None:
    r = yard("users", "add", "bob", "--role", "viewer")
    assert r.code == 0, r.err
    assert "bob" in r.out and "viewer" in r.out
    members = yard("users", "ls", "--json").json()
    assert sorted(members, key=lambda m: m["user"]) == sorted(
        [
            {"user": "bob", "role": "viewer", "disabled": False},
            {"user": ME, "role": "admin", "disabled": False},
        ],
        key=lambda m: str(m["user"]),
    )
    r = yard("users", "ls")
    assert r.code == 0 and "bob" in r.out and ME in r.out

    again = yard("users", "add", "bob", "--role", "admin")
    assert again.code == 1
    assert "set-role" in again.error  # says how to do what was meant

    r = yard("users", "set-role", "bob", "scientist")
    assert r.code == 0, r.err
    members = {m["user"]: m["role"] for m in yard("users", "ls", "--json").json()}
    assert members == {ME: "admin", "bob": "scientist"}

    lower_self = yard("users", "set-role", ME, "viewer")
    assert lower_self.code == 2
    assert "your own role" in lower_self.error


def test_token_is_printed_once_on_stdout_and_stored_hashed(yard: Yard, ready: Path) -> None:
    assert yard("users", "add", "bob", "--role", "viewer").code == 0
    r = yard("tokens", "create", "--user", "bob", "--expires", "30d")
    assert r.code == 0, r.err
    token = r.out.strip()
    assert r.out == f"{token}\n"
    assert re.fullmatch(r"yard_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}", token)
    assert token_id(token) in r.err and "copy it now" in r.err
    assert token not in r.err
    secret = token.split("_", 2)[2]

    listing = yard("tokens", "ls")
    assert listing.code == 0
    assert token_id(token) in listing.out and "active" in listing.out
    assert secret not in listing.out
    for path in ready.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

    assert new_token(yard, "bob") != token  # a fresh secret every time; the old one is never shown again


def test_token_acts_as_its_user(yard: Yard, ready: Path) -> None:
    assert yard("users", "add", "bob", "--role", "viewer").code == 0
    token = new_token(yard, "bob")
    r = yard("whoami", "--json", env={"YARD_TOKEN": token})
    assert r.json() == {
        "user": "bob",
        "project": "default",
        "role": "viewer",
        "region": "local",
        "via": f"token:{token_id(token)}",
    }


def test_revoked_token_is_refused(yard: Yard, ready: Path) -> None:
    assert yard("users", "add", "bob", "--role", "viewer").code == 0
    token = new_token(yard, "bob")
    assert yard("whoami", env={"YARD_TOKEN": token}).code == 0
    r = yard("tokens", "revoke", token_id(token))
    assert r.code == 0, r.err
    assert token_id(token) in r.out

    r = yard("whoami", env={"YARD_TOKEN": token})
    assert r.code == 1
    assert "revoked" in r.error
    assert yard("artifacts", "ls", env={"YARD_TOKEN": token}).code == 1
    assert re.search(rf"{token_id(token)}\s.*revoked", yard("tokens", "ls").out)


def test_expired_and_malformed_tokens_are_refused(yard: Yard, ready: Path) -> None:
    token = new_token(yard, ME, "--expires", "1s")
    assert yard("whoami", env={"YARD_TOKEN": token}).code == 0
    time.sleep(1.1)
    r = yard("whoami", env={"YARD_TOKEN": token})
    assert r.code == 1
    assert "expired" in r.error
    r = yard("whoami", env={"YARD_TOKEN": "not-a-token"})
    assert r.code == 1
    assert "malformed" in r.error
    forged = token[: token.rindex("_") + 1] + "x" * 43
    r = yard("whoami", env={"YARD_TOKEN": forged})
    assert r.code == 1
    assert "unknown API token" in r.error


def test_viewer_cannot_put_and_the_refusal_is_audited(
    yard: Yard, ready: Path, sample: Path, tmp_path: Path
) -> None:
    assert yard("users", "add", "vera", "--role", "viewer").code == 0
    token = new_token(yard, "vera")

    r = yard("artifacts", "put", sample, env={"YARD_TOKEN": token})
    assert r.code == 1
    assert "vera" in r.error and "scientist" in r.error
    assert r.out == ""
    assert objects(ready) == []
    assert yard("artifacts", "ls", "--json").json() == []
    # a viewer may read what there is
    assert yard("artifacts", "ls", "--json", env={"YARD_TOKEN": token}).json() == []

    denied = [rec for rec in audit_records(yard) if rec["outcome"] == "denied"]
    assert len(denied) == 1
    [rec] = denied
    assert rec["actor"] == "vera"
    assert rec["action"] == "artifact.write"
    assert rec["detail"] == {"role": "viewer", "required": "scientist", "via": f"token:{token_id(token)}"}

    # once promoted, the same token may write
    assert yard("users", "set-role", "vera", "scientist").code == 0
    r = yard("artifacts", "put", sample, env={"YARD_TOKEN": token})
    assert r.code == 0, r.err
    assert r.out.strip() == hashlib.sha256(sample.read_bytes()).hexdigest()


def test_viewer_cannot_manage_users_or_read_the_audit_log(yard: Yard, ready: Path) -> None:
    assert yard("users", "add", "vera", "--role", "viewer").code == 0
    token = new_token(yard, "vera")
    r = yard("users", "add", "mallory", "--role", "admin", env={"YARD_TOKEN": token})
    assert r.code == 1
    assert "admin" in r.error
    assert "mallory" not in yard("users", "ls").out
    r = yard("audit", "ls", env={"YARD_TOKEN": token})
    assert r.code == 1
    assert "approver" in r.error


# -- projects ------------------------------------------------------------------------------------------------


def test_projects_create_and_ls(yard: Yard, ready: Path, sample: Path) -> None:
    r = yard("projects", "create", "research")
    assert r.code == 0, r.err
    assert "research" in r.out and "local" in r.out
    listing = yard("projects", "ls")
    assert listing.code == 0
    assert re.search(r"default\s.*local\s.*admin", listing.out)
    assert re.search(r"research\s.*local\s.*admin", listing.out)

    digest = put(yard, sample)
    assert yard("--project", "research", "artifacts", "ls", "--json").json() == []
    r = yard("--project", "research", "artifacts", "get", digest, "-o", ready / "x")
    assert r.code == 1 and "not found" in r.error  # tenants do not see each other's objects

    dup = yard("projects", "create", "research")
    assert dup.code == 1
    assert "already exists" in dup.error

    r = yard("projects", "create", "abroad", "--region", "eu-west-1")
    assert r.code == 1
    assert "eu-west-1" in r.error and "local" in r.error
    assert "abroad" not in yard("projects", "ls").out


# -- audit -------------------------------------------------------------------------------------------------


def _busy_home(yard: Yard, tmp_path: Path) -> None:
    """A few mutations so that the chain has records 1..6."""
    for i in range(2):
        f = tmp_path / f"f{i}.txt"
        f.write_text(f"file {i}\n")
        put(yard, f)
    assert yard("users", "add", "bob", "--role", "approver").code == 0
    assert yard("projects", "create", "research").code == 0
    assert yard("users", "set-role", "bob", "engineer").code == 0


def test_audit_ls_filters(yard: Yard, ready: Path, tmp_path: Path) -> None:
    _busy_home(yard, tmp_path)
    assert yard("users", "add", "carol", "--role", "scientist").code == 0
    token = new_token(yard, "carol")
    f = tmp_path / "carol.txt"
    f.write_text("carol's data\n")
    assert yard("artifacts", "put", f, env={"YARD_TOKEN": token}).code == 0

    everything = audit_records(yard)
    assert [r["seq"] for r in everything] == sorted(r["seq"] for r in everything)
    assert {"home.init", "artifact.write", "user.manage", "project.create"} <= {
        r["action"] for r in everything
    }

    mine = audit_records(yard, "--since", "1h", "--actor", ME)
    assert mine and all(r["actor"] == ME for r in mine)
    carols = audit_records(yard, "--since", "1h", "--actor", "carol")
    assert [(r["actor"], r["action"], r["outcome"]) for r in carols] == [("carol", "artifact.write", "ok")]
    assert len(mine) + len(carols) == len(everything)
    for rec in carols:
        assert set(rec) == {
            "seq",
            "ts",
            "actor",
            "project",
            "action",
            "resource",
            "outcome",
            "detail",
            "prev_hash",
            "hash",
        }

    assert audit_records(yard, "--actor", "nobody") == []
    assert audit_records(yard, "--since", "2999-01-01T00:00") == []
    assert len(audit_records(yard, "--since", "2000-01-01")) == len(everything)
    assert len(audit_records(yard, "--limit", "2")) == 2

    table = yard("audit", "ls", "--actor", "carol")
    assert table.code == 0 and "artifact.write" in table.out


def test_audit_export_jsonl(yard: Yard, ready: Path, tmp_path: Path) -> None:
    _busy_home(yard, tmp_path)
    r = yard("audit", "export", "--format", "jsonl")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 6
    assert records[0]["seq"] == 1 and records[0]["prev_hash"] == GENESIS
    for prev, rec in itertools.pairwise(records):
        assert rec["seq"] == prev["seq"] + 1
        assert rec["prev_hash"] == prev["hash"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", rec["hash"]) for rec in records)

    out = tmp_path / "audit.jsonl"
    r = yard("audit", "export", "-o", out)
    assert r.code == 0
    assert out.read_text().splitlines() == lines
    assert f"wrote {len(lines)} records" in r.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # who did what: not for every local user
    # A link planted where the export goes is replaced, not followed (it overwrote what it pointed to).
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    out.unlink()
    out.symlink_to(victim)
    assert yard("audit", "export", "-o", out).code == 0
    assert victim.read_text() == "keep me" and out.read_text().splitlines() == lines


def test_audit_verify_intact(yard: Yard, ready: Path, tmp_path: Path) -> None:
    _busy_home(yard, tmp_path)
    r = yard("audit", "verify")
    assert r.code == 0, r.err
    n = len(audit_records(yard))
    assert f"{n} records verified" in r.out and "intact" in r.out


def _edit(db: sqlite3.Connection) -> None:
    db.execute("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3")


def _delete(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM audit_log WHERE seq = 3")


def _swap(db: sqlite3.Connection) -> None:
    db.execute("UPDATE audit_log SET seq = -1 WHERE seq = 3")
    db.execute("UPDATE audit_log SET seq = 3 WHERE seq = 4")
    db.execute("UPDATE audit_log SET seq = 4 WHERE seq = -1")


def _edit_detail(db: sqlite3.Connection) -> None:
    db.execute("""UPDATE audit_log SET detail = '{"via":"local"}' WHERE seq = 3""")


def _rehash_edit(db: sqlite3.Connection) -> None:
    # A forger who recomputes the edited record's own hash still breaks the link to the next one.
    from modelyard.core._audit import record_hash

    cols = ("seq", "ts", "actor", "project", "action", "resource", "outcome", "detail", "prev_hash")
    values = db.execute(f"SELECT {', '.join(cols)} FROM audit_log WHERE seq = 3").fetchone()
    row = dict(zip(cols, values, strict=True))
    row["actor"] = "someone-else"
    db.execute("UPDATE audit_log SET actor = ?, hash = ? WHERE seq = 3", (row["actor"], record_hash(row)))


@pytest.mark.parametrize(
    ("tamper", "seq"),
    [(_edit, 3), (_delete, 3), (_swap, 3), (_edit_detail, 3), (_rehash_edit, 4)],
    ids=["edit", "delete", "swap", "edit-detail", "edit-and-rehash"],
)
def test_audit_verify_names_the_tampered_record(
    yard: Yard, ready: Path, tmp_path: Path, tamper: Callable[[sqlite3.Connection], None], seq: int
) -> None:
    _busy_home(yard, tmp_path)
    assert yard("audit", "verify").code == 0
    with _connect(ready / "yard.db") as db:
        tamper(db)
    r = yard("audit", "verify")
    assert r.code != 0
    assert r.code == 1
    assert re.search(rf"\brecord {seq}\b", r.error), r.error
    assert "Traceback" not in r.err


def test_audit_verify_notices_deleted_trailing_records(yard: Yard, ready: Path, tmp_path: Path) -> None:
    _busy_home(yard, tmp_path)
    with _connect(ready / "yard.db") as db:
        last = db.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
        db.execute("DELETE FROM audit_log WHERE seq = ?", (last,))
    r = yard("audit", "verify")
    assert r.code == 1
    assert re.search(rf"\b{last}\b", r.error), r.error


class _connect:
    """sqlite3 connection that commits and closes (sqlite3's own context manager does not close)."""

    def __init__(self, path: Path) -> None:
        assert path.is_file()
        self.db = sqlite3.connect(path)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.db.commit()
        self.db.close()


# -- keys --------------------------------------------------------------------------------------------------


def test_keys_ls_and_rotate(yard: Yard, ready: Path, sample: Path, tmp_path: Path) -> None:
    key_file = ready / "keys" / "master.key"
    old_key = key_file.read_bytes()
    old_id = json.loads(old_key)["key_id"]
    digest = put(yard, sample)

    r = yard("keys", "ls")
    assert r.code == 0
    assert old_id in r.out and str(key_file) in r.out
    assert json.loads(old_key)["key"] not in r.out  # the key itself is never shown

    r = yard("keys", "rotate")
    assert r.code == 0, r.err
    new_id = json.loads(key_file.read_bytes())["key_id"]
    assert new_id != old_id
    assert f"{old_id} -> {new_id}" in r.out and "re-wrapped 1 data key" in r.out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert new_id in yard("keys", "ls").out

    out = tmp_path / "after-rotation.bin"
    r = yard("artifacts", "get", digest, "-o", out)
    assert r.code == 0, r.err
    assert out.read_bytes() == sample.read_bytes()
    rotations = [rec for rec in audit_records(yard) if rec["action"] == "key.rotate"]
    assert [rec["outcome"] for rec in rotations] == ["ok"]

    # The old key opens nothing any more.
    fd = os.open(tmp_path / "old.key", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(old_key)
    r = yard(
        "artifacts",
        "get",
        digest,
        "-o",
        tmp_path / "x.bin",
        env={"YARD_MASTER_KEY_FILE": str(tmp_path / "old.key")},
    )
    assert r.code == 1
    assert old_id in r.error and new_id in r.error
    assert not (tmp_path / "x.bin").exists()


def test_rotate_needs_admin(yard: Yard, ready: Path) -> None:
    key_before = (ready / "keys" / "master.key").read_bytes()
    assert yard("users", "add", "eng", "--role", "engineer").code == 0
    r = yard("keys", "rotate", env={"YARD_TOKEN": new_token(yard, "eng")})
    assert r.code == 1
    assert "admin" in r.error
    assert (ready / "keys" / "master.key").read_bytes() == key_before
    denied = [rec for rec in audit_records(yard) if rec["outcome"] == "denied"]
    assert [(rec["actor"], rec["action"]) for rec in denied] == [("eng", "key.rotate")]


# -- PostgreSQL ----------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_cli_on_postgresql(
    yard: Yard, home: Path, postgres_url: str, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine, text

    monkeypatch.setenv("YARD_DATABASE_URL", postgres_url)
    assert yard("init").code == 0
    assert not (home / "yard.db").exists()
    assert "created" not in yard("init").out
    digest = put(yard, sample)
    assert yard("artifacts", "get", digest, "-o", tmp_path / "out.bin").code == 0
    assert (tmp_path / "out.bin").read_bytes() == sample.read_bytes()
    assert yard("users", "add", "bob", "--role", "viewer").code == 0
    doctor = yard("doctor")
    assert doctor.code == 0, doctor.out
    assert "postgresql+psycopg://" in doctor.out
    assert yard("audit", "verify").code == 0

    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET resource = 'user:alice' WHERE seq = 3"))
    finally:
        engine.dispose()
    r = yard("audit", "verify")
    assert r.code == 1
    assert re.search(r"\brecord 3\b", r.error), r.error


def test_users_rm_disable_enable(yard: Yard, ready: Path) -> None:
    assert yard("users", "add", "vera", "--role", "viewer").code == 0
    token = new_token(yard, "vera")
    assert yard("whoami", env={"YARD_TOKEN": token}).code == 0
    r = yard("users", "disable", "vera")
    assert r.code == 0 and "disabled vera" in r.out
    assert re.search(r"vera\s+│?\s*viewer\s+│?\s*True", yard("users", "ls").out)
    r = yard("whoami", env={"YARD_TOKEN": token})
    assert r.code == 1 and "without access" in r.error
    assert yard("users", "enable", "vera").code == 0
    assert yard("whoami", env={"YARD_TOKEN": token}).code == 0
    r = yard("users", "rm", "vera")
    assert r.code == 0 and "removed vera (viewer)" in r.out
    assert yard("whoami", env={"YARD_TOKEN": token}).code == 1
    r = yard("users", "rm", "vera")
    assert r.code == 1 and "not a member" in r.error and "Traceback" not in r.error
    r = yard("users", "disable", ME)
    assert r.code == 2 and "your own account" in r.error and "Traceback" not in r.error  # usage error
