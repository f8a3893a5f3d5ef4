"""RFC 6962 Merkle trees stored as C2SP tlog-tiles: hashing, tile paths, entry bundles, proofs.

Pure functions over bytes; reading tiles is the caller's job, through a `tile(level, index,
width) -> bytes` callable, so the same code proves from a store, a directory or memory.
Proof verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

HASH = 32
TILE_H = 8  # a tile is a subtree of height 8: 256 hashes
WIDTH = 1 << TILE_H
MAX_ENTRY = 0xFFFF  # a big-endian uint16 length prefix in an entry bundle

EMPTY_ROOT = hashlib.sha256(b"").digest()

TileReader = Callable[[int, int, int], bytes]


class TreeError(ValueError):
    """A tile, bundle or proof that does not fit the tree it claims to belong to."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _n_path(n: int) -> str:
    parts = []
    while True:
        parts.append(n % 1000)
        n //= 1000
        if n == 0:
            break
    parts.reverse()
    return "/".join(("x%03d" if i < len(parts) - 1 else "%03d") % p for i, p in enumerate(parts))


def tile_path(level: int, index: int, width: int = WIDTH) -> str:
    """`tile/<L>/<N>[.p/<W>]`; level -1 names entry bundles (`tile/entries/...`)."""
    if not 0 < width <= WIDTH:
        raise ValueError(f"tile width {width} out of range")
    head = "tile/entries" if level < 0 else f"tile/{level}"
    tail = "" if width == WIDTH else f".p/{width}"
    return f"{head}/{_n_path(index)}{tail}"


def tile_width(level: int, index: int, size: int) -> int:
    """Width of tile (level, index) in a tree of `size` leaves; 0 if it has no hash yet.
    Level -1 (entry bundles) has the widths of level 0."""
    level = max(level, 0)
    complete = size >> (TILE_H * level)  # complete hashes at this tile level
    return max(0, min(WIDTH, complete - index * WIDTH))


def tiles_for(size: int) -> list[tuple[int, int, int]]:
    """Every (level, index, width) tile a tree of `size` leaves is stored as (levels >= 0)."""
    out = []
    level = 0
    while True:
        complete = size >> (TILE_H * level)
        if complete == 0:
            break
        for n in range((complete + WIDTH - 1) // WIDTH):
            out.append((level, n, tile_width(level, n, size)))
        level += 1
    return out


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    out = bytearray()
    for e in entries:
        if len(e) > MAX_ENTRY:
            raise TreeError(f"entry of {len(e)} bytes is over the {MAX_ENTRY} an entry bundle holds")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def decode_bundle(data: bytes, count: int) -> list[bytes]:
    """Exactly `count` length-prefixed entries, nothing left over."""
    out, pos = [], 0
    for i in range(count):
        if pos + 2 > len(data):
            raise TreeError(f"truncated: entry {i} of {count} is missing")
        n = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + n > len(data):
            raise TreeError(f"truncated: entry {i} of {count} is cut short")
        out.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise TreeError(f"{len(data) - pos} bytes after the {count} entries")
    return out


def split_hashes(data: bytes, width: int) -> list[bytes]:
    if len(data) != width * HASH:
        raise TreeError(f"{len(data)} bytes, not the {width * HASH} of a tile of width {width}")
    return [data[i : i + HASH] for i in range(0, len(data), HASH)]


def fold(hashes: list[bytes]) -> bytes:
    """Root of a complete subtree whose leaves (a power of two of them) are `hashes`."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def tile_root(hashes: list[bytes]) -> bytes:
    """The hash a full tile contributes to the level above."""
    return fold(hashes)


def _largest_pow2_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """A tree of `size` leaves whose stored hashes come from `read(level, index, width)`.
    Tiles are cached, so a proof reads each tile once."""

    def __init__(self, size: int, read: TileReader):
        self.size, self._read = size, read
        self._tiles: dict[tuple[int, int], list[bytes]] = {}
        self.tiles_read = 0

    def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        if key not in self._tiles:
            width = tile_width(level, index, self.size)
            self._tiles[key] = split_hashes(self._read(level, index, width), width)
            self.tiles_read += 1
        return self._tiles[key]

    def node(self, height: int, index: int) -> bytes:
        """Hash of the complete subtree of 2**height leaves starting at leaf index << height."""
        level, r = divmod(height, TILE_H)
        first = index << r
        t = self._tile(level, first >> TILE_H)
        off = first & (WIDTH - 1)
        return fold(t[off : off + (1 << r)])

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC 6962's recursions produce."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self.node(n.bit_length() - 1, start // n)
        k = _largest_pow2_below(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self) -> bytes:
        return self.subtree(0, self.size)

    def inclusion(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise TreeError(f"index {index} is not in a tree of size {self.size}")
        return self._path(index, 0, self.size)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _largest_pow2_below(n)
        if m < k:
            return self._path(m, start, start + k) + [self.subtree(start + k, end)]
        return self._path(m - k, start + k, end) + [self.subtree(start, start + k)]

    def consistency(self, old: int) -> list[bytes]:
        if not 0 <= old <= self.size:
            raise TreeError(f"size {old} is larger than the tree's {self.size}")
        if old == 0 or old == self.size:
            return []
        return self._subproof(old, 0, self.size, True)

    def _subproof(self, m: int, start: int, end: int, b: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if b else [self.subtree(start, end)]
        k = _largest_pow2_below(n)
        if m <= k:
            return self._subproof(m, start, start + k, b) + [self.subtree(start + k, end)]
        return self._subproof(m - k, start + k, end, False) + [self.subtree(start, start + k)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2, with `leaf` the leaf hash."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: list[bytes]) -> bool:  # fmt: skip
    """RFC 9162 2.1.4.2."""
    if old > new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if not proof:
        return False
    if old & (old - 1) == 0:  # a power of two: the old root is the first node of the path
        proof = [old_root, *proof]
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def extend(size: int, edge: dict[int, list[bytes]], leaves: list[bytes]
           ) -> tuple[dict[int, list[bytes]], list[tuple[int, int, list[bytes]]]]:  # fmt: skip
    """Append leaf hashes to a tree of `size` leaves given its right edge: `edge[level]` holds
    the hashes of the partial tile at each level ((size >> 8*level) % 256 of them). Returns the
    new edge and every tile that changed as (level, index, hashes): full tiles once, the new
    partial tiles at their new width."""
    edge = {lv: list(h) for lv, h in edge.items()}
    changed: list[tuple[int, int, list[bytes]]] = []
    new, level = list(leaves), 0
    while new:
        before = size >> (TILE_H * level)
        tile = edge.get(level, [])
        if len(tile) != before % WIDTH:
            raise TreeError(f"edge tile at level {level} has {len(tile)} hashes, "
                            f"not {before % WIDTH}")  # fmt: skip
        index, up = before // WIDTH, []
        for h in new:
            tile.append(h)
            if len(tile) == WIDTH:
                changed.append((level, index, tile))
                up.append(fold(tile))
                tile, index = [], index + 1
        if tile:
            changed.append((level, index, list(tile)))
        edge[level] = tile
        new, level = up, level + 1
    return edge, changed
