"""Restore: a trusted manifest -> every file rebuilt bit-exact in a new directory.

Files are written into a temporary sibling of the destination, checked chunk by chunk and as
whole files, then the directory is renamed into place: a failed restore leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightvault.archive.pipeline import Emit, FileDigests, default_workers, run
from weightvault.errors import Conflict, InputError, IntegrityError, StorageError
from weightvault.format.codec import PIECE
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import chunk_digests
from weightvault.storage.chunkio import decode_chunk, drop_pages
from weightvault.storage.store import Store
from weightvault.storage.vault import Bundle, Vault, object_key


@dataclass
class RestoreResult:
    bundle: str
    name: str
    dest: str
    files: int
    bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class _Job:
    file: int
    chunk: dict
    last: bool
    multi: bool
    blake3: str | None = None  # the chunk's digest (format version 6), for a deep check


def chunk_jobs(files: list[dict]) -> list[_Job]:
    jobs = []
    for i, f in enumerate(files):
        n = len(f["chunks"])
        b3 = chunk_digests(f) or [None] * n
        jobs.extend(_Job(i, c, j == n - 1, n > 1, b3[j]) for j, c in enumerate(f["chunks"]))
    return jobs


def file_digest_mismatches(files: list[dict], lane_digests: dict[int, str]):
    """(file, computed sha256) for every file whose whole-file digest is not the manifest's.
    Multi-chunk files are hashed by the lane; a one-chunk file's digest was checked when its
    chunk was decoded (against the chunk's digest in versions 1 and 2, which must then be the
    file's); an empty file's is SHA-256 of nothing."""
    for i, f in enumerate(files):
        if len(f["chunks"]) > 1:
            got = lane_digests.get(i)
        elif f["chunks"]:
            got = f["chunks"][0].get("sha256", f["sha256"])
        else:
            got = hashlib.sha256(b"").hexdigest()
        if got != f["sha256"]:
            yield f, got


def chunk_digest(f: dict, c: dict) -> str | None:
    """What chunk `c` of file `f` must decode to: its own digest (versions 1 and 2) or, for
    a chunk that is the whole file, the file's; None if only the whole file can tell."""
    return c.get("sha256") or (f["sha256"] if len(f["chunks"]) == 1 else None)


def check_file_digests(files: list[dict], lane_digests: dict[int, str], what: str) -> None:
    for f, got in file_digest_mismatches(files, lane_digests):
        raise IntegrityError(f"{what}: {f['path']}: whole-file sha256 {got} differs from "
                             f"the manifest's {f['sha256']}")  # fmt: skip


def prepare_destination(dest: Path) -> Path:
    dest = Path(dest).absolute()
    if (dest.exists() or dest.is_symlink()) and (
        not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())
    ):
        raise Conflict(f"{dest}: destination exists and is not an empty directory")
    if not dest.parent.is_dir():
        raise InputError(f"{dest.parent}: parent directory of the destination does not exist")
    tmp = dest.parent / f".{dest.name}.weightvault-{secrets.token_hex(6)}.partial"
    try:
        tmp.mkdir()
    except OSError as e:
        raise InputError(f"{dest.parent}: cannot create the destination ({e.strerror})") from None
    return tmp


def restore(
    store: Store,
    ref: str,
    dest: Path,
    trusted: list[PublicKey],
    *,
    insecure: bool = False,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    bundle: Bundle | None = None,
    keys=None,
) -> RestoreResult:
    """`keys` (unlock.Keys): an age identity or shares, for an encrypted bundle."""
    from weightvault.custody.unlock import Keys, prepare

    t0 = time.monotonic()
    vault = Vault(store)
    bundle = bundle or vault.load(ref, trusted, insecure=insecure)
    m, opened = prepare(store, bundle, keys or Keys())
    files = m.files
    dest = Path(dest).absolute()
    tmp = prepare_destination(dest)
    if on_start:
        on_start(m.bytes_in)
    try:
        _guard_os(dest, lambda: _create_files(tmp, files))
        objects = m.objects

        def work(job: _Job, emit: Emit) -> None:
            c = job.chunk
            path = files[job.file]["path"]
            # one descriptor per chunk, not per file: a bundle may hold more files than the
            # process may open at once
            fd = _guard_os(dest, lambda: os.open(tmp / path, os.O_WRONLY), path)
            try:

                def sink(pos: int, data: bytes) -> None:
                    _guard_os(dest, lambda: _pwrite_all(fd, data, pos), path)
                    if job.multi:
                        emit((pos, len(data)), len(data))  # the lane reads it back from the file

                decode_chunk(
                    store, object_key(m, c["object"]), objects[c["object"]], c,
                    file_path=path, sink=sink, stored_digests=False,
                    # a big file's chunks are proven by the whole-file digest: one pass fewer
                    expect=None if job.multi else chunk_digest(files[job.file], c),
                    on_bytes=on_bytes,
                    cipher=opened.cipher(c["object"]) if opened else None,
                )  # fmt: skip
                _start_writeback(fd, c["offset"], c["length"])
            finally:
                os.close(fd)

        lane = _ReadBack(tmp, files, dest)
        workers = workers or default_workers()
        try:
            run(chunk_jobs(files), work, lane=lane, needs_lane=lambda j: j.multi,
                workers=workers)  # fmt: skip
        finally:
            lane.close()
        try:
            check_file_digests(files, lane.done, f"bundle {m.name}")
        except IntegrityError as e:
            raise _locate(store, m, files, e, opened) from None
        for f in files:
            _guard_os(dest, lambda f=f: _finish_file(tmp / f["path"], f["mode"]), f["path"])
        if dest.is_dir():
            dest.rmdir()  # empty, checked above; rename onto it needs it gone
        os.rename(tmp, dest)
    except BaseException:
        _remove_tree(tmp)
        raise
    return RestoreResult(m.bundle_id, m.name, str(dest), len(files), m.bytes_in,
                         round(time.monotonic() - t0, 3))  # fmt: skip


