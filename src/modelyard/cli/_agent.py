"""``yard agent``: a warm process that runs ``yard`` commands for the user who started it (Linux).

A ``yard`` command spends most of a short call starting Python and importing its libraries (SQLAlchemy
alone takes about 0.3 s). With an agent started (``yard agent start``), the console script connects to it
and the agent forks a child, already imported, that runs the command as the console script would have:
with the caller's arguments, working folder, environment, umask, and the caller's own stdin, stdout and
stderr (passed over the socket), so terminals, pipes and exit codes behave as in-process. What differs:
start-up options of the interpreter other than PYTHONUNBUFFERED (-X, -W, PYTHONWARNINGS) are the agent's,
the command has no controlling terminal (/dev/tty), and job control (Ctrl-Z) stops only the caller.
``python -m modelyard.cli`` (job workers, torchrun ranks) never uses the agent.
Nothing is shared between commands: each runs in a fresh fork and the agent itself opens no database.

Safety: the socket lies in a folder only its owner can enter (0700, checked, never a link) and each end
checks the other (SO_PEERCRED): same uid and gid, same namespaces, groups, seccomp and no-new-privileges,
so a sandboxed process of the user cannot reach out through it; one agent serves one interpreter and one
installation. When the
code or the installed packages change, the agent refuses (the command then runs in-process) and exits.
A command that started in the agent is never run again in-process: if the agent dies meanwhile, its
outcome is reported unknown.

This module imports only the standard library: the console script loads it before anything else.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

ENV_DIR = "YARD_AGENT_DIR"  # where the socket lives (default: $XDG_RUNTIME_DIR/modelyard or /tmp)
ENV_USE = "YARD_AGENT"  # "0" runs every command in-process even while an agent is up
IDLE_S = 900.0  # an agent with nothing to do for this long exits
MAX_REQUEST = 1 << 20  # arguments and environment of one command
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_LEN = struct.Struct("!I")


class AgentError(Exception):
    """The agent cannot be used or started (a message for the user)."""


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def agent_dir() -> str:
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "modelyard")
    return os.path.join("/tmp", f"modelyard-agent-{os.getuid()}")  # noqa: S108  # checked private below


def _name() -> str:
    """One agent per interpreter and installation: a client of another venv never reaches it."""
    key = hashlib.sha256(f"{sys.executable}\0{_package_root()}".encode()).hexdigest()[:16]
    return f"agent-{key}"


def socket_path(folder: str | None = None) -> str:
    return os.path.join(folder or agent_dir(), _name() + ".sock")


def _private(folder: str, *, create: bool) -> None:
    """``folder`` exists (made if ``create``), is a real directory, ours, and closed to everyone else."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.makedirs(folder, mode=0o700)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        raise AgentError(f"{folder} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise AgentError(f"{folder} is not a directory (a link or a file): no place for the agent's socket")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise AgentError(
            f"{folder} is not private to this user (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); "
            f"`chmod 700 {folder}` if it is yours, or set {ENV_DIR} to a private folder"
        )


_NAMESPACES = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup")
_STATUS_KEYS = ("Groups:", "NoNewPrivs:", "Seccomp:")


def _world(pid: int | str) -> tuple[object, ...]:
    """What confines a process beyond its uid: namespaces, groups, no-new-privileges and seccomp."""
    spaces = tuple(
        os.readlink(f"/proc/{pid}/ns/{ns}") for ns in _NAMESPACES if os.path.exists(f"/proc/self/ns/{ns}")
    )
    with open(f"/proc/{pid}/status") as f:
        status = tuple(line.split(None, 1)[-1].strip() for line in f if line.startswith(_STATUS_KEYS))
    return spaces + status


