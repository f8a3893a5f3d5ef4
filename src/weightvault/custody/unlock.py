"""Opening an encrypted bundle: from an age identity or a quorum of shares to the data key,
proved by the key check, then the private section (file table) decrypted and checked.

Envelopes and the private section are plain payload files; each is read bounded and checked
against the signed manifest's digests before it is used, like every other byte from storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.errors import CorruptData, IntegrityError, StorageError
from weightvault.format import canon, crypt
from weightvault.format.crypt import KeyAccessError
from weightvault.format.fixity import Fixity
from weightvault.format.manifest import MAX_MANIFEST, Manifest
from weightvault.storage.store import Store
from weightvault.storage.vault import Bundle, prefix


@dataclass
class Keys:
    """What the caller holds: age identity files and/or SLIP-39 share files."""

    identities: list[Path] = field(default_factory=list)
    shares: list[Path] = field(default_factory=list)
    # asked for the passphrase of a passphrase-protected identity file (the CLI prompts)
    passphrase: Callable[[Path], str] | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.identities or self.shares)


@dataclass(frozen=True)
class Unlocked:
    manifest: Manifest  # the opened view: files and source included
    data_key: bytes = field(repr=False)
    method: str  # identity | shares
    detail: str  # which envelope or how many shares
    index: dict[str, int] = field(repr=False)  # object name -> chunk position (associated data)

    def cipher(self, obj: str) -> Callable[[crypt.Reader, int], crypt.Decryptor]:
        return crypt.chunk_opener(self.data_key, self.manifest.encryption, self.index[obj])

    def __repr__(self) -> str:  # the data key must never reach a log
        return f"Unlocked({self.manifest.name}, {self.method})"


def read_plain(store: Store, name: str, entry: dict, limit: int) -> bytes:
    """A plain payload file, checked against the manifest's size and digests."""
    key = f"{prefix(name)}/data/{entry['path']}"
    where = store.describe(key)
    if entry["size"] > limit:
        raise CorruptData(f"{where}: declared {entry['size']} bytes, over the {limit} limit")
    try:
        data = store.read_bytes(key, limit)
    except StorageError:
        if store.size(key) is None:
            raise IntegrityError(f"{where}: missing") from None
        raise
    if Fixity.of(data, entry).differs_from(entry):
        raise IntegrityError(f"{where}: does not match the digests in the signed manifest")
    return data


def data_key(store: Store, bundle: Bundle, keys: Keys) -> tuple[bytes, str, str]:
    """(data key, method, detail), the key proved by the bundle's key check."""
    m = bundle.manifest
    enc = m.encryption
    if not keys:
        raise KeyAccessError(
            f"bundle {m.name} is encrypted: pass --identity FILE (an age identity it was "
            "encrypted to) or --share FILE for each of a quorum of shares"
        )
    ids: list = []
    if keys.identities:
        for p in keys.identities:
            ids += crypt.load_identities(p, keys.passphrase)
        for e in enc["envelopes"]:
            if e["kind"] != "recipient":
                continue
            env = read_plain(store, m.name, e, crypt.MAX_ENVELOPE)
            text = crypt.unwrap(env, ids)
            if text is None:
                continue
            dk = crypt.parse_data_key_text(text, store.describe(f"{prefix(m.name)}/data/"
                                                                 f"{e['path']}"))  # fmt: skip
            if not crypt.key_opens(dk, enc):
                raise IntegrityError(f"{e['path']}: the data key it holds fails the bundle's key "
                                     "check (the envelope was replaced)")  # fmt: skip
            return dk, "identity", e["path"]
    # an identity may also be a custodian's: the share it opens counts towards the quorum
    shares = [(f"{_label(enc, path)} (opened with {', '.join(map(str, keys.identities))})",
               crypt.parse_share(text.decode("utf-8", "replace"), path))
              for path, text in opened_shares(store, m, ids if keys.identities else [])]  # fmt: skip
    if keys.identities and not shares and not keys.shares:
        names = ", ".join(str(p) for p in keys.identities)
        raise KeyAccessError(f"{names}: not a recipient of bundle {m.name} (it was "
                             f"encrypted to {_recipients(enc)})")  # fmt: skip
    shares += [(str(p), crypt.parse_share(_read_share(p), str(p))) for p in keys.shares]
    # another version's shares of the same lineage open it too: recover() takes them only
    # when their key passes this bundle's key check (FORMAT.md 10.8)
    dk, used, own = crypt.recover(shares, enc)
    return dk, "shares", f"{len(used)} shares" + ("" if own else " of another version")


