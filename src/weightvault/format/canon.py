"""Canonical JSON (the bytes that are hashed and signed) and a defensive JSON reader.

Canonical form: RFC 8785 (JCS) restricted to what weightvault writes: no floating point
numbers, object keys in ASCII, so Python's sorted keys and escaping give exactly JCS.
"""

from __future__ import annotations

import json
import re
from typing import Any

from weightvault.errors import CorruptData

MAX_DOC = 256 << 20  # a 1 TB model's manifest is about 10 MB; anything far larger is hostile
MAX_DEPTH = 32


# json's C encoder, configured once, writes every scalar and every run of flat items
_ENC = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_BATCH = 1024  # flat list items per call: pieces of a few hundred KB at most
_NESTED = (dict, list)


def canonical(obj: Any) -> bytes:
    return bytes(encode(obj))


def encode(obj: Any, headroom: int = 0) -> bytearray:
    """The canonical bytes of `obj` in one buffer, after `headroom` zero bytes (room for a
    header written later in place, such as DSSE's PAE: keys.sign_framed).

    Byte for byte what json.dumps(sort_keys, compact, ensure_ascii=False).encode() gives, without
    holding the document as one str and then as bytes: a 10 TB model's manifest is 40 MB, and
    the str, the bytes and their pieces were the driver's peak (benchmarks/README.md). Containers
    are walked here (checking what has no canonical form on the way); runs of flat items (a
    list's scalars and dicts of scalars, such as chunk entries) go through the C encoder in
    batches, so the pieces stay small and the calls few.

    Two passes: the first only counts, so that the buffer is allocated once at its final size.
    Grown piece by piece instead, it left about 20 MB of abandoned smaller copies in the heap
    for a 50 MB manifest (10 TB), which the driver's peak RSS paid for; the count costs about
    2.7 ms of CPU per 1,000 chunks."""
    size = _Count()
    _write(obj, 0, size)
    out = _Fill(bytearray(headroom + size.n), headroom)
    _write(obj, 0, out)
    if out.pos != len(out.buf):
        raise RuntimeError("canonical encoding changed between its two passes")
    return out.buf


class _Count:
    """Stands in for the output buffer in the first pass: counts what would be written."""

    def __init__(self):
        self.n = 0

    def __iadd__(self, data: bytes) -> _Count:
        self.n += len(data)
        return self


class _Fill:
    """Stands in for it in the second: writes into the buffer allocated at its size."""

    def __init__(self, buf: bytearray, pos: int):
        self.buf, self.pos = buf, pos

    def __iadd__(self, data: bytes) -> _Fill:
        end = self.pos + len(data)
        self.buf[self.pos : end] = data
        self.pos = end
        return self


def _write(obj: Any, depth: int, out: Any) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("document nested too deeply")
    if isinstance(obj, dict):
        if _flat_dict(obj, depth):
            out += _ENC.encode(obj).encode()
            return
        out += b"{"
        for i, k in enumerate(sorted(obj)):
            if i:
                out += b","
            out += _ENC.encode(k).encode()
            out += b":"
            _write(obj[k], depth + 1, out)
        out += b"}"
    elif isinstance(obj, list):
        out += b"["
        batch: list = []
        first = True
        for v in obj:
            if not isinstance(v, _NESTED):
                _scalar(v, depth + 1)
            elif not (isinstance(v, dict) and _flat_dict(v, depth + 1)):
                if batch:
                    first = _flush(batch, first, out)
                if not first:
                    out += b","
                first = False
                _write(v, depth + 1, out)
                continue
            batch.append(v)
            if len(batch) == _BATCH:
                first = _flush(batch, first, out)
        if batch:
            _flush(batch, first, out)
        out += b"]"
    else:
        _scalar(obj, depth)
        out += _ENC.encode(obj).encode()


def _flush(batch: list, first: bool, out: Any) -> bool:
    if not first:
        out += b","
    out += _ENC.encode(batch)[1:-1].encode()
    batch.clear()
    return False


def _flat_dict(d: dict, depth: int) -> bool:
    """Check a dict's keys (and its scalar values); True when no value is a container."""
    if depth > MAX_DEPTH:
        raise ValueError("document nested too deeply")
    flat = True
    for k, v in d.items():
        if not isinstance(k, str) or not k.isascii():
            raise ValueError(f"object key {k!r} is not an ASCII string")
        if isinstance(v, _NESTED):
            flat = False
        else:
            _scalar(v, depth + 1)
    return flat


def _scalar(v: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("document nested too deeply")
    if isinstance(v, float):
        raise ValueError("floats have no canonical form here; use integers or strings")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _reject_float(text: str) -> Any:
    raise ValueError(f"floating point number {text[:20]} is not allowed")


def _depth(obj: Any) -> int:
    # iterative, so a hostile document cannot exhaust the interpreter stack here
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse(data: bytes, what: str, *, max_size: int = MAX_DOC, allow_float: bool = False) -> Any:
    """Parse untrusted JSON bytes; every failure is CorruptData naming `what`."""
    if len(data) > max_size:
        raise CorruptData(f"{what}: {len(data)} bytes is larger than the {max_size} allowed")
    try:
        text = data.decode("utf-8")
        obj = json.loads(
            text,
            object_pairs_hook=_no_dupes,
            parse_constant=_reject_constant,
            parse_float=None if allow_float else _reject_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptData(f"{what}: not valid JSON ({e})") from None
    if _depth(obj) > MAX_DEPTH:
        raise CorruptData(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        # a \uDC80 escape parses to a lone surrogate: valid JSON, not Unicode text. Only such an
        # escape can make one (UTF-8 input cannot), so the document is encoded again to find
        # out only when the text holds one: a 40 MB manifest is not copied twice more for it
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptData(f"{what}: holds a lone surrogate (\\uD800-\\uDFFF escape)") from None
    return obj


def parse_canonical(data: bytes, what: str, *, max_size: int = MAX_DOC) -> Any:
    """parse(), and refuse bytes that are not the canonical form of what they parse to: a
    signed document's stored bytes are exactly its canonical JSON, so a re-encoded copy
    (indented, reordered, escaped otherwise) is not the document, whatever it says."""
    obj = parse(data, what, max_size=max_size)
    if canonical(obj) != data:
        raise CorruptData(f"{what}: not in canonical form (section 4.1)")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
