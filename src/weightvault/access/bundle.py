"""Reading a sealed bundle in place: file listing, byte ranges, safetensors tensors.

Nothing is restored to disk. A read decodes only the chunks its range overlaps; each chunk's
stored object is first copied privately and checked against its name (the SHA-256 of its
stored bytes, signed in the manifest) and decoded only then, so no byte leaves before the
object it came from has been proved. Whole chunks are also checked against their plaintext
digest where the manifest has one, and a read of a whole file against the file's digest:
the last piece is held back until the digest matches (docs/ACCESS.md).
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from weightvault.errors import CorruptData, InputError, IntegrityError, NotFound
from weightvault.format.chunking import ITEMSIZE, Tensor, parse_safetensors_header
from weightvault.format.keys import PublicKey
from weightvault.storage.chunkio import VerifiedObject, iter_verified
from weightvault.storage.store import Store
from weightvault.storage.vault import Bundle, Vault, object_key

# How far a streaming read decodes ahead of its consumer, in pieces of at most 4 MiB.
AHEAD = 4
# Verified object copies kept for the next read (unlinked temporary files, so the page cache
# holds them, not the process; objects up to 1 MiB in memory).
KEEP_OBJECTS = 4


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str
    mode: int


class BundleReader:
    """One trusted bundle, open for in-place reads. Thread-safe: every read has its own state.

    Built by `open_bundle` (or `from_bundle` for a Bundle already loaded and verified)."""

    def __init__(self, store: Store, bundle: Bundle, keys=None, *,
                 fetchers: ThreadPoolExecutor | None = None):  # fmt: skip
        from weightvault.custody.unlock import Keys, prepare

        self.store = store
        self.bundle = bundle
        self.manifest, self._unlocked = prepare(store, bundle, keys or Keys())
        self._files = {f["path"]: f for f in self.manifest.files}
        self._objects = self.manifest.objects
        self._fetchers = fetchers
        self._own_fetchers = False
        self._headers: dict[str, tuple[int, dict[str, Tensor]]] = {}
        # Files whose whole-file digest one full read has proved. Decoding is a function of
        # the stored bytes, and every read still proves each object against its name: a later
        # full read of the same file yields the same proved bytes, so it skips the rehash.
        self._proved: set[str] = set()
        self._kept: OrderedDict[str, VerifiedObject] = OrderedDict()
        self._lock = threading.Lock()

    # -- what the bundle holds
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def source(self) -> dict:
        return self.manifest.doc["source"]

    @property
    def signer(self) -> str | None:
        return self.bundle.signer.key_id if self.bundle.signer else None

    @property
    def encrypted(self) -> bool:
        return self._unlocked is not None

    def files(self) -> list[FileInfo]:
        return [FileInfo(f["path"], f["size"], f["sha256"], f["mode"]) for f in self.manifest.files]

    def file(self, path: str) -> FileInfo:
        f = self._entry(path)
        return FileInfo(f["path"], f["size"], f["sha256"], f["mode"])

    def _entry(self, path: str) -> dict:
        f = self._files.get(path)
        if f is None:
            raise NotFound(f"{path!r}: no such file in bundle {self.name}")
        return f

    # -- bytes
    def open(self, path: str) -> BundleFile:
        """A seekable, read-only binary file object over one file of the bundle."""
        return BundleFile(self, self._entry(path))

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.iter_range(path, start, end))

    def iter_range(self, path: str, start: int = 0, end: int | None = None, *,
                   ahead: bool = False) -> Iterator[bytes]:  # fmt: skip
        """Bytes [start, end) of `path`, in pieces, each chunk proved before any of its bytes
        is yielded (IntegrityError names the object otherwise). A range that is the whole file
        also proves the file's digest before its last piece. `ahead`: decode in a thread while
        the caller consumes, fetching the next chunk's object in parallel (for streaming out)."""
        f = self._entry(path)
        end = f["size"] if end is None else min(end, f["size"])
        if not 0 <= start <= end:
            raise InputError(f"{path}: bad range {start}..{end} of {f['size']} bytes")
        gen = self._pieces(f, start, end, ahead)
        if ahead:
            gen = _ahead(gen, AHEAD)
        if start == 0 and end == f["size"] and len(f["chunks"]) > 1 and path not in self._proved:
            gen = _check_whole(gen, f["sha256"], f"bundle {self.name}: {path}",
                               lambda: self._proved.add(path))  # fmt: skip
        return gen

    def _pieces(self, f: dict, start: int, end: int, ahead: bool) -> Iterator[bytes]:
        chunks = [c for c in f["chunks"]
                  if c["offset"] < end and c["offset"] + c["length"] > start]  # fmt: skip
        if not chunks:
            return
        from weightvault.archive.restore import chunk_digest

        pending: Future | None = None
        pool = self._pool() if ahead else None
        try:
            for i, c in enumerate(chunks):
                if pending is not None:
                    src = pending.result()
                    pending = None
                else:
                    src = self._fetch(c)
                with src:
                    if pool is not None and i + 1 < len(chunks):
                        pending = pool.submit(self._fetch, chunks[i + 1])
                    lo = max(start - c["offset"], 0)
                    hi = min(end - c["offset"], c["length"])
                    yield from iter_verified(
                        src, c, file_path=f["path"], start=lo, end=hi,
                        expect=chunk_digest(f, c),
                        cipher=self._unlocked.cipher(c["object"]) if self._unlocked else None)  # fmt: skip
        finally:
            if pending is not None:
                pending.add_done_callback(_close_result)

    def _fetch(self, c: dict) -> VerifiedObject:
        """A verified private copy of the object holding chunk `c` (the caller closes it).
        The last few are kept: a client reading a tensor in blocks (HfFileSystem asks for a few
        MiB at a time) then fetches and hashes each object once, not once per block."""
        name = c["object"]
        with self._lock:
            got = self._kept.get(name)
            if got is not None:
                self._kept.move_to_end(name)
                return got.share()
        obj = VerifiedObject(self.store, object_key(self.name, name), self._objects[name])
        evicted = []
        with self._lock:
            if name in self._kept:  # another reader fetched it meanwhile
                evicted.append(obj)
                obj = self._kept[name]
            else:
                self._kept[name] = obj
                while len(self._kept) > KEEP_OBJECTS:
                    evicted.append(self._kept.popitem(last=False)[1])
            obj.share()
        for old in evicted:
            old.close()
        return obj

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._fetchers is None:
                self._fetchers = ThreadPoolExecutor(2, thread_name_prefix="weightvault-fetch")
                self._own_fetchers = True
            return self._fetchers

    def close(self) -> None:
        with self._lock:
            kept, self._kept = list(self._kept.values()), OrderedDict()
        for obj in kept:
            obj.close()
        if self._own_fetchers and self._fetchers is not None:
            self._fetchers.shutdown(wait=True)
            self._fetchers = None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- safetensors
    def tensors(self, path: str) -> dict[str, Tensor]:
        """The tensors of a safetensors file, from its header (read and cached once)."""
        f = self._entry(path)
        with self._lock:
            got = self._headers.get(path)
        if got is None:
            with self.open(path) as fh:
                _base, ts = parse_safetensors_header(fh.read, f["size"],
                                                     f"bundle {self.name}: {path}", CorruptData)  # fmt: skip
            got = (_base, {t.name: t for t in ts})
            with self._lock:
                self._headers[path] = got
        return got[1]

    def tensor(self, path: str, name: str):
        """One tensor as a numpy array, reading only its bytes (the chunks they lie in).

        BF16 and the 8-bit float types need `ml_dtypes` (the dtypes numpy lacks); without it
        BF16 comes back as float32, which holds every bf16 value exactly."""
        import numpy as np

        t = self.tensors(path).get(name)
        if t is None:
            raise NotFound(f"{name!r}: no such tensor in {path} of bundle {self.name}")
        if t.shape is None:
            raise CorruptData(f"bundle {self.name}: {path}: tensor {name!r} has no valid shape")
        item = ITEMSIZE.get(t.dtype)
        count = 1
        for d in t.shape:
            count *= d
        if item is None or count * item != t.end - t.start:
            raise CorruptData(f"bundle {self.name}: {path}: tensor {name!r} ({t.dtype}, shape "
                              f"{list(t.shape)}) does not fill its {t.end - t.start} bytes")  # fmt: skip
        data = bytearray(self.read(path, t.start, t.end))
        dt, convert = _numpy_dtype(t.dtype)
        arr = np.frombuffer(data, dtype=dt).reshape(t.shape)
        return convert(arr) if convert else arr


