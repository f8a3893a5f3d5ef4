"""Sources read in place: a local directory's files by pread, an object-store prefix
(s3://bucket/prefix/, or any fsspec URL) by range requests, never staged on local disk.

A `Files` object is what seal needs from a source beyond its file list: read a range of a
file, read a safetensors header (two small range reads), and say at the end whether the file
is still the one listed. It pickles to what a worker needs to open the same files (a URL and
storage options; never a live filesystem: s3fs is not fork-safe, so each process makes its
own).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from weightvault.archive import sources
from weightvault.errors import CorruptData, InputError, StorageError
from weightvault.format.paths import check_relpath, check_unique

DEFAULT_MODE = 0o644  # an object has no mode; what a plain file would have
READ_BLOCK = 8 << 20  # one range request per this many bytes (two in memory per thread)


HEADER_READERS = 16  # safetensors headers read at once (two small range requests each)


def plans(files: list, files_io, target: int):
    """Each file's chunk plan, in order. An object store's headers are read HEADER_READERS at
    a time: 2,048 shards at 20-50 ms a request is 80-200 s one after another, 5-13 s so."""
    from weightvault.format import chunking

    def plan(f):
        return chunking.plan(f.abspath, f.size, target, files_io.read_at(f), name=f.path)

    if isinstance(files_io, LocalFiles) or len(files) < 2:
        return map(plan, files)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(HEADER_READERS, thread_name_prefix="weightvault-header") as pool:
        return list(pool.map(plan, files))


def is_url(spec: str) -> bool:
    """An fsspec URL that seal reads in place (hf:// is the Hub source, file:// a directory)."""
    scheme = urlparse(spec).scheme
    return "://" in spec and scheme not in ("", "file", "hf")


@dataclass(frozen=True)
class RemoteFile(sources.SourceFile):
    """A file of an object-store source. `abspath` is the fsspec path (no protocol); `tag`
    is what must be the same at the end of the seal: (ETag, version id, size, mtime)."""

    tag: tuple = ()


class LocalFiles:
    """Files on a local disk (the default source)."""

    def open(self, f: sources.SourceFile, start: int = 0, end: int | None = None) -> _LocalHandle:
        return _LocalHandle(f.abspath)

    def read_at(self, f: sources.SourceFile):
        return None  # chunking opens the local file itself

    def check_unchanged(self, f: sources.SourceFile, where: str) -> None:
        st = os.stat(f.abspath)
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            raise InputError(f"{where}: changed while it was being sealed; seal again")


class _LocalHandle:
    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        os.close(self.fd)


class FsspecFiles:
    """Files under an fsspec URL. The filesystem is made lazily in each process."""

    def __init__(self, url: str, options: dict, fs=None):
        self.url, self.options = url, dict(options)
        self._fs = fs  # the one that listed the source, in the process that listed it

    def __getstate__(self) -> dict:
        return {"url": self.url, "options": self.options, "_fs": None}

    @property
    def fs(self):
        if self._fs is None:
            self._fs = _filesystem(self.url, self.options)[0]
        return self._fs

    def open(self, f: sources.SourceFile, start: int = 0, end: int | None = None) -> _RemoteHandle:
        return _RemoteHandle(self, f, start, end)

    def read_range(self, f: sources.SourceFile, offset: int, n: int, what: str):
        """Bytes [offset, offset + n) of a file: on S3 a GET pinned to the listed ETag and
        version into a buffer of ours (storage.s3read), elsewhere fsspec's cat_file."""
        fs, path = self.fs, str(f.abspath)
        if hasattr(fs, "read_range"):
            etag, version = (getattr(f, "tag", None) or (None, None))[:2]
            return _guard(lambda: fs.read_range(path, offset, n, etag=etag, version=version,
                                                what=what), what)  # fmt: skip
        return _guard(lambda: fs.cat_file(path, start=offset, end=offset + n), what)

    def read_at(self, f: sources.SourceFile):
        def read(offset: int, n: int) -> bytes:
            return bytes(self.read_range(f, offset, n, self.describe(f)))

        return read

    def describe(self, f: sources.SourceFile) -> str:
        return f"{self.url.rstrip('/')}/{f.path}"

    def check_unchanged(self, f: sources.SourceFile, where: str) -> None:
        try:
            info = _guard(lambda: self.fs.info(str(f.abspath), refresh=True), where)
        except TypeError:  # a filesystem whose info() takes no refresh
            info = _guard(lambda: self.fs.info(str(f.abspath)), where)
        if not _same(_tag(info), f.tag):  # type: ignore[attr-defined]
            raise InputError(f"{where}: changed while it was being sealed (ETag, version or "
                             "size differs from when the seal began); seal again")  # fmt: skip


class _RemoteHandle:
    """Range reads of one byte range of an object: READ_BLOCK-sized range requests, the next
    one fetched on a helper thread while the caller encodes the current one (network and CPU
    overlap), served as views (no copy per piece)."""

    def __init__(self, files: FsspecFiles, f: sources.SourceFile, start: int = 0,
                 end: int | None = None):  # fmt: skip
        self.files, self.f = files, f
        self.what = files.describe(f)
        self.end = f.size if end is None else end
        self.buf, self.start = memoryview(b""), start
        self._next = None  # (offset, future) of the block being prefetched
        self._pool = None

    def _fetch(self, offset: int) -> bytes | memoryview:
        want = min(READ_BLOCK, max(self.end, offset + 1) - offset)
        return self.files.read_range(self.f, offset, want, self.what)

    def _prefetch(self, offset: int) -> None:
        if offset >= self.end:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="weightvault-prefetch")
        self._next = (offset, self._pool.submit(self._fetch, offset))

    def pread(self, n: int, offset: int) -> memoryview:
        """A read-only view (see pipeline.Emit): a block is never written after its read."""
        end = offset + n
        if not (self.start <= offset and end <= self.start + len(self.buf)):
            if self._next is not None and self._next[0] == offset:
                data = self._next[1].result()
            else:
                data = self._fetch(offset)
            self._next = None
            if len(data) < n:  # a piece across two blocks (a caller reading unaligned)
                data = bytes(data) + bytes(self._fetch(offset + len(data))[: n - len(data)])
            self.buf, self.start = memoryview(data).toreadonly(), offset
            self._prefetch(offset + len(data))
        i = offset - self.start
        return self.buf[i : i + n]

    def close(self) -> None:
        self.buf = memoryview(b"")
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _guard(fn, what: str):
    from weightvault.storage.remote import with_retries

    try:
        return with_retries(fn, what)
    except FileNotFoundError:
        raise InputError(f"{what}: source object not found (deleted while sealing?)") from None
    except OSError as e:
        raise StorageError(f"{what}: cannot read source ({e})") from None


