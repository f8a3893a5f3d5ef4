"""Checking a whole copy of the log, cosigning it as a witness, and tlog-proof files."""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field

from weightvault.errors import CorruptData, IntegrityError, StorageError, TrustError
from weightvault.log import note, tlog
from weightvault.log.store import (
    COSIGNED,
    ROOT,
    Head,
    LogStore,
    State,
    open_note,
    raw_signer,
    witness_name,
    witness_verifier,
)

PROOF_HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF = 1 << 17


@dataclass
class Report:
    origin: str
    size: int
    root: str
    entries: int = 0
    tiles: int = 0
    checkpoints: int = 0
    cosignatures: dict[str, int] = field(default_factory=dict)  # witness name -> newest size
    uncommitted: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _parse_tile_key(rel: str) -> tuple[int, int, int] | None:
    """`tile/<L>/<N>[.p/<W>]` (L = -1 for entries) -> (L, N, W), or None if not a tile path."""
    parts = rel.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        return None
    level = -1 if parts[1] == "entries" else (int(parts[1]) if parts[1].isdigit() else None)
    if level is None or level > 63:
        return None
    rest, width = parts[2:], tlog.WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p") and rest[-1].isdigit():
        width = int(rest[-1])
        rest = rest[:-2] + [rest[-2][:-2]]
    n = 0
    for i, p in enumerate(rest):
        digits = p[1:] if i < len(rest) - 1 and p.startswith("x") else p
        if len(digits) != 3 or not digits.isdigit() or (i < len(rest) - 1) != p.startswith("x"):
            return None
        n = n * 1000 + int(digits)
    if not 0 < width <= tlog.WIDTH or tlog.tile_path(level, n, width) != rel:
        return None
    return level, n, width