def _same_peer(sock: socket.socket) -> bool:
    """The other end is this user with this group, in this process's world: a sandboxed process of the same
    uid (other namespaces, seccomp, no-new-privileges) must not get its commands run outside the sandbox."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    if (uid, gid) != (os.getuid(), os.getgid()):
        return False
    try:
        return _world(pid) == _own_world()
    except OSError:
        return False


@functools.cache
def _own_world() -> tuple[object, ...]:
    return _world("self")  # fixed for the process's life: read once


def fingerprint(path: Sequence[str]) -> str:
    """Changes when a file of modelyard or a folder on the import path (a package installed or removed)
    changes: a warm agent would otherwise run old code, or mix it with new files it imports later."""
    h = hashlib.sha256()
    for entry in path:
        with contextlib.suppress(OSError):
            h.update(f"{entry}\0{os.stat(entry or '.').st_mtime_ns}\0".encode())
    for folder, dirs, files in os.walk(_package_root()):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(folder, name))
                    h.update(f"{folder}/{name}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return h.hexdigest()


# -- the console script's side ---------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    body = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [_LEN.pack(len(body))], list(fds))
        sock.sendall(body)
    else:
        sock.sendall(_LEN.pack(len(body)) + body)


def _lines(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        if not _same_peer(sock):  # not ours, whatever the folder says
            raise ConnectionRefusedError
    except OSError:
        sock.close()
        return None
    return sock


def forward(argv: Sequence[str]) -> int | None:
    """Run ``yard argv`` in the agent and return its exit status; None where no agent runs it (none is
    started, it is switched off, it refused), and the caller runs the command itself."""
    if os.environ.get(ENV_USE, "").lower() in {"0", "off", "no", "false"} or not supported():
        return None
    if argv[:1] == ["agent"]:  # managing the agent is never the agent's job
        return None
    path = socket_path()
    if not os.path.exists(path):
        return None
    try:
        _private(os.path.dirname(path), create=False)
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed stdio cannot be passed: in-process, the command sees it closed
    except (AgentError, OSError):
        return None
    sock = _connect(path)
    if sock is None:
        return None
    with sock:
        mask = os.umask(0o077)
        os.umask(mask)
        request = {
            "op": "run",
            "argv": list(argv),
            "argv0": sys.argv[0],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": mask,
            "path": sys.path,
            "stdio": [[f.encoding, f.errors] if f else None for f in (sys.stdin, sys.stdout, sys.stderr)],
        }
        try:
            _send(sock, request, (0, 1, 2))
            replies = _lines(sock)
            first = next(replies, None)
        except (OSError, ValueError):
            return None  # no "started": the agent forks a command's child only after that was sent
        if first is None or "refused" in first:
            if first is not None and first.get("say"):
                print(f"note: {first['refused']}", file=sys.stderr)
            return None
        previous = {}

        def relay(signum: int, _frame: object) -> None:
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")

        for sig in _FORWARDED:
            previous[sig] = signal.signal(sig, relay)
        try:
            for reply in replies:
                if "exit" in reply:
                    return int(reply["exit"])
        except (OSError, ValueError):
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print(
        "error: the yard agent went away while it ran the command; its outcome is unknown "
        "(check it, e.g. with `yard audit ls`, before running it again)",
        file=sys.stderr,
    )
    return 1


# -- the agent's side ------------------------------------------------------------------------------------


@dataclass
class _Job:
    """A forked child's command, as the client asked for it."""

    request: dict[str, Any]
    fds: list[int]


@dataclass
class _Running:
    pid: int
    pidfd: int
    conn: socket.socket


@dataclass
class _Server:
    listener: socket.socket
    path: str
    fingerprint: str
    idle: float
    started: float = field(default_factory=time.time)
    running: dict[int, _Running] = field(default_factory=dict)  # by pidfd
    by_conn: dict[int, _Running] = field(default_factory=dict)  # by conn fd
    stopping: bool = False
    served: int = 0
    wake: socket.socket | None = None  # signals write here, so select returns at once
    inode: int = 0  # of the socket file this agent bound
    lock: int | None = None  # held while it takes commands


