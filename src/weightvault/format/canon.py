"""Canonical JSON (the bytes that are hashed and signed) and a defensive JSON reader.

Canonical form: RFC 8785 (JCS) restricted to what weightvault writes: no floating point
numbers, object keys in ASCII, so Python's sorted keys and escaping give exactly JCS.
"""

from __future__ import annotations

import json
from typing import Any

from weightvault.errors import CorruptData

MAX_DOC = 256 << 20  # a 1 TB model's manifest is about 10 MB; anything far larger is hostile
MAX_DEPTH = 32


def canonical(obj: Any) -> bytes:
    _check_canonicalisable(obj, 0)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_canonicalisable(obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("document nested too deeply")
    if isinstance(obj, float):
        raise ValueError("floats have no canonical form here; use integers or strings")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not k.isascii():
                raise ValueError(f"object key {k!r} is not an ASCII string")
            _check_canonicalisable(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_canonicalisable(v, depth + 1)


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
        # a \uDC80 escape parses to a lone surrogate: valid JSON, not Unicode text
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptData(f"{what}: holds a lone surrogate (\\uD800-\\uDFFF escape)") from None
    return obj
