"""Raw blob backends, chosen by URI scheme. They move already-encrypted bytes; no crypto here.

Names are validated with ``safe_key`` by every backend, so a hostile name is refused before any
filesystem or network call. ``list`` yields names in code-point order (the order S3 lists keys in)
and only names that ``safe_key`` accepts unchanged, so every listed name can be opened.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import mmap
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from modelyard.core._paths import private_dirs, safe_join, safe_key
from modelyard.core._redact import redact_url
from modelyard.errors import BackendError, NotFoundError, UnsafePathError, UsageError

# '~' as a leading segment is refused by safe_key, so no valid name can reach the staging area.
_STAGING = "~staging"
_READ_BUFFER = 1 << 20
# The names the artifact store generates for objects (objects/<d[:2]>/<digest>.<uuid hex>, and packs
# objects/pk/<uuid hex>): plain ASCII, so safe_key accepts them unchanged. FileBackend checks their parent
# directory once per process instead of resolving the whole path on every publish, which dominated
# publishing many small objects.
_OBJECT_NAME = re.compile(r"objects/(?:[0-9a-f]{2}/[0-9a-f]{64}\.[0-9a-f]{32}|pk/[0-9a-f]{32})")


def is_object_name(name: str) -> bool:
    """Whether ``name`` is one the artifact store generates for an object (``yard gc`` touches no other)."""
    return _OBJECT_NAME.fullmatch(name) is not None


class ObjectStat(NamedTuple):
    name: str
    size: int
    modified: datetime  # UTC


class Upload(NamedTuple):
    name: str
    upload_id: str
    started: datetime  # UTC


class BlobBackend(Protocol):
    """Where encrypted objects live. Names are relative POSIX keys accepted by ``safe_key``."""

    uri: str

    def put_file(self, name: str, path: Path, *, durable: bool = True) -> None:
        """Publish the local file ``path`` as ``name`` (atomically) and take ownership of it.

        ``durable=False`` skips the per-file flush; the caller must call :meth:`sync` before it records
        the object anywhere (batches pay one flush instead of two fsyncs per object)."""
        ...

    def sync(self) -> None:
        """Make every object published with ``durable=False`` durable."""
        ...

    def open(self, name: str) -> BinaryIO:
        """A streaming reader; NotFoundError if there is no such object."""
        ...

    def open_range(self, name: str, offset: int, length: int) -> BinaryIO:
        """A streaming reader of at most ``length`` bytes from ``offset`` (one blob inside a pack); it
        ends early where the object does, so a truncated pack reads as a truncated blob."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing name is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names starting with ``prefix`` (a plain string prefix, as in S3), in code-point order."""
        ...

    def list_stat(self, prefix: str = "") -> Iterator[ObjectStat]:
        """As :meth:`list`, with each object's size and last-modified time (UTC), from the listing."""
        ...

    def list_uploads(self, prefix: str = "") -> Iterator[Upload]:
        """Unfinished uploads of names starting with ``prefix`` (S3 multipart uploads): a writer killed
        mid-upload leaves one behind, stored (and billed) but never listed as an object."""
        ...

    def abort_upload(self, upload: Upload) -> None:
        """Drop an unfinished upload and its parts; one that has finished or gone meanwhile is not an error.
        A writer still uploading it fails and records nothing."""
        ...

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def read_bytes(self, name: str) -> bytes: ...

    def staging_dir(self) -> Path:
        """A local directory for temp files that are about to be passed to ``put_file``."""
        ...


def _check_prefix(prefix: str) -> str:
    # A prefix may end in '/' ("models/") or in part of a segment ("models/v"); the rest must be safe.
    if not prefix:
        return ""
    return safe_key(prefix.removesuffix("/"), what="prefix") + ("/" if prefix.endswith("/") else "")