class BundleFile(io.RawIOBase):
    """A read-only, seekable view of one file of a bundle. Each read decodes the chunks it
    overlaps; the last decoded chunk is kept so that small sequential reads stay cheap."""

    KEEP = 64 << 20  # the largest chunk kept decoded between reads

    def __init__(self, reader: BundleReader, entry: dict):
        super().__init__()
        self._r, self._f = reader, entry
        self.name = entry["path"]
        self.size = entry["size"]
        self._pos = 0
        self._kept: tuple[int, bytes] | None = None  # (file offset, plaintext of one chunk)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if self._pos >= end:
            return b""
        out = []
        pos = self._pos
        while pos < end:
            kept = self._chunk_at(pos)
            off, data = kept
            take = data[pos - off : end - off]
            out.append(take)
            pos += len(take)
        self._pos = end
        return b"".join(out)

    def _chunk_at(self, pos: int) -> tuple[int, bytes]:
        if self._kept and self._kept[0] <= pos < self._kept[0] + len(self._kept[1]):
            return self._kept
        c = next(c for c in self._f["chunks"] if c["offset"] <= pos < c["offset"] + c["length"])
        if c["length"] > self.KEEP:  # too big to keep: decode just what is asked, up to 4 MiB
            hi = min(c["offset"] + c["length"], pos + (4 << 20))
            return pos, self._r.read(self.name, pos, hi)
        self._kept = (c["offset"], self._r.read(self.name, c["offset"], c["offset"] + c["length"]))
        return self._kept

    def close(self) -> None:
        self._kept = None
        super().close()


