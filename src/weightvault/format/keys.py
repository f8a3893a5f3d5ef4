"""Ed25519 signing keys and detached signatures over canonical documents.

Messages are signed with DSSE's pre-authentication encoding (PAE), so a signature made for one
document type can never be replayed as another (a manifest signature is not an audit record's).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from weightvault.errors import InputError, TrustError

MAX_KEY_FILE = 16 << 10


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    source: str = ""

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, payload_type: str, body: bytes, sig: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, pae(payload_type, body))
            return True
        except InvalidSignature:
            return False

    def pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class SigningKey:
    _key: Ed25519PrivateKey
    source: str = ""

    @property
    def public(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw, self.source)

    def sign(self, payload_type: str, body: bytes) -> dict:
        sig = self._key.sign(pae(payload_type, body))
        return {
            "keyid": self.public.key_id,
            "alg": "ed25519",
            "public_key": base64.b64encode(self.public.raw).decode(),
            "sig": base64.b64encode(sig).decode(),
        }

    def sign_raw(self, message: bytes) -> bytes:
        """Plain Ed25519 over `message`, for formats that define their own framing (C2SP
        signed notes and cosignatures, FORMAT.md 12.2); every other signature uses sign()."""
        return self._key.sign(message)

    def __repr__(self) -> str:  # never let a key reach a log through repr()
        return f"SigningKey(key_id={self.public.key_id[:16]}, source={self.source!r})"


def generate(path: Path) -> SigningKey:
    """Write a new private key (mode 0600, never overwriting) and PATH.pub beside it."""
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise InputError(f"{p}: already exists; refusing to overwrite a key")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory for the key file")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    sk = SigningKey(key, str(path))
    pub_path.write_bytes(sk.public.pem())
    return sk


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {what} file is not a regular file")
    if st.st_size > MAX_KEY_FILE:
        raise InputError(f"{path}: too large to be a {what} file")
    return path.read_bytes()


def read_private_file(path: Path, what: str) -> bytes:
    """A secret key file of any kind: regular, small, mode 0600 (or stricter)."""
    path = Path(path)
    data = _read_key_file(path, what)
    _check_private_mode(path, what)
    return data


def _check_private_mode(path: Path, what: str) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InputError(f"{path}: {what} is readable by others (mode {mode:04o}); "
                         "run chmod 600 on it")  # fmt: skip


def load_private_pem(path: Path, what: str, kind: str):
    """A private key file: regular, small, mode 0600 (or stricter), unencrypted PEM."""
    from cryptography.exceptions import UnsupportedAlgorithm

    path = Path(path)
    data = _read_key_file(path, what)
    # the format first: a .pub file given as --key is a wrong file, not a permissions problem
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise InputError(f"{path}: is a public key; pass the private {what} file (the "
                             "one without .pub)")  # fmt: skip
        raise InputError(f"{path}: not an unencrypted PEM {kind} private key")
    _check_private_mode(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not an unencrypted PEM {kind} private key") from None


def load_signing_key(path: Path) -> SigningKey:
    path = Path(path)
    key = load_private_pem(path, "signing key", "Ed25519")
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: key is {type(key).__name__}, not Ed25519")
    return SigningKey(key, str(path))


def load_public_key(path: Path) -> PublicKey:
    data = _read_key_file(Path(path), "public key")
    try:
        if b"PRIVATE KEY" in data:
            raise InputError(f"{path}: is a private key; pass the .pub file to --trust")
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InputError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: key is {type(key).__name__}, not Ed25519")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw, str(path))


def verify_signatures(
    payload_type: str, body: bytes, signatures: list, trusted: list[PublicKey], what: str
) -> PublicKey:
    """Return the trusted key that signed `body`, or raise TrustError naming `what`."""
    if not signatures:
        raise TrustError(f"{what}: no signature")
    by_id = {k.key_id: k for k in trusted}
    unknown = []
    for s in signatures:
        key = by_id.get(s.get("keyid", "")) if isinstance(s, dict) else None
        if key is None:
            unknown.append(str(s.get("keyid", "?"))[:16] if isinstance(s, dict) else "?")
            continue
        try:
            sig = base64.b64decode(s.get("sig", ""), validate=True)
        except (ValueError, TypeError):
            raise TrustError(f"{what}: signature by key {key.key_id[:16]} is not base64") from None
        if s.get("alg") == "ed25519" and key.verify(payload_type, body, sig):
            return key
        raise TrustError(f"{what}: signature by key {key.key_id[:16]} does not match the document")
    raise TrustError(
        f"{what}: signed by unknown key {', '.join(unknown)}; pass its public key with --trust"
    )
