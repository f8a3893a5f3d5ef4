"""Encrypted bundles (FORMAT.md section 10, format versions 2 to 5): the data key, sealed
objects, envelopes, shares.

A bundle's data key (32 random bytes) never leaves this module in the clear except into an
age envelope or SLIP-39 shares. Each stored object is sealed with AES-256-GCM under a key
derived from the data key and the object's own random nonce, in segments (the STREAM
construction: segment counter and a last-segment flag in the GCM nonce) so objects stream
through in bounded memory and a truncated or reordered object fails. The associated data
names the bundle (its random salt) and the object's role and position, so an object cannot be
swapped for another. Stored names and digests are of ciphertext: audits need no key.
From format version 5 (scheme weightvault-aead-2) a chunk object's nonce is an HMAC of its
plaintext under a key of the lineage, and its associated data names the lineage, not the
bundle or position: the versions of one model (one data key) seal an identical chunk to an
identical object, which the vault's pool then stores once (FORMAT.md 10.3).
docs/FORMAT.md section 10 is the normative description; this file must follow it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from weightvault.errors import CorruptData, InputError
from weightvault.format.manifest import SCHEME_LINEAGE  # noqa: F401 - format version 5's

SCHEME = "weightvault-aead-1"  # format versions 2 to 4
MAGIC = b"WVE2"
HEADER = len(MAGIC) + 1 + 16  # magic, version byte, object nonce
SEGMENT = 1 << 20  # plaintext bytes per segment (the last may be shorter)
TAG = 16
KEY_CHECK_TEXT = b"weightvault key check"
MAX_ENVELOPE = 64 << 10

Reader = Callable[[int], bytes]


class KeyAccessError(InputError):
    """The identity, recipient or shares given cannot open the bundle."""


class NotEnoughShares(KeyAccessError):
    """Valid shares of this bundle, but fewer than its threshold."""

    def __init__(self, msg: str, have: list[str], need: int):
        super().__init__(msg)
        self.have, self.need = have, need


def new_data_key() -> bytes:
    return os.urandom(32)


def new_salt() -> str:
    return os.urandom(32).hex()


def _hkdf(dk: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dk)


def associated_data(salt_hex: str, label: str, index: int) -> bytes:
    """Binds a sealed object to its bundle (salt), its role (label) and its position."""
    return (
        b"weightvault/2 "
        + label.encode()
        + b"\0"
        + bytes.fromhex(salt_hex)
        + struct.pack(">Q", index)
    )


def chunk_ad(lineage_salt_hex: str) -> bytes:
    """Associated data of a chunk object of scheme weightvault-aead-2: the lineage only. The
    signed (and sealed) file table names each chunk's object by its SHA-256, which binds the
    object to its position; naming the position here would make identical chunks of two
    versions differ."""
    return b"weightvault/3 chunk\0" + bytes.fromhex(lineage_salt_hex)


def chunk_nonce_key(dk: bytes, lineage_salt_hex: str) -> bytes:
    return _hkdf(dk, bytes.fromhex(lineage_salt_hex), b"weightvault/3 chunk nonce")


def _nonce(counter: int, last: bool) -> bytes:
    return struct.pack(">QI", counter, 1 if last else 0)


def sealed_size(plain: int) -> int:
    """Stored size of an object sealing `plain` bytes."""
    segments = max(1, -(-plain // SEGMENT))
    return HEADER + plain + TAG * segments


def plain_size(stored: int) -> int | None:
    """Plaintext size of a sealed object of `stored` bytes, or None if no plaintext fits."""
    body = stored - HEADER
    if body < TAG:
        return None
    full, rest = divmod(body, SEGMENT + TAG)
    if rest == 0:  # the last segment is full
        return full * SEGMENT
    if rest < TAG or (rest == TAG and full > 0):  # an empty last segment only if it is the only
        return None
    return full * SEGMENT + rest - TAG


class Encryptor:
    """Seals one object fed as pieces; output pieces are the stored bytes, in order. `nonce`
    and `ad` given: a lineage chunk (LineageSealer); else a fresh random nonce and the
    bundle's associated data."""

    def __init__(self, dk: bytes, salt_hex: str | None, label: str, index: int, *,
                 nonce: bytes | None = None, ad: bytes | None = None):  # fmt: skip
        nonce = os.urandom(16) if nonce is None else nonce
        self._aead = AESGCM(_hkdf(dk, nonce, b"weightvault/2 object key"))
        self._ad = associated_data(salt_hex, label, index) if ad is None else ad
        self._buf = bytearray()
        self._counter = 0
        self._header = MAGIC + b"\x01" + nonce

    def _segment(self, data, last: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self._counter, last), data, self._ad)
        self._counter += 1
        return out

    def feed(self, data) -> bytes:
        out = [self._header] if self._header else []
        self._header = b""
        mv = memoryview(data)
        # a segment goes out only once more data follows it: the last one must be flagged last
        if self._buf:
            need = SEGMENT - len(self._buf)
            if len(mv) <= need:
                self._buf += mv
                return b"".join(out)
            self._buf += mv[:need]
            mv = mv[need:]
            out.append(self._segment(self._buf, False))
        while len(mv) > SEGMENT:
            out.append(self._segment(mv[:SEGMENT], False))
            mv = mv[SEGMENT:]
        self._buf = bytearray(mv)
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._header + self._segment(bytes(self._buf), True)
        self._header = b""
        self._buf = bytearray()
        return out

    def finish_parts(self) -> Iterator[bytes]:
        yield self.finish()