def open_bundle(vault, ref: str, *, trust=(), keys=None, identities=(), shares=(),
                insecure: bool = False) -> BundleReader:  # fmt: skip
    """Open bundle `ref` (a name or a unique bundle id prefix) in `vault` (a Store, or a
    directory or URL) for in-place reads. Its manifest's signature is checked against `trust`
    (PublicKey objects or .pub files) before anything is listed; an encrypted bundle needs
    `identities` (age identity files) or `shares` (a quorum of share files), or `keys`."""
    from weightvault.custody.unlock import Keys

    store = vault if isinstance(vault, Store) else _open_store(str(vault))
    trusted = [k if isinstance(k, PublicKey) else _load_key(k) for k in trust]
    if keys is None:
        keys = Keys([Path(p) for p in identities], [Path(p) for p in shares])
    bundle = Vault(store).load(ref, trusted, insecure=insecure)
    return BundleReader(store, bundle, keys)


def _open_store(url: str) -> Store:
    from weightvault.storage.opener import open_store

    return open_store(url)


def _load_key(path) -> PublicKey:
    from weightvault.format.keys import load_public_key

    return load_public_key(Path(path))


def _numpy_dtype(dtype: str):
    import numpy as np

    plain = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16,
             "U16": np.uint16, "F16": np.float16, "I32": np.int32, "U32": np.uint32,
             "F32": np.float32, "I64": np.int64, "U64": np.uint64, "F64": np.float64}  # fmt: skip
    if dtype in plain:
        return np.dtype(plain[dtype]).newbyteorder("<"), None
    try:
        import ml_dtypes

        special = {"BF16": ml_dtypes.bfloat16, "F8_E5M2": ml_dtypes.float8_e5m2,
                   "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E8M0": ml_dtypes.float8_e8m0fnu}  # fmt: skip
        return np.dtype(special[dtype]), None
    except (ImportError, AttributeError, KeyError):
        pass
    if dtype == "BF16":  # the upper half of a float32: widen exactly
        return np.dtype("<u2"), lambda a: (a.astype("<u4") << 16).view("<f4")
    raise CorruptData(f"tensor dtype {dtype} needs ml_dtypes (pip install ml_dtypes)")


def _check_whole(gen: Iterator[bytes], sha256: str, what: str,
                 on_ok: Callable[[], None]) -> Iterator[bytes]:  # fmt: skip
    """Pass pieces through, holding the last one back until the whole file's SHA-256 is the
    manifest's: a read of a whole file never ends cleanly on wrong bytes."""
    h = hashlib.sha256()
    held = None
    try:
        for piece in gen:
            h.update(piece)
            if held is not None:
                yield held
            held = piece
    finally:
        close = getattr(gen, "close", None)
        if close:
            close()
    if h.hexdigest() != sha256:
        raise IntegrityError(f"{what}: whole-file sha256 {h.hexdigest()} differs from the "
                             f"manifest's {sha256}")  # fmt: skip
    on_ok()
    if held is not None:
        yield held


_END = object()


def _ahead(gen: Iterator[bytes], depth: int) -> Iterator[bytes]:
    """Run `gen` in its own thread, up to `depth` pieces ahead of the consumer. Closing the
    consumer stops the producer at its next piece."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for piece in gen:
                while not stop.is_set():
                    try:
                        q.put(bytes(piece), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            q.put((_END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((_END, e))
        finally:
            gen.close()

    t = threading.Thread(target=produce, name="weightvault-decode", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, tuple) and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


def _close_result(fut: Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