class _ReadBack(FileDigests):
    """Whole-file SHA-256 of the files as written. Workers hand the lane the (offset, length)
    of each piece once it is in the file, in file order; the lane reads it back (from the page
    cache) into one buffer it reuses. So the lane holds no plaintext (no copy of every piece
    into fresh memory, which costs more than the read) and what it proves is what the file
    holds. One descriptor at a time: the lane takes files in order.

    Once a chunk is hashed and (most likely) on disk, its pages are dropped from the page
    cache: a restore of a big model then recycles the same memory instead of pushing all else
    out of the cache, and on a VM whose host takes freed memory back, the first touch of fresh
    memory costs more than the write itself (writing 1 GiB: 0.5 s this way, 3 s without)."""

    def __init__(self, root: Path, files: list[dict], dest: Path):
        super().__init__()
        self.root, self.files, self.dest = root, files, dest
        self.fd: int | None = None
        self.fd_file = -1
        self.buf = memoryview(bytearray(PIECE))
        self.hashed: tuple[int, int] | None = None  # the chunk hashed before, to drop

    def piece(self, job, extent: tuple[int, int]) -> None:
        path = self.files[job.file]["path"]
        if self.fd_file != job.file:
            self.close()
            self.fd = _guard_os(self.dest, lambda: os.open(self.root / path, os.O_RDONLY), path)
            self.fd_file = job.file
        pos, n = extent
        while n:
            try:
                got = os.preadv(self.fd, [self.buf[: min(n, PIECE)]], pos)
            except OSError as e:
                raise StorageError(f"{self.dest}: cannot read back {path[:200]!r} "
                                   f"({e.strerror or e})") from None  # fmt: skip
            if not got:
                raise StorageError(f"{self.dest}: {path[:200]!r} is shorter than was written")
            super().piece(job, self.buf[:got])
            pos, n = pos + got, n - got

    def end(self, job) -> None:
        super().end(job)
        if self.hashed is not None:
            drop_pages(self.fd, *self.hashed)  # its writeback began a chunk ago
        self.hashed = (job.chunk["offset"], job.chunk["length"])
        if job.last:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self.fd_file, self.hashed = None, -1, None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a finished chunk to disk now (without waiting), so that the fsync at the
    end has little left to wait for: the disk works while the next chunks decode."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; errors: fsync reports


def _libc_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    f.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    f.restype = ctypes.c_int
    return f


_sync_file_range = _libc_sync_file_range()


def _locate(store: Store, m, files: list[dict], e: IntegrityError, opened) -> IntegrityError:
    """A whole file did not match: find and name the object at fault (the slow path). Its
    stored digests are checked too: version 3 has no chunk digests to tell which chunk."""
    for f in files:
        if f["path"] in str(e) and len(f["chunks"]) > 1:
            for c in f["chunks"]:
                try:
                    decode_chunk(store, object_key(m, c["object"]), m.objects[c["object"]],
                                 c, file_path=f["path"], expect=c.get("sha256"),
                                 cipher=opened.cipher(c["object"]) if opened else None)  # fmt: skip
                except IntegrityError as found:
                    return found
    return e


def _create_files(tmp: Path, files: list[dict]) -> None:
    made: set[Path] = {tmp}
    for f in files:
        target = tmp / f["path"]
        # parents one level at a time: a deep path must not recurse (Path.mkdir does)
        todo = []
        d = target.parent
        while d not in made:
            todo.append(d)
            d = d.parent
        for d in reversed(todo):
            d.mkdir(exist_ok=True)
            made.add(d)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, f["size"])
        finally:
            os.close(fd)


def _remove_tree(root: Path) -> None:
    """Best-effort delete without recursion: shutil.rmtree recurses once per level, and a
    bundle may nest its files deeper than the interpreter's recursion limit."""
    dirs, stack = [], [root]
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            for entry in os.scandir(d):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        except OSError:
            continue
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _finish_file(path: Path, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
        os.fchmod(fd, mode & 0o777)
    finally:
        os.close(fd)


def _guard_os(dest: Path, fn, path: str = ""):
    """Filesystem limits (name too long, file too large, disk full) as one clean line."""
    try:
        return fn()
    except OSError as e:
        where = f" {path[:200]!r}" if path else ""
        raise StorageError(f"{dest}: cannot write{where} ({e.strerror or e})") from None