class LineageSealer:
    """Seals one chunk object of scheme weightvault-aead-2 (FORMAT.md 10.3): NONCE = the first
    16 bytes of HMAC-SHA256(K_nonce, P), so the whole plaintext P is needed before the first
    segment. P waits in a Spool (memory stays flat whatever the chunk size); `feed` returns
    nothing and `finish_parts` yields the stored bytes. A deterministic nonce is safe here
    because it is a function of the plaintext under a secret key (SIV): equal nonces mean
    equal plaintexts, never the same GCM key and nonce over two different plaintexts."""

    SPOOL = 64 << 20  # bytes of P kept in memory; more waits encrypted on disk

    def __init__(self, dk: bytes, lineage_salt_hex: str):
        self._dk, self._ad = dk, chunk_ad(lineage_salt_hex)
        self._mac = hmac.new(chunk_nonce_key(dk, lineage_salt_hex), digestmod=hashlib.sha256)
        self._spool = Spool(self.SPOOL)

    def feed(self, data) -> bytes:
        self._mac.update(data)
        self._spool.write(data)
        return b""

    def finish_parts(self) -> Iterator[bytes]:
        e = Encryptor(self._dk, None, "chunk", 0, nonce=self._mac.digest()[:16], ad=self._ad)
        try:
            for data in self._spool.pieces(4 * SEGMENT):
                if out := e.feed(data):
                    yield out
            yield e.finish()
        finally:
            self._spool.close()


