"""Ed25519 signing keys and detached signatures over canonical documents.

Messages are signed with DSSE's pre-authentication encoding (PAE), so a signature made for one
document type can never be replayed as another (a manifest signature is not an audit record's).

A signing key is named by a path (a PKCS#8 PEM file, unencrypted or passphrase-protected) or by
an RFC 7512 PKCS#11 URI (`pkcs11:token=...;object=...`: the key stays on the token; see
format/pkcs11.py). Either way callers get one interface, `SigningKey.sign` and `.public`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from weightvault.errors import InputError, TrustError

MAX_KEY_FILE = 16 << 10
PKCS11_SCHEME = "pkcs11:"
# PBKDF2-HMAC-SHA256 rounds for keys keygen protects (OWASP 2023); openssl genpkey uses 2048
KDF_ROUNDS = 600_000

# asked for the passphrase of a protected key file: (path) -> passphrase
Passphrase = Callable[[Path], str]


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
    # An Ed25519PrivateKey in memory, or a token's key (format/pkcs11.py) that offers the same
    # two methods, sign(message) and public_key(), and never hands out the private key.
    _key: Ed25519PrivateKey
    source: str = ""

    @property
    def public(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw, self.source)

    def sign(self, payload_type: str, body: bytes) -> dict:
        return self._envelope(self._key.sign(pae(payload_type, body)))

    def _envelope(self, sig: bytes) -> dict:
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


def generate(path: Path, passphrase: str | None = None) -> SigningKey:
    """Write a new private key (mode 0600, never overwriting) and PATH.pub beside it; with a
    passphrase, as encrypted PKCS#8 (PBES2) that openssl and every PKCS#8 reader open."""
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise InputError(f"{p}: already exists; refusing to overwrite a key")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory for the key file")
    if passphrase is not None and not passphrase:
        raise InputError(f"{path}: an empty passphrase protects nothing; give one")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if passphrase is not None:
        pem = encrypt_pkcs8(pem, passphrase.encode())
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


def encrypt_pkcs8(pem: bytes, passphrase: bytes) -> bytes:
    """Unencrypted PKCS#8 PEM -> EncryptedPrivateKeyInfo PEM (RFC 5958, PBES2 of RFC 8018:
    PBKDF2-HMAC-SHA256 with KDF_ROUNDS and a 16-byte salt, AES-256-CBC). cryptography writes
    PBES2 with 2048 rounds only, too few for a file meant to survive theft for decades."""
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    der = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt, iv = os.urandom(16), os.urandom(16)
    kek = PBKDF2HMAC(hashes.SHA256(), 32, salt, KDF_ROUNDS).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    body = enc.update(padder.update(der) + padder.finalize()) + enc.finalize()
    oid = _der_oid
    pbkdf2 = _der(0x30, _der(0x04, salt) + _der_int(KDF_ROUNDS) + _der_int(32)
                  + _der(0x30, oid("1.2.840.113549.2.9") + b"\x05\x00"))  # fmt: skip
    pbes2 = _der(0x30, _der(0x30, oid("1.2.840.113549.1.5.12") + pbkdf2)
                 + _der(0x30, oid("2.16.840.1.101.3.4.1.42") + _der(0x04, iv)))  # fmt: skip
    info = _der(0x30, _der(0x30, oid("1.2.840.113549.1.5.13") + pbes2) + _der(0x04, body))
    b64 = base64.encodebytes(info).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + "\n".join(lines)
            + "\n-----END ENCRYPTED PRIVATE KEY-----\n").encode()  # fmt: skip


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big"
    )
    return bytes([tag]) + size + body