def _is_canonical(name: str) -> bool:
    try:
        return safe_key(name) == name
    except UnsafePathError:
        return False


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    if directory and os.name == "nt":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding ``path``: one syncfs(2) instead of an fsync per file of a batch
    (the same trade `cp -r && sync` makes). Python's os module has no syncfs; elsewhere, os.sync()."""
    libc = _libc()
    if libc is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
            err = ctypes.get_errno()
        finally:
            os.close(fd)
        # Only "not supported" may fall back to sync(2), which cannot report errors; a write-back
        # failure (EIO) must fail the batch so that nothing is recorded as stored.
        if err != errno.ENOSYS:
            raise OSError(err, f"syncfs of {path} failed: {os.strerror(err)}")
    os.sync()


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "syncfs") else None
    except OSError:
        return None


# Staging writes go through two page-aligned buffers per thread, written in blocks of _ALIGN bytes by a
# small shared pool of I/O threads, so the thread that encrypts fills one buffer while the other is
# being written.
_ALIGN = 4096
_STAGING_BUFFER = 4 << 20
_staging_local = threading.local()
_io_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_io_pool_lock = threading.Lock()


def _staging_io() -> ThreadPoolExecutor:
    global _io_pool
    with _io_pool_lock:
        if _io_pool is None or _io_pool[0] != os.getpid():
            pool = ThreadPoolExecutor(max(2, os.cpu_count() or 1), thread_name_prefix="yard-staging-io")
            _io_pool = (os.getpid(), pool)
        return _io_pool[1]