class Spool:
    """Bytes written once and read back once: in memory up to `limit` (a default-sized chunk
    of 64 MiB stays there: spilling it cost a seal 40 % more time), beyond that in an unlinked
    temporary file, encrypted there (AES-256-CTR) under a random key that exists only in this
    object, so a chunk's plaintext never reaches a disk in the clear."""

    def __init__(self, limit: int):
        self._parts: list[bytes] = []
        self._size, self._limit = 0, limit
        self._file = None
        self._cipher = self._enc = None

    def write(self, data) -> None:
        if self._file is None and self._size + len(data) <= self._limit:
            self._parts.append(bytes(data))
            self._size += len(data)
            return
        if self._file is None:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
            self._enc = self._cipher.encryptor()
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            for part in self._parts:
                self._file.write(self._enc.update(part))
            self._parts = []
        self._file.write(self._enc.update(data))

    def pieces(self, n: int) -> Iterator[bytes]:
        """The bytes written, in pieces of at most `n` bytes (in memory: as written)."""
        if self._file is None:
            for part in self._parts:
                for i in range(0, len(part), n):
                    yield part if len(part) <= n else part[i : i + n]
            return
        self._file.seek(0)
        dec = self._cipher.decryptor()
        while data := self._file.read(n):
            yield dec.update(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._parts = []


class Decryptor:
    """Opens one sealed object as a pull reader of its plaintext. Every segment is
    authenticated before any of its bytes are returned; `finish` proves the object ended
    where its last segment said it would."""

    def __init__(self, read: Reader, stored: int, dk: bytes, salt_hex: str | None, label: str,
                 index: int, *, ad: bytes | None = None):  # fmt: skip
        plain = plain_size(stored)
        if plain is None:
            raise CorruptData(f"{stored} bytes cannot be a sealed object")
        self._read, self._left = read, plain
        head = _read_exact(read, HEADER)
        if head[:4] != MAGIC or head[4] != 1:
            raise CorruptData("not a sealed object (bad magic or version)")
        self._aead = AESGCM(_hkdf(dk, head[5:HEADER], b"weightvault/2 object key"))
        self._ad = associated_data(salt_hex, label, index) if ad is None else ad
        self._counter = 0
        self._buf = b""
        self._pos = 0
        self._done = False

    def _next(self) -> None:
        n = min(SEGMENT, self._left)
        last = self._left <= SEGMENT
        ct = _read_exact(self._read, n + TAG)
        try:
            self._buf = self._aead.decrypt(_nonce(self._counter, last), ct, self._ad)
        except InvalidTag:
            raise CorruptData(
                f"segment {self._counter} fails authentication (wrong key, damaged, or moved "
                "from another position or bundle)"
            ) from None
        self._pos = 0
        self._counter += 1
        self._left -= n
        self._done = last

    def read(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            if self._done:
                return b""
            self._next()
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def finish(self) -> None:
        """The codec stopped reading: anything it left is data the format does not allow."""
        if self._pos < len(self._buf) or not self._done:
            raise CorruptData("plaintext continues after the encoded chunk ends")
        if self._read(1):
            raise CorruptData("bytes after the last segment")


def chunk_opener(dk: bytes, enc: dict, index: int) -> Callable[[Reader, int], Decryptor]:
    """How to open the chunk object at file-table position `index` of a bundle whose
    `encryption` member is `enc` (the position matters to weightvault-aead-1 only)."""
    if enc["scheme"] == SCHEME_LINEAGE:
        ad = chunk_ad(enc["lineage_salt"])
        return lambda read, size: Decryptor(read, size, dk, None, "chunk", 0, ad=ad)
    salt = enc["salt"]
    return lambda read, size: Decryptor(read, size, dk, salt, "chunk", index)


def _read_exact(read: Reader, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = read(left)
        if not b:
            raise CorruptData("sealed object ends early")
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def seal_bytes(dk: bytes, salt_hex: str, label: str, index: int, data: bytes) -> bytes:
    e = Encryptor(dk, salt_hex, label, index)
    return e.feed(data) + e.finish()


def open_bytes(dk: bytes, salt_hex: str, label: str, index: int, data: bytes, limit: int) -> bytes:
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos : pos + n])
        pos += len(out)
        return out

    d = Decryptor(read, len(data), dk, salt_hex, label, index)
    parts, total = [], 0
    while chunk := d.read(SEGMENT):
        total += len(chunk)
        if total > limit:
            raise CorruptData(f"larger than {limit} bytes")
        parts.append(chunk)
    d.finish()
    return b"".join(parts)


# -- the key check: proves a key opens the bundle without touching the weights


def key_check(dk: bytes, salt_hex: str) -> dict:
    nonce = os.urandom(12)
    key = _hkdf(dk, bytes.fromhex(salt_hex), b"weightvault/2 key check")
    ct = AESGCM(key).encrypt(nonce, KEY_CHECK_TEXT, associated_data(salt_hex, "check", 0))
    return {"nonce": nonce.hex(), "ciphertext": ct.hex()}


def key_opens(dk: bytes, enc: dict) -> bool:
    key = _hkdf(dk, bytes.fromhex(enc["salt"]), b"weightvault/2 key check")
    try:
        pt = AESGCM(key).decrypt(bytes.fromhex(enc["key_check"]["nonce"]),
                                 bytes.fromhex(enc["key_check"]["ciphertext"]),
                                 associated_data(enc["salt"], "check", 0))  # fmt: skip
    except InvalidTag:
        return False
    return hmac.compare_digest(pt, KEY_CHECK_TEXT)


# -- age recipients and identities (pyrage: the age format, readable by the stock `age` tool


def parse_recipient(text: str):
    import pyrage

    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith("ssh-ed25519 ") or text.startswith("ssh-rsa "):
            return pyrage.ssh.Recipient.from_str(text)
    except Exception as e:  # noqa: BLE001 - pyrage raises its own types
        raise InputError(f"recipient {text[:40]!r}: not a valid age recipient ({e})") from None
    raise InputError(
        f"recipient {text[:40]!r}: expected an age X25519 recipient (age1...) or an SSH public "
        "key (ssh-ed25519 ...)"
    )


def recipients_from(values: Iterable[str]) -> list[str]:
    """Recipient strings; a value naming a readable file contributes its non-comment lines."""
    out: list[str] = []
    for v in values:
        p = Path(v)
        if not v.startswith(("age1", "ssh-")) and p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            found = [ln for ln in lines if ln and not ln.startswith("#")]
            if not found:
                raise InputError(f"{p}: no recipients in the file")
            out += found
        else:
            out.append(v.strip())
    for r in out:
        parse_recipient(r)
    return out


_AGE_FILE = (b"age-encryption.org/v1\n", b"-----BEGIN AGE ENCRYPTED FILE-----")


def load_identities(path: Path, passphrase: Callable[[Path], str] | None = None) -> list:
    """An age identity file (AGE-SECRET-KEY-1... lines) or an OpenSSH ed25519/rsa private key.
    Either may be protected: an age file made with a passphrase (`age-keygen | age -p -a`, as
    stock age reads with -i), or an SSH key with one (ssh-keygen's default); the passphrase
    comes from `passphrase(path)`."""
    import pyrage

    from weightvault.format.keys import read_private_file

    def ask() -> str:
        if passphrase is None:
            raise InputError(f"{path}: is passphrase-protected, and no passphrase was given")
        return passphrase(Path(path))

    data = read_private_file(Path(path), "identity")
    if data.lstrip().startswith(_AGE_FILE):
        try:
            data = pyrage.passphrase.decrypt(data.lstrip(), ask())
        except pyrage.DecryptError:
            raise InputError(f"{path}: wrong passphrase (or not an age file made with a "
                             "passphrase)") from None  # fmt: skip
        if data.lstrip().startswith(_AGE_FILE):
            raise InputError(f"{path}: holds another age file, not an identity")
    if b"OPENSSH PRIVATE KEY" in data or b"RSA PRIVATE KEY" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(_ssh_unprotected(data, ask, path))]
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a usable SSH identity ({e})") from None
    ids = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ids.append(pyrage.x25519.Identity.from_str(line))
        except Exception:  # noqa: BLE001
            raise InputError(f"{path}:{n}: not an age identity (AGE-SECRET-KEY-1...)") from None
    if not ids:
        raise InputError(f"{path}: no age identity in the file")
    return ids


