"""Validation of artifact keys, dataset member names and archive entries.

Keys are data, not trust (DESIGN.md section 3). ``safe_key`` is pure string logic, so a hostile key is
refused before any filesystem call; ``safe_join`` then adds the checks that need the filesystem
(symlinks, the resolved path staying inside the root).

Policy: a key must already be in canonical form. Empty segments (``a//b``, ``a/``) and ``.``
segments are rejected rather than normalised away, so one object never has two spellings that
metadata would treat as different keys. The only normalisation is Unicode NFC, so that the same
visible name typed on macOS (NFD) and Linux (NFC) is the same key; callers must store the returned
form.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import unicodedata
from pathlib import Path

from modelyard.errors import UnsafePathError

MAX_KEY_CHARS = 1024
# Most filesystems cap one path component at 255 bytes; refusing here gives a clear error instead
# of ENAMETOOLONG deep inside a write.
MAX_SEGMENT_BYTES = 255

_EXPECTED = "expected a relative POSIX path such as 'models/v1/weights.safetensors'"
# Any %XX (or IIS-style %uXXXX) escape is refused outright: if no escape is present, no number of
# decoding passes can produce '.', '/', '\\' or NUL, which closes double and triple encoding.
_PERCENT_ESCAPE = re.compile(r"%(?:[0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})")
_DRIVE = re.compile(r"[A-Za-z]:")
# Characters with a meaning in URLs or paths on some platform; refused anywhere in a key.
_FORBIDDEN = {
    "\\": "a backslash (use '/' as the separator)",
    "#": "'#' (a URL fragment)",
    "?": "'?' (a URL query)",
    ";": "';' (a URL path parameter)",
}
# ASCII characters that a non-ASCII look-alike must not turn into, under NFKC or a Windows best-fit
# code page (the "WorstFit" attacks): '.', '/', '\\', ':' and friends.
_STRUCTURAL = frozenset("./\\:%#?;~")
# Separators that NFKC leaves alone but that look like, or best-fit to, '/' or '\\'.
_SLASH_LOOKALIKES = frozenset("\u2044\u2215\u2216\u29f5\u29f8\u29f9")
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separator categories.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# For an ASCII key, NFC changes nothing, no look-alike applies and the bad characters are exactly the
# controls (category Cc: U+0000-U+001F, U+007F) and _FORBIDDEN: one regex search replaces the per-character
# loop (a dataset add validates every member name; this made it about ten times cheaper).
_ASCII_BAD = re.compile(r"[\x00-\x1f\x7f\\#?;]")
# A segment every rule accepts: it starts with a letter, digit, '_' or '-' (so it is not empty, not '.'
# or '..', not only dots or spaces, no leading '~'), has no '%', '/' or other character any rule looks
# at, and fits MAX_SEGMENT_BYTES. Most file names match, which skips the checks one by one.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\- +=,@]{0,254}")


def _refuse(key: str, what: str, problem: str, **details: str) -> UnsafePathError:
    shown = key if len(key) <= 80 else key[:77] + "..."
    return UnsafePathError(f"unsafe {what} {shown!r}: {problem}; {_EXPECTED}", key=shown, **details)


def _check_char(key: str, what: str, ch: str) -> None:
    if ch in _FORBIDDEN:
        raise _refuse(key, what, f"it contains {_FORBIDDEN[ch]}")
    if unicodedata.category(ch) in _BAD_CATEGORIES:
        raise _refuse(key, what, f"it contains the control or invisible character U+{ord(ch):04X}")
    if ch.isascii():
        return
    folded = unicodedata.normalize("NFKC", ch)
    if ch in _SLASH_LOOKALIKES or any(c in _STRUCTURAL for c in folded):
        name = unicodedata.name(ch, "unnamed")
        raise _refuse(key, what, f"U+{ord(ch):04X} ({name}) is a look-alike of {folded!r}")


def _check_segment(key: str, what: str, index: int, segment: str) -> None:
    if not segment:
        raise _refuse(key, what, "it has an empty segment (a leading, trailing or doubled '/')")
    if segment == "..":
        raise _refuse(key, what, "'..' (parent directory) segments are not allowed")
    # '.', '...' and, because Windows strips trailing dots and spaces, '.. ' would alias a directory.
    if not segment.strip(". "):
        raise _refuse(key, what, f"segment {segment!r} is made only of dots or spaces")
    if index == 0 and segment.startswith("~"):
        raise _refuse(key, what, "a leading '~' segment would name a home directory")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise _refuse(key, what, f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")


def safe_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` in canonical form (NFC) or raise UnsafePathError; never touches the filesystem."""
    if not isinstance(key, str):
        raise UnsafePathError(f"{what} must be a string, got {type(key).__name__}; {_EXPECTED}")
    ascii_only = key.isascii()
    if not ascii_only:
        key = unicodedata.normalize("NFC", key)
    if not key:
        raise _refuse(key, what, "it is empty")
    if len(key) > MAX_KEY_CHARS:
        raise _refuse(key, what, f"it is longer than {MAX_KEY_CHARS} characters")
    _check_chars(key, key, what, ascii_only)
    if key.startswith("/"):
        raise _refuse(key, what, "it is an absolute path")
    if _DRIVE.match(key):
        raise _refuse(key, what, "it starts with a Windows drive letter")
    escape = _PERCENT_ESCAPE.search(key)
    if escape:
        problem = f"it contains the percent-encoded sequence {escape.group()!r}; decode it first"
        raise _refuse(key, what, problem)
    for index, segment in enumerate(key.split("/")):
        _check_segment(key, what, index, segment)
    return key


