"""C2SP signed-note, tlog-checkpoint and tlog-cosignature (Ed25519, cosignature/v1).

A note is UTF-8 text ending in a newline, a blank line, then signature lines
`— <name> base64(key id || signature)`. Everything read here is hostile: sizes are bounded,
lines checked, and a signature by a known key that fails makes the whole note fail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_NOTE = 1 << 16
ALG_ED25519 = 0x01
ALG_COSIGN_ED25519 = 0x04
DASH = "\u2014 "
COSIG_HEADER = b"cosignature/v1\n"


def b64strict(text: str | bytes) -> bytes:
    """Standard base64 in its one canonical spelling: a decoder that ignores the unused low
    bits of the last character would accept a changed byte of a note or proof as the same
    value (binascii.Error, a ValueError, otherwise)."""
    raw = base64.b64decode(text, validate=True)
    want = text.encode() if isinstance(text, str) else bytes(text)
    if base64.b64encode(raw) != want.strip():
        raise ValueError("not canonical base64 (unused bits set)")
    return raw


class NoteError(ValueError):
    """A note or checkpoint that is malformed (integrity)."""


class NoteTrustError(ValueError):
    """A note with no valid signature by a trusted key, or a bad one by a trusted key."""


def key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise ValueError(f"key name {name!r}: must be non-empty, without spaces or '+'")


def vkey(name: str, alg: int, public: bytes) -> str:
    """The signed-note verifier key string `name+hex(keyid)+base64(alg||key)`."""
    return f"{name}+{key_id(name, alg, public).hex()}+" + base64.b64encode(
        bytes([alg]) + public
    ).decode()


@dataclass(frozen=True)
class Verifier:
    """A trusted key: name, algorithm byte (0x01 note signer, 0x04 cosigner), raw Ed25519 key."""

    name: str
    public: bytes
    alg: int = ALG_ED25519

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.alg, self.public)

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        try:
            name, hexid, b64 = text.strip().split("+")
            raw = b64strict(b64)
        except (ValueError, binascii.Error):
            raise ValueError("not a verifier key name+id+base64") from None
        if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGN_ED25519):
            raise ValueError("not an Ed25519 verifier key")
        v = cls(name, raw[1:], raw[0])
        if v.id.hex() != hexid:
            raise ValueError("verifier key id does not match its key")
        return v

    def message(self, text: bytes, sig: bytes) -> tuple[bytes, bytes, int | None]:
        """(signed message, raw Ed25519 signature, cosignature timestamp or None)."""
        if self.alg == ALG_COSIGN_ED25519:
            if len(sig) != 72:
                raise NoteTrustError(f"cosignature by {self.name} is {len(sig)} bytes, not 72")
            ts = int.from_bytes(sig[:8], "big")
            if ts >= 1 << 63:
                raise NoteTrustError(f"cosignature by {self.name} has an invalid timestamp")
            return COSIG_HEADER + b"time %d\n" % ts + text, sig[8:], ts
        return text, sig, None

    def verify(self, text: bytes, sig: bytes) -> int | None:
        msg, raw, ts = self.message(text, sig)
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(raw, msg)
        except InvalidSignature:
            raise NoteTrustError(f"signature by {self.name} ({self.id.hex()}) does not match "
                                 "the note") from None  # fmt: skip
        return ts


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    sig: bytes

    def line(self) -> str:
        return f"{DASH}{self.name} " + base64.b64encode(self.id + self.sig).decode() + "\n"


@dataclass(frozen=True)
class Note:
    text: bytes  # the signed body, ending in a newline
    sigs: tuple[Signature, ...]

    def encode(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.sigs).encode()

    def verified_by(self, verifiers: list[Verifier]) -> dict[Verifier, int | None]:
        """Verify every signature by a known (name, id); return those that verified (with their
        timestamps). Unknown signatures are ignored, as the spec requires."""
        out: dict[Verifier, int | None] = {}
        for s in self.sigs:
            for v in verifiers:
                if v.name == s.name and v.id == s.id:
                    out[v] = v.verify(self.text, s.sig)
        return out


def parse(data: bytes) -> Note:
    if len(data) > MAX_NOTE:
        raise NoteError(f"note of {len(data)} bytes is over the {MAX_NOTE} allowed")
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not UTF-8") from None
    if "\r" in s or any(ord(c) < 0x20 and c != "\n" for c in s):
        raise NoteError("note contains control characters")
    cut = s.rfind("\n\n")
    if cut < 0 or not s.endswith("\n"):
        raise NoteError("note has no signature block")
    text, block = s[: cut + 1], s[cut + 2 :]
    sigs = []
    for line in block[:-1].split("\n"):
        if not line.startswith(DASH):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, _, b64 = line[len(DASH) :].rpartition(" ")
        try:
            raw = b64strict(b64)
        except (ValueError, binascii.Error):
            raise NoteError(f"signature by {name[:60]} is not base64") from None
        if not name or " " in name or len(raw) < 5:
            raise NoteError(f"malformed signature line {line[:60]!r}")
        sigs.append(Signature(name, raw[:4], raw[4:]))
    if not sigs:
        raise NoteError("note has no signatures")
    return Note(text.encode(), tuple(sigs))


def sign(text: bytes, name: str, public: bytes, sign_raw) -> Signature:
    """A note signature line by an Ed25519 key; `sign_raw(message) -> 64 bytes`."""
    _check_name(name)
    if not text.endswith(b"\n"):
        raise ValueError("a note's text must end in a newline")
    return Signature(name, key_id(name, ALG_ED25519, public), sign_raw(text))


def cosign(text: bytes, name: str, public: bytes, sign_raw, timestamp: int) -> Signature:
    _check_name(name)
    msg = COSIG_HEADER + b"time %d\n" % timestamp + text
    sig = timestamp.to_bytes(8, "big") + sign_raw(msg)
    return Signature(name, key_id(name, ALG_COSIGN_ED25519, public), sig)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]  # fmt: skip
        return ("\n".join(lines) + "\n").encode()


def parse_checkpoint(text: bytes) -> Checkpoint:
    lines = text.decode("utf-8").split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("checkpoint has fewer than three lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("checkpoint has an empty origin line")
    if not size.isdigit() or (size != "0" and size.startswith("0")) or len(size) > 20:
        raise NoteError(f"checkpoint size {size[:30]!r} is not a decimal number")
    try:
        raw = b64strict(root)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise NoteError("checkpoint root is not a base64 SHA-256 hash")
    ext = tuple(lines[3:-1])
    if any(not e for e in ext):
        raise NoteError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size), raw, ext)