def _ssh_unprotected(data: bytes, ask: Callable[[], str], path: Path) -> bytes:
    """An OpenSSH private key as pyrage takes it: decrypted in memory if it has a passphrase
    (ssh-keygen's default), which pyrage cannot ask for itself."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    try:
        ser.load_ssh_private_key(data, None)
        return data
    except TypeError:  # protected: "password was not provided"
        pass
    except (ValueError, UnsupportedAlgorithm):
        return data  # left to pyrage, which names what is wrong
    try:
        key = ser.load_ssh_private_key(data, ask().encode())
    except ValueError:
        raise InputError(f"{path}: wrong passphrase for this SSH key") from None
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())


def wrap(plaintext: bytes, recipient: str) -> bytes:
    import pyrage

    return pyrage.encrypt(plaintext, [parse_recipient(recipient)], armored=True)


def unwrap(envelope: bytes, identities: list) -> bytes | None:
    """The envelope's plaintext, or None if none of the identities is a recipient."""
    import pyrage

    try:
        return pyrage.decrypt(envelope, identities)
    except pyrage.DecryptError:
        return None
    except Exception as e:  # noqa: BLE001 - a malformed envelope
        raise CorruptData(f"not a readable age file ({e})") from None


def data_key_text(dk: bytes) -> bytes:
    return dk.hex().encode() + b"\n"


