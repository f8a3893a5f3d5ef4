"""The log on a store: C2SP tiles and entry bundles under `log/`, signed checkpoints, the
write-once publication rule, verification of a whole copy, mirroring between replicas.

Write order (docs/FORMAT.md, the preservation log): entry bundles and tiles with exclusive
creates, then `log/checkpoints/<size>` (exclusive), then the writer's own state, then the
`log/checkpoint` pointer. Every object is content-determined by the tree, so a retry after a
crash rewrites identical bytes (Ed25519 signatures are deterministic) and an existing object
with other bytes means another writer won: the loser starts again on the new tree.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.errors import Conflict, CorruptData, IntegrityError, StorageError, TrustError
from weightvault.log import note, tlog
from weightvault.storage.store import Store

ROOT = "log"
CHECKPOINT = f"{ROOT}/checkpoint"
CHECKPOINTS = f"{ROOT}/checkpoints"
COSIGNED = f"{ROOT}/cosignatures"
MAX_STATEMENT = 4096  # an entry's bound (the format allows 65,535; ours are a few hundred bytes)
MAX_BUNDLE = tlog.WIDTH * (2 + MAX_STATEMENT)
MAX_TILE = tlog.WIDTH * tlog.HASH
RETRIES = 8


def origin_for(public: bytes) -> str:
    """A log's origin line and key name, derived from the log's public key, so a verifier
    given only the key knows which log it is checking."""
    import hashlib

    return "weightvault.log/" + hashlib.sha256(public).hexdigest()[:16]


def witness_name(public: bytes) -> str:
    import hashlib

    return "weightvault.witness/" + hashlib.sha256(public).hexdigest()[:16]


def log_verifier(public: bytes) -> note.Verifier:
    return note.Verifier(origin_for(public), public, note.ALG_ED25519)


def witness_verifier(public: bytes) -> note.Verifier:
    return note.Verifier(witness_name(public), public, note.ALG_COSIGN_ED25519)


def raw_signer(key) -> Callable[[bytes], bytes]:
    """Raw Ed25519 signing over a message (signed notes are not DSSE): the key's `sign_raw`."""
    fn = getattr(key, "sign_raw", None)
    if fn is not None:
        return fn
    raise TrustError(f"{getattr(key, 'source', 'key')}: this kind of key cannot sign log "
                     "checkpoints (no raw Ed25519 signing)")  # fmt: skip


@dataclass(frozen=True)
class Head:
    """A verified checkpoint and its exact signed bytes."""

    checkpoint: note.Checkpoint
    raw: bytes
    note: note.Note

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


def open_note(data: bytes, what: str, verifier: note.Verifier,
              witnesses: tuple[note.Verifier, ...] = ()) -> tuple[Head, dict]:  # fmt: skip
    """Parse a checkpoint and verify the log's signature (required) and any cosignatures by
    the given witnesses. Returns the head and {witness: timestamp} of valid cosignatures."""
    try:
        n = note.parse(data)
        cp = note.parse_checkpoint(n.text)
    except (note.NoteError, UnicodeDecodeError) as e:
        raise CorruptData(f"{what}: not a checkpoint ({e})") from None
    try:
        ok = n.verified_by([verifier, *witnesses])
    except note.NoteTrustError as e:
        raise TrustError(f"{what}: {e}") from None
    if verifier not in ok:
        names = ", ".join(f"{s.name} ({s.id.hex()})" for s in n.sigs)
        raise TrustError(f"{what}: signed by unknown key {names}; expected {verifier.name} "
                         f"({verifier.id.hex()})")  # fmt: skip
    if cp.origin != verifier.name:
        raise TrustError(f"{what}: checkpoint of log {cp.origin!r}, not {verifier.name!r}")
    return Head(cp, data, n), {w: ts for w, ts in ok.items() if w is not verifier}


