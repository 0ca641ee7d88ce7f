"""`yard agent`: commands run by a warm agent act exactly as in-process ones (output, exit codes, folder,
environment, umask, signals), and the agent is skipped whenever it cannot be trusted or is stale."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.cli import _agent

# The console script, as installed next to this interpreter: only it asks the agent.
YARD = shutil.which("yard", path=os.path.dirname(sys.executable))
pytestmark = [
    pytest.mark.skipif(not _agent.supported(), reason="the agent needs Linux"),
    pytest.mark.skipif(YARD is None, reason="no yard console script next to this interpreter"),
]


def yard(*args: str | Path, env: dict[str, str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(YARD), *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


@pytest.fixture
def agent_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose agent folder is short (a socket path has at most 108 bytes) and private."""
    folder = tempfile.mkdtemp(prefix="ya-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(YARD_HOME=str(tmp_path / "home"), YARD_AGENT_DIR=folder, COLUMNS="200", NO_COLOR="1")
    yield env
    subprocess.run([str(YARD), "agent", "stop"], env=env, capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def served(env: dict[str, str], cwd: Path) -> int:
    got = yard("agent", "status", "--json", env=env, cwd=cwd)
    assert got.returncode == 0, got.stderr
    return int(json.loads(got.stdout)["served"])


def start(env: dict[str, str], cwd: Path, *extra: str) -> None:
    got = yard("agent", "start", *extra, env=env, cwd=cwd)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("started agent pid"), got.stdout


def test_agent_runs_commands_as_in_process(agent_env: dict[str, str], tmp_path: Path) -> None:
    direct = {**agent_env, "YARD_AGENT": "0"}
    assert yard("init", env=agent_env, cwd=tmp_path).returncode == 0
    assert yard("agent", "status", env=agent_env, cwd=tmp_path).returncode == 1  # none runs yet
    start(agent_env, tmp_path)
    again = yard("agent", "start", env=agent_env, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("already running"), again.stdout
    before = served(agent_env, tmp_path)

    # A relative path resolves in the caller's folder; the umask is the caller's.
    made = yard("examples", "make-data", "tickets", "--rows", "200", env=agent_env, cwd=tmp_path, umask=0o077)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tmp_path / "tickets" / "train.jsonl").stat().st_mode) == 0o600
    assert served(agent_env, tmp_path) == before + 1
    # A command whose thread pools are still up when it returns (large files are staged by an I/O pool)
    # ends as at interpreter exit, pools shut down first, instead of waiting on them for good.
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob.bin").write_bytes(os.urandom(12 << 20))
    added = yard("data", "add", "big", "--name", "big", env=agent_env, cwd=tmp_path)
    assert added.returncode == 0 and added.stdout.startswith("big@1"), added.stderr
    assert served(agent_env, tmp_path) == before + 2

    for args in (["data", "ls"], ["data", "show", "tickets@1", "--json"], ["audit", "ls"]):
        warm, cold = yard(*args, env=agent_env, cwd=tmp_path), yard(*args, env=direct, cwd=tmp_path)
        assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout), args
        assert warm.stderr == cold.stderr, args
    # Failures and usage errors keep their exit codes and their one error line.
    for args, code in ((["data", "show", "nope@1"], 1), (["data", "add"], 2), (["no-such-command"], 2)):
        warm, cold = yard(*args, env=agent_env, cwd=tmp_path), yard(*args, env=direct, cwd=tmp_path)
        assert warm.returncode == cold.returncode == code, (args, warm.stderr)
        assert warm.stderr == cold.stderr and warm.stdout == cold.stdout
    assert served(agent_env, tmp_path) == before + 2 + 6  # the YARD_AGENT=0 calls ran in-process

    # `python -m modelyard.cli` (how job workers and torchrun ranks start yard) runs in its own process.
    module = [sys.executable, "-m", "modelyard.cli", "data", "ls"]
    module_run = subprocess.run(module, env=agent_env, cwd=tmp_path, capture_output=True)
    assert module_run.returncode == 0
    assert served(agent_env, tmp_path) == before + 2 + 6

    # Each command has the caller's environment: another home is another home.
    other = {**agent_env, "YARD_HOME": str(tmp_path / "other")}
    assert yard("init", env=other, cwd=tmp_path).returncode == 0
    listed = yard("data", "ls", "--json", env=other, cwd=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []

    stopped = yard("agent", "stop", env=agent_env, cwd=tmp_path)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopping"), stopped.stdout
    _wait_gone(agent_env)
    assert yard("data", "ls", env=agent_env, cwd=tmp_path).returncode == 0  # in-process again


def _socket(env: dict[str, str]) -> list[Path]:
    """The agent's socket (named by the console script's interpreter, which may be another name for this
    one's), or none."""
    return list(Path(env["YARD_AGENT_DIR"]).glob("agent-*.sock"))


def _wait_gone(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while _socket(env) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _socket(env)


def _wait_running(env: dict[str, str], cwd: Path, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = yard("agent", "status", "--json", env=env, cwd=cwd)
        if json.loads(got.stdout)["running"] == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the agent never had {count} command(s) running")


def test_signals_reach_the_command_and_a_dead_client_ends_it(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    assert yard("init", env=agent_env, cwd=tmp_path).returncode == 0
    start(agent_env, tmp_path)
    cmd = [str(YARD), "worker", "--cpus", "1"]
    # Ctrl-C at the caller's terminal interrupts the command the agent runs: exit 130, as in-process.
    proc = subprocess.Popen(cmd, env=agent_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_running(agent_env, tmp_path, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # as `yard worker` ends on Ctrl-C in-process
    # A caller killed outright takes its command with it.
    proc = subprocess.Popen(cmd, env=agent_env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    _wait_running(agent_env, tmp_path, 1)
    proc.kill()
    proc.wait(timeout=30)
    _wait_running(agent_env, tmp_path, 0)


def test_untrusted_folder_or_switched_off_runs_in_process(agent_env: dict[str, str], tmp_path: Path) -> None:
    assert yard("init", env=agent_env, cwd=tmp_path).returncode == 0
    start(agent_env, tmp_path)
    before = served(agent_env, tmp_path)
    assert yard("data", "ls", env={**agent_env, "YARD_AGENT": "0"}, cwd=tmp_path).returncode == 0
    folder = Path(agent_env["YARD_AGENT_DIR"])
    folder.chmod(0o755)  # others could now reach the socket: the client does not trust it
    try:
        assert yard("data", "ls", env=agent_env, cwd=tmp_path).returncode == 0
        refused = yard("agent", "start", env=agent_env, cwd=tmp_path)
        assert refused.returncode == 2 and "is not private to this user" in refused.stderr
    finally:
        folder.chmod(0o700)
    assert served(agent_env, tmp_path) == before


def test_stale_agent_refuses_and_exits(agent_env: dict[str, str], tmp_path: Path) -> None:
    """A package installed or removed while the agent runs: the command runs in-process, the agent goes."""
    extra = tmp_path / "site"
    extra.mkdir()
    # No empty entry: it would put the working folder on the path, which differs between caller and agent.
    path = [str(extra), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**agent_env, "PYTHONPATH": os.pathsep.join(path)}
    assert yard("init", env=env, cwd=tmp_path).returncode == 0
    start(env, tmp_path)
    assert yard("data", "ls", env=env, cwd=tmp_path).returncode == 0
    assert served(env, tmp_path) == 1
    time.sleep(0.02)  # a later mtime than the folder's at the start
    (extra / "newpkg.py").write_text("")
    got = yard("data", "ls", "--json", env=env, cwd=tmp_path)
    assert got.returncode == 0 and json.loads(got.stdout) == []  # it ran, in-process
    assert "the yard agent stopped: modelyard or its packages changed" in got.stderr
    _wait_gone(env)
    # Another import path is another installation's business: not refused with a note, just not used.
    start(env, tmp_path)
    assert yard("data", "ls", env=env, cwd=tmp_path).returncode == 0
    mine = yard("data", "ls", env={**env, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert mine.returncode == 0 and mine.stderr == ""
    assert served(env, tmp_path) == 1  # the first one


def test_malformed_requests_change_nothing(agent_env: dict[str, str], tmp_path: Path) -> None:
    start(agent_env, tmp_path)
    [found] = _socket(agent_env)
    path = str(found)
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than json can parse: RecursionError
    payloads = (
        b"\x00\x00\x00\x05[1,2]",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x02{}",
        b"\x00\x00",
        len(deep).to_bytes(4, "big") + deep,
        b"\x00\x00\x00\x03{x}",
    )
    for payload in payloads:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(path)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(4096)
        assert b"refused" in reply, (payload[:20], reply)
    # A run request without stdio passed is refused, and nothing ran.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        body = json.dumps({"op": "run", "argv": ["init"], "cwd": "/", "env": {}, "umask": 18}).encode()
        sock.sendall(len(body).to_bytes(4, "big") + body)
        assert b"refused" in sock.recv(4096)
    assert served(agent_env, tmp_path) == 0
    assert not (tmp_path / "home").exists()


def test_idle_agent_exits(agent_env: dict[str, str], tmp_path: Path) -> None:
    start(agent_env, tmp_path, "--idle", "1")
    _wait_gone(agent_env)
    assert yard("agent", "status", env=agent_env, cwd=tmp_path).returncode == 1
