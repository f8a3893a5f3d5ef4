"""A vault's storage: named immutable objects on a local disk or any fsspec filesystem.

The store knows nothing about bundles. It offers what the commit protocol needs: atomic,
optionally exclusive puts; streaming reads; listings; and counters of bytes moved, so audits
can prove how much payload they read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from weightvault.errors import CorruptData, InputError, IntegrityError, StorageError

TMP = "tmp"  # vault-level scratch: outside every bag, so a crash never leaves a file in a bag
MAX_DEPTH = 64  # directory levels below a listed prefix; the layout needs fewer than 10
NOTED: list[str] = []  # every store's notes in this process, for the CLI to print once


class Counters:
    """Bytes moved through a store. `payload_read` counts only stored objects and record files
    (what an audit that claims to read no payload must not touch); `bytes_read` counts all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.payload_read = 0
        self.bytes_written = 0

    def add(self, read: int = 0, written: int = 0, payload: bool = False) -> None:
        with self._lock:
            self.bytes_read += read
            if payload:
                self.payload_read += read
            self.bytes_written += written


def is_payload(key: str) -> bool:
    return key.startswith("objects/") or "/data/objects/" in key or "/data/record/" in key


class _CountingReader(io.RawIOBase):
    """Counts bytes read; a read that fails half-way (a server gone, a disk error) becomes one
    StorageError naming the object, never a backend's own exception."""

    def __init__(self, f: BinaryIO, counters: Counters, key: str, what: str | None = None):
        self._f, self._c, self._payload = f, counters, is_payload(key)
        self._what = what or key

    def readable(self) -> bool:
        return True

    def _failed(self, e: Exception) -> StorageError:
        return StorageError(f"{self._what}: read failed ({str(e) or type(e).__name__})")

    def readinto(self, b) -> int:  # type: ignore[override]
        try:
            n = self._f.readinto(b)
        except (StorageError, CorruptData, IntegrityError):
            raise
        except Exception as e:  # noqa: BLE001 - every backend raises its own kinds
            raise self._failed(e) from None
        self._c.add(read=n or 0, payload=self._payload)
        return n

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._f.read(n)
        except (StorageError, CorruptData, IntegrityError):
            raise
        except Exception as e:  # noqa: BLE001
            raise self._failed(e) from None
        self._c.add(read=len(data), payload=self._payload)
        return data

    def close(self) -> None:
        self._f.close()
        super().close()