class LogStore:
    """One copy of the log, under `log/` in a store."""

    def __init__(self, store: Store, verifier: note.Verifier):
        self.store, self.verifier = store, verifier
        self.tiles_read = 0

    def describe(self, key: str) -> str:
        return self.store.describe(key)

    # -- reading
    def _read(self, key: str, limit: int) -> bytes | None:
        try:
            return self.store.read_bytes(key, limit)
        except (FileNotFoundError, KeyError):
            return None
        except StorageError:
            if not self.store.exists(key):
                return None
            raise

    def head(self) -> Head | None:
        """The latest checkpoint, verified: the larger of the `log/checkpoint` pointer and the
        newest write-once `log/checkpoints/<size>` (a pointer left behind by a crash, or rolled
        back by whoever holds the storage, does not hide a published checkpoint; the two must be
        consistent). None for a log that was never written."""
        ptr = self._read(CHECKPOINT, note.MAX_NOTE)
        head = open_note(ptr, self.describe(CHECKPOINT), self.verifier)[0] if ptr else None
        sizes = self.checkpoint_sizes()
        if sizes and (head is None or sizes[-1] > head.size):
            key = f"{CHECKPOINTS}/{sizes[-1]}"
            data = self._read(key, note.MAX_NOTE)
            if data is not None:
                newest = open_note(data, self.describe(key), self.verifier)[0]
                if head is not None:
                    self.check_consistent(head, newest, self.describe(key))
                head = newest
        return head

    def checkpoint_sizes(self) -> list[int]:
        try:
            keys = self.store.list(CHECKPOINTS)
        except FileNotFoundError:
            return []
        sizes = []
        for k in keys:
            tail = k.rsplit("/", 1)[-1]
            if tail.isdigit() and len(tail) < 21:
                sizes.append(int(tail))
        return sorted(sizes)

    def checkpoint_at(self, size: int) -> Head | None:
        key = f"{CHECKPOINTS}/{size}"
        data = self._read(key, note.MAX_NOTE)
        return open_note(data, self.describe(key), self.verifier)[0] if data else None

    def tile(self, level: int, index: int, width: int) -> bytes:
        key = f"{ROOT}/{tlog.tile_path(level, index, width)}"
        data = self._read(key, MAX_TILE)
        if data is None and width < tlog.WIDTH:
            # a partial tile may be gone once the full one exists (tlog-tiles): use its prefix
            full = self._read(f"{ROOT}/{tlog.tile_path(level, index)}", MAX_TILE)
            data = full[: width * tlog.HASH] if full and len(full) == MAX_TILE else None
        if data is None:
            raise IntegrityError(f"{self.describe(key)}: tile missing")
        if len(data) != width * tlog.HASH:
            raise IntegrityError(f"{self.describe(key)}: {len(data)} bytes, not the "
                                 f"{width * tlog.HASH} of a tile of width {width}")  # fmt: skip
        self.tiles_read += 1
        return data

    def entries(self, index: int, width: int) -> list[bytes]:
        key = f"{ROOT}/{tlog.tile_path(-1, index, width)}"
        data, count = self._read(key, MAX_BUNDLE), width
        if data is None and width < tlog.WIDTH:  # pruned: the full bundle's first entries
            key = f"{ROOT}/{tlog.tile_path(-1, index)}"
            data, count = self._read(key, MAX_BUNDLE), tlog.WIDTH
        if data is None:
            raise IntegrityError(f"{self.describe(key)}: entry bundle missing")
        try:
            out = tlog.decode_bundle(data, count)[:width]
        except tlog.TreeError as e:
            raise IntegrityError(f"{self.describe(key)}: {e}") from None
        for i, e in enumerate(out):
            if len(e) > MAX_STATEMENT:
                raise IntegrityError(f"{self.describe(key)}: entry {index * tlog.WIDTH + i} is "
                                     f"{len(e)} bytes, over the {MAX_STATEMENT} allowed")  # fmt: skip
        return out

    def tree(self, size: int) -> tlog.Tree:
        return tlog.Tree(size, self.tile)

    def check_root(self, head: Head) -> tlog.Tree:
        tree = self.tree(head.size)
        try:
            root = tree.root()
        except tlog.TreeError as e:
            raise IntegrityError(f"{self.describe(ROOT)}: {e}") from None
        if root != head.root:
            raise IntegrityError(f"{self.describe(ROOT)}: the tiles do not hash to the root of "
                                 f"the checkpoint at tree size {head.size}")  # fmt: skip
        return tree

    def check_consistent(self, old: Head, new: Head, what: str) -> None:
        """`new` extends `old`, proved from this copy's tiles; else name both tree sizes."""
        if new.size < old.size:
            raise IntegrityError(f"{what}: tree size {new.size} goes backwards from "
                                 f"{old.size}")  # fmt: skip
        if new.size == old.size:
            if new.root != old.root:
                raise IntegrityError(f"{what}: two different trees of size {new.size} "
                                     "(the log forked)")  # fmt: skip
            return
        try:
            proof = self.tree(new.size).consistency(old.size)
        except tlog.TreeError as e:
            raise IntegrityError(f"{what}: {e}") from None
        if not tlog.verify_consistency(old.size, new.size, old.root, new.root, proof):
            raise IntegrityError(f"{what}: tree size {new.size} is not consistent with tree "
                                 f"size {old.size} (the log was rewritten)")  # fmt: skip

    def read_all(self, size: int) -> Iterator[bytes]:
        """Every entry of the tree, in order (each bundle checked against its level-0 tile)."""
        for level, index, width in tlog.tiles_for(size):
            if level:
                break
            hashes = tlog.split_hashes(self.tile(0, index, width), width)
            bundle = self.entries(index, width)
            for i, (e, h) in enumerate(zip(bundle, hashes, strict=True)):
                if tlog.leaf_hash(e) != h:
                    raise IntegrityError(
                        f"{self.describe(ROOT + '/' + tlog.tile_path(-1, index, width))}: "
                        f"entry {index * tlog.WIDTH + i} does not match its leaf hash")
            yield from bundle

    # -- writing
    def put_once(self, key: str, data: bytes) -> bool:
        """Exclusive create; True if the object now holds `data` (new, or the same bytes
        already there), False if another writer put other bytes there."""
        if self.store.put_bytes(key, data, exclusive=True):
            return True
        have = self._read(key, max(len(data), MAX_TILE, note.MAX_NOTE))
        return have == data

    def write_tiles(self, tiles: dict[str, bytes]) -> list[str]:
        """Exclusive creates; the keys where other bytes were already in place."""
        return [p for p, d in tiles.items() if not self.put_once(f"{ROOT}/{p}", d)]