def parse_data_key_text(text: bytes, where: str) -> bytes:
    """Exactly 64 lowercase hex digits and a line feed (FORMAT.md 10.5)."""
    s = text[:64]
    if len(text) != 65 or text[64:] != b"\n" or any(c not in b"0123456789abcdef" for c in s):
        raise CorruptData(f"{where}: does not hold a data key (64 hex digits and a line feed)")
    return bytes.fromhex(s.decode())


# -- SLIP-39 shares


@dataclass(frozen=True)
class Share:
    text: str  # normalised mnemonic words
    identifier: int
    index: int
    threshold: int


def normalise_words(text: str) -> str:
    words = unicodedata.normalize("NFKD", text).lower().split()
    return " ".join(w for w in words if not w.startswith("#"))


def share_digest(salt_hex: str, words: str) -> str:
    return hashlib.sha256(b"weightvault/2 share\0" + bytes.fromhex(salt_hex) +
                          words.encode()).hexdigest()  # fmt: skip


SHARE_PLAINTEXT = 512  # bytes of every share envelope's plaintext from format version 4


def share_plaintext(words: str, format_version: int) -> bytes:
    """A share envelope's plaintext (FORMAT.md 10.5): the words and a line feed; from version
    4 padded with spaces to SHARE_PLAINTEXT bytes, so every envelope of a bundle has one size
    and none reveals its mnemonic's length (SLIP-39 words are 4 to 8 letters)."""
    text = words.encode() + b"\n"
    if format_version < 4:
        return text
    if len(text) > SHARE_PLAINTEXT:
        raise InputError(f"a share of {len(text)} bytes does not fit {SHARE_PLAINTEXT}")
    return text + b" " * (SHARE_PLAINTEXT - len(text))


def split(dk: bytes, threshold: int, count: int) -> list[Share]:
    import shamir_mnemonic as sm

    if not 1 <= threshold <= count <= 16:
        raise InputError(f"threshold {threshold} of {count} custodians: need 1 <= K <= N <= 16")
    words = sm.generate_mnemonics(1, [(threshold, count)], dk)[0]
    return [parse_share(w, "new share") for w in words]


def parse_share(text: str, where: str) -> Share:
    import shamir_mnemonic as sm

    words = normalise_words(text)
    if not words:
        raise KeyAccessError(f"{where}: no share words in it")
    try:
        s = sm.Share.from_mnemonic(words)
    except sm.MnemonicError as e:
        raise KeyAccessError(f"{where}: not a valid SLIP-39 share ({e})") from None
    return Share(words, s.identifier, s.index, s.member_threshold)


def combine(shares: list[tuple[str, Share]], enc: dict) -> bytes:
    """The data key from a quorum of shares, proved by the bundle's key check."""
    return recover(shares, enc)[0]


