"""Chunk plans: which byte ranges of a file become which chunks.

safetensors files are cut on tensor boundaries so every chunk holds whole elements of one
dtype (what the float codecs need); big tensors are split at multiples of the target size,
small neighbours of the same dtype are grouped. Everything else is cut at fixed offsets.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from weightvault.errors import InputError

DEFAULT_TARGET = 64 << 20
MAX_TARGET = 1 << 30
MAX_HEADER = 100 << 20  # safetensors itself refuses headers above 100 MB
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True, slots=True)  # 10 TB: 163,840 of them in the driver
class Piece:
    offset: int
    length: int
    dtype: str | None = None  # set only when the range is whole elements of one tensor dtype


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    start: int  # absolute file offsets
    end: int
    shape: tuple[int, ...] | None = None


ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes: how a plan reads a header


def read_safetensors_header(path: Path | str, size: int,
                            read_at: ReadAt | None = None) -> tuple[int, list[Tensor]]:  # fmt: skip
    """Return (data buffer offset, tensors sorted by offset); InputError names what is wrong.
    `read_at` reads the two ranges a header takes (a remote source: two range requests)."""
    if read_at is None:
        with open(path, "rb") as f:
            return parse_safetensors_header(f.read, size, str(path))
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        data = read_at(pos, n)
        pos += len(data)
        return data

    return parse_safetensors_header(read, size, str(path))


def parse_safetensors_header(read, size: int, path: str,
                             error: type[Exception] = InputError) -> tuple[int, list[Tensor]]:  # fmt: skip
    """read_safetensors_header over any `read(n)` positioned at the file's start; `error` is
    the exception raised for a malformed header."""
    head = read(8)
    if len(head) < 8:
        raise error(f"{path}: safetensors file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise error(
            f"{path}: safetensors header length {n} runs past the end of the file "
            f"({size} bytes)"
        )
    raw = read(n)
    if len(raw) < n:
        raise error(f"{path}: safetensors header is shorter than its declared {n} bytes")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: safetensors JSON header is malformed ({e})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: safetensors header is not a JSON object")
    base = 8 + n
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, (a, b) = info["dtype"], info["data_offsets"]
            ok = isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= size - base
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise error(f"{path}: tensor {name!r} has invalid dtype or data_offsets")
        shape = info.get("shape")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            shape = None  # sealing needs only the offsets; readers of the shape check it
        tensors.append(Tensor(name, str(dtype), base + a, base + b,
                              tuple(shape) if shape is not None else None))
    tensors.sort(key=lambda t: (t.start, t.end))
    for prev, cur in zip(tensors, tensors[1:], strict=False):
        if cur.start < prev.end:
            raise error(f"{path}: tensors {prev.name!r} and {cur.name!r} overlap")
    return base, tensors


def plan(path: Path | str, size: int, target: int = DEFAULT_TARGET,
         read_at: ReadAt | None = None) -> list[Piece]:  # fmt: skip
    if PurePosixPath(str(path)).suffix == ".safetensors" and size > 0:
        return _plan_safetensors(path, size, target, read_at)
    return _split(Piece(0, size), target) if size else []


def _plan_safetensors(path: Path | str, size: int, target: int,
                      read_at: ReadAt | None) -> list[Piece]:  # fmt: skip
    base, tensors = read_safetensors_header(path, size, read_at)
    regions: list[Piece] = [Piece(0, base)]
    pos = base
    for t in tensors:
        if t.start > pos:
            regions.append(Piece(pos, t.start - pos))
        if t.end > t.start:
            item = ITEMSIZE.get(t.dtype)
            whole = item is not None and (t.end - t.start) % item == 0
            regions.append(Piece(t.start, t.end - t.start, t.dtype if whole else None))
        pos = max(pos, t.end)
    if pos < size:
        regions.append(Piece(pos, size - pos))
    # Group neighbours of one dtype up to the target, then split what is still too big.
    grouped: list[Piece] = []
    for r in regions:
        last = grouped[-1] if grouped else None
        if last and last.dtype == r.dtype and last.length + r.length <= target:
            grouped[-1] = Piece(last.offset, last.length + r.length, r.dtype)
        else:
            grouped.append(r)
    out: list[Piece] = []
    for g in grouped:
        out.extend(_split(g, target))
    return out


def _split(p: Piece, target: int) -> list[Piece]:
    step = target
    if p.dtype:
        step -= target % ITEMSIZE[p.dtype]  # every piece stays whole elements
    return [
        Piece(off, min(step, p.offset + p.length - off), p.dtype)
        for off in range(p.offset, p.offset + p.length, step)
    ]
