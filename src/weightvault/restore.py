"""Restore: a trusted manifest -> every file rebuilt bit-exact in a new directory.

Files are written into a temporary sibling of the destination, checked chunk by chunk and as
whole files, then the directory is renamed into place: a failed restore leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .chunkio import decode_chunk
from .errors import Conflict, InputError, IntegrityError, StorageError
from .keys import PublicKey
from .pipeline import Emit, FileDigests, default_workers, lane_window, run
from .store import Store
from .vault import Bundle, Vault, object_key


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


def chunk_jobs(files: list[dict]) -> list[_Job]:
    jobs = []
    for i, f in enumerate(files):
        n = len(f["chunks"])
        jobs.extend(_Job(i, c, j == n - 1, n > 1) for j, c in enumerate(f["chunks"]))
    return jobs


def max_chunk(files: list[dict]) -> int:
    return max((c["length"] for f in files for c in f["chunks"]), default=1)


def file_digest_mismatches(files: list[dict], lane_digests: dict[int, str]):
    """(file, computed sha256) for every file whose whole-file digest is not the manifest's.
    Multi-chunk files are hashed by the lane; a one-chunk file's digest is its chunk's, checked
    when the chunk was decoded; an empty file's is SHA-256 of nothing."""
    for i, f in enumerate(files):
        if len(f["chunks"]) > 1:
            got = lane_digests.get(i)
        elif f["chunks"]:
            got = f["chunks"][0]["sha256"]
        else:
            got = hashlib.sha256(b"").hexdigest()
        if got != f["sha256"]:
            yield f, got


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
    from .unlock import Keys, prepare

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

                decode_chunk(
                    store, object_key(m.name, c["object"]), objects[c["object"]], c,
                    file_path=path, sink=sink, emit=emit if job.multi else None,
                    stored_digests=False,
                    # a big file's chunks are proven by the whole-file digest: one pass fewer
                    plaintext_digest=not job.multi, on_bytes=on_bytes,
                    cipher=opened.cipher(c["object"]) if opened else None,
                )  # fmt: skip
            finally:
                os.close(fd)

        lane = FileDigests()
        workers = workers or default_workers()
        run(chunk_jobs(files), work, lane=lane, needs_lane=lambda j: j.multi, workers=workers,
            window=lane_window(workers, max_chunk(files)))  # fmt: skip
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


def _locate(store: Store, m, files: list[dict], e: IntegrityError, opened) -> IntegrityError:
    """A whole file did not match: find and name the object at fault (the slow path)."""
    for f in files:
        if f["path"] in str(e) and len(f["chunks"]) > 1:
            for c in f["chunks"]:
                try:
                    decode_chunk(store, object_key(m.name, c["object"]), m.objects[c["object"]],
                                 c, file_path=f["path"], stored_digests=False,
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