def recover(shares: list[tuple[str, Share]], enc: dict) -> tuple[bytes, list[str], bool]:
    """(data key, the shares combined, whether they are this bundle's own) from `shares`,
    ((where, share) each), the key proved by the bundle's key check (FORMAT.md 10.6, 10.8).

    This bundle's own shares are those whose digest its signed manifest lists: checked one by
    one, so an error names the share at fault. Any other share may be one of another version
    of the same lineage (same data key, another split): the shares of one split (SLIP-39
    identifier) that reach its threshold are combined, and the key is taken only if it passes
    THIS bundle's key check. What a share says of itself (identifier, threshold) only groups
    it; the key check alone decides."""
    import shamir_mnemonic as sm

    info = enc.get("shares")
    known = {e["share_digest"] for e in enc["envelopes"] if e["kind"] == "share"}
    own: dict[int, tuple[str, Share]] = {}
    other: dict[int, dict[int, tuple[str, Share]]] = {}  # identifier -> member index -> share
    for where, s in shares:
        mine = share_digest(enc["salt"], s.text) in known
        group = own if mine else other.setdefault(s.identifier, {})
        if s.index in group:
            first = group[s.index][0]
            if group[s.index][1].text == s.text:
                raise KeyAccessError(f"{where}: the same share as {first}")
            raise KeyAccessError(f"{where}: another share with the member index of {first}: "
                                 "they are not of one key split")  # fmt: skip
        group[s.index] = (where, s)
    tries = [(own, info["threshold"], True)] if info and own else []
    tries += [(g, next(iter(g.values()))[1].threshold, False) for g in other.values()]
    failed: list[str] = []
    for group, k, mine in tries:
        if len(group) < k:
            continue
        used = [group[i] for i in sorted(group)[:k]]  # SLIP-39 combines exactly K
        names = ", ".join(w for w, _ in used)
        try:
            dk = sm.combine_mnemonics([s.text for _, s in used])
        except sm.MnemonicError as e:
            raise KeyAccessError(f"{names}: the shares do not combine ({e})") from None
        if key_opens(dk, enc):
            return dk, [w for w, _ in used], mine
        if mine:  # listed in the signed manifest, yet the key fails: the bundle lies
            raise KeyAccessError("the shares combine to a key that does not open this bundle")
        failed.append(names)
    if failed:
        raise KeyAccessError(f"{failed[0]}: these shares belong to another bundle: they "
                             "combine to a key that fails this bundle's key check")  # fmt: skip
    if other:  # a split short of its threshold: nothing to test, so nothing to trust
        group = next(iter(other.values()))
        where, s = next(iter(group.values()))
        raise KeyAccessError(
            f"{where}: this share belongs to another bundle or key split (its digest is not "
            f"in this bundle's manifest), and {len(group)} of the {s.threshold} shares of its "
            f"split {'is' if len(group) == 1 else 'are'} too few to combine and test against "
            "this bundle's key check"
        )
    if not info:
        raise KeyAccessError("this bundle was not split into shares; use --identity")
    k = info["threshold"]
    more = k - len(own)
    raise NotEnoughShares(
        f"{len(own)} of the {k} shares needed: {more} more share{'s' * (more > 1)} "
        f"needed to open the bundle",
        [own[i][0] for i in sorted(own)],
        k,
    )


def load_custodians(path: Path) -> list[tuple[str, str]]:
    """custodians.toml: [[custodian]] tables with `name` and `recipient` (age or SSH key)."""
    import tomllib

    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"{path}: cannot read custodians file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    items = doc.get("custodian")
    if set(doc) != {"custodian"} or not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected one or more [[custodian]] tables and nothing else")
    out = []
    for i, c in enumerate(items, 1):
        if (
            not isinstance(c, dict)
            or set(c) != {"name", "recipient"}
            or not all(isinstance(v, str) for v in c.values())
        ):
            raise InputError(f"{path}: custodian {i} needs exactly `name` and `recipient` strings")
        parse_recipient(c["recipient"])
        out.append((c["name"], c["recipient"].strip()))
    return out