def verify(log: LogStore, witnesses: tuple[note.Verifier, ...] = (),
           trusted: Head | None = None, check_entry=None) -> Report:  # fmt: skip
    """Everything: every entry against its leaf hash, every stored tile against the tiles
    recomputed from the entries, the root against the checkpoint, every published checkpoint
    and cosignature for consistency with the newest. `trusted`: a checkpoint seen before (the
    log must extend it)."""
    head = log.head()
    if head is None:
        raise IntegrityError(f"{log.describe(ROOT)}: no checkpoint (not a log, or it was "
                             "deleted)")  # fmt: skip
    rep = Report(head.checkpoint.origin, head.size, base64.b64encode(head.root).decode())
    size = head.size
    computed: dict[tuple[int, int], list[bytes]] = {}
    bundles: dict[int, list[bytes]] = {}
    edge: dict[int, list[bytes]] = {}
    done = 0
    for index in range((size + tlog.WIDTH - 1) // tlog.WIDTH):
        width = tlog.tile_width(0, index, size)
        entries = log.entries(index, width)
        bundles[index] = entries  # kept for checking the older partial bundles
        if check_entry is not None:
            for i, e in enumerate(entries):
                check_entry(index * tlog.WIDTH + i, e)
        edge, changed = tlog.extend(done, edge, [tlog.leaf_hash(e) for e in entries])
        for lv, n, hashes in changed:
            computed[(lv, n)] = hashes
        done += width
        rep.entries += width
    root = tlog.Tree(size, lambda lv, n, w: b"".join(computed[(lv, n)][:w])).root() if size \
        else tlog.EMPTY_ROOT
    if root != head.root:
        raise IntegrityError(f"{log.describe(ROOT)}: the entries do not hash to the root of the "
                             f"checkpoint at tree size {size}")  # fmt: skip
    sizes = log.checkpoint_sizes()
    committed = {(lv, n, w) for s in {*sizes, size} for lv, n, w in _partials(s)}
    listing = log.store.list(f"{ROOT}/tile")
    for key in sorted(listing):
        rel = key[len(ROOT) + 1 :]
        parsed = _parse_tile_key(rel)
        if parsed is None:
            raise IntegrityError(f"{log.describe(key)}: not a tile or entry bundle path")
        level, n, width = parsed
        final = tlog.tile_width(level, n, size)
        if width > final or (width < tlog.WIDTH and (max(level, 0), n, width) not in committed):
            rep.uncommitted += 1  # no checkpoint covers it: a crashed writer's leftovers
            continue
        if level < 0:
            want = tlog.encode_bundle(bundles[n][:width])
            data = log._read(key, len(want) + 1)
        else:
            want = b"".join(computed[(level, n)][:width])
            data = log._read(key, tlog.WIDTH * tlog.HASH)
        if data != want:
            raise IntegrityError(f"{log.describe(key)}: wrong contents (a tile hash or entry "
                                 "differs from the log's entries)")  # fmt: skip
        rep.tiles += 1
    for level, n, width in tlog.tiles_for(size):  # what must exist does
        if (level, n) not in computed:
            continue
        if not log.store.exists(f"{ROOT}/{tlog.tile_path(level, n, width)}"):
            log.tile(level, n, width)  # raises, naming the missing tile (or reads the full one)
    tree = tlog.Tree(size, lambda lv, n, w: b"".join(computed[(lv, n)][:w]))
    if trusted is not None:
        _consistent(trusted, head, tree, "the checkpoint given")
    for s in sizes:
        old = log.checkpoint_at(s)
        if old is None:
            continue
        _consistent(old, head, tree, log.describe(f"{ROOT}/checkpoints/{s}"))
        rep.checkpoints += 1
    for w in witnesses:
        wid = w.id.hex()
        for key in sorted(log.store.list(f"{COSIGNED}/{wid}")):
            data = log._read(key, note.MAX_NOTE)
            if data is None:
                continue
            old, ok = open_note(data, log.describe(key), log.verifier, (w,))
            if w not in ok:
                raise TrustError(f"{log.describe(key)}: no valid cosignature by {w.name}")
            _consistent(old, head, tree, log.describe(key))
            rep.cosignatures[w.name] = max(rep.cosignatures.get(w.name, 0), old.size)
    return rep


def _partials(size: int) -> list[tuple[int, int, int]]:
    """The partial tiles a tree of `size` has (their widths name them)."""
    out, level = [], 0
    while size >> (tlog.TILE_H * level):
        n = size >> (tlog.TILE_H * level)
        if n % tlog.WIDTH:
            out.append((level, n // tlog.WIDTH, n % tlog.WIDTH))
        level += 1
    return out


def _consistent(old: Head, new: Head, tree: tlog.Tree, what: str) -> None:
    if old.size > new.size:
        raise IntegrityError(f"{what}: tree size {old.size} is ahead of the log's checkpoint at "
                             f"tree size {new.size} (the log was rolled back)")  # fmt: skip
    if old.size == new.size:
        ok = old.root == new.root
    else:
        ok = tlog.verify_consistency(old.size, new.size, old.root, new.root,
                                     tree.consistency(old.size))  # fmt: skip
    if not ok:
        raise IntegrityError(f"{what}: tree size {old.size} is not consistent with the log's "
                             f"checkpoint at tree size {new.size} (the log forked or was "
                             "rewritten)")  # fmt: skip


def cosign(log: LogStore, key, state: State, now: int | None = None) -> Head:
    """A witness's cosignature (tlog-cosignature, Ed25519, cosignature/v1) of the copy's
    newest checkpoint, after checking it against the tiles and proving it consistent with the
    last checkpoint this witness cosigned. Written to `log/cosignatures/<key id>/<size>`."""
    public = key.public.raw
    w = witness_verifier(public)
    head = log.head()
    if head is None:
        raise IntegrityError(f"{log.describe(ROOT)}: no checkpoint to cosign")
    log.check_root(head)
    if state.raw is not None:
        last = open_note(state.raw, str(state.path), log.verifier)[0]
        log.check_consistent(last, head, log.describe(ROOT))
    sig = note.cosign(head.note.text, w.name, public, raw_signer(key),
                      int(time.time()) if now is None else now)  # fmt: skip
    raw = note.Note(head.note.text, (*head.note.sigs, sig)).encode()
    dest = f"{COSIGNED}/{w.id.hex()}/{head.size}"
    if not log.store.put_bytes(dest, raw, exclusive=True):
        have = log._read(dest, note.MAX_NOTE)
        old, ok = open_note(have or b"", log.describe(dest), log.verifier, (w,))
        if w not in ok or old.root != head.root:
            raise IntegrityError(f"{log.describe(dest)}: a different cosigned checkpoint is "
                                 "already there")  # fmt: skip
    state.save(head.raw)
    return Head(head.checkpoint, raw, note.parse(raw))


# -- tlog-proof


def best_checkpoint(log: LogStore, index: int, head: Head,
                    witnesses: tuple[note.Verifier, ...],
                    copies: tuple[LogStore, ...] = ()) -> Head:  # fmt: skip
    """The newest checkpoint covering `index` that carries cosignatures by these witnesses
    (merged into one note), found in `log` or in other `copies` (a steward cosigns on its own
    replica), else the log's newest checkpoint."""
    best: Head | None = None
    lines: list[note.Signature] = []
    for w in witnesses:
        found: dict[int, LogStore] = {}
        for copy in (log, *copies):
            try:
                keys = copy.store.list(f"{COSIGNED}/{w.id.hex()}")
            except (StorageError, FileNotFoundError):
                continue
            for key in keys:
                tail = key.rsplit("/", 1)[-1]
                if tail.isdigit() and index < int(tail) <= head.size:
                    found.setdefault(int(tail), copy)
        for s in sorted(found, reverse=True):
            data = found[s]._read(f"{COSIGNED}/{w.id.hex()}/{s}", note.MAX_NOTE)
            try:
                cp, ok = open_note(data or b"", f"cosignature {s}", log.verifier, (w,))
            except (CorruptData, TrustError):
                continue
            if w in ok:
                if best is None or cp.size > best.size:
                    best, lines = cp, []
                if cp.size == best.size:
                    lines += [x for x in cp.note.sigs if x.name == w.name and x.id == w.id]
                break
    if best is None:
        return head
    raw = note.Note(best.note.text, (*best.note.sigs[:1], *lines)).encode()
    return Head(best.checkpoint, raw, note.parse(raw))


def make_proof(log: LogStore, index: int, entry: bytes, cp: Head) -> bytes:
    tree = log.tree(cp.size)
    path = tree.inclusion(index)
    if not tlog.verify_inclusion(tlog.leaf_hash(entry), index, cp.size, path, cp.root):
        raise IntegrityError(f"{log.describe(ROOT)}: entry {index} is not in the tree of the "
                             f"checkpoint at tree size {cp.size}")  # fmt: skip
    lines = [PROOF_HEADER, "extra " + base64.b64encode(entry).decode(), f"index {index}"]
    lines += [base64.b64encode(h).decode() for h in path]
    return ("\n".join(lines) + "\n\n").encode() + cp.raw


@dataclass(frozen=True)
class Proof:
    index: int
    entry: bytes
    head: Head
    witnesses: dict  # verified witness -> timestamp


def check_proof(data: bytes, what: str, verifier: note.Verifier,
                witnesses: tuple[note.Verifier, ...] = ()) -> Proof:  # fmt: skip
    """Verify a tlog-proof whose `extra` is the entry itself, offline."""
    if len(data) > MAX_PROOF:
        raise CorruptData(f"{what}: {len(data)} bytes is too large for a proof")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptData(f"{what}: not a tlog-proof (not UTF-8)") from None
    head_part, sep, cp_part = text.partition("\n\n")
    lines = head_part.split("\n")
    if not sep or lines[0] != PROOF_HEADER:
        raise CorruptData(f"{what}: not a {PROOF_HEADER} proof")
    pos = 1
    entry = None
    try:
        if lines[pos].startswith("extra "):
            entry = note.b64strict(lines[pos][6:])
            pos += 1
        if not lines[pos].startswith("index "):
            raise ValueError("no index line")
        digits = lines[pos][6:]
        if not digits.isdigit() or (digits != "0" and digits[0] == "0") or len(digits) > 20:
            raise ValueError("bad index")
        index = int(digits)
        path = [note.b64strict(x) for x in lines[pos + 1 :]]
    except (IndexError, ValueError, binascii.Error) as e:
        raise CorruptData(f"{what}: malformed tlog-proof ({e})") from None
    if entry is None:
        raise CorruptData(f"{what}: the proof carries no entry (extra line)")
    if any(len(h) != tlog.HASH for h in path):
        raise CorruptData(f"{what}: a proof line is not a SHA-256 hash")
    head, ok = open_note(cp_part.encode(), f"{what}: checkpoint", verifier, witnesses)
    if not tlog.verify_inclusion(tlog.leaf_hash(entry), index, head.size, path, head.root):
        raise IntegrityError(f"{what}: the entry at index {index} is not in the tree of the "
                             f"checkpoint at tree size {head.size}")  # fmt: skip
    return Proof(index, entry, head, ok)


__all__ = ["Report", "verify", "cosign", "best_checkpoint", "make_proof", "check_proof",
           "Proof", "witness_name"]  # fmt: skip
