"""Artifact store throughput: modelyard put/get against `cp`, `cp` + `sync` and DVC on the same bytes.

For every file shape the same random files are generated once, then, in the same run and on the same
filesystem:

* modelyard: the directory's files go through the real service ``put_artifacts`` as one batch
  (AES-256-GCM, SHA-256, one audit record per file, SQLite metadata store, one filesystem flush) into a
  fresh home made by ``make_platform``, and come back through ``get_artifacts`` (decrypt + digest check)
  into a directory: the same unit of work as ``cp -r`` and ``dvc add`` of the directory. ``--per-file``
  adds a row that calls ``put_artifact``/``get_artifact`` once per file (each durable on its own);
* cp: one ``cp -r`` of the directory for put, one ``cp -r`` back for get;
* cp+sync: the same followed by ``sync``, the durable baseline (modelyard fsyncs every object);
* dvc: ``dvc add`` of the directory in a fresh ``git init`` + ``dvc init --no-scm`` repo, and
  ``dvc checkout`` after the workspace copy was removed (only when DVC is installed: extra ``bench``).

``--profile`` adds a breakdown of modelyard's put and get time (SHA-256, AES-GCM, fsync, metadata store,
audit chain), measured by wrapping those building blocks with timers in a separate run.

Run ``python benchmarks/artifacts.py --help`` for the options; the defaults are the sizes of issue 2.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import io
import os
import platform as pyplatform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from _common import dvc_available, dvc_repo, run, sync
from rich.console import Console
from rich.table import Table

KIB, MIB = 1 << 10, 1 << 20
MB = 1_000_000  # throughput is reported in MB/s (10^6 bytes per second)
GOAL = 2.0
TOOLS = ("modelyard", "cp", "cp+sync", "dvc", "modelyard-per-file")
DEFAULT_TOOLS = ("modelyard", "cp", "cp+sync", "dvc")


@dataclass(frozen=True)
class Shape:
    key: str
    file_size: int
    label: str


SHAPES = {
    "4k": Shape("4k", 4 * KIB, "4 KiB"),
    "1m": Shape("1m", MIB, "1 MiB"),
    "64m": Shape("64m", 64 * MIB, "64 MiB"),
}

out = Console(width=None if sys.stdout.isatty() else 150)
log = Console(stderr=True, style="dim")


@dataclass
class Result:
    put: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)

    def put_s(self) -> float:
        return statistics.median(self.put)

    def get_s(self) -> float:
        return statistics.median(self.get)


# -- helpers -------------------------------------------------------------------------------------------


def total_for(shape: Shape, total_mib: int, small_total_mib: int) -> int:
    """Bytes of data for ``shape``: the 4 KiB shape is capped at ``small_total_mib``."""
    total = total_mib * MIB
    if shape.file_size < MIB:
        total = min(total, small_total_mib * MIB)
    return max(shape.file_size, total - total % shape.file_size)


def generate(directory: Path, shape: Shape, total: int, seed: int) -> list[Path]:
    """Distinct random files (incompressible, no two alike, so no dedup anywhere)."""
    directory.mkdir(parents=True)
    rng = random.Random(f"{seed}-{shape.key}")
    files = []
    for i in range(total // shape.file_size):
        path = directory / f"part-{i:06d}.bin"
        path.write_bytes(rng.randbytes(shape.file_size))
        files.append(path)
    return files


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def check_same(src: Path, dst: Path) -> None:
    """Untimed sanity check: same names and sizes everywhere, same bytes in the first and last file."""
    names = sorted(p.name for p in src.iterdir())
    got = sorted(p.name for p in dst.iterdir() if not p.name.startswith("."))
    if names != got:
        raise RuntimeError(f"{dst} holds {len(got)} files, expected {len(names)}")
    for name in names:
        if (src / name).stat().st_size != (dst / name).stat().st_size:
            raise RuntimeError(f"{dst / name} has the wrong size")
    for name in {names[0], names[-1]}:
        if not filecmp.cmp(src / name, dst / name, shallow=False):
            raise RuntimeError(f"{dst / name} differs from {src / name}")


# -- the tools -----------------------------------------------------------------------------------------


def modelyard_put_get(
    src: Path,
    files: list[Path],
    scratch: Path,
    instrument: Callable[[Any], contextlib.AbstractContextManager[Any]] | None = None,
    per_file: bool = False,
) -> tuple[float, float, Any, Any]:
    """Put every file into a fresh home, then get every one back; (put s, get s, put probe, get probe).
    One batch for the whole directory, or with ``per_file`` one service call (and fsync) per file."""
    from modelyard.core import get_artifact, get_artifacts, put_artifact, put_artifacts
    from modelyard.testing import make_platform

    platform = make_platform(scratch / "home")
    try:
        ctx = platform.context()
        # Warm-up outside the timing: opens the store, keyring and connection pool, fills SQLAlchemy's
        # statement cache. cp and dvc pay their (much larger) process start-up inside their timings.
        warm = scratch / "warm-up.bin"
        warm.write_bytes(os.urandom(1024))
        info = put_artifact(platform, ctx, warm, name="warm-up.bin")
        get_artifact(platform, ctx, info.digest, scratch / "warm-up.out")
        dest = scratch / "out"
        dest.mkdir()
        measure = instrument or (lambda _p: contextlib.nullcontext())
        digests: list[str] = []
        sync()
        with measure(platform) as put_probe:
            start = time.perf_counter()
            if per_file:
                digests.extend(put_artifact(platform, ctx, f).digest for f in files)
            else:
                digests.extend(i.digest for i in put_artifacts(platform, ctx, files))
            put = time.perf_counter() - start
        sync()
        with measure(platform) as get_probe:
            start = time.perf_counter()
            pairs = [(digest, dest / f.name) for f, digest in zip(files, digests, strict=True)]
            if per_file:
                for digest, out in pairs:
                    get_artifact(platform, ctx, digest, out)
            else:
                get_artifacts(platform, ctx, pairs)
            get = time.perf_counter() - start
    finally:
        platform.close()
    check_same(src, dest)
    return put, get, put_probe, get_probe


def bench_cp(src: Path, scratch: Path, *, durable: bool) -> tuple[float, float]:
    store, back = scratch / "store", scratch / "back"

    def copy(a: Path, b: Path) -> None:
        run(["cp", "-r", a, b])
        if durable:
            sync()

    sync()
    put = timed(lambda: copy(src, store))
    sync()
    get = timed(lambda: copy(store, back))
    check_same(src, back)
    return put, get


def bench_dvc(src: Path, scratch: Path) -> tuple[float, float]:
    repo, env, dvc = dvc_repo(scratch)
    data = repo / "data"
    run(["cp", "-r", src, data])
    sync()
    put = timed(lambda: run([*dvc, "add", "-q", "data"], cwd=repo, env=env))
    shutil.rmtree(data)
    sync()
    get = timed(lambda: run([*dvc, "checkout", "-q"], cwd=repo, env=env))
    check_same(src, data)
    return put, get


# -- profile: timers around modelyard's building blocks ------------------------------------------------
#
# cProfile's per-call overhead inflates the many small SQLAlchemy calls several-fold, so instead the
# building blocks are wrapped with two clock reads each (module attributes patched for the run only).


class _TimedHash:
    __slots__ = ("_h", "_probe")

    def __init__(self, h: Any, probe: Counter[str]) -> None:
        self._h, self._probe = h, probe

    def update(self, data: Any) -> None:
        start = time.perf_counter()
        self._h.update(data)
        self._probe["sha256"] += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name)


class _TimedHashlib:
    def __init__(self, probe: Counter[str]) -> None:
        self._probe = probe

    def sha256(self, data: bytes = b"") -> _TimedHash:
        start = time.perf_counter()
        h = hashlib.sha256(data)
        self._probe["sha256"] += time.perf_counter() - start
        return _TimedHash(h, self._probe)

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)


class _TimedAEAD:
    def __init__(self, aead: Any, probe: Counter[str]) -> None:
        self._aead, self._probe = aead, probe

    def _timed(self, name: str, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return getattr(self._aead, name)(*args)
        finally:
            self._probe["aes"] += time.perf_counter() - start

    def encrypt(self, *args: Any) -> Any:
        return self._timed("encrypt", *args)

    def decrypt(self, *args: Any) -> Any:
        return self._timed("decrypt", *args)

    def encrypt_into(self, *args: Any) -> Any:
        return self._timed("encrypt_into", *args)

    def decrypt_into(self, *args: Any) -> Any:
        return self._timed("decrypt_into", *args)


def _timer(probe: Counter[str], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            probe[key] += time.perf_counter() - start

    return wrapper


def _timed_generator(probe: Counter[str], key: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = fn(*args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                probe[key] += time.perf_counter() - start
            yield item

    return wrapper


def _timed_session(probe: Counter[str], open_session: Callable[[], Any]) -> Callable[[], Any]:
    depth = [0]

    @contextlib.contextmanager
    def wrapper() -> Iterator[Any]:
        outer = depth[0] == 0
        depth[0] += 1
        start = time.perf_counter()
        try:
            with open_session() as session:
                yield session
        finally:
            depth[0] -= 1
            if outer:
                probe["metadata"] += time.perf_counter() - start

    return wrapper


@contextlib.contextmanager
def instrumented(platform: Any) -> Iterator[Counter[str]]:
    """Accumulate seconds spent in SHA-256, AES-GCM, the encrypt/decrypt passes, fsync, metadata
    transactions and the audit append while the block runs."""
    from modelyard.core import _artifacts, _audit, _blobs, _crypto

    probe: Counter[str] = Counter()
    db = platform.db
    with contextlib.ExitStack() as stack:
        patches = [
            (_crypto, "hashlib", _TimedHashlib(probe)),
            (_crypto, "AESGCM", lambda key, real=_crypto.AESGCM: _TimedAEAD(real(key), probe)),
            (_artifacts, "encrypt_stream", _timer(probe, "crypto pass", _artifacts.encrypt_stream)),
            (_artifacts, "iter_decrypt", _timed_generator(probe, "crypto pass", _artifacts.iter_decrypt)),
            (_artifacts, "decrypt_stream", _timer(probe, "crypto pass", _artifacts.decrypt_stream)),
            (os, "fsync", _timer(probe, "fsync", os.fsync)),
            (_artifacts, "sync_filesystem", _timer(probe, "fsync", _artifacts.sync_filesystem)),
            (_blobs, "sync_filesystem", _timer(probe, "fsync", _blobs.sync_filesystem)),
            (_audit, "append_many", _timer(probe, "audit", _audit.append_many)),
            (db, "read", _timed_session(probe, db.read)),
            (db, "write", _timed_session(probe, db.write)),
        ]
        for target, name, new in patches:
            if hasattr(target, name):  # the code under test moved on: that category reads 0
                stack.enter_context(mock.patch.object(target, name, new))
        yield probe


def breakdown(probe: Counter[str], wall: float) -> dict[str, float]:
    rows = {
        "SHA-256": probe["sha256"],
        "AES-GCM (payload and data key)": probe["aes"],
        "rest of the crypto pass (read and write the bytes, buffer set-up)": max(
            0.0, probe["crypto pass"] - probe["sha256"] - probe["aes"]
        ),
        "fsync / syncfs (durability of objects and outputs)": probe["fsync"],
        "metadata store: SQLAlchemy + SQLite, without audit": max(0.0, probe["metadata"] - probe["audit"]),
        "audit chain append (its SQL included)": probe["audit"],
    }
    rows["other (RBAC, name checks, temp files, rename, Python)"] = max(0.0, wall - sum(rows.values()))
    return rows


def primitive_speeds() -> list[str]:
    """The raw building blocks on this machine: the ceiling for modelyard, and its fixed cost per object."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from modelyard.core._crypto import encrypt_stream

    chunk = memoryview(os.urandom(MIB))
    n = 256
    sha = hashlib.sha256()
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    buf = bytearray(MIB + 16)
    seal = aead.encrypt_into if hasattr(aead, "encrypt_into") else None
    sha_s = timed(lambda: [sha.update(chunk) for _ in range(n)])
    aes_s = timed(
        lambda: [seal(nonce, chunk, b"", buf) if seal else aead.encrypt(nonce, chunk, b"") for _ in range(n)]
    )
    small, key, count = os.urandom(4 * KIB), os.urandom(32), 200
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    per_object = timed(lambda: [encrypt_stream(io.BytesIO(small), io.BytesIO(), key) for _ in range(count)])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return [
        f"SHA-256 {n * MIB / MB / sha_s:,.0f} MB/s, AES-256-GCM {n * MIB / MB / aes_s:,.0f} MB/s "
        "(1 MiB chunks, one core)",
        f"encrypt_stream of a 4 KiB payload in memory: {per_object / count * 1e3:.2f} ms and "
        f"{faults / count:.0f} page faults per object",
    ]