class ObjectWriter:
    """A new object being written under a temporary name; commit() gives it its final key."""

    def __init__(self, store: Store, f: BinaryIO, tmp_key: str):
        self.store, self._f, self.tmp_key = store, f, tmp_key
        self.size = 0
        self.done = False

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise self._failed(e) from None
        self.size += len(data)

    def _failed(self, e: OSError) -> StorageError:
        """A full or failing disk under the staged copy, as one line naming where."""
        why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        where = self.tmp_key if os.path.isabs(self.tmp_key) else self.store.describe(self.tmp_key)
        return StorageError(f"{where}: cannot write ({why})")

    def commit(self, key: str, *, exclusive: bool = False, sha256: str | None = None) -> bool:
        """Move into place. Returns False if `exclusive` and the key already existed. With
        `sha256`, the staged copy is read back (or checked by the server) and must match
        before it replaces anything."""
        try:
            self._f.flush()
        except OSError as e:
            raise self._failed(e) from None
        try:
            os.fsync(self._f.fileno())
        except (io.UnsupportedOperation, AttributeError):
            pass  # a remote file object: its close() is what makes it durable
        except OSError as e:
            # EINVAL: a file that cannot be synced (a pipe, some FUSE mounts); anything else
            # (EIO, ENOSPC on writeback) means the bytes may not be on disk: fail, never commit
            if e.errno != errno.EINVAL:
                raise self._failed(e) from None
        self._f.close()
        self.done = True
        self.store.counters.add(written=self.size)
        return self.store._finish(self.tmp_key, key, exclusive, sha256)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                self._f.close()
            self.store._discard(self.tmp_key)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class Store:
    url: str
    process_lock = False  # does lock() exclude other processes?

    def __init__(self) -> None:
        self.counters = Counters()
        self.notes: list[str] = []  # oddities met while listing, each said once

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
        if text not in NOTED:
            NOTED.append(text)

    # -- reading
    def open_read(self, key: str) -> BinaryIO:
        raise NotImplementedError

    def read_bytes(self, key: str, max_size: int) -> bytes:
        with self.open_read(key) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise CorruptData(f"{self.describe(key)}: larger than the {max_size} bytes allowed")
        return data

    def size(self, key: str) -> int | None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str) -> dict[str, int]:
        """Key -> size of every object under `prefix`/ (recursively); keys are relative to the
        vault root. A listing reads no payload."""
        raise NotImplementedError

    def list_dirs(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def iter_list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`/, in no promised order: list() for
        callers that move a large listing elsewhere as it comes (local, S3 and SFTP stores
        stream it, so the whole of it is never in memory at once). A key may come twice
        where a listing that cannot resume was retried part way (SFTP), never not at all."""
        yield from self.list(prefix).items()

    def list_times(self, prefix: str) -> dict[str, tuple[int, float | None]]:
        """Key -> (size, last-modified Unix time or None if the backend has none) of every
        object under `prefix`/ (for gc's grace period). A listing reads no payload."""
        return {k: (v, None) for k, v in self.list(prefix).items()}

    def iter_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """(key, size, last-modified time or None) of every object under `prefix`/: what
        list_times gives, streamed where the backend can (local, S3, SFTP), with iter_list's
        promises (no order; a key may come twice, never not at all). gc walks the pool with
        it: at 1 PB some 15 million objects, never held at once."""
        for k, (size, t) in self.list_times(prefix).items():
            yield k, size, t

    def prune_dirs(self, prefix: str) -> None:
        """Remove `prefix` and the directories under it that are empty (gc), where the
        backend has directories; never removes a file."""

    # -- writing
    def new_object(self) -> ObjectWriter:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> bool:
        w = self.new_object()
        try:
            w.write(data)
            return w.commit(key, exclusive=exclusive)
        finally:
            w.abort()

    def delete(self, key: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Mutual exclusion between processes on this machine, where the backend allows it."""
        yield

    @contextlib.contextmanager
    def pool_lock(self, *, shared: bool) -> Iterator[None]:
        """The object pool's readers-writer lock (FORMAT.md section 2.2): writers that may
        reuse a pooled object (seal, amend, replicate) hold it shared from deciding to reuse
        until they commit; gc holds it exclusive while it removes pool objects. Across
        processes on this machine where the backend allows it (`process_lock`)."""
        yield

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def ensure_created(self) -> None:
        """Make the store writable as a vault (its scratch area), if it is not yet."""

    def _finish(self, tmp_key: str, key: str, exclusive: bool, sha256: str | None) -> bool:
        raise NotImplementedError

    def _discard(self, tmp_key: str) -> None:
        raise NotImplementedError


class LocalStore(Store):
    process_lock = True

    def __init__(self, root: Path, *, create: bool = False):
        super().__init__()
        self.root = Path(root).absolute()
        self.url = str(self.root)
        if create:
            self.ensure_created()

    def ensure_created(self) -> None:
        if (self.root.is_dir() and not (self.root / TMP).is_dir()
                and not (self.root / "bundles").is_dir() and any(self.root.iterdir())):
            # a typo'd or wrong path must not turn someone's directory into a vault
            raise StorageError(f"{self.root}: not empty and not a weightvault vault; refusing "
                               "to create a vault inside it")  # fmt: skip
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{self.root}: cannot create vault ({e.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root}: vault is not writable")

    def _path(self, key: str) -> Path:
        return self.root / key

    def open_read(self, key: str) -> BinaryIO:
        p = self._path(key)
        try:
            # O_NONBLOCK: opening a FIFO planted in a vault must not wait for a writer
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise StorageError(f"{p}: missing") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptData(
                    f"{p}: is a symbolic link; a vault holds only regular files"
                ) from None
            raise StorageError(f"{p}: cannot read ({e.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptData(f"{p}: is not a regular file; a vault holds only regular files")
        os.set_blocking(fd, True)
        f = open(fd, "rb", buffering=0)  # noqa: SIM115 - handed to the caller
        reader = _CountingReader(f, self.counters, key, self.describe(key))
        return io.BufferedReader(reader, 1 << 20)

    def size(self, key: str) -> int | None:
        try:
            st = self._path(key).lstat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{self._path(key)}: cannot stat ({e.strerror})") from None
        return st.st_size

    def _scan(self, prefix: str) -> Iterator[tuple[str, os.DirEntry | None]]:
        """(directory, None) as each directory under `prefix` is entered, then (directory,
        entry) for each of its non-directory entries, as the directory is read: nothing is
        held but the directories still to visit, so a pool of millions of objects in one
        directory streams. An explicit stack: a tree thousands of levels deep planted in a
        vault must not exhaust Python's recursion (os.walk recurses on 3.11). Deeper than
        MAX_DEPTH is not a layout this tool writes: it is skipped and noted once."""
        stack = [(str(self._path(prefix)), 0)]
        while stack:
            d, depth = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                raise StorageError(f"{d}: cannot list ({e.strerror})") from None
            yield d, None
            with it:
                while True:
                    try:
                        e = next(it, None)
                    except OSError as err:
                        raise StorageError(f"{d}: cannot list ({err.strerror})") from None
                    if e is None:
                        break
                    if e.is_symlink() and e.is_dir():
                        continue  # as os.walk: neither a file nor followed (a vault has neither)
                    if e.is_dir(follow_symlinks=False):
                        if depth + 1 > MAX_DEPTH:
                            self.note(f"{e.path}: directories nested deeper than {MAX_DEPTH} "
                                      "levels; not a weightvault layout, skipped")  # fmt: skip
                        else:
                            stack.append((e.path, depth + 1))
                    else:
                        yield d, e

    def _stats(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """(key, lstat) of every file under `prefix`, streamed (one gone meanwhile: skipped)."""
        rel = ""
        for d, e in self._scan(prefix):
            if e is None:
                rel = Path(d).relative_to(self.root).as_posix()
                continue
            with contextlib.suppress(FileNotFoundError):
                yield f"{rel}/{e.name}", e.stat(follow_symlinks=False)

    def list(self, prefix: str) -> dict[str, int]:
        return dict(sorted((k, st.st_size) for k, st in self._stats(prefix)))

    def iter_list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Streamed as the directories are read (the pool is one directory: at 1 PB, about 15
        million entries, which list() would hold at once)."""
        for k, st in self._stats(prefix):
            yield k, st.st_size

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(prefix)) if e.is_dir())
        except FileNotFoundError:
            return []

    def list_times(self, prefix: str) -> dict[str, tuple[int, float | None]]:
        return dict(sorted((k, (size, t)) for k, size, t in self.iter_times(prefix)))

    def iter_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        for k, st in self._stats(prefix):
            yield k, st.st_size, st.st_mtime

    def prune_dirs(self, prefix: str) -> None:
        dirs = [d for d, e in self._scan(prefix) if e is None]
        for d in reversed(dirs):  # the deepest first: a parent empties once its children go
            with contextlib.suppress(OSError):  # not empty (or gone): leave it
                os.rmdir(d)

    def new_object(self) -> ObjectWriter:
        tmp_key = f"{TMP}/{secrets.token_hex(12)}.part"
        try:
            f = open(self._path(tmp_key), "xb")  # noqa: SIM115
        except FileNotFoundError:
            raise StorageError(
                f"{self.root}: not a weightvault vault (no {TMP}/ directory)"
            ) from None
        except OSError as e:
            raise StorageError(f"{self.root}: cannot write ({e.strerror})") from None
        return ObjectWriter(self, f, tmp_key)

    def _finish(self, tmp_key: str, key: str, exclusive: bool, sha256: str | None) -> bool:
        src, dst = self._path(tmp_key), self._path(key)
        if sha256 is not None:
            _check_readback(src, sha256, self.describe(key), lambda: src.unlink(missing_ok=True))
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                try:
                    os.link(src, dst)  # atomic create-if-absent, even across processes
                except FileExistsError:
                    return False
                finally:
                    src.unlink(missing_ok=True)
            else:
                os.replace(src, dst)
            _fsync_dir(dst.parent)
        except OSError as e:
            src.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{dst}: no space left on device") from None
            raise StorageError(f"{dst}: cannot write ({e.strerror})") from None
        return True

    def _discard(self, tmp_key: str) -> None:
        self._path(tmp_key).unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        # The holder removes the lock file before it unlocks, so none is left behind per
        # bundle. A waiter that then gets the lock of a removed file (or of an older one at the
        # same path) holds nothing anyone else will see: it checks, and tries again.
        path = self.root / TMP / f"{name}.lock"
        f, _ = _flock_live(path, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    @contextlib.contextmanager
    def pool_lock(self, *, shared: bool) -> Iterator[None]:
        # As lock(): a holder that created the file and finds itself the last holder removes
        # it (so a seal leaves none behind, and gc's dry run changes nothing), and a waiter
        # that then gets the lock of a removed file tries again.
        path = self.root / TMP / "pool.lock"
        f, created = _flock_live(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            try:
                if created:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else holds it
                    path.unlink(missing_ok=True)
            except BlockingIOError:
                pass
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def local_path(self, key: str) -> Path:
        return self._path(key)


def _flock_live(path: Path, mode: int):
    """(the open lock file at `path` locked with `mode`, whether this call created it). A
    holder removes the file before it unlocks, so a waiter may get the lock of a file no
    longer at `path`: it tries again until the file it locked is the one there."""
    while True:
        created = not path.exists()
        f = open(path, "a+b")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(f.fileno(), mode)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            mine = os.fstat(f.fileno())
        except BaseException:
            f.close()
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return f, created
        f.close()


def _check_readback(path, sha256: str, what: str, discard, opener=open) -> None:
    """Hash a staged copy as stored; a mismatch discards it, so a bad copy never replaces
    anything (nor lands where a good one was missing)."""
    h = hashlib.sha256()
    with opener(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    if h.hexdigest() != sha256:
        with contextlib.suppress(Exception):
            discard()
        raise IntegrityError(f"{what}: copy read back as sha256 {h.hexdigest()}, "
                             f"expected {sha256}; not committed")  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsspecStore(Store):
    """Any fsspec filesystem. Atomicity: temporary name then rename where the filesystem has a
    rename; exclusivity is best effort (exists-then-write) unless a subclass does better (SFTP
    does; S3 sends If-None-Match)."""

    def __init__(self, url: str, storage_options: dict | None = None, *, create: bool = False):
        super().__init__()
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            raise InputError(f"{url}: unsupported storage URL ({e})") from None
        self.root = self.root.rstrip("/")
        self._dirs: set[str] = set()
        if create:
            self.ensure_created()

    def ensure_created(self) -> None:
        self._makedirs(f"{self.root}/{TMP}")

    def _p(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _where(self, path: str) -> str:
        """A remote path as the store's URL names it (for messages)."""
        root = f"{self.root}/"
        return self.describe(path[len(root):]) if path.startswith(root) else path

    def _guard(self, fn, what: str):
        try:
            return fn()
        except FileNotFoundError:
            raise StorageError(f"{what}: missing") from None
        except PermissionError:
            raise StorageError(f"{what}: permission denied") from None
        except OSError as e:
            raise StorageError(f"{what}: {e}") from None

    def open_read(self, key: str) -> BinaryIO:
        f = self._guard(lambda: self.fs.open(self._p(key), "rb"), self.describe(key))
        reader = _CountingReader(f, self.counters, key, self.describe(key))
        return io.BufferedReader(reader, 1 << 20)

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.info(self._p(key))["size"])
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{self.describe(key)}: {e}") from None

    def _find(self, prefix: str) -> dict[str, dict]:
        """Every object under `prefix`/ with the backend's details (empty if none)."""

        def find() -> dict:
            try:
                return self.fs.find(self._p(prefix), detail=True)
            except FileNotFoundError:
                return {}

        return self._guard(find, self.describe(prefix))

    def list(self, prefix: str) -> dict[str, int]:
        n = len(self.root) + 1
        return {p[n:]: int(i.get("size") or 0) for p, i in sorted(self._find(prefix).items())}

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._p(prefix), detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )

    def list_times(self, prefix: str) -> dict[str, tuple[int, float | None]]:
        n = len(self.root) + 1
        out = {}
        for p, info in sorted(self._find(prefix).items()):
            t = info.get("mtime") or info.get("LastModified")  # sftp | s3
            if hasattr(t, "timestamp"):
                t = t.timestamp()
            out[p[n:]] = (int(info.get("size") or 0), float(t) if t is not None else None)
        return out

    def prune_dirs(self, prefix: str) -> None:
        def prune() -> None:
            try:
                found = self.fs.find(self._p(prefix), withdirs=True, detail=True)
            except FileNotFoundError:
                return
            dirs = [p for p, i in found.items() if i.get("type") == "directory"]
            for d in sorted(dirs, key=len, reverse=True) + [self._p(prefix)]:
                with contextlib.suppress(OSError):  # not empty: leave it
                    self.fs.rmdir(d)
            self._dirs = {d for d in self._dirs if not d.startswith(self._p(prefix))}

        self._guard(prune, self.describe(prefix))

    def new_object(self) -> ObjectWriter:
        import tempfile

        # Spool locally, then one upload: sftp writes through open() are very slow (FACTS.md).
        f = tempfile.NamedTemporaryFile(prefix="wv-", suffix=".part", delete=False)  # noqa: SIM115
        return ObjectWriter(self, f, f.name)

    def _finish(self, tmp_key: str, key: str, exclusive: bool, sha256: str | None) -> bool:
        try:
            if exclusive and self.exists(key):
                return False
            remote_tmp = self._p(f"{TMP}/{secrets.token_hex(12)}.part")
            target = self._p(key)
            self._makedirs(target.rsplit("/", 1)[0])
            self._guard(lambda: self.fs.put_file(tmp_key, remote_tmp), self.describe(key))
            if sha256 is not None:
                try:
                    _check_readback(remote_tmp, sha256, self.describe(key),
                                    lambda: self.fs.rm_file(remote_tmp),
                                    opener=self._readback_opener())  # fmt: skip
                except (StorageError, IntegrityError):
                    raise
                except Exception as e:  # noqa: BLE001 - the connection dropped mid-read
                    raise StorageError(f"{self.describe(key)}: reading the copy back failed "
                                       f"({str(e) or type(e).__name__})") from None  # fmt: skip
            if self._rename(remote_tmp, target, exclusive):
                return True
            with contextlib.suppress(Exception):
                self.fs.rm_file(remote_tmp)
            return False
        finally:
            os.unlink(tmp_key)

    def _rename(self, src: str, dst: str, exclusive: bool) -> bool:
        """Move a finished copy into place; False if `exclusive` and `dst` exists. Here that
        is only the exists check _finish made before uploading: a subclass whose protocol can
        refuse an existing target does better."""
        self._guard(lambda: self.fs.mv(src, dst), self._where(dst))
        return True

    def _makedirs(self, path: str) -> None:
        if path in self._dirs:
            return

        def mk() -> None:
            # level by level, tolerating a level that another worker creates at the same time
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                level = "/".join(parts[:i])
                if not level or level in self._dirs:
                    continue
                try:
                    self.fs.mkdir(level, create_parents=False)
                except (OSError, FileExistsError):
                    if not self.fs.isdir(level):
                        raise
                self._dirs.add(level)

        self._guard(mk, self._where(path))
        self._dirs.add(path)

    def _readback_opener(self):
        return self.fs.open

    def _discard(self, tmp_key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._p(key))