def _filesystem(url: str, options: dict):
    """(filesystem, root path) of a source URL: an s3:// one through storage.s3read where its
    options allow (s3read.for_options)."""
    import fsspec

    opts = dict(options)
    if urlparse(url).scheme in ("s3", "s3a"):
        ep = opts.pop("endpoint_url", None)
        if ep:
            opts.setdefault("client_kwargs", {})["endpoint_url"] = ep
        opts.setdefault("config_kwargs", {}).setdefault("proxies", {})
        opts.setdefault("skip_instance_cache", True)
        from weightvault.storage import s3read

        fast = s3read.for_options(url, opts)
        if fast is not None:
            u = urlparse(url)
            return fast, f"{u.netloc}{u.path}"
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as e:
        raise InputError(f"{url}: unsupported source URL ({e})") from None


def _tag(info: dict) -> tuple:
    """What identifies one version of an object: ETag and version id where the store has
    them, else size and modification time."""
    t = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(t, "timestamp"):
        t = t.timestamp()
    etag = info.get("ETag") or info.get("etag")
    version = info.get("VersionId") or info.get("version_id")
    return (str(etag) if etag else None, str(version) if version else None,
            int(info.get("size") or 0), None if etag else t)  # fmt: skip


@dataclass
class RemoteSource(sources.Source):
    """A source in object storage, with how its files are read (`files_io`)."""

    files_io: FsspecFiles | None = None


def files_of(src: sources.Source):
    """How seal reads a source's files: range requests for an object store, else pread."""
    return getattr(src, "files_io", None) or LocalFiles()


def _same(now: tuple, then: tuple) -> bool:
    """Each part compared where both sides have it: a listing of a versioned bucket may give
    no version id where a HEAD does, and the size always counts."""
    return all(a == b for a, b in zip(now, then, strict=True) if a is not None and b is not None)


def resolve(url: str, options: dict, *, excludes: tuple[str, ...] = ()) -> RemoteSource:
    """Every object under `url` (a prefix, with or without its final /) as a source."""
    fs, root = _filesystem(url, options)
    root = root.rstrip("/")

    def find() -> dict:
        try:
            return fs.find(root, detail=True)
        except FileNotFoundError:
            return {}

    found = _guard(find, url)
    out: list[sources.SourceFile] = []
    for p, info in sorted(found.items()):
        if info.get("type") == "directory" or not p.startswith(root + "/"):
            continue
        rel = p[len(root) + 1 :]
        if rel in excludes or any(rel.startswith(e.rstrip("/") + "/") for e in excludes):
            continue
        try:
            check_relpath(rel, url)
        except CorruptData as e:
            raise InputError(str(e)) from None
        tag = _tag(info)
        mode = info.get("mode")
        mode = stat.S_IMODE(int(mode)) if isinstance(mode, int) else DEFAULT_MODE
        t = tag[3] or 0
        out.append(RemoteFile(rel, p, int(info.get("size") or 0), mode, int(t * 1e9),  # type: ignore[arg-type]
                              tag=tag))  # fmt: skip
    if not out:
        raise InputError(f"{url}: source is empty or not found (no objects under it)")
    try:
        check_unique([f.path for f in out], url)
    except CorruptData as e:
        raise InputError(str(e)) from None
    shown = url if url.endswith("/") else url + "/"
    return RemoteSource(out, {"kind": "local", "path": shown}, Path(root),
                        files_io=FsspecFiles(url, options, fs))