def _preload() -> None:
    """What nearly every command imports, and nothing that starts a thread or opens a database: a child is
    forked from this process, and a fork copies no threads (Python's are counted after this)."""
    import sqlalchemy.orm
    import typer._adapters  # noqa: F401  # pydantic adapters, built when options are parsed

    import modelyard.core
    import modelyard.data
    import modelyard.registry
    import modelyard.tracking  # noqa: F401
    from modelyard.cli._app import click_command  # every command module

    sqlalchemy.orm.configure_mappers()
    click_command()


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the fds passed with it. One deadline for all of it: a client that trickles bytes
    holds the agent's loop (and every other command's answers) for 2 s at most."""
    deadline = time.monotonic() + 2.0
    conn.settimeout(2.0)
    head, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
    try:
        if len(head) != _LEN.size:
            raise ValueError("short header")
        (size,) = _LEN.unpack(head)
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes (at most {MAX_REQUEST})")
        body = b""
        while len(body) < size:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def _reply(conn: socket.socket, message: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        return False
    return True


def _valid_run(request: dict[str, Any], fds: list[int]) -> str | None:
    env = request.get("env")
    checks = (
        (len(fds) == 3, "stdin, stdout and stderr were not passed"),
        (isinstance(request.get("argv"), list) and all(isinstance(a, str) for a in request["argv"]), "argv"),
        (isinstance(request.get("cwd"), str), "cwd"),
        (isinstance(request.get("argv0"), str), "argv0"),
        (isinstance(env, dict) and all(isinstance(v, str) for v in env.values()), "env"),
        (isinstance(request.get("umask"), int) and 0 <= request["umask"] <= 0o777, "umask"),
        (isinstance(request.get("stdio"), list) and len(request["stdio"]) == 3, "stdio"),
    )
    bad = [what for ok, what in checks if not ok]
    return f"malformed request ({', '.join(bad)})" if bad else None


def _handle(server: _Server, conn: socket.socket, selector: Any) -> _Job | None:
    """One connection: a command to fork for (returns its job in the child), or ping/stop."""
    if not _same_peer(conn):
        conn.close()
        return None
    try:
        request, fds = _read_request(conn)
    except Exception as exc:  # OSError, bad JSON, nesting too deep: refused, never fatal
        _reply(conn, {"refused": f"bad request: {type(exc).__name__}: {exc}"[:500]})
        conn.close()
        return None
    op = request.get("op")
    if op != "run":
        for fd in fds:
            os.close(fd)
        if op not in ("ping", "stop"):
            _reply(conn, {"refused": f"unknown request {op!r}"})
            conn.close()
            return None
        if op == "stop":
            _retire(server, selector)
        _reply(conn, _status(server))
        conn.close()
        return None
    problem = _valid_run(request, fds)
    if problem is None and server.stopping:
        problem = "the agent is stopping"
    # The first entry is the script's folder or the working one: it differs by how yard was started.
    if problem is None and (not isinstance(request.get("path"), list) or request["path"][1:] != sys.path[1:]):
        problem = "the client's import path differs from the agent's"
    say = False
    if problem is None and fingerprint(sys.path) != server.fingerprint:
        problem = "the yard agent stopped: modelyard or its packages changed since it started"
        say = True
        _retire(server, selector)
    if problem is not None:
        for fd in fds:
            os.close(fd)
        _reply(conn, {"refused": problem, "say": say})
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    # The child waits for "go", written once the client knows the command started: a client that never
    # heard "started" (the agent died first) runs the command itself, so this child must not run it too.
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        if os.read(go_read, 1) != b"g":
            os._exit(1)
        os.close(go_read)
        return _Job(request, fds)
    os.close(go_read)
    for fd in fds:
        os.close(fd)  # the child holds the client's stdio now: a pipe must see EOF when the child ends
    server.served += 1
    job = _Running(pid, os.pidfd_open(pid), conn)
    server.running[job.pidfd] = job
    server.by_conn[conn.fileno()] = job
    selector.register(job.pidfd, selectors.EVENT_READ, "child")
    if _reply(conn, {"started": pid}):
        selector.register(conn, selectors.EVENT_READ, "client")
        os.write(go_write, b"g")
    os.close(go_write)  # without "g": the child exits unrun
    return None


def _status(server: _Server) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "socket": server.path,
        "since": server.started,
        "running": len(server.running),
        "served": server.served,
        "stopping": server.stopping,
    }


def _retire(server: _Server, selector: Any) -> None:
    """Take no new commands; the ones running are still answered. The lock goes too: a new agent may
    start while this one waits for them."""
    server.stopping = True
    if server.listener.fileno() == -1:
        return
    if server.lock is not None:
        os.close(server.lock)
        server.lock = None
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(server.listener)
    with contextlib.suppress(FileNotFoundError):
        if os.stat(server.path).st_ino == server.inode:  # ours, not a newer agent's
            os.unlink(server.path)
    server.listener.close()


def _child_ended(server: _Server, pidfd: int, selector: Any) -> None:
    job = server.running.pop(pidfd)
    server.by_conn.pop(job.conn.fileno(), None)
    _, status = os.waitpid(job.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    selector.unregister(pidfd)
    os.close(pidfd)
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(job.conn)
    _reply(job.conn, {"exit": code if code >= 0 else 128 - code})
    job.conn.close()


def _client_says(server: _Server, conn: socket.socket, selector: Any) -> None:
    job = server.by_conn.get(conn.fileno())
    try:
        data = conn.recv(4096)
    except OSError:
        data = b""
    if job is None:
        return
    if not data:  # the client is gone (killed, or its terminal closed): so goes its command
        selector.unregister(conn)
        _signal(job.pid, signal.SIGTERM)
        return
    for line in data.splitlines():
        try:
            signum = int(json.loads(line)["signal"])
        except Exception:  # noqa: S112  # a client's noise is no reason for the agent to fail
            continue
        if signum in _FORWARDED:
            _signal(job.pid, signum)


def _signal(pid: int, signum: int) -> None:
    """To the command and what it started (torchrun and its ranks): the child leads its process group."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _serve(server: _Server) -> _Job | None:
    """The agent's loop; returns only in a forked child (its job), or None when the agent exits."""
    selector = selectors.DefaultSelector()
    selector.register(server.listener, selectors.EVENT_READ, "listen")
    if server.wake is not None:
        selector.register(server.wake, selectors.EVENT_READ, "wake")
    last = time.monotonic()
    while not (server.stopping and not server.running):
        if server.stopping:  # SIGTERM
            _retire(server, selector)
        timeout = None if server.running else max(0.0, server.idle - (time.monotonic() - last))
        events = selector.select(timeout)
        if not events and not server.running and time.monotonic() - last >= server.idle:
            break
        for key, _ in events:
            if key.data == "listen":
                try:
                    conn, _ = server.listener.accept()
                except OSError:  # EMFILE: wait for a command to end rather than spin
                    time.sleep(0.1)
                    continue
                last = time.monotonic()
                job = _handle(server, conn, selector)
                if job is not None:  # the child: nothing of the agent's stays open in it
                    selector.close()
                    server.listener.close()
                    signal.set_wakeup_fd(-1)
                    if server.wake is not None:
                        server.wake.close()
                    for running in server.running.values():
                        os.close(running.pidfd)
                        running.conn.close()
                    conn.close()
                    if server.lock is not None:
                        os.close(server.lock)
                    return job
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    server.wake.recv(512)  # type: ignore[union-attr]
            elif key.data == "child":
                _child_ended(server, key.fd, selector)
                last = time.monotonic()
            else:
                _client_says(server, key.fileobj, selector)  # type: ignore[arg-type]
    _retire(server, selector)
    selector.close()
    return None