def _der_int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _der_oid(dotted: str) -> bytes:
    a, b, *rest = (int(x) for x in dotted.split("."))
    out = bytearray([40 * a + b])
    for v in rest:
        chunk = [v & 0x7F]
        while v := v >> 7:
            chunk.append(0x80 | (v & 0x7F))
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def load_private_pem(path: Path, what: str, kind: str, passphrase: Passphrase | None = None):
    """A private key file: regular, small, mode 0600 (or stricter), PEM; when encrypted
    (PKCS#8 `ENCRYPTED PRIVATE KEY`), opened with `passphrase(path)`."""
    from cryptography.exceptions import UnsupportedAlgorithm

    path = Path(path)
    data = _read_key_file(path, what)
    # the format first: a .pub file given as --key is a wrong file, not a permissions problem
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise InputError(f"{path}: is a public key; pass the private {what} file (the "
                             "one without .pub)")  # fmt: skip
        raise InputError(f"{path}: not a PEM {kind} private key")
    _check_private_mode(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        pass
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not a PEM {kind} private key") from None
    if passphrase is None:
        raise InputError(f"{path}: is passphrase-protected, and no passphrase was given")
    try:
        return serialization.load_pem_private_key(data, password=passphrase(path).encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(f"{path}: wrong passphrase for this {what}") from None


def is_token_uri(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and spec.startswith(PKCS11_SCHEME)


def load_signing_key(spec: str | os.PathLike, passphrase: Passphrase | None = None, *,
                     pin: Callable[[str], str] | None = None,
                     what: str = "signing key") -> SigningKey:  # fmt: skip
    """A key file (PEM, maybe passphrase-protected: `passphrase(path)` opens it) or a PKCS#11
    URI (its PIN from the URI, $WEIGHTVAULT_PKCS11_PIN, else `pin(uri)`)."""
    if is_token_uri(spec):
        from weightvault.format import pkcs11

        return pkcs11.load(str(spec), pin)
    path = Path(spec)
    key = load_private_pem(path, what, "Ed25519", passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: key is {type(key).__name__}, not Ed25519")
    return SigningKey(key, str(path))


def sign_all(signers: SigningKey | Sequence[SigningKey], payload_type: str, body: bytes) -> list:
    """One signature per key, in the order given: a document several keys vouch for."""
    return [k.sign(payload_type, body) for k in _distinct(signers)]


# bytes kept in front of a body that sign_framed signs: "DSSEv1 ", the payload type, two lengths
PAE_ROOM = 128


def sign_framed(signers: SigningKey | Sequence[SigningKey], payload_type: str, buf: bytearray,
                room: int = PAE_ROOM) -> list:  # fmt: skip
    """sign_all over the body buf[room:], without copying it: Ed25519 signs one contiguous
    message, PAE(type, body), and a 10 TB model's manifest is 40 MB. The PAE header is written
    into the room in front of the body and the room is then dropped (bytearray drops bytes
    from its front by moving its start, no copy): buf ends as the body alone."""
    ks = _distinct(signers)
    t = payload_type.encode()
    head = b"DSSEv1 %d %s %d " % (len(t), t, len(buf) - room)
    if len(head) > room:
        raise ValueError(f"payload type {payload_type!r} does not fit the PAE room")
    del buf[: room - len(head)]
    buf[: len(head)] = head
    try:
        with memoryview(buf) as message:
            return [k._envelope(k._key.sign(message)) for k in ks]
    finally:
        del buf[: len(head)]


def _distinct(signers: SigningKey | Sequence[SigningKey]) -> list[SigningKey]:
    ks = [signers] if isinstance(signers, SigningKey) else list(signers)
    ids = [k.public.key_id for k in ks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"the same signing key ({dup[:16]}) is given twice")
    return ks


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
    return verify_threshold(payload_type, body, signatures, trusted, what, 1)[0]


def verify_threshold(payload_type: str, body: bytes, signatures: list,
                     trusted: Sequence[PublicKey], what: str, threshold: int) -> list[PublicKey]:  # fmt: skip
    """The distinct trusted keys whose signatures over `body` verify, at least `threshold` of
    them, in signature order; else TrustError naming `what`. Every signature by a trusted key
    is checked: one that does not verify makes the document untrusted, whatever the others say
    (a forged extra signature is an attack, not noise)."""
    if not signatures:
        raise TrustError(f"{what}: no signature")
    by_id = {k.key_id: k for k in trusted}
    good: dict[str, PublicKey] = {}
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
        if not (s.get("alg") == "ed25519" and key.verify(payload_type, body, sig)):
            raise TrustError(f"{what}: signature by key {key.key_id[:16]} does not match the "
                             "document")  # fmt: skip
        good.setdefault(key.key_id, key)
    if not good:
        raise TrustError(f"{what}: signed by unknown key {', '.join(unknown)}; pass its public "
                         "key with --trust")  # fmt: skip
    if len(good) < threshold:
        missing = [k.key_id[:16] for k in trusted if k.key_id not in good]
        raise TrustError(f"{what}: signed by {len(good)} of the {threshold} trusted keys the "
                         f"policy requires (no signature by {', '.join(missing)})")  # fmt: skip
    return list(good.values())
