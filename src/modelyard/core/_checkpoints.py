"""Where training keeps a run's checkpoints on this machine, and their removal.

``$YARD_HOME/checkpoints/RUN_ID`` holds a run's weights, optimizer state and the tokenizer trained on the
user's data in plain files (exact resume needs them; encrypting gigabytes every N steps would cost more than
the steps). Training deletes a FINISHED run's; deleting a run deletes its own, and ``yard gc`` sweeps those
of FINISHED or deleted runs. Here in core so that tracking and gc need not import training.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from modelyard.errors import UsageError

#: rank 0 holds an flock on this file in the run's folder while it trains the run (released however it ends)
LOCK = ".training.lock"


def checkpoints_dir(home: Path) -> Path:
    return home / "checkpoints"


def run_checkpoints(home: Path, run_id: str) -> Path:
    return checkpoints_dir(home) / run_id


def remove_run_checkpoints(root: Path, run_id: str) -> str | None:
    """Delete a run's checkpoint folder: None once it is gone (or was never there), else why it is not.
    UsageError, deleting nothing, while a process on this machine trains the run (it holds the lock):
    it would go on writing checkpoints into a new folder."""
    if not (root.exists() or root.is_symlink()):
        return None
    try:
        lock = os.open(root / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        lock = None  # nobody ever trained it here (or an old version's folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while deleting: no resume starts
            except BlockingIOError:
                raise UsageError(
                    f"run {run_id[:8]} is being trained by a process on this machine right now; stop it first"
                ) from None
        shutil.rmtree(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    finally:
        if lock is not None:
            os.close(lock)
    return None if not (root.exists() or root.is_symlink()) else "still there"
