"""Key statements: a rotation (NEW succeeds OLD, signed by both) or a revocation (KEY is not
to be trusted for anything signed from SINCE on), as signed canonical documents
(manifests/key-statement.schema.json, docs/FORMAT.md section 13).

Stored as an envelope `{"statement": S, "signatures": [...]}`, each signature as in FORMAT.md
section 6 over PAE(PAYLOAD_TYPE, canonical(S)). The envelope is self-contained: it carries the
public keys it is about, so a reader decades from now can check it with nothing but the log
and the keys it already trusts. What a statement means to a reader (is its signer trusted?)
is format/trust.py's business; this module only writes, parses and checks signatures.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from weightvault.errors import CorruptData, InputError, TrustError
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey

PAYLOAD_TYPE = "application/vnd.weightvault.key-statement+json; version=1"
SCHEMA = "key-statement"
MAX = 4096  # bytes of one envelope: it must fit one preservation-log entry
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def parse_time(text: str, what: str = "time") -> str:
    """An instant as the statements write it (UTC, whole seconds); accepts any ISO 8601 form
    with a zone, or a date (midnight UTC)."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{what} {text!r}: not an ISO 8601 time (2026-12-06T14:00:00Z)") from None
    if t.tzinfo is None:
        if len(text) > 10:
            raise InputError(f"{what} {text!r}: give a time zone (Z for UTC)")
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).strftime(TIME_FORMAT)


def key_ref(pub: PublicKey) -> dict:
    return {"keyid": pub.key_id, "public_key": base64.b64encode(pub.raw).decode()}


def _key_of(ref: dict, what: str) -> PublicKey:
    raw = base64.b64decode(ref["public_key"], validate=True)
    pub = PublicKey(raw)
    if len(raw) != 32 or pub.key_id != ref["keyid"]:
        raise CorruptData(f"{what}: keyid {ref['keyid'][:16]} is not the id of its public_key")
    return pub


@dataclass(frozen=True)
class Statement:
    kind: str  # "rotate" | "revoke"
    time: str
    key: PublicKey  # rotate: the old key; revoke: the revoked key
    successor: PublicKey | None
    since: str | None
    reason: str
    body: bytes  # canonical(statement): what the signatures sign
    signatures: tuple[dict, ...]
    raw: bytes  # the canonical envelope
    what: str  # where it was read from, for messages

    def signed_by(self, key: PublicKey) -> bool:
        """A valid signature by `key` is present (a wrong one by it is an error: forged)."""
        for s in self.signatures:
            if s["keyid"] != key.key_id:
                continue
            try:
                sig = base64.b64decode(s["sig"], validate=True)
            except ValueError:
                sig = b""
            if s["alg"] != "ed25519" or not key.verify(PAYLOAD_TYPE, self.body, sig):
                raise TrustError(f"{self.what}: signature by key {key.key_id[:16]} does not "
                                 f"match the {self.kind} statement")  # fmt: skip
            return True
        return False

    def describe(self) -> str:
        if self.kind == "rotate":
            return f"rotation {self.key.key_id[:16]} -> {self.successor.key_id[:16]} ({self.what})"
        return f"revocation of {self.key.key_id[:16]} since {self.since} ({self.what})"


def _envelope(doc: dict, signers: list[SigningKey]) -> bytes:
    spec.validate(doc, SCHEMA, f"{doc['kind']} statement")
    body = canon.canonical(doc)
    sigs = [k.sign(PAYLOAD_TYPE, body) for k in signers]
    raw = canon.canonical({"statement": doc, "signatures": sigs})
    if len(raw) > MAX:
        raise InputError(f"{doc['kind']} statement of {len(raw)} bytes is over {MAX}: shorten "
                         "the reason")  # fmt: skip
    return raw


def rotation(old: SigningKey, new: SigningKey, *, reason: str = "",
             time: str | None = None) -> bytes:  # fmt: skip
    """NEW succeeds OLD, signed by both (OLD vouches for NEW; NEW proves it holds its key)."""
    if old.public.key_id == new.public.key_id:
        raise InputError(f"{new.source}: a key cannot succeed itself")
    doc = {"format": "weightvault-key-statement", "format_version": 1, "kind": "rotate",
           "time": time or now(), "key": key_ref(old.public), "successor": key_ref(new.public)}  # fmt: skip
    if reason:
        doc["reason"] = reason
    return _envelope(doc, [old, new])


def revocation(key: PublicKey, since: str, signers: list[SigningKey], *, reason: str = "",
               time: str | None = None) -> bytes:  # fmt: skip
    """KEY must not be trusted for what it signed from SINCE on; signed by `signers`."""
    if not signers:
        raise InputError("a revocation must be signed: give --key")
    doc = {"format": "weightvault-key-statement", "format_version": 1, "kind": "revoke",
           "time": time or now(), "key": key_ref(key), "since": parse_time(since, "--since")}  # fmt: skip
    if reason:
        doc["reason"] = reason
    return _envelope(doc, signers)


def parse(raw: bytes | dict, what: str) -> Statement:
    """A statement envelope from untrusted bytes (or an already parsed log entry member):
    canonical, schema-valid, self-consistent, and (a rotation) signed by both of its keys."""
    if isinstance(raw, dict):
        env, raw = raw, canon.canonical(raw)
    else:
        if len(raw) > MAX:
            raise CorruptData(f"{what}: {len(raw)} bytes is over the {MAX} a key statement may have")
        env = canon.parse(raw, what)
    if not isinstance(env, dict) or set(env) != {"statement", "signatures"}:
        raise CorruptData(f"{what}: expected {{\"statement\": ..., \"signatures\": [...]}}")
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= 16 or not all(
        isinstance(s, dict) and set(s) == {"keyid", "alg", "public_key", "sig"}
        and all(isinstance(v, str) for v in s.values()) for s in sigs
    ):
        raise CorruptData(f"{what}: expected 1 to 16 signatures {{keyid, alg, public_key, sig}}")
    doc = env["statement"]
    spec.validate(doc, SCHEMA, what)
    key = _key_of(doc["key"], what)
    succ = _key_of(doc["successor"], what) if "successor" in doc else None
    st = Statement(doc["kind"], doc["time"], key, succ, doc.get("since"), doc.get("reason", ""),
                   canon.canonical(doc), tuple(sigs), raw, what)  # fmt: skip
    if succ is not None:
        if succ.key_id == key.key_id:
            raise CorruptData(f"{what}: a key cannot succeed itself")
        for k, role in ((key, "old"), (succ, "new")):
            if not st.signed_by(k):
                raise TrustError(f"{what}: rotation {key.key_id[:16]} -> {succ.key_id[:16]} is "
                                 f"not signed by the {role} key {k.key_id[:16]}; a rotation "
                                 "needs both")  # fmt: skip
    return st