def check_keys(store: Store, bundle: Bundle, keys: Keys) -> tuple[str, str]:
    """The key check a steward runs at acceptance: (method, result). Opens the bundle's key
    check if the keys reach the data key; otherwise proves each share offered is one of this
    bundle's (its digest is in the signed manifest). Wrong keys raise KeyAccessError."""
    if bundle.manifest.encryption is None:
        return "none", "the bundle is not encrypted"
    if not keys:
        return "none", "no key or share offered"
    try:
        _dk, method, detail = data_key(store, bundle, keys)
    except crypt.NotEnoughShares as e:
        return "shares", (f"{len(e.have)} share{'s' * (len(e.have) > 1)} verified as this "
                          f"bundle's ({'; '.join(e.have)}); {e.need} needed to open it")  # fmt: skip
    return method, f"the data key opens the bundle's key check ({detail})"


def opened_shares(store: Store, m: Manifest, ids: list) -> list[tuple[str, bytes]]:
    """(envelope path, share words) for every share envelope these identities open."""
    out = []
    for e in m.encryption["envelopes"] if ids else ():
        if e["kind"] == "share":
            text = crypt.unwrap(read_plain(store, m.name, e, crypt.MAX_ENVELOPE), ids)
            if text is not None:
                out.append((e["path"], text))
    return out


def _label(enc: dict, path: str) -> str:
    return next((f"share of {e['label']}" for e in enc["envelopes"] if e["path"] == path), path)


def _recipients(enc: dict) -> str:
    rs = [e["recipient"][:20] + "..." for e in enc["envelopes"] if e["kind"] == "recipient"]
    return ", ".join(rs) or "no recipients, only shares"


def _read_share(p: Path) -> str:
    try:
        data = Path(p).read_bytes()
    except OSError as e:
        raise KeyAccessError(f"{p}: cannot read share file ({e.strerror})") from None
    if len(data) > 64 << 10:
        raise KeyAccessError(f"{p}: too large to be a share")
    return data.decode("utf-8", "replace")


def open_bundle(store: Store, bundle: Bundle, keys: Keys) -> Unlocked:
    dk, method, detail = data_key(store, bundle, keys)
    return open_with_key(store, bundle, dk, method, detail)


def open_with_key(store: Store, bundle: Bundle, dk: bytes, method: str, detail: str) -> Unlocked:
    m = bundle.manifest
    enc = m.encryption
    entry = enc["private"]
    where = store.describe(f"{prefix(m.name)}/data/{entry['path']}")
    sealed = read_plain(store, m.name, entry, crypt.sealed_size(MAX_MANIFEST))
    try:
        raw = crypt.open_bytes(dk, enc["salt"], "private", 0, sealed, MAX_MANIFEST)
    except CorruptData as e:
        raise IntegrityError(f"{where}: cannot be decrypted ({e})") from None
    private = canon.parse(raw, where, max_size=MAX_MANIFEST)
    if not isinstance(private, dict):
        raise CorruptData(f"{where}: not a JSON object")
    opened = m.opened(private, where)
    index = {c["object"]: i for i, c in enumerate(c for f in opened.files for c in f["chunks"])}
    return Unlocked(opened, dk, method, detail, index)


def prepare(store: Store, bundle: Bundle, keys: Keys) -> tuple[Manifest, Unlocked | None]:
    """The manifest to read files from, and how to decrypt (None for a clear bundle)."""
    if bundle.manifest.encryption is None:
        return bundle.manifest, None
    u = open_bundle(store, bundle, keys)
    return u.manifest, u