# -- report --------------------------------------------------------------------------------------------


def ratio(modelyard: float, other: float) -> str:
    return f"{modelyard / other:.2f}x"


def report(results: dict[str, dict[str, Result]], totals: dict[str, int], counts: dict[str, int]) -> None:
    table = Table(
        title="artifact put/get throughput (median of repeats; ratio = modelyard time / tool time)",
        title_justify="left",
    )
    for name, justify in [
        ("shape", "left"),
        ("files", "right"),
        ("tool", "left"),
        ("put MB/s", "right"),
        ("get MB/s", "right"),
        ("put: modelyard/tool", "right"),
        ("get: modelyard/tool", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, by_tool in results.items():
        shape = SHAPES[key]
        total = totals[key]
        mine = by_tool.get("modelyard")
        for i, (tool, res) in enumerate(by_tool.items()):
            put_ratio = get_ratio = "-"
            if mine is not None and tool != "modelyard":
                put_ratio, get_ratio = ratio(mine.put_s(), res.put_s()), ratio(mine.get_s(), res.get_s())
            table.add_row(
                f"{shape.label} x {total // MIB} MiB" if i == 0 else "",
                f"{counts[key]:,}" if i == 0 else "",
                tool,
                f"{total / MB / res.put_s():,.1f}",
                f"{total / MB / res.get_s():,.1f}",
                put_ratio,
                get_ratio,
                end_section=i == len(by_tool) - 1,
            )
    out.print(table)
    out.print(f"goal: encryption + hashing costs no more than {GOAL:g}x a plain copy")
    for key, by_tool in results.items():
        mine = by_tool.get("modelyard")
        if mine is None:
            continue
        verdicts = []
        for base in ("cp", "cp+sync"):
            if base in by_tool:
                put_r = mine.put_s() / by_tool[base].put_s()
                get_r = mine.get_s() / by_tool[base].get_s()
                verdict = "met" if max(put_r, get_r) <= GOAL else "MISSED"
                verdicts.append(f"vs {base}: put {put_r:.2f}x, get {get_r:.2f}x -> {verdict}")
        if verdicts:
            out.print(f"  {SHAPES[key].label}: " + "; ".join(verdicts))


def report_profile(
    key: str, count: int, walls: tuple[float, float], rows: tuple[dict[str, float], ...]
) -> None:
    table = Table(
        title=f"where modelyard's time goes, {count:,} files of {SHAPES[key].label} (timers, separate run)",
        title_justify="left",
    )
    table.add_column("category")
    for col in ("put s", "put %", "get s", "get %"):
        table.add_column(col, justify="right")
    put_rows, get_rows = rows
    for (name, put_s), (_, get_s) in zip(put_rows.items(), get_rows.items(), strict=True):
        put_pct, get_pct = 100 * put_s / walls[0], 100 * get_s / walls[1]
        table.add_row(name, f"{put_s:.2f}", f"{put_pct:.0f}%", f"{get_s:.2f}", f"{get_pct:.0f}%")
    table.add_row("wall", f"{walls[0]:.2f}", "100%", f"{walls[1]:.2f}", "100%", end_section=True)
    out.print(table)


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total-mib", type=int, default=1024, help="data per shape in MiB (default 1024)")
    parser.add_argument(
        "--small-total-mib",
        type=int,
        default=64,
        help="cap for the 4 KiB shape in MiB (default 64 = 16,384 files; 1 GiB would be 262,144 files)",
    )
    parser.add_argument("--shapes", default="4k,1m,64m", help="comma-separated subset of 4k,1m,64m")
    parser.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (default: all but modelyard-per-file)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements per tool and shape (median)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the temporary directories go (default: the system temp dir)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="1m,64m",
        default=None,
        metavar="SHAPES",
        help="also break modelyard's time down for these shapes (default 1m,64m), in a separate run",
    )
    args = parser.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()] if args.profile else []
    for s in [*args.shapes, *args.profile]:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for t in args.tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")
    if args.repeat < 1 or args.total_mib < 1 or args.small_total_mib < 1:
        parser.error("--repeat, --total-mib and --small-total-mib must be positive")
    return args