def _copy(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src``; large copies from writable buffers run without the GIL (a memoryview slice
    assignment holds it: half a second per GiB in which no other thread could hash or encrypt)."""
    if len(src) >= 65536 and not src.readonly:
        ctypes.memmove(
            ctypes.addressof(ctypes.c_char.from_buffer(dst)),
            ctypes.addressof(ctypes.c_char.from_buffer(src)),
            len(src),
        )
    else:
        dst[:] = src


class StagingWriter:
    """Writes a new staging file through reused, page-aligned buffers, with ``O_DIRECT`` where asked for
    and the filesystem allows it.

    Why: on the benchmark VM, writing 1 GiB of ciphertext through the page cache cost 0.8-4 s of kernel
    time (allocating a page for every 4 KiB the guest had not touched lately) plus its write-back; with
    ``O_DIRECT`` the same bytes go from these buffers to the disk in 0.7 s of mostly idle waiting. That
    wait happens on an I/O thread while the caller fills the other buffer, so hashing and encryption
    do not stop for the disk. Durability is unchanged: the caller still flushes (fsync or syncfs)
    before anything records the file, which also commits its size and blocks. A filesystem that
    refuses direct I/O (``EINVAL``: tmpfs, odd block sizes) gets ordinary writes of the same bytes.
    The file's length is exact: the last block is written padded and the file truncated back."""

    def __init__(self, fd: int, *, direct: bool) -> None:
        self._fd = fd
        self._direct = False
        if direct and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
                self._direct = True
        # Buffers are kept per thread (fresh pages are what is slow here); a writer opened while another
        # is open in the same thread gets its own.
        self._shared = not getattr(_staging_local, "busy", False)
        if self._shared:
            if getattr(_staging_local, "buffers", None) is None:
                _staging_local.buffers = (mmap.mmap(-1, _STAGING_BUFFER), mmap.mmap(-1, _STAGING_BUFFER))
            _staging_local.busy = True
            maps = _staging_local.buffers
        else:
            maps = (mmap.mmap(-1, _STAGING_BUFFER), mmap.mmap(-1, _STAGING_BUFFER))
        self._bufs = [memoryview(maps[0]), memoryview(maps[1])]  # mmap memory is page-aligned
        self._buf = self._bufs[0]
        self._fill = 0  # bytes waiting in self._buf
        self._start = 0  # file offset of self._buf's first byte (a multiple of _ALIGN)
        self._pending: Future[None] | None = None  # the write of the other buffer
        self._closed = False

    def tell(self) -> int:
        return self._start + self._fill

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if view.itemsize != 1:
            view = view.cast("B")
        size = len(view)
        cap = len(self._buf)
        while view:
            take = min(len(view), cap - self._fill)
            _copy(self._buf[self._fill : self._fill + take], view[:take])
            self._advance(take)
            view = view[take:]
        return size

    def reserve(self, size: int) -> memoryview | None:
        """The next ``size`` bytes of the buffer, to be filled in place (encryption writes its output
        straight here, saving a copy) and then passed to :meth:`commit`; None if they do not fit."""
        if self._fill + size > len(self._buf):
            return None
        return self._buf[self._fill : self._fill + size]

    def commit(self, size: int) -> None:
        """Keep ``size`` bytes filled in through :meth:`reserve`."""
        if self._fill + size > len(self._buf):
            raise ValueError("commit of more bytes than were reserved")
        self._advance(size)

    def _advance(self, size: int) -> None:
        self._fill += size
        if self._fill == len(self._buf):
            self._wait()
            self._pending = _staging_io().submit(self._pwrite, self._buf, self._start)
            self._buf = self._bufs[1] if self._buf is self._bufs[0] else self._bufs[0]
            self._start += self._fill
            self._fill = 0

    def rewind(self, offset: int) -> bool:
        """Cut the file back to ``offset`` if those bytes are still in the buffer; False if not."""
        if offset < self._start or offset > self.tell():
            return False
        self._fill = offset - self._start
        return True

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _pwrite(self, view: memoryview, offset: int) -> None:
        while view:
            try:
                n = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                if not self._direct or exc.errno != errno.EINVAL:
                    raise
                # The filesystem took O_DIRECT at open but refuses these writes: write normally.
                fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self._direct = False
                continue
            view, offset = view[n:], offset + n

    def close(self) -> None:
        """Write what is buffered and set the file's exact length; closes the descriptor."""
        if self._closed:
            return
        try:
            self._wait()
            if self._fill:
                size = self.tell()
                padded = -(-self._fill // _ALIGN) * _ALIGN
                self._buf[self._fill : padded] = bytes(padded - self._fill)
                self._pwrite(self._buf[:padded], self._start)
                if padded != self._fill:
                    os.ftruncate(self._fd, size)
        finally:
            self._release()

    def _release(self) -> None:
        try:
            if self._pending is not None:  # never close the descriptor under a write in flight
                with contextlib.suppress(Exception):
                    self._pending.result()
                self._pending = None
        finally:
            self._closed = True
            os.close(self._fd)
            if self._shared:
                _staging_local.busy = False
            for buf in self._bufs:
                buf.release()

    def __enter__(self) -> StagingWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._release()  # the caller deletes the file; nothing more to write


class FileBackend:
    """Objects as files under a local root; publishing is a rename on one filesystem."""

    # Staging files are published by rename and never read back before that: write them with O_DIRECT.
    direct_staging = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()
        self._staging: Path | None = None
        self._staging_dev = -1
        self._checked_dirs: set[str] = set()  # object directories verified (no symlink) and created

    def __repr__(self) -> str:
        return f"FileBackend({self.uri!r})"

    @contextlib.contextmanager
    def _os_errors(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or exc
            raise BackendError(f"file store {self.uri}: cannot {action} {name!r}: {reason}") from exc

    def staging_dir(self) -> Path:
        staging = self.root / _STAGING
        if self._staging is None or not staging.is_dir():
            private_dirs(staging)
            self._staging_dev = os.stat(staging).st_dev
            self._staging = staging
        return staging

    def _object_dest(self, name: str) -> Path:
        """``safe_join`` with its checks done once per object directory for generated object names."""
        if not _OBJECT_NAME.fullmatch(name):
            return safe_join(self.root, name)
        parent = name[:10]  # "objects/xx"
        if parent not in self._checked_dirs:
            directory = safe_join(self.root, parent)
            with self._os_errors("publish", name):
                private_dirs(directory)
            safe_join(self.root, parent)  # still no symlink once it exists
            self._checked_dirs.add(parent)
        return self.root / name

    def put_file(self, name: str, path: Path, *, durable: bool = True) -> None:
        dest = self._object_dest(name)
        with self._os_errors("publish", name):
            staging = self.staging_dir()
            src = path
            if os.stat(path).st_dev != self._staging_dev:
                # Not on the store's filesystem: copy into staging so publishing is still one rename.
                fd, tmp = tempfile.mkstemp(dir=staging, suffix=".tmp")
                os.close(fd)
                shutil.copyfile(path, tmp)
                src = Path(tmp)
            if durable:
                _fsync_path(src)  # the data must be on disk before the rename makes it visible
            try:
                os.replace(src, dest)
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise
                private_dirs(dest.parent)  # created on first use (or removed by someone since)
                os.replace(src, dest)
            if durable:
                _fsync_path(dest.parent, directory=True)
            if src != path:
                path.unlink()

    def sync(self) -> None:
        with self._os_errors("sync", "."):
            sync_filesystem(self.root)

    def write_bytes(self, name: str, data: bytes) -> None:
        safe_join(self.root, name)  # refuse a bad name before creating anything
        with self._os_errors("write", name):
            fd, tmp = tempfile.mkstemp(dir=self.staging_dir(), suffix=".tmp")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                self.put_file(name, Path(tmp))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _open_fd(self, name: str) -> int:
        path = safe_join(self.root, name)
        with self._os_errors("open", name):
            try:
                # O_NOFOLLOW closes the gap between safe_join's symlink check and this open.
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFoundError(f"no object named {name!r} in {self.uri}") from None
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise NotFoundError(f"no object named {name!r} in {self.uri} ({name!r} is a directory)")
            return fd

    def open(self, name: str) -> BinaryIO:
        return os.fdopen(self._open_fd(name), "rb", buffering=_READ_BUFFER)

    def open_range(self, name: str, offset: int, length: int) -> BinaryIO:
        _check_range(offset, length)
        raw = os.fdopen(self._open_fd(name), "rb", buffering=0)
        with self._os_errors("open", name):
            try:
                raw.seek(offset)
            except BaseException:
                raw.close()
                raise
        return io.BufferedReader(_Limited(raw, length), buffer_size=min(_READ_BUFFER, max(length, 1)))

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return safe_join(self.root, name).is_file()

    def delete(self, name: str) -> None:
        path = safe_join(self.root, name)
        with self._os_errors("delete", name), contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()

    def list(self, prefix: str = "") -> Iterator[str]:
        for name, _ in self._entries(prefix):
            yield name

    def list_stat(self, prefix: str = "") -> Iterator[ObjectStat]:
        for name, entry in self._entries(prefix):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted since the directory was read
            yield ObjectStat(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list_uploads(self, prefix: str = "") -> Iterator[Upload]:
        _check_prefix(prefix)
        return iter(())  # a publish is one rename: an interrupted write leaves only a staging temp file

    def abort_upload(self, upload: Upload) -> None:
        return None

    def _entries(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        prefix = _check_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        start = safe_join(self.root, directory) if directory else self.root
        for name, entry in self._walk(start, f"{directory}/" if directory else ""):
            if name.startswith(prefix) and _is_canonical(name):
                yield name, entry

    def _walk(self, directory: Path, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sorting a directory by name+'/' for subdirectories makes a depth-first walk yield full
        # paths in code-point order without holding the whole listing in memory.
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if name != _STAGING:
                    yield from self._walk(Path(entry.path), name + "/")
            elif entry.is_file(follow_symlinks=False):
                yield name, entry


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 1:
        raise UsageError(f"invalid byte range: offset {offset}, length {length}")


class _Limited(io.RawIOBase):
    """At most ``length`` bytes of an unbuffered reader (positioned at the range's start)."""

    def __init__(self, raw: io.RawIOBase, length: int) -> None:
        self._raw = raw
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        n = self._raw.readinto(view[: min(len(view), self._left)]) or 0
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _S3Raw(io.RawIOBase):
    """Adapts a botocore StreamingBody to RawIOBase, so it can be buffered and closes the socket."""

    def __init__(self, body: Any, describe: Callable[[Exception], BackendError]) -> None:
        self._body = body
        self._describe = describe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self._body.read(len(buffer))
        except BotoCoreError as exc:
            raise self._describe(exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


# S3 stores stage in a temp directory of this name per backend, removed at exit (a killed process leaves its
# own behind: see core/_home.sweep_abandoned_staging).
S3_STAGING_PREFIX = "modelyard-s3-staging-"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3Backend:
    """Objects under ``prefix`` in an S3-compatible bucket; credentials come from boto3's usual chain."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None
    ) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise UsageError(
                f"invalid S3 bucket name {bucket!r}; expected 3-63 lowercase letters, digits, '.' or '-'"
            )
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = safe_key(prefix, what="S3 prefix") + "/" if prefix else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else _make_client(endpoint_url)
        self._staging: Path | None = None

    def __repr__(self) -> str:
        endpoint = None if self.endpoint_url is None else redact_url(self.endpoint_url)
        return f"S3Backend({self.uri!r}, endpoint_url={endpoint!r})"

    def _key(self, name: str) -> str:
        return self.prefix + safe_key(name)

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {redact_url(self.endpoint_url or 'the default AWS endpoint')}"

    def _describe(self, exc: Exception, action: str, name: str | None = None) -> BackendError | NotFoundError:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return BackendError(
                f"S3 {action} failed for {self._where()}: {redact_url(str(exc))}; check "
                "YARD_S3_ENDPOINT_URL, the network and the AWS credentials"
            )
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound") and name is not None:
            return NotFoundError(f"no object named {name!r} in {self.uri}")
        if code in ("NoSuchBucket", "404", "NotFound"):
            return BackendError(f"S3 {self._where()} does not exist; create it or fix the artifact URI")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return BackendError(
                f"access to S3 {self._where()} was denied ({code}); check the AWS credentials and the "
                "bucket policy"
            )
        message = f"{code} {error.get('Message', '')}".strip()
        return BackendError(f"S3 {action} failed for {self._where()}: {message}")

    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None = None) -> Iterator[None]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except S3UploadFailedError as exc:
            # upload_file wraps the ClientError it got in an exception that carries only text.
            cause = exc.__context__ if isinstance(exc.__context__, ClientError) else exc
            raise self._describe(cause, action) from exc
        except (BotoCoreError, ClientError) as exc:
            raise self._describe(exc, action, name) from exc

    def staging_dir(self) -> Path:
        if self._staging is None or not self._staging.is_dir():  # made again if swept as abandoned
            # Private (0700, unpredictable name) so other users of /tmp cannot plant files or links.
            self._staging = Path(tempfile.mkdtemp(prefix=S3_STAGING_PREFIX))
            weakref.finalize(self, shutil.rmtree, self._staging, ignore_errors=True)
        return self._staging

    def put_file(self, name: str, path: Path, *, durable: bool = True) -> None:
        key = self._key(name)  # an S3 upload is durable once it returns, so `durable` changes nothing
        with self._errors("upload", name):
            # Managed transfer: multipart and streamed from disk for large files; an object appears
            # only when the upload completes.
            self._client.upload_file(str(path), self.bucket, key)
        path.unlink()

    def sync(self) -> None:
        return None

    def write_bytes(self, name: str, data: bytes) -> None:
        key = self._key(name)
        with self._errors("write", name):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def open(self, name: str) -> BinaryIO:
        return self._get(name)

    def open_range(self, name: str, offset: int, length: int) -> BinaryIO:
        _check_range(offset, length)
        # A ranged GET: only the blob's bytes travel, whatever the size of its pack.
        return self._get(name, f"bytes={offset}-{offset + length - 1}")

    def _get(self, name: str, byte_range: str | None = None) -> BinaryIO:
        key = self._key(name)
        extra = {"Range": byte_range} if byte_range is not None else {}
        with self._errors("open", name):
            response = self._client.get_object(Bucket=self.bucket, Key=key, **extra)
        body = response["Body"]
        where = self._where()
        if byte_range is not None and not response.get("ContentRange"):
            # A server that ignores Range sends the whole pack: every blob in it would then fail
            # verification as if damaged. Name the real cause instead.
            body.close()
            raise BackendError(
                f"S3 {where} ignored the Range header reading {name!r}; packed blobs need an S3-compatible "
                "store that supports ranged GET"
            )
        raw = _S3Raw(
            body, lambda exc: BackendError(f"reading {name!r} from S3 {where} failed: {redact_url(str(exc))}")
        )
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            with self._errors("lookup", name):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except NotFoundError:
            # HEAD answers a bare 404 for a missing bucket too; tell the two apart so a misconfigured
            # store fails loudly instead of looking empty.
            with self._errors("lookup"):
                self._client.head_bucket(Bucket=self.bucket)
            return False
        return True

    def delete(self, name: str) -> None:
        key = self._key(name)
        with self._errors("delete", name):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str = "") -> Iterator[str]:
        for item in self.list_stat(prefix):
            yield item.name

    def list_stat(self, prefix: str = "") -> Iterator[ObjectStat]:
        full = self.prefix + _check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if _is_canonical(name):
                        modified = item["LastModified"].astimezone(UTC)
                        yield ObjectStat(name, int(item["Size"]), modified)

    def list_uploads(self, prefix: str = "") -> Iterator[Upload]:
        full = self.prefix + _check_prefix(prefix)
        paginator = self._client.get_paginator("list_multipart_uploads")
        with self._errors("list uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Uploads", []):
                    name = item["Key"][len(self.prefix) :]
                    if _is_canonical(name):
                        yield Upload(name, item["UploadId"], item["Initiated"].astimezone(UTC))

    def abort_upload(self, upload: Upload) -> None:
        from botocore.exceptions import ClientError

        key = self._key(upload.name)
        with self._errors("abort upload", upload.name):
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload.upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return  # completed or aborted since it was listed
                raise


def _make_client(endpoint_url: str | None) -> Any:
    try:
        import boto3
    except ImportError:
        raise UsageError("s3:// artifact stores need boto3: pip install 'modelyard[s3]'") from None
    return boto3.client("s3", endpoint_url=endpoint_url)


def _open_file(parts: SplitResult, uri: str, s3_endpoint_url: str | None) -> BlobBackend:
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not path.startswith("/"):
        raise UsageError(f"invalid file URI {redact_url(uri)!r}; expected file:///absolute/path")
    return FileBackend(Path(path))


def _open_s3(parts: SplitResult, uri: str, s3_endpoint_url: str | None) -> BlobBackend:
    if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        # No credentials in the URI: boto3 reads them from its usual chain (environment, profile, role).
        raise UsageError(
            f"invalid S3 URI {redact_url(uri)!r}; expected s3://bucket or s3://bucket/prefix (credentials "
            "come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or an AWS profile, not the URI)"
        )
    return S3Backend(parts.netloc, parts.path, endpoint_url=s3_endpoint_url)


# The registry that DESIGN.md section 4 asks for: the error for an unknown scheme lists these.
_SCHEMES: dict[str, Callable[[SplitResult, str, str | None], BlobBackend]] = {
    "file": _open_file,
    "s3": _open_s3,
}


def open_backend(uri: str, *, s3_endpoint_url: str | None = None) -> BlobBackend:
    """``file:///abs/path`` (or a bare absolute path) or ``s3://bucket/prefix``."""
    if uri.startswith("/"):
        return FileBackend(Path(uri))
    parts = urlsplit(uri)
    opener = _SCHEMES.get(parts.scheme)
    if opener is None:
        valid = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
        raise UsageError(
            f"unsupported artifact store URI {redact_url(uri)!r}; valid schemes are {valid} "
            "(e.g. file:///var/lib/yard/artifacts or s3://bucket/prefix)"
        )
    return opener(parts, uri, s3_endpoint_url)