def _check_chars(key: str, text: str, what: str, ascii_only: bool) -> None:
    """Check the characters of ``text`` (all or part of ``key``, which messages name)."""
    if ascii_only:
        bad = _ASCII_BAD.search(text)
        if bad is not None:
            _check_char(key, what, bad.group())  # raises, with the same message as the loop below
        return
    for ch in text:
        _check_char(key, what, ch)


def safe_child(parent: str, name: str, *, what: str = "key") -> str:
    """``safe_key(parent + "/" + name)`` for a ``parent`` that ``safe_key`` already returned unchanged,
    checking only the new segment and the total length (a directory walk validates each directory
    once instead of once per file). Every rule of ``safe_key`` is local to a segment except the
    length, the leading '/', '~' and drive-letter rules (which concern the first segment, ``parent``'s)
    and NFC, which cannot compose across a '/'. An empty ``parent`` makes ``name`` the first segment."""
    if not parent:
        return safe_key(name, what=what)
    if isinstance(name, str) and _PLAIN_SEGMENT.fullmatch(name):
        key = f"{parent}/{name}"
        if len(key) <= MAX_KEY_CHARS:
            return key
    if not isinstance(name, str):
        raise UnsafePathError(f"{what} must be a string, got {type(name).__name__}; {_EXPECTED}")
    ascii_only = name.isascii()
    if not ascii_only:
        name = unicodedata.normalize("NFC", name)
    key = f"{parent}/{name}"
    if len(key) > MAX_KEY_CHARS:
        raise _refuse(key, what, f"it is longer than {MAX_KEY_CHARS} characters")
    _check_chars(key, name, what, ascii_only)
    if "/" in name:
        raise _refuse(key, what, "a name inside a directory contains '/'")
    escape = _PERCENT_ESCAPE.search(name)
    if escape:
        problem = f"it contains the percent-encoded sequence {escape.group()!r}; decode it first"
        raise _refuse(key, what, problem)
    _check_segment(key, what, 1, name)
    return key


def safe_join(root: Path, key: str) -> Path:
    """Join a validated key onto ``root``, refusing symlinks and anything that resolves outside it.

    A symlink anywhere below the root is refused even if it points inside: the store never creates
    one, so its presence means tampering. The check races with a concurrent writer who can plant
    symlinks, but such a writer already owns the store.
    """
    rel = safe_key(key)
    base = _resolved(root) if root.is_absolute() else root.resolve()
    path = base
    for part in rel.split("/"):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            break  # nothing below a missing component exists, so it cannot be a symlink yet
        if stat.S_ISLNK(mode):
            raise _refuse(
                key, "key", f"{path} is a symbolic link, and links are not followed", link=str(path)
            )
    # No resolve() of the result: base is resolved, safe_key admits no '..', '.' or empty segment, and no
    # existing component below base is a link, so the path cannot lead outside base. (Path.resolve walks
    # every component in Python: a third of a 10,000-file checkout's time went to it.)
    return base.joinpath(*rel.split("/"))


@functools.lru_cache(maxsize=256)
def _resolved(root: Path) -> Path:
    """An absolute root's real path, once per process: roots are the store's and folders this process
    made or was given, and a root replaced meanwhile is not followed to its new place."""
    return root.resolve()


def temp_prefix(name: str) -> str:
    """A prefix for a temp file or directory named after ``name``, beside it: ".NAME." cut so that the
    temp name stays within the 255 bytes a name may have when ``name`` itself is that long (40
    characters are at most 160 bytes, leaving room for a suffix and the random part)."""
    return f".{name[:40]}."


def check_output_target(path: Path) -> None:
    """Refuse an output ``path`` that names a device, FIFO or socket, or a link to one: outputs are a temp
    file renamed into place, which would put a regular file where /dev/full or /dev/stdout (a link to the
    process's fd) was, for every user when run as root. A missing path, a file or a link to one is fine."""
    from modelyard.errors import UsageError

    try:
        mode = os.stat(path).st_mode  # follows a link only to see what it names; the link is what is replaced
    except OSError:
        return  # missing (the usual case), or unreadable: the write itself says why
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UsageError(
            f"output {path} is {kind}, not a regular file: it is written whole to a temp file and renamed "
            "into place, which would replace it; give the path of a file"
        )


def write_file(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` as a new file (mode 0600): temp file in the same directory, fsync, rename.
    A symlink planted at ``path`` is replaced, never followed (a plain write would overwrite the file it
    points to, anywhere the user can write); readers never see a half-written file. OSError on failure;
    UsageError for a path that names a device or FIFO (check_output_target)."""
    import tempfile

    check_output_target(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_private(path: str | os.PathLike[str], *, links: bool = False) -> None:
    """Create ``path`` as an empty file of mode 0600 (whatever the umask) unless something is there. What is
    there is never opened: for a SQLite file that is the point, since SQLite's locks are POSIX locks and a
    process loses all of them on any close of the file, so an open and close beside a live connection let
    another process take the database as unused and delete its WAL ('disk I/O error', lost writes). A
    symlink there is refused (OSError ELOOP) unless ``links`` (one the user made on purpose)."""
    import errno

    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))  # O_EXCL: never through a link
    except FileExistsError:
        if not links and os.path.islink(path):
            raise OSError(
                errno.ELOOP, "a symbolic link is where a private file belongs", os.fspath(path)
            ) from None


def private_dirs(path: Path) -> None:
    """Make ``path`` and each missing parent with mode 0700: ``Path.mkdir(parents=True)`` gives the parents
    the umask's default (0777 under ``umask 000``), so anyone could plant files beside ours."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
