"""An independent verifier of C2SP transparency logs, written from the specifications only
(c2sp.org/tlog-tiles, signed-note, tlog-checkpoint, tlog-cosignature, tlog-proof; RFC 6962
hashing). It imports nothing from weightvault: hashlib and cryptography only.

    verify_log(directory, log_name, log_pubkey, witnesses={name: pubkey}) -> (size, entries)
    verify_proof(proof_bytes, log_name, log_pubkey, witnesses) -> (index, entry, size)

Both raise ValueError on anything wrong.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _leaf(e: bytes) -> bytes:
    return _h(b"\x00" + e)


def _node(a: bytes, b: bytes) -> bytes:
    return _h(b"\x01" + a + b)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, straight from the definition (leaves already hashed)."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def _keyid(name: str, alg: int, pub: bytes) -> bytes:
    return _h(name.encode() + b"\n" + bytes([alg]) + pub)[:4]


def _open_note(data: bytes, log_name: str, log_pub: bytes, witnesses: dict[str, bytes]):
    text = data.decode("utf-8")
    body, sep, sigblock = text.rpartition("\n\n")
    if not sep or not sigblock.endswith("\n"):
        raise ValueError("not a signed note")
    body += "\n"
    log_ok, cosigned = False, set()
    for line in sigblock[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise ValueError("bad signature line")
        name, b64 = line[2:].split(" ")
        raw = base64.b64decode(b64, validate=True)
        kid, sig = raw[:4], raw[4:]
        if name == log_name and kid == _keyid(name, 0x01, log_pub):
            Ed25519PublicKey.from_public_bytes(log_pub).verify(sig, body.encode())
            log_ok = True
        elif name in witnesses and kid == _keyid(name, 0x04, witnesses[name]):
            ts, s = sig[:8], sig[8:]
            msg = b"cosignature/v1\ntime %d\n" % int.from_bytes(ts, "big") + body.encode()
            Ed25519PublicKey.from_public_bytes(witnesses[name]).verify(s, msg)
            cosigned.add(name)
    if not log_ok:
        raise ValueError("no valid signature by the log's key")
    lines = body.split("\n")
    if lines[0] != log_name:
        raise ValueError("wrong origin")
    size, root = int(lines[1]), base64.b64decode(lines[2], validate=True)
    return size, root, cosigned


def _npath(n: int) -> str:
    groups = []
    while True:
        groups.insert(0, n % 1000)
        n //= 1000
        if not n:
            break
    return "/".join(("x" if i < len(groups) - 1 else "") + f"{g:03d}" for i, g in enumerate(groups))


def _tile(d: str, level: str, n: int, w: int) -> bytes:
    p = os.path.join(d, "tile", level, _npath(n) + ("" if w == 256 else f".p/{w}"))
    with open(p, "rb") as f:
        return f.read()


def verify_log(d: str, log_name: str, log_pub: bytes, witnesses: dict[str, bytes] | None = None):
    """Recompute the whole tree of the log copy in directory `d` (its `log/` folder)."""
    witnesses = witnesses or {}
    with open(os.path.join(d, "checkpoint"), "rb") as f:
        size, root, _ = _open_note(f.read(), log_name, log_pub, witnesses)
    entries: list[bytes] = []
    for n in range((size + 255) // 256):
        w = min(256, size - n * 256)
        data, pos, bundle = _tile(d, "entries", n, w), 0, []
        for _ in range(w):
            ln = int.from_bytes(data[pos : pos + 2], "big")
            bundle.append(data[pos + 2 : pos + 2 + ln])
            if len(bundle[-1]) != ln:
                raise ValueError("truncated entry bundle")
            pos += 2 + ln
        if pos != len(data):
            raise ValueError("trailing bytes in an entry bundle")
        entries += bundle
    leaves = [_leaf(e) for e in entries]
    if _mth(leaves) != root:
        raise ValueError("entries do not hash to the checkpoint root")
    # every tile the spec says a tree of this size has, with the hashes it must hold
    level, hashes = 0, leaves
    while size >> (8 * level):
        count = size >> (8 * level)
        for n in range((count + 255) // 256):
            w = min(256, count - n * 256)
            if _tile(d, str(level), n, w) != b"".join(hashes[n * 256 : n * 256 + w]):
                raise ValueError(f"tile {level}/{n} is wrong")
        hashes = [_mth(hashes[i : i + 256]) for i in range(0, (count // 256) * 256, 256)]
        level += 1
    cos = os.path.join(d, "cosignatures")
    seen = set()
    if os.path.isdir(cos):
        for kid in os.listdir(cos):
            for s in os.listdir(os.path.join(cos, kid)):
                with open(os.path.join(cos, kid, s), "rb") as f:
                    csize, croot, names = _open_note(f.read(), log_name, log_pub, witnesses)
                if csize > size or _mth(leaves[:csize]) != croot:
                    raise ValueError("a cosigned checkpoint is not a prefix of this log")
                seen |= names
    return size, entries, seen


def verify_proof(data: bytes, log_name: str, log_pub: bytes, witnesses: dict[str, bytes] | None = None):
    head, _, cp = data.decode("utf-8").partition("\n\n")
    lines = head.split("\n")
    if lines[0] != "c2sp.org/tlog-proof@v1" or not lines[1].startswith("extra "):
        raise ValueError("not a tlog-proof with extra data")
    entry = base64.b64decode(lines[1][6:], validate=True)
    if not lines[2].startswith("index "):
        raise ValueError("no index")
    index = int(lines[2][6:])
    path = [base64.b64decode(x, validate=True) for x in lines[3:]]
    size, root, names = _open_note(cp.encode(), log_name, log_pub, witnesses or {})
    # RFC 6962 2.1.1 audit path, walked back up (the recursive definition, bottom-up)
    def walk(m: int, lo: int, hi: int, h: bytes, proof: list[bytes]) -> bytes:
        if hi - lo == 1:
            if proof:
                raise ValueError("proof too long")
            return h
        k = 1
        while k * 2 < hi - lo:
            k *= 2
        if not proof:
            raise ValueError("proof too short")
        sib, rest = proof[-1], proof[:-1]
        if m < lo + k:
            return _node(walk(m, lo, lo + k, h, rest), sib)
        return _node(sib, walk(m, lo + k, hi, h, rest))
    if index >= size or walk(index, 0, size, _leaf(entry), path) != root:
        raise ValueError("inclusion proof does not reach the checkpoint root")
    return index, entry, size, names