def measure(tool: str, src: Path, files: list[Path], scratch: Path) -> tuple[float, float]:
    if tool in ("modelyard", "modelyard-per-file"):
        put, get, _, _ = modelyard_put_get(src, files, scratch, per_file=tool == "modelyard-per-file")
        return put, get
    if tool == "dvc":
        return bench_dvc(src, scratch)
    return bench_cp(src, scratch, durable=tool == "cp+sync")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A benchmark must not pick up a developer's store, key or database from the shell.
    for name in [n for n in os.environ if n.startswith("YARD_")]:
        del os.environ[name]
    tools = list(args.tools)
    if "dvc" in tools and not dvc_available():
        out.print("dvc: not installed, skipped")
        tools.remove("dvc")

    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="modelyard-bench-", dir=args.workdir))
    fs = subprocess.run(["stat", "-f", "-c", "%T", root], capture_output=True, text=True).stdout.strip()
    out.print(
        f"workdir {root} (filesystem {fs or '?'}; data, stores and copies all on it); "
        f"{os.cpu_count()} CPUs, Python {pyplatform.python_version()}, repeat {args.repeat}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    out.print(
        "caches: warm for every tool alike (the page cache is not dropped: that needs root); "
        "each timing starts after an untimed `sync`; the tool order rotates between repeats"
    )
    keys = list(dict.fromkeys([*args.shapes, *args.profile]))
    totals = {k: total_for(SHAPES[k], args.total_mib, args.small_total_mib) for k in keys}
    counts = {k: totals[k] // SHAPES[k].file_size for k in keys}
    if "4k" in totals and totals["4k"] < args.total_mib * MIB:
        out.print(
            f"4 KiB shape: {totals['4k'] // MIB} MiB = {counts['4k']:,} files, not {args.total_mib} MiB "
            f"({args.total_mib * MIB // (4 * KIB):,} files would take too long; see --small-total-mib)"
        )
    results: dict[str, dict[str, Result]] = {}
    profiles = []
    started = time.perf_counter()
    try:
        for key in keys:
            shape = SHAPES[key]
            src = root / "src" / key
            log.print(f"{shape.label}: generating {totals[key] // MIB} MiB in {counts[key]:,} random files")
            files = generate(src, shape, totals[key], args.seed)
            if key in args.shapes:
                by_tool = results[key] = {t: Result() for t in tools}
                for rep in range(args.repeat):
                    # Rotate the order: on a VM, writing into memory the guest has not touched lately is
                    # slower, which penalises whichever tool runs first.
                    for tool in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
                        scratch = root / f"{key}-{tool}-{rep}"
                        scratch.mkdir()
                        log.print(f"{shape.label}: {tool} (run {rep + 1}/{args.repeat})")
                        try:
                            put, get = measure(tool, src, files, scratch)
                        finally:
                            shutil.rmtree(scratch, ignore_errors=True)
                        by_tool[tool].put.append(put)
                        by_tool[tool].get.append(get)
            if key in args.profile:
                scratch = root / f"{key}-profile"
                scratch.mkdir()
                log.print(f"{shape.label}: modelyard with timers")
                try:
                    put, get, put_probe, get_probe = modelyard_put_get(src, files, scratch, instrumented)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                rows = (breakdown(put_probe, put), breakdown(get_probe, get))
                profiles.append((key, counts[key], (put, get), rows))
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if results:
        report(results, totals, counts)
    for entry in profiles:
        report_profile(*entry)
    if profiles:
        for line in primitive_speeds():
            out.print(f"raw: {line}")
    load = os.getloadavg()[0]
    out.print(f"benchmark took {time.perf_counter() - started:.0f} s; load average at the end {load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
