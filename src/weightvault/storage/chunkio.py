"""Reading stored objects back: stored digests, bounded decode, plaintext digest.

One routine serves restore, verify --deep and (later) audits, so every reader applies the same
checks and names a failure the same way: bundle, object, file and offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from weightvault.errors import CorruptData, IntegrityError, StorageError
from weightvault.format import codec, fixity
from weightvault.format.fixity import Fixity
from weightvault.storage.store import Store


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | damaged | size | extra | tag | file
    where: str  # the object, file or tag file concerned
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "where": self.where, "detail": self.detail}


class _HashingReader:
    def __init__(self, f, want_digests: bool, obj: dict):
        self.f = f
        self.fixity = Fixity.like(obj) if want_digests else None

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if self.fixity is not None:
            self.fixity.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def check_object(store: Store, key: str, obj: dict) -> None:
    """Hash one stored object (no decoding): size, sha256 (its name) and, in format versions 1
    and 2, sha512."""
    where = store.describe(key)
    f = _open(store, key, obj)
    with f:
        r = _HashingReader(f, True, obj)
        r.drain()
    _compare_stored(r, obj, where)


def decode_chunk(
    store: Store,
    key: str,
    obj: dict,
    chunk: dict,
    *,
    file_path: str,
    sink: Callable[[int, bytes], None] | None = None,
    emit: Callable[[bytes], None] | None = None,
    stored_digests: bool = True,
    expect: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cipher: Callable[[Callable[[int], bytes], int], object] | None = None,
    blake3: str | None = None,
) -> None:
    """Decode one chunk; raise IntegrityError naming the object and the file range it holds.
    `expect`: the SHA-256 the decoded bytes must have (the chunk's own in format versions 1
    and 2, or its file's when the chunk is the whole file), None to leave the check to a
    whole-file digest computed elsewhere.
    `cipher(read, stored_size)` opens an encrypted object (unlock.Unlocked.cipher).
    `blake3`: the BLAKE3 the decoded bytes must have (format version 6's chunk digest), as a
    deep verify checks it: restore leaves it out, the file's SHA-256 proving every byte.
    `sink` and `emit` get each piece for the time of the call only (it may be a view of a
    buffer that the next piece overwrites): they write, hash or copy it, never keep it."""
    where = store.describe(key)
    span = f"{file_path} bytes {chunk['offset']}..{chunk['offset'] + chunk['length']}"
    f = _open(store, key, obj)
    h = hashlib.sha256() if expect is not None else None
    b3 = fixity.chunk_digest() if blake3 is not None else None
    pos = chunk["offset"]
    with f:
        r = _HashingReader(f, stored_digests, obj)
        try:
            for data in iter_plain(r.read, obj, chunk, cipher, reuse=True):
                if h is not None:
                    h.update(data)
                if b3 is not None:
                    b3.update(data)
                if sink:
                    sink(pos, data)
                if emit:
                    emit(data)
                if on_bytes:
                    on_bytes(len(data))
                pos += len(data)
            if stored_digests:
                r.drain()
        except CorruptData as e:
            if stored_digests:
                r.drain()
                _compare_stored(r, obj, where)  # a digest mismatch is the clearer report
            raise IntegrityError(f"{where}: cannot be decoded ({e}); it holds {span}") from None
    if stored_digests:
        _compare_stored(r, obj, where)
    if b3 is not None and b3.hexdigest() != blake3:
        raise IntegrityError(f"{where}: decodes to blake3 {b3.hexdigest()}, the manifest's "
                             f"chunks_blake3 says {blake3} ({span})")  # fmt: skip
    if h is None:
        return
    got = h.hexdigest()
    if got != expect:
        raise IntegrityError(
            f"{where}: decodes to sha256 {got}, expected {expect} ({span})"
        )


def iter_plain(read: Callable[[int], bytes], obj: dict, chunk: dict, cipher=None, *,
               reuse: bool = False) -> Iterator[bytes | memoryview]:
    """A chunk's plaintext from its stored bytes (`read`): decrypted if `cipher`, decoded by
    its codec; raises CorruptData. The one decoder every reader shares."""
    opened = cipher(read, obj["size"]) if cipher else None
    yield from codec.iter_decode(chunk["codec"], opened.read if opened else read,
                                 chunk["length"], reuse=reuse)  # fmt: skip
    if opened:
        opened.finish()


def trial_decode(store: Store, key: str, obj: dict, chunk: dict, source: Iterator[bytes],
                 cipher=None) -> tuple[str, str]:
    """Whether a stored object decodes to exactly the bytes `source` yields (a chunk of a new
    version compared with the previous version's chunk at the same place): ("same", "") only
    when it does AND the stored bytes match `obj`'s size and name (SHA-256), as every reader
    checks them; ("differs", "") when it decodes to other bytes (`source` is not consumed past
    the first difference); ("absent", why) when the store has no such object; ("damaged", why)
    when its stored bytes do not match `obj` or do not decode. Decodes with `iter_plain`, the
    decoder restore uses, one piece at a time. The stored bytes are hashed to the end either
    way: damage that decodes to other bytes looks like a changed chunk until then."""
    try:
        f = store.open_read(key)
    except StorageError:
        return "absent", f"{store.describe(key)}: missing"
    with f:
        r = _HashingReader(f, True, obj)
        try:
            same = _same_plain(iter_plain(r.read, obj, chunk, cipher, reuse=True), source)
        except CorruptData as e:
            return "damaged", f"{store.describe(key)}: cannot be decoded ({e})"
        r.drain()
    diff = r.fixity.difference(obj["size"], obj["name"], obj.get("sha512"))
    if diff is not None:
        return "damaged", _stored_problem(diff, store.describe(key))
    return ("same" if same else "differs"), ""


def _same_plain(plain: Iterator, source: Iterator[bytes]) -> bool:
    """Whether two streams of pieces hold the same bytes (cut anywhere); stops at the first
    difference. `plain`'s pieces may be reused buffers: each is compared before the next."""
    plain = (p for p in plain if len(p))
    pend = memoryview(b"")
    for buf in source:
        at = 0
        while at < len(buf):
            if not pend:
                pend = memoryview(next(plain, b""))
                if not pend:
                    return False
            k = min(len(pend), len(buf) - at)
            # bytes == bytes is a memcmp; comparing memoryviews goes element by element
            if bytes(pend[:k]) != (buf if k == len(buf) else buf[at : at + k]):
                return False
            pend, at = pend[k:], at + k
    return not pend and next(plain, None) is None


class VerifiedObject:
    """A private copy of one stored object whose size and stored digests (its name: SHA-256
    of the stored bytes, and SHA-512 where the format has it) matched the signed manifest.

    Read from the store once, into an anonymous temporary file (small objects stay in
    memory), so that nothing a store can change afterwards reaches a reader, and the page
    cache, not the process, holds the bytes. Readers take positioned reads: several may share
    one copy."""

    SPOOL_IN_MEMORY = 1 << 20

    def __init__(self, store: Store, key: str, obj: dict, spool_dir: str | None = None):
        self.key, self.obj, self.where = key, obj, store.describe(key)
        self.size = obj["size"]
        self._mem: bytes | None = None
        self._fd: int | None = None
        self._refs = 1  # close() releases one; the copy goes with the last
        self._lock = threading.Lock()
        f = _open(store, key, obj)
        fix = Fixity.like(obj)
        with f:
            if obj["size"] <= self.SPOOL_IN_MEMORY:
                parts = []
                while fix.size <= obj["size"] and (data := f.read(obj["size"] + 1 - fix.size)):
                    fix.update(data)
                    parts.append(data)
                self._mem = b"".join(parts)
            else:
                import tempfile

                with tempfile.TemporaryFile(dir=spool_dir) as tmp:  # unlinked, 0600
                    while data := f.read(PIECE_READ):
                        fix.update(data)
                        tmp.write(data)
                        if fix.size > obj["size"]:
                            break  # longer than declared: no need to copy the rest
                    tmp.flush()
                    self._fd = os.dup(tmp.fileno())
        diff = fix.difference(obj["size"], obj["name"], obj.get("sha512"))
        if diff is not None:
            self.close()
            _raise_stored(diff, self.where)

    def reader(self) -> Callable[[int], bytes]:
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            n = max(0, min(n, self.size - pos))
            if self._mem is not None:
                data = self._mem[pos : pos + n]
            else:
                data = os.pread(self._fd, n, pos) if n else b""
            pos += len(data)
            return data

        return read

    def share(self) -> VerifiedObject:
        """One more holder of this copy (each calls close() once)."""
        with self._lock:
            if self._refs <= 0:
                raise ValueError(f"{self.where}: the verified copy was released")
            self._refs += 1
        return self

    def close(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._mem = None

    def __enter__(self) -> VerifiedObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PIECE_READ = 1 << 20


def iter_verified(src: VerifiedObject, chunk: dict, *, file_path: str, cipher=None,
                  start: int = 0, end: int | None = None,
                  expect: str | None = None) -> Iterator[bytes | memoryview]:  # fmt: skip
    """Plaintext bytes [start, end) of `chunk` (offsets within the chunk) from a verified
    stored object, decoding no further than `end`. When the whole chunk is read and `expect`
    (the SHA-256 it must decode to) is given, the last piece is held back until the digest
    matches: a mismatch raises IntegrityError before the final bytes leave."""
    length = chunk["length"]
    end = length if end is None else end
    span = f"{file_path} bytes {chunk['offset']}..{chunk['offset'] + length}"
    h = hashlib.sha256() if expect is not None and start == 0 and end == length else None
    held = None
    pos = 0
    try:
        for data in iter_plain(src.reader(), src.obj, chunk, cipher):
            n = len(data)
            if h is not None:
                h.update(data)
            if pos + n > start:
                piece = data[max(0, start - pos) : min(n, end - pos)]
                if h is None:
                    yield piece
                else:
                    if held is not None:
                        yield held
                    held = piece
            pos += n
            if pos >= end and h is None:
                return
    except CorruptData as e:
        raise IntegrityError(f"{src.where}: cannot be decoded ({e}); it holds {span}") from None
    if h is not None:
        got = h.hexdigest()
        if got != expect:
            raise IntegrityError(f"{src.where}: decodes to sha256 {got[:16]}..., expected "
                                 f"{expect[:16]}... ({span})")  # fmt: skip
        if held is not None:
            yield held


def drop_pages(fd: int, offset: int = 0, length: int = 0) -> None:
    """Drop a written file range's clean pages from the page cache (length 0: to the end).
    Dirty pages stay (they are written out first): it never loses data, it only lets a big
    write recycle the memory of what it already wrote instead of taking fresh memory, which
    on a VM whose host reclaims freed guest memory costs more than the write itself."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def drop_cached(store: Store, key: str) -> None:
    """drop_pages for a committed (fsynced, so clean) object of a local store."""
    local = getattr(store, "local_path", None)
    if local is None or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(local(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        drop_pages(fd)
    finally:
        os.close(fd)


def _open(store: Store, key: str, obj: dict):
    try:
        return store.open_read(key)
    except StorageError:
        if store.size(key) is None:
            raise IntegrityError(f"{store.describe(key)}: missing") from None
        raise


def _compare_stored(r: _HashingReader, obj: dict, where: str) -> None:
    diff = r.fixity.difference(obj["size"], obj["name"], obj.get("sha512"))
    if diff is not None:
        _raise_stored(diff, where)


def _raise_stored(diff: tuple, where: str) -> None:
    raise IntegrityError(_stored_problem(diff, where))


def _stored_problem(diff: tuple, where: str) -> str:
    what, got, want = diff
    if what == "size":
        return f"{where}: {got} bytes stored, expected {want}"
    if what == "sha256":
        return f"{where}: sha256 of stored bytes is {got}, expected {want}"
    return f"{where}: sha512 of stored bytes does not match the manifest"
