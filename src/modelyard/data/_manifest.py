"""Walking a tree, the stat cache, and the manifest format.

A manifest is JSON lines, one member per line, sorted by path (code-point order)::

    {"path": "train/part-0001.csv", "size": 1234, "sha256": "<64 hex>"}

Sorted lines make two manifests comparable with a streaming merge (diff and verify stay memory-flat),
and the same tree always gives the same bytes, so an unchanged tree has the same manifest digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelyard.core._paths import create_private, safe_child, safe_key
from modelyard.errors import IntegrityError, UnsafePathError, UsageError

# A file whose mtime or ctime is this close to the moment we read it may change again within the same
# timestamp tick without its stat changing ("racily clean", as git calls it): such files are hashed but
# not cached. Tests lower it; filesystems with coarse timestamps (FAT: 2 s) need at least this much.
RACY_NS = 1_000_000_000
CHUNK = 1024  # entries per stat-cache lookup / staging batch
_quote = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) quotes strings with


@dataclass(slots=True)
class Entry:
    """A regular file found by the walk: member name, absolute path and the stat that keys the cache."""

    name: str
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str = ""

    def key(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino)


def _entry(name: str, path: str, st: os.stat_result) -> Entry:
    return Entry(name, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _member(parent: str, name: str, shown: str) -> str:
    """The member name ``parent/name`` (``name`` alone at the top), validated: ``parent`` was validated
    when the walk entered it, so only the new segment is checked (see safe_child)."""
    try:
        key = safe_child(parent, name, what="dataset member name")
    except UnsafePathError as exc:
        raise UnsafePathError(
            f"{exc.message} (file {shown}); rename it or leave it out of the dataset"
        ) from None
    if key != (f"{parent}/{name}" if parent else name):  # NFC changed it
        raise UnsafePathError(
            f"dataset member {shown!r} is not in Unicode NFC form; rename it (e.g. with `convmv --nfc`)"
        )
    return key


def walk(root: Path) -> Iterator[Entry]:
    """Regular files under ``root`` (or ``root`` itself), sorted by member name, one directory listed at
    a time. Symlinks are refused, not followed: following one could read outside the tree."""
    root = Path(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise UsageError(f"{root} does not exist; give a file or directory to version") from None
    except OSError as exc:
        raise UsageError(f"cannot read {root}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{root} is a symbolic link; give the real path (links are not followed)")
    if stat.S_ISREG(st.st_mode):
        yield _entry(_member("", root.name, str(root)), str(root.absolute()), st)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{root} is not a regular file or directory")
    yield from _walk_dir(str(root.absolute()), "")


def _walk_dir(directory: str, parent: str) -> Iterator[Entry]:
    """Files below ``directory``, whose member name is ``parent`` ("" for the root)."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as exc:
        raise UsageError(f"cannot list {directory}: {exc.strerror or exc}") from None
    # Sorting names with '/' appended to directories makes a depth-first walk yield full member names in
    # code-point order, which is the manifest's order.
    keyed = []
    for e in entries:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        keyed.append((e.name + "/" if is_dir else e.name, is_dir, e))
    keyed.sort(key=lambda t: t[0])
    del entries
    lstat, s_isreg, s_islnk = os.lstat, stat.S_ISREG, stat.S_ISLNK
    for _, is_dir, e in keyed:
        name = _member(parent, e.name, e.path)
        path = e.path
        if is_dir:
            yield from _walk_dir(path, name)
            continue
        st = lstat(path)  # what DirEntry.stat(follow_symlinks=False) does, without its cache object
        mode = st.st_mode
        if not s_isreg(mode):
            if s_islnk(mode):
                raise UnsafePathError(
                    f"{path} is a symbolic link; links are not followed (they could point outside the "
                    "tree): replace it with the file or remove it"
                )
            raise UsageError(f"{path} is not a regular file (device, socket or pipe); remove it")
        yield Entry(name, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def chunked(items: Iterable[Entry], size: int = CHUNK) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- stat cache -----------------------------------------------------------------------------------------


class StatCache:
    """(absolute path, size, mtime_ns, ctime_ns, inode) -> sha256, in a private SQLite file.

    Like git's index: a hit needs every field to match, so a file whose stat changed is always re-hashed;
    ctime catches content rewritten with its old mtime restored (``cp -p``, ``touch -r``). ``hashed``
    counts the files hashed by this process, so tests can assert what was (not) re-read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(path)  # never opens an existing file: that would drop another cache's SQLite locks
        self.path = path
        self.hits = 0
        self.hashed = 0
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")  # a lost cache entry only costs a re-hash
            # Paths are keyed by their bytes (os.fsencode): a directory name that is not UTF-8 is a str
            # with surrogate escapes, which SQLite cannot store as TEXT. The older TEXT-keyed table is only
            # a cache.
            with contextlib.suppress(sqlite3.OperationalError):  # busy: dropped by a later open
                self._db.execute("DROP TABLE IF EXISTS stat")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS stat_b (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "ctime_ns INTEGER, ino INTEGER, sha256 TEXT)"
            )
        except BaseException:  # not a database, or no side files (WAL) in its folder: close what opened
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fill(self, entries: Sequence[Entry]) -> list[Entry]:
        """Set ``sha256`` on entries whose stat matches the cache; return the others (to be hashed)."""
        if not entries:
            return []
        fsencode = os.fsencode
        by_path = {fsencode(e.path): e for e in entries}
        # One range scan of the primary key per chunk: the chunk's rows lie between its smallest and
        # largest path (plus rows of files deleted since, which find no entry). Cheaper than IN (...) lists
        # of 400.
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, ino, sha256 FROM stat_b WHERE path BETWEEN ? AND ?",
            (min(by_path), max(by_path)),
        )
        for path, size, mtime_ns, ctime_ns, ino, sha in rows:
            e = by_path.get(path)
            if e is not None and e.key() == (size, mtime_ns, ctime_ns, ino):
                e.sha256 = sha
        missing = [e for e in entries if not e.sha256]
        self.hits += len(entries) - len(missing)
        return missing

    def store(self, entries: Sequence[Entry], read_from: int) -> None:
        """Remember digests of entries that were not racily clean (see RACY_NS) when read: ``read_from``
        is time.time_ns() from before the first of them was read. The clock now would be too late: a
        chunk can take longer than the window to seal."""
        limit = read_from - RACY_NS
        rows = [
            (os.fsencode(e.path), e.size, e.mtime_ns, e.ctime_ns, e.ino, e.sha256)
            for e in entries
            if e.sha256 and e.mtime_ns < limit and e.ctime_ns < limit
        ]
        if rows:
            with contextlib.suppress(sqlite3.OperationalError):  # a busy cache only costs re-hashing
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO stat_b VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What Entry.key() holds, of a stat result (an inode that is not a regular file has none)."""
    if not stat.S_ISREG(st.st_mode):
        return (-1, -1, -1, -1)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def restat(entry: Entry) -> bool:
    """True if the file still has the stat the walk saw (it did not change while we read it)."""
    try:
        st = os.lstat(entry.path)
    except OSError:
        return False
    return entry.key() == stat_key(st)


def hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


# -- manifest lines -------------------------------------------------------------------------------------


def line(entry: Entry) -> bytes:
    # Byte for byte what json.dumps({"path": ..., "size": ..., "sha256": ...}, ensure_ascii=False) gives
    # (the manifest digest of an unchanged tree must not change), at a third of its cost: the name is
    # quoted by json's own string encoder, size is an int and the digest is hex.
    return f'{{"path": {_quote(entry.name)}, "size": {entry.size:d}, "sha256": "{entry.sha256}"}}\n'.encode()


@dataclass(frozen=True, slots=True)
class Member:
    path: str
    size: int
    sha256: str


def parse_lines(chunks: Iterable[bytes]) -> Iterator[Member]:
    """Members of a stored manifest, streamed. The manifest was verified by its digest on read, but its
    names are still data: each passes safe_key, and order is checked because diff relies on it."""
    pending = b""
    previous = ""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if raw:
                m = _parse(raw)
                if m.path <= previous:
                    raise IntegrityError(f"manifest is not sorted by path at {m.path!r}")
                previous = m.path
                yield m
    if pending.strip():
        raise IntegrityError("manifest ends with an unterminated line")


def _parse(raw: bytes) -> Member:
    try:
        doc = json.loads(raw)
        member = Member(str(doc["path"]), int(doc["size"]), str(doc["sha256"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"manifest line is malformed: {exc}") from None
    safe_key(member.path, what="dataset member name")
    return member
