"""Dataset versioning: `yard data add` against `dvc add` on the same tree, first add and re-add.

One tree of random files is generated (default 1 GiB in 10,000 files), then every tool gets its own copy
of it (untimed) and, in the same run and on the same filesystem:

* first add: the whole tree is versioned (hash, store; modelyard also encrypts every file);
* re-add: 1% of the files get new contents of the same size (untimed), then the tree is added again
  (unchanged files come from the stat cache: modelyard's and DVC's state database).

Tools: ``yard`` runs the ``yard data add`` console script as a subprocess against a home made by
``yard init`` (CLI to CLI);
``yard-agent`` runs the same commands with a ``yard agent`` started first (untimed): each command still
starts its own interpreter, and the agent runs it in a fresh fork of an already-imported process;
``dvc`` runs ``dvc add`` as a subprocess in a fresh ``git init`` + ``dvc init --no-scm`` repository;
``in-process`` calls ``modelyard.data.add_version`` in this process (no interpreter start-up);
``dvc-in-process`` calls ``dvc.repo.Repo(path).add("data")`` in this process, timed the same way (a fresh
repository, an untimed warm-up add first). The table shows seconds, MB/s and how many times faster modelyard
is than DVC (dvc time / modelyard time): ``yard`` and ``yard-agent`` against ``dvc`` (CLI to CLI) and
``in-process`` against
``dvc-in-process`` (in-process to in-process).

Run ``python benchmarks/data.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform as pyplatform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import compile_packages, dvc_available, dvc_repo, run, sync
from rich.console import Console
from rich.table import Table

MIB = 1 << 20
MB = 1_000_000
GOAL = 3.0
TOOLS = ("yard", "yard-agent", "dvc", "in-process", "dvc-in-process")
# Which DVC measurement each modelyard one is compared with.
PEER = {"yard": "dvc", "yard-agent": "dvc", "in-process": "dvc-in-process"}

out = Console(width=None if sys.stdout.isatty() else 150)
log = Console(stderr=True, style="dim")


def generate(root: Path, files: int, total: int, seed: int) -> list[Path]:
    """``files`` distinct random files of about ``total / files`` bytes, 100 per directory."""
    rng = random.Random(seed)
    size = max(1, total // files)
    paths = []
    for i in range(files):
        path = root / f"shard-{i // 100:04d}" / f"part-{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        paths.append(path)
    return paths


def touch_some(root: Path, rels: Sequence[str], seed: int) -> None:
    """New contents (same size) for the chosen files: the re-add must pick exactly these up."""
    rng = random.Random(seed + 1)
    for rel in rels:
        path = root / rel
        path.write_bytes(rng.randbytes(path.stat().st_size))


def timed(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    sync()
    start = time.perf_counter()
    run(cmd, cwd=cwd, env=env)
    return time.perf_counter() - start


def settle() -> None:
    # Both tools refuse to trust the stat of a file written within the last tick; wait past
    # modelyard's one-second window so the first add caches every file, as it would for older data.
    time.sleep(1.2)


def bench_yard(
    src: Path, scratch: Path, rels: Sequence[str], seed: int, *, agent: bool = False
) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(YARD_HOME=str(scratch / "home"), COLUMNS="200", YARD_AGENT="1" if agent else "0")
    # The console script, as users run it (only it asks an agent; `python -m modelyard.cli` never does).
    script = shutil.which("yard", path=os.path.dirname(sys.executable))
    if script is None:
        raise SystemExit(f"no yard console script next to {sys.executable}: pip install -e .")
    yard = [script]
    if agent:  # a socket path is short: its own private folder under /tmp
        env["YARD_AGENT_DIR"] = tempfile.mkdtemp(prefix="yard-agent-")
        run([*yard, "agent", "start"], env=env)
    try:
        return _yard_adds(yard, env, src, scratch, rels, seed)
    finally:
        if agent:
            run([*yard, "agent", "stop"], env=env)
            shutil.rmtree(env["YARD_AGENT_DIR"], ignore_errors=True)


def _yard_adds(
    yard: list[str], env: dict[str, str], src: Path, scratch: Path, rels: Sequence[str], seed: int
) -> tuple[float, float]:
    run([*yard, "init"], env=env)
    data = scratch / "data"
    run(["cp", "-r", src, data])
    settle()
    first = timed([*yard, "data", "add", data, "--name", "bench"], env=env)
    touch_some(data, rels, seed)
    settle()
    again = timed([*yard, "data", "add", data, "--name", "bench"], env=env)
    return first, again


def bench_in_process(src: Path, scratch: Path, rels: Sequence[str], seed: int) -> tuple[float, float]:
    from modelyard.data import add_version
    from modelyard.testing import make_platform

    platform = make_platform(scratch / "home")
    try:
        ctx = platform.context()
        warm = scratch / "warm"
        warm.mkdir()
        (warm / "x.csv").write_text("a\n1\n")
        add_version(platform, ctx, warm, "warm-up")  # opens stores, imports pyarrow: untimed
        data = scratch / "data"
        run(["cp", "-r", src, data])
        settle()
        sync()
        start = time.perf_counter()
        add_version(platform, ctx, data, "bench")
        first = time.perf_counter() - start
        touch_some(data, rels, seed)
        settle()
        sync()
        start = time.perf_counter()
        info = add_version(platform, ctx, data, "bench")
        again = time.perf_counter() - start
        assert info.version == 2, info
    finally:
        platform.close()
    return first, again


def bench_dvc_in_process(src: Path, scratch: Path, rels: Sequence[str], seed: int) -> tuple[float, float]:
    from dvc.repo import Repo

    repo, _, _ = dvc_repo(scratch)
    os.environ["DVC_NO_ANALYTICS"] = "1"
    warm = repo / "warm"
    warm.mkdir()
    (warm / "x.csv").write_text("a\n1\n")
    with Repo(str(repo)) as r:
        r.add(str(warm))  # imports, opens the cache and state databases: untimed, as for in-process

    def add() -> float:
        with Repo(str(repo)) as r:  # a fresh Repo per add, as each CLI call makes; built untimed
            sync()
            start = time.perf_counter()
            r.add(str(repo / "data"))
            return time.perf_counter() - start

    data = repo / "data"
    run(["cp", "-r", src, data])
    settle()
    first = add()
    touch_some(data, rels, seed)
    settle()
    again = add()
    return first, again


def bench_dvc(src: Path, scratch: Path, rels: Sequence[str], seed: int) -> tuple[float, float]:
    repo, env, dvc = dvc_repo(scratch)
    data = repo / "data"
    run(["cp", "-r", src, data])
    settle()
    first = timed([*dvc, "add", "-q", "data"], cwd=repo, env=env)
    touch_some(data, rels, seed)
    settle()
    again = timed([*dvc, "add", "-q", "data"], cwd=repo, env=env)
    return first, again


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total-mib", type=int, default=1024, help="size of the tree in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=10_000, help="number of files (default 10,000)")
    parser.add_argument("--touch-percent", type=float, default=1.0, help="files changed before re-add (1)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"subset of {','.join(TOOLS)}")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool, order rotated; medians shown")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in args.tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")
    if args.files < 1 or args.total_mib < 1 or args.repeat < 1 or not 0 < args.touch_percent <= 100:
        parser.error("--files, --total-mib and --repeat must be positive, --touch-percent in (0, 100]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in [n for n in os.environ if n.startswith("YARD_")]:
        del os.environ[name]
    tools = list(args.tools)
    if not dvc_available():
        for tool in ("dvc", "dvc-in-process"):
            if tool in tools:
                out.print(f"{tool}: dvc is not installed, skipped (pip install -e '.[bench]')")
                tools.remove(tool)
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="modelyard-data-bench-", dir=args.workdir))
    total = args.total_mib * MIB
    workers = os.environ.get("YARD_DATA_WORKERS") or "one per CPU"
    out.print(
        f"workdir {root}; {os.cpu_count()} CPUs, Python {pyplatform.python_version()}, "
        f"data workers {workers}, load average {os.getloadavg()[0]:.1f}"
    )
    # Both CLIs load bytecode, as installed wheels do (see compile_packages).
    compile_packages("modelyard", *(["dvc"] if "dvc" in tools else []))
    runs: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
    benches: dict[str, Callable[[Path, Path, Sequence[str], int], tuple[float, float]]] = {
        "yard": bench_yard,
        "yard-agent": functools.partial(bench_yard, agent=True),
        "dvc": bench_dvc,
        "in-process": bench_in_process,
        "dvc-in-process": bench_dvc_in_process,
    }
    started = time.perf_counter()
    try:
        src = root / "src"
        log.print(f"generating {args.total_mib} MiB in {args.files:,} files")
        paths = generate(src, args.files, total, args.seed)
        count = max(1, round(len(paths) * args.touch_percent / 100))
        rels = sorted(str(p.relative_to(src)) for p in random.Random(args.seed).sample(paths, count))
        for rep in range(args.repeat):
            # Rotated order, so no tool always runs first (cold) or last. Nothing is deleted until the
            # end: ext4 skips recently freed inodes when it allocates new ones (recently_deleted(),
            # for up to 5 minutes), which made whichever tool ran after a cleanup of 20,000 files
            # several times slower at creating its own.
            for tool in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
                scratch = root / f"{tool}-{rep}"
                scratch.mkdir()
                log.print(f"{tool} (run {rep + 1}): first add, then re-add after changing {count:,} files")
                fn = benches[tool]
                runs[tool].append(fn(src, scratch, rels, args.seed))
                log.print(f"  first {runs[tool][-1][0]:.2f} s, re-add {runs[tool][-1][1]:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {
        t: (statistics.median(f for f, _ in r), statistics.median(a for _, a in r))
        for t, r in runs.items()
        if r
    }
    report(results, total, args.files, count, args.repeat)
    out.print(f"benchmark took {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0


def report(
    results: dict[str, tuple[float, float]], total: int, files: int, touched: int, repeat: int
) -> None:
    runs = f"median of {repeat} runs" if repeat > 1 else "one run"
    table = Table(
        title=(
            f"dataset add: {total // MIB:,} MiB in {files:,} files; re-add after changing {touched:,} "
            f"({runs}; speed-up = dvc time / modelyard time: yard and yard-agent vs dvc CLI to CLI, "
            "in-process vs dvc-in-process)"
        ),
        title_justify="left",
    )
    for col, justify in [
        ("tool", "left"),
        ("first add s", "right"),
        ("first MB/s", "right"),
        ("re-add s", "right"),
        ("first: speed-up vs dvc", "right"),
        ("re-add: speed-up vs dvc", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for tool, (first, again) in results.items():
        up1 = up2 = "-"
        peer = results.get(PEER.get(tool, ""))
        if peer is not None:
            up1, up2 = f"{peer[0] / first:.2f}x", f"{peer[1] / again:.2f}x"
        table.add_row(tool, f"{first:.2f}", f"{total / MB / first:,.0f}", f"{again:.2f}", up1, up2)
    out.print(table)
    for tool, how in (
        ("yard", "CLI to CLI"),
        ("yard-agent", "CLI to CLI, yard agent started"),
        ("in-process", "in-process to in-process"),
    ):
        peer = results.get(PEER[tool])
        if peer is None or tool not in results:
            continue
        first, again = results[tool]
        ok = peer[0] / first >= GOAL and peer[1] / again >= GOAL
        verdict = "met" if ok else "MISSED"
        out.print(
            f"goal ({how}): modelyard at least {GOAL:g}x faster than dvc on first add and re-add: "
            f"first {peer[0] / first:.2f}x, re-add {peer[1] / again:.2f}x -> {verdict}"
        )


if __name__ == "__main__":
    sys.exit(main())
