"""Helpers for tests of modelyard and of code built on it: fresh homes, fresh databases, actors."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from modelyard.config import load_settings
from modelyard.core import Context, Platform, Role, add_user, create_token, init_home

# The smallest valid recipe over dataset `normalise@1`, for tests of the job queue (which check the recipe
# and its data at submission but need not train it).
JOB_RECIPE = """\
experiment: jobs-test
data: {dataset: normalise@1}
tokenizer: {train: sentencepiece, vocab_size: 128}
model: {init: scratch, preset: tiny}
hyperparameters: {lr: 1e-3, max_steps: 2, batch_size: 4}
"""


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


def vm_hwm_kib() -> int:
    """Peak resident memory of this process in KiB (Linux). Not ru_maxrss: across vfork+exec that keeps
    the parent's peak, so a test subprocess would report pytest's memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")