@dataclass
class State:
    """The writer's (or a witness's) own record of the last checkpoint it signed or
    cosigned: the log it writes is never allowed to contradict it."""

    path: Path
    raw: bytes | None = field(default=None)

    @classmethod
    def load(cls, directory: Path | None, name: str) -> State | None:
        if directory is None:
            return None
        path = Path(directory) / "log" / name.replace("/", "_")
        try:
            return cls(path, path.read_bytes()[: note.MAX_NOTE + 1])
        except FileNotFoundError:
            return cls(path)

    def save(self, raw: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self.raw = raw


def append(log: LogStore, key, entries: list[bytes], state: State | None) -> Head:
    """Append `entries` in order and publish a checkpoint that covers them; returns it."""
    for e in entries:
        if len(e) > MAX_STATEMENT:
            raise CorruptData(f"log entry of {len(e)} bytes is over the {MAX_STATEMENT} allowed")
    sign_raw = raw_signer(key)
    public = key.public.raw
    if log_verifier(public) != log.verifier:
        raise TrustError("the signing key is not this log's key")
    with log.store.lock("log"):
        for _ in range(RETRIES):
            head = _append_once(log, sign_raw, public, entries, state)
            if head is not None:
                return head
    raise Conflict(f"{log.describe(ROOT)}: other writers kept extending the log; try again")


def _trusted_start(log: LogStore, state: State | None) -> Head | None:
    # Always the newest published checkpoint, not the pointer alone, even with a state: a
    # writer elsewhere may have published checkpoints/<size> and died before the pointer, and
    # starting from the pointer would overwrite tiles that checkpoint covers (a fork).
    head = log.head()
    if state is None or state.raw is None:
        return head
    mine = open_note(state.raw, str(state.path), log.verifier)[0]
    if head is None or head.size < mine.size:
        # a crash after publishing checkpoints/<size> and saving the state, before the pointer
        if log._read(f"{CHECKPOINTS}/{mine.size}", note.MAX_NOTE) == state.raw:
            return mine
        have = 0 if head is None else head.size
        raise IntegrityError(f"{log.describe(CHECKPOINT)}: tree size {have} is behind this "
                             f"writer's last signed checkpoint at tree size {mine.size} "
                             f"({state.path})")  # fmt: skip
    log.check_consistent(mine, head, log.describe(CHECKPOINT))
    return head


def _edge(log: LogStore, size: int) -> tuple[dict[int, list[bytes]], list[bytes]]:
    edge: dict[int, list[bytes]] = {}
    level = 0
    while size >> (tlog.TILE_H * level):
        n = size >> (tlog.TILE_H * level)
        w = n % tlog.WIDTH
        edge[level] = tlog.split_hashes(log.tile(level, n // tlog.WIDTH, w), w) if w else []
        level += 1
    w0 = size % tlog.WIDTH
    tail = log.entries(size // tlog.WIDTH, w0) if w0 else []
    return edge, tail


def _moved(a: Head | None, b: Head | None) -> bool:
    return (a.raw if a else None) != (b.raw if b else None)


def _append_once(log, sign_raw, public, entries, state) -> Head | None:
    head = _trusted_start(log, state)
    size = head.size if head else 0
    edge, tail = _edge(log, size)
    if head is not None and tlog.Tree(size, lambda lv, i, w: b"".join(edge[lv])).root() != head.root:
        raise IntegrityError(f"{log.describe(ROOT)}: the edge tiles do not hash to the root of "
                             f"the checkpoint at tree size {size}")  # fmt: skip
    leaves = [tlog.leaf_hash(e) for e in entries]
    new_edge, changed = tlog.extend(size, edge, leaves)
    new_size = size + len(entries)
    objects: dict[str, bytes] = {}
    pending = tail + list(entries)
    first = size - len(tail)
    for start in range(first, new_size, tlog.WIDTH):
        chunk = pending[start - first : start - first + tlog.WIDTH]
        objects[tlog.tile_path(-1, start // tlog.WIDTH, len(chunk))] = tlog.encode_bundle(chunk)
    for level, index, hashes in changed:
        objects[tlog.tile_path(level, index, len(hashes))] = b"".join(hashes)
    clashes = log.write_tiles(objects)
    if clashes:
        # Objects beyond the checkpoint are uncommitted: no signature covers them. Under this
        # machine's lock they are a crashed writer's leftovers; elsewhere they are leftovers
        # only if no checkpoint appeared meanwhile (else another writer won: start again).
        if not log.store.process_lock and _moved(log.head(), head):
            return None
        for p in clashes:
            log.store.put_bytes(f"{ROOT}/{p}", objects[p])
    root = tlog.Tree(new_size, lambda lv, i, w: b"".join(new_edge[lv])).root()
    cp = note.Checkpoint(log.verifier.name, new_size, root)
    text = cp.text()
    raw = note.Note(text, (note.sign(text, cp.origin, public, sign_raw),)).encode()
    key = f"{CHECKPOINTS}/{new_size}"
    if not log.put_once(key, raw):
        return None
    if log._read(key, note.MAX_NOTE) != raw:  # a store that lets a racing PUT overwrite
        return None
    new = Head(cp, raw, note.parse(raw))
    if state is not None:
        state.save(raw)
    log.store.put_bytes(CHECKPOINT, raw)
    prune_partials(log, [p for p in objects if ".p/" not in p])
    return new


def prune_partials(log: LogStore, full: list[str]) -> None:
    """Delete the partial tiles and entry bundles that a full one now holds (tlog-tiles
    allows it; a proof against an older checkpoint reads the full tile's prefix). Without
    this, a log appended one statement at a time stores each 256-entry bundle about 128 times.
    Best effort: a store that refuses deletes (Object Lock) just keeps them."""
    for path in full:
        prefix = f"{ROOT}/{path}.p"
        try:
            for key in log.store.list(prefix):
                log.store.delete(key)
            log.store.prune_dirs(prefix)
        except (StorageError, OSError, FileNotFoundError):
            continue
