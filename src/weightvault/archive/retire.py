"""Retiring a bundle: a deliberate, signed removal from a replica (docs/FORMAT.md section 2.4).

Removing a bundle is the one thing a preservation tool must never do by accident, and an
auditor must never mistake for loss. So a retirement is said before anything is deleted, in a
notice signed by a trusted key and kept on the replica (`retired/BUNDLE_ID.json`), and, where
the lab keeps a preservation log, in a `retired` statement there (the caller appends it
first). An auditor that finds the bundle gone accepts the absence only because of that
signature; a deleted notice makes the bundle `lost` again, which fails safe.

What the bundle shared with others stays: the bundle's own files go, signature first (so a
crash leaves an uncommitted directory, which the notice also covers), and pool objects are
then left to gc's rules, which count references from signed manifests only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from weightvault.errors import Conflict, CorruptData, WeightvaultError
from weightvault.format import canon
from weightvault.format.keys import PublicKey, SigningKey, sign_all, verify_signatures
from weightvault.format.manifest import SIGNATURE_KEY
from weightvault.log import statements
from weightvault.storage.store import Store
from weightvault.storage.vault import Vault, prefix

NOTICES = "retired"
PAYLOAD_TYPE = "application/vnd.weightvault.retirement+json; version=1"
MAX_NOTICE = 64 * 1024


def notice_key(bundle_id: str) -> str:
    return f"{NOTICES}/{bundle_id}.json"


def make_notice(statement: bytes, signers: SigningKey | list[SigningKey]) -> bytes:
    """`{"statement": S, "signatures": [...]}`, canonical; S is the log's `retired` statement
    (so the notice and the log entry are the same bytes, signed twice over)."""
    doc = json.loads(statement)
    return canon.canonical({"statement": doc,
                            "signatures": sign_all(signers, PAYLOAD_TYPE, statement)})  # fmt: skip


def parse_notice(raw: bytes, trusted: list[PublicKey], what: str) -> dict:
    """The statement of a notice whose signature verifies against `trusted`; else raises."""
    env = canon.parse(raw, what, max_size=MAX_NOTICE)
    if not isinstance(env, dict) or set(env) != {"statement", "signatures"} \
            or not isinstance(env["signatures"], list):  # fmt: skip
        raise CorruptData(f"{what}: not a signed retirement notice")
    body = canon.canonical(env["statement"])
    verify_signatures(PAYLOAD_TYPE, body, env["signatures"], trusted, what)
    doc = statements.parse(body, what)
    if doc["kind"] != "retired":
        raise CorruptData(f"{what}: a {doc['kind']} statement, not a retirement")
    return doc


def retired_ids(store: Store, trusted: list[PublicKey], replica: str) -> dict[str, dict]:
    """{bundle id: statement} of the notices on this replica (called `replica` here) that a
    trusted key signed, whose file name is the bundle they retire and which name this replica
    (a notice copied from another replica retires nothing here). Anything else is ignored: it
    retires nothing, and a missing notice only makes an audit report a loss."""
    out: dict[str, dict] = {}
    try:
        listing = store.list(NOTICES)
    except (WeightvaultError, FileNotFoundError):
        return out
    for key, size in sorted(listing.items()):
        bid = key.rsplit("/", 1)[-1].removesuffix(".json")
        if size > MAX_NOTICE or len(bid) != 64:
            continue
        try:
            doc = parse_notice(store.read_bytes(key, MAX_NOTICE), trusted, store.describe(key))
        except WeightvaultError:
            continue
        if doc["bundle"] == bid and doc["replica"] in (None, replica):
            out[bid] = doc
    return out


@dataclass
class RetireResult:
    replica: str
    url: str
    name: str
    bundle: str
    files: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def retire(replica: str, store: Store, ref: str, *, statement: bytes,
           signers: SigningKey | list[SigningKey], trusted: list[PublicKey],
           object_lock=None) -> RetireResult:  # fmt: skip
    """Write the notice, then remove bundle `ref`'s own files from `store` (signature first).
    Pool objects are not touched here (gc collects those no signed manifest names)."""
    vault = Vault(store)
    b = vault.load(ref, trusted)  # only a bundle a trusted key signed is retired by this tool
    if object_lock is not None:
        raise Conflict(f"replica {replica}: under Object Lock; bundle {b.name} cannot be removed "
                       "before its retention ends (nothing was changed)")  # fmt: skip
    doc = json.loads(statement)
    if doc.get("bundle") != b.bundle_id:
        raise CorruptData(f"retirement statement names {doc.get('bundle')}, not {b.bundle_id}")
    res = RetireResult(replica, store.url, b.name, b.bundle_id)
    key = notice_key(b.bundle_id)
    if not store.put_bytes(key, make_notice(statement, signers), exclusive=True):
        try:
            parse_notice(store.read_bytes(key, MAX_NOTICE), trusted, store.describe(key))
            res.notes.append(f"{store.describe(key)}: an earlier retirement notice is kept")
        except WeightvaultError as e:
            raise Conflict(f"{store.describe(key)} exists and is not a trusted notice ({e}); "
                           "nothing was removed") from None  # fmt: skip
    _remove(store, res)
    return res


def finish(replica: str, store: Store, name: str, bundle_id: str) -> RetireResult:
    """Remove what a killed retirement left of bundle `name` (its signature already gone); the
    caller found the trusted notice that covers it."""
    res = RetireResult(replica, store.url, name, bundle_id,
                       notes=["finished an interrupted retirement"])  # fmt: skip
    _remove(store, res)
    return res


def _remove(store: Store, res: RetireResult) -> None:
    p = prefix(res.name)
    with store.lock(f"commit-{res.name}"):
        files = store.list(p)
        sig = f"{p}/{SIGNATURE_KEY}"
        # the signature alone commits (FORMAT.md section 2.1): once it is gone, whatever a
        # crash leaves is an interrupted bundle, never a damaged committed one
        for k in sorted(files, key=lambda k: k != sig):
            store.delete(k)
            res.files += 1
            res.bytes += files[k]
        store.prune_dirs(p)


def summary(r: RetireResult) -> str:
    line = (f"{r.replica}: retired {r.name} ({r.bundle[:16]}): {r.files} files removed, "
            f"notice {NOTICES}/{r.bundle[:16]}....json written")  # fmt: skip
    return "\n".join([line, *(f"  note: {n}" for n in r.notes)])
