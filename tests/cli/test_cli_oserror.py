"""An OSError that escapes a command (disk full, read-only, permission) is one clear line with a remedy."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from modelyard.cli._app import os_error_message
from modelyard.testing import Yard


def test_a_home_below_a_regular_file_is_named_with_the_reason(yard: Yard, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    home = tmp_path / "file" / "home"  # a real ENOTDIR, also for root (chmod would not bind)
    r = yard("init", env={"YARD_HOME": str(home)})
    assert r.code == 1
    assert r.error.startswith(f"error: Not a directory: {home} ("), r.error
    assert "unexpected" not in r.error and "Errno" not in r.error
    assert "Traceback" not in r.err


def test_with_debug_the_traceback_follows(yard: Yard, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    r = yard("--debug", "init", env={"YARD_HOME": str(tmp_path / "file" / "home")})
    assert r.code == 1 and "Traceback" in r.err and "NotADirectoryError" in r.err
    assert r.err_lines[-1].startswith("error: Not a directory: ")
    assert "rerun with --debug" not in r.err


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")
def test_a_home_where_nobody_may_write_says_to_check_permissions(yard: Yard) -> None:
    # sysfs refuses mkdir even to root (EPERM, or EROFS where /sys is mounted read-only).
    r = yard("init", env={"YARD_HOME": "/sys/yard-home"})
    assert r.code == 1
    assert r.error.startswith("error: ") and ": /sys/yard-home (" in r.error, r.error
    assert "permission" in r.error or "read-only" in r.error, r.error


@pytest.mark.parametrize(
    ("code", "remedy"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EDQUOT, "free some space"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "check the permissions"),
        (errno.EPERM, "check the permissions"),
        (errno.EIO, "check the disk"),
    ],
)
def test_common_causes_get_their_remedy(code: int, remedy: str) -> None:
    exc = OSError(code, os.strerror(code), "/yard/home/store/x")
    message = os_error_message(exc, debug=False)
    assert message.startswith(f"{os.strerror(code)}: /yard/home/store/x ("), message
    assert remedy in message and "--debug" not in message


def test_other_causes_point_at_the_traceback() -> None:
    exc = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "a")
    assert os_error_message(exc, debug=False).endswith("(rerun with --debug for the traceback)")
    assert os_error_message(exc, debug=True) == f"{os.strerror(errno.ENAMETOOLONG)}: a"


def test_a_rename_names_both_paths() -> None:
    exc = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b")
    assert os_error_message(exc, debug=True) == f"{os.strerror(errno.EXDEV)}: a -> b"
