"""Helpers for tests of modelyard and of code built on it: fresh homes, fresh databases, actors."""

from __future__ import annotations

import contextlib
import filecmp
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from modelyard.config import load_settings
from modelyard.core import Context, Platform, Role, add_user, create_token, init_home

# The smallest valid recipe over dataset `normalise@1`, for tests of the job queue (which check the recipe
# and its data at submission but need not train it).
JOB_RECIPE = """\
experiment: jobs-test
data: {dataset: normalise@1, file: train.jsonl}
tokenizer: {train: sentencepiece, vocab_size: 128}
model: {init: scratch, preset: tiny}
hyperparameters: {lr: 1e-3, max_steps: 2, batch_size: 4}
"""


# A small T5 (preset tiny: d_model 64, 2 layers) over the generated normalisation task: 300 steps on a CPU
# (half a minute) give input-dependent outputs with slice metrics that differ (rougeL ~0.15 overall).
TINY_RECIPE: dict[str, Any] = {
    "experiment": "tiny",
    "data": {"train": "norm@1", "validation": "norm@1", "test": "norm@1", "group_field": "locale"},
    "tokenizer": {
        "train": "sentencepiece",
        "vocab_size": 200,
        "max_source_length": 64,
        "max_target_length": 48,
    },
    "model": {"init": "scratch", "preset": "tiny"},
    "hyperparameters": {"lr": 5e-3, "batch_size": 16, "max_steps": 300, "seed": 3, "warmup_steps": 20},
    "precision": "fp32",
    "distributed": {"dataloader_workers": 0, "pin_memory": False},
    "train": {"log_every_steps": 50, "eval_every_steps": 1000, "eval_max_samples": 8},
    "checkpoints": {"every_steps": 1000, "keep_last": 1},
    "evaluation": {"metrics": ["bleu", "rougeL", "exact_match"], "max_new_tokens": 32, "batch_size": 32},
}


def train_tiny(
    platform: Platform, data_dir: Path, *, steps: int = 300, rows: int = 600, seed: int = 1
) -> str:
    """Version ``rows`` generated examples as ``norm@1`` and train TINY_RECIPE for ``steps`` through the
    real loop; returns the FINISHED run's id (model, recipe and eval report stored as its artifacts)."""
    import copy

    from modelyard.data import add_version
    from modelyard.tracking import Client
    from modelyard.training import parse_recipe, write_dataset
    from modelyard.training._train import train

    files = write_dataset(data_dir, rows, seed=seed)
    add_version(platform, platform.context(), files[0].parent, "norm")
    spec = copy.deepcopy(TINY_RECIPE)
    spec["hyperparameters"]["max_steps"] = steps
    with Client(platform) as client:
        return train(parse_recipe(spec), client=client, progress=False).run_id


@dataclass(frozen=True)
class TrainedModel:
    home: Path  # the home holding norm@1 and the run
    run_id: str
    model_dir: Path  # the run's model/ artifacts, downloaded (verified)
    report: Path  # its eval/report.json


def trained_model(root: Path, **train_args: Any) -> TrainedModel:
    """A fresh home under ``root`` with a model trained by :func:`train_tiny`, its files downloaded."""
    from modelyard.tracking import Client

    platform = make_platform(root / "home")
    try:
        run_id = train_tiny(platform, root / "data", **train_args)
        with Client(platform) as client:
            model_dir = client.download_artifacts(run_id, "model", root / "model")
            report = client.download_artifacts(run_id, "eval/report.json", root / "eval")
    finally:
        platform.close()
    return TrainedModel(root / "home", run_id, model_dir, report)


def make_platform(
    home: Path,
    *,
    database_url: str | None = None,
    artifact_uri: str | None = None,
    region: str = "local",
    s3_endpoint_url: str | None = None,
    project: str = "default",
) -> Platform:
    """Initialise a home exactly as `yard init` does and open it."""
    settings = load_settings(
        home=home,
        database_url=database_url,
        artifact_uri=artifact_uri,
        region=region,
        s3_endpoint_url=s3_endpoint_url,
        project=project,
    )
    init_home(settings)
    return Platform(settings)


def actor(platform: Platform, admin: Context, name: str, role: Role | str) -> Context:
    """Add a member with ``role`` and resolve its context through a real API token."""
    add_user(platform, admin, name, role)
    _, token = create_token(platform, admin, name)
    return platform.context(token=token)


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``server_url``, yield its URL, drop it afterwards."""
    url = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"yard_test_{secrets.token_hex(6)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def wait_for_lock_wait(engine: Any, thread: threading.Thread) -> None:
    """Return once a session of ``engine``'s PostgreSQL database waits on a lock, or ``thread`` ended: a test
    holding a lock learns that the thread under test queued behind it (no sleep to guess)."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    with engine.connect() as watcher:
        while thread.is_alive() and not watcher.execute(waiting).scalar_one():
            watcher.rollback()  # a fresh snapshot of pg_stat_activity each time


def vm_hwm_kib() -> int:
    """Peak resident memory of this process in KiB (Linux). Not ru_maxrss: across vfork+exec that keeps
    the parent's peak, so a test subprocess would report pytest's memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def same_tree(a: Path, b: Path) -> bool:
    """Byte-for-byte comparison of two directory trees (names, contents, nothing extra)."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


@contextlib.contextmanager
def reaping(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """Kill and wait for ``proc`` on the way out unless it has ended: a failing test leaves no child."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