def _become(job: _Job) -> int:
    """In the child: take the client's stdio, folder, environment and umask, then run its command."""
    import io

    request = job.request
    os.setpgid(0, 0)  # signals reach the command's own children too (see _signal)
    for target, fd in enumerate(job.fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.umask(request["umask"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    # As the interpreter makes them at start-up (PYTHONUNBUFFERED included), on the client's descriptors.
    unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))
    streams = []
    for fd, enc in enumerate(request["stdio"]):
        encoding, errors = enc if isinstance(enc, list) and len(enc) == 2 else ("utf-8", "strict")
        tty = os.isatty(fd)
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        layer: Any = raw
        if fd == 0 or not unbuffered:
            layer = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        streams.append(
            io.TextIOWrapper(
                layer,
                encoding,
                errors,
                newline="\n",
                line_buffering=tty or fd == 2,
                write_through=fd != 0 and unbuffered,
            )
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.argv = [request["argv0"], *request["argv"]]
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        print(f"error: cannot enter the working folder {request['cwd']}: {exc.strerror}", file=sys.stderr)
        return 1
    from modelyard.cli import _app

    _app.reset_consoles()
    return _app.main(request["argv"])


def _exit(code: int) -> NoReturn:
    """End the child as the interpreter would (threads joined, atexit run, output flushed) without tearing
    down every module object: that writes to all the pages shared with the agent, and took longer than
    most commands (0.3-0.4 s)."""
    import atexit
    import threading

    try:
        # What the interpreter does first at exit: threading's own exit hooks (concurrent.futures tells its
        # pools' workers to finish there), then it joins the threads that are not daemons.
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        else:
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # e.g. a full disk: the interpreter says so and exits 120
                with contextlib.suppress(Exception):
                    os.write(2, b"Exception ignored on flushing sys.stdout or sys.stderr\n")
                code = code or 120
        os._exit(code)


def serve(idle: float = IDLE_S) -> int:
    """Run the agent in this process until it is stopped or idle (``python -m modelyard.cli._agent``)."""
    import fcntl

    if not supported():
        raise AgentError("the yard agent needs Linux (pidfd, SCM_RIGHTS)")
    folder = agent_dir()
    _private(folder, create=True)
    path = socket_path(folder)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    lock = os.open(os.path.join(folder, _name() + ".lock"), flags, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        print("another agent of this installation runs (it holds the lock)", file=sys.stderr)
        return 0
    stamp = fingerprint(sys.path)  # before the imports: an edit made while they run is seen
    _preload()
    import threading

    if threading.active_count() != 1:  # a fork would copy locks held by threads that are not copied
        raise AgentError("preloading started a thread; the agent cannot fork safely")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead agent's (we hold the lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    server = _Server(listener, path, stamp, idle, inode=os.stat(path).st_ino, lock=lock)
    wake, server.wake = socket.socketpair()
    wake.setblocking(False)
    signal.set_wakeup_fd(wake.fileno())
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "stopping", True))
    for sig in (signal.SIGINT, signal.SIGHUP):  # no terminal is ours; SIGTERM or `yard agent stop` ends it
        signal.signal(sig, signal.SIG_IGN)
    gc.disable()  # the children's collections would otherwise write to every page they share with it
    job = _serve(server)
    wake.close()
    if job is not None:
        gc.enable()
        code = 1
        try:
            code = _become(job)
        except BaseException:  # e.g. an environment the OS refuses: said, then ended as ever
            import traceback

            traceback.print_exc()
        _exit(code)
    server.wake.close()
    if server.lock is not None:
        os.close(server.lock)
    return 0


def _ask(op: str) -> dict[str, Any] | None:
    path = socket_path()
    if not os.path.exists(path):
        return None
    _private(os.path.dirname(path), create=False)
    sock = _connect(path)
    if sock is None:
        return None
    with sock:
        sock.settimeout(30)
        _send(sock, {"op": op})
        return next(_lines(sock), None)


def status() -> dict[str, Any] | None:
    """The running agent's state, or None."""
    return _ask("ping")


def stop() -> dict[str, Any] | None:
    """Ask the agent to stop taking commands (it exits when its running ones end); None if none runs."""
    return _ask("stop")


def start(idle: float = IDLE_S, wait: float = 60.0) -> dict[str, Any]:
    """Start an agent in the background for this installation (or find the running one)."""
    import subprocess

    if not supported():
        raise AgentError("the yard agent needs Linux (pidfd, SCM_RIGHTS)")
    folder = agent_dir()
    _private(folder, create=True)
    if len(os.fsencode(socket_path(folder))) > 100:
        raise AgentError(f"{folder} is too long a path for a socket; set {ENV_DIR} to a shorter folder")
    running = status()
    if running is not None and not running.get("stopping"):
        return {**running, "already": True}
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    log = os.open(os.path.join(folder, _name() + ".log"), flags, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli._agent", "--idle", str(idle)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # no terminal: the shell's Ctrl-C and hang-up are not the agent's
            cwd="/",
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        running = status()
        if running is not None and running["pid"] == proc.pid:
            return running
        if proc.poll() is not None:
            if running is not None:  # another start won the lock
                return {**running, "already": True}
            raise AgentError(f"the agent exited with status {proc.returncode}; see {folder}/{_name()}.log")
        time.sleep(0.05)
    proc.terminate()
    raise AgentError(f"the agent did not answer within {wait:g} s; see {folder}/{_name()}.log")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modelyard.cli._agent")
    parser.add_argument("--idle", type=float, default=IDLE_S)
    args = parser.parse_args(argv)
    return serve(args.idle)


if __name__ == "__main__":
    raise SystemExit(main())
