"""Escrow custody log: signed, hash-chained records of who holds a bundle in trust, and proof
that they still hold it.

Each bundle in escrow has one chain, `custody/<name>/NNNNNNNN.json` at the root of every
replica that holds the bundle (the depositor's replicas and the steward's). A record names the
SHA-256 of the envelope before it, so removing, reordering or editing a record breaks the
chain, and copies on two replicas that differ at the same number are a fork, never silently
merged. Who may sign what (docs/ESCROW.md, "The custody log"):

- record 1 is a handover signed by a key the caller trusts: the depositor's;
- handover, challenge and challenge-result are signed by the *holder* (the depositor side):
  first the depositor; once a steward's transfer handover has been accepted by its successor,
  the steward that handed over;
- receipt, response and release are signed by the steward named in the latest handover;
- a transfer is a handover signed by the current, accepted steward with `from` = its key id.

A steward proves it still holds the stored bytes by answering challenges: SHA-256(nonce ||
object bytes) for objects the depositor picks, under a fresh random nonce (see `answer`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import random
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from weightvault.archive.auditlog import now, tool
from weightvault.errors import (
    Conflict,
    CorruptData,
    InputError,
    IntegrityError,
    NotFound,
    StorageError,
    TrustError,
)
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey, verify_signatures
from weightvault.format.paths import check_name
from weightvault.progress import human_size as _size
from weightvault.storage.store import Store

PAYLOAD_TYPE = "application/vnd.weightvault.custody+json; version=1"
FORMAT = "weightvault-custody"
SCHEMA = "custody-record"
PREFIX = "custody"  # on a replica: custody/<bundle name>/<seq:08d>.json
MAX_RECORD = 1 << 20  # the largest body is a handover with 256 KiB of conditions
MAX_SIGNATURES = 4
NONCE_BYTES = 32
READ_SIZE = 1 << 20
DEFAULT_CHALLENGE = 8

EVENTS = ("handover", "receipt", "challenge", "response", "challenge-result", "release")
DEPOSITOR_SIDE = frozenset({"handover", "challenge", "challenge-result"})
STEWARD_SIDE = frozenset({"receipt", "response", "release"})
_RECORD_FILE = re.compile(r"^[0-9]{8}\.json$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def record_key(bundle_name: str, seq: int) -> str:
    return f"{PREFIX}/{bundle_name}/{seq:08d}.json"


@dataclass(frozen=True)
class Entry:
    """One record as stored: its envelope's exact bytes, parsed."""

    seq: int
    raw: bytes
    record: dict
    signatures: list
    where: str  # the file it was read from (the first store holding it), for messages
    stores: tuple[str, ...] = ()  # names of the stores holding this exact copy

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def event(self) -> str:
        return self.record["event"]

    @property
    def body(self) -> dict:
        return self.record[self.record["event"]]


@dataclass(frozen=True)
class Steward:
    """The steward named by a handover."""

    name: str
    key: PublicKey
    recipient: str | None
    replica: str
    handover: Entry

    @property
    def key_id(self) -> str:
        return self.key.key_id


@dataclass
class CustodyState:
    """A verified custody log and what it says now."""

    bundle_name: str
    bundle_id: str | None = None
    entries: list[Entry] = field(default_factory=list)
    depositor: PublicKey | None = None  # signer of record 1 (a trusted key)
    holder: PublicKey | None = None  # signs handover / challenge / challenge-result now
    holder_name: str = ""
    steward: Steward | None = None  # named by the latest handover
    accepted: bool = False  # the latest handover has a receipt
    receipts: dict[str, Entry] = field(default_factory=dict)  # handover digest -> last receipt
    open_challenges: dict[str, Entry] = field(default_factory=dict)  # digest -> unanswered
    responses: dict[str, Entry] = field(default_factory=dict)  # challenge digest -> response
    results: dict[str, Entry] = field(default_factory=dict)  # challenge digest -> last result
    releases: list[Entry] = field(default_factory=list)
    missing: dict[str, list[int]] = field(default_factory=dict)  # store -> records it lacks
    unreachable: dict[str, str] = field(default_factory=dict)  # store -> error
    _transfer_from: Steward | None = None  # the steward handing over in a pending transfer
    _by_digest: dict[str, Entry] = field(default_factory=dict)

    @property
    def head(self) -> Entry | None:
        return self.entries[-1] if self.entries else None

    @property
    def next_seq(self) -> int:
        return len(self.entries) + 1

    @property
    def latest_handover(self) -> Entry | None:
        return self.steward.handover if self.steward else None

    @property
    def pending_handover(self) -> Entry | None:
        """The latest handover if its steward has not yet signed a receipt for it."""
        return None if self.accepted or self.steward is None else self.steward.handover

    @property
    def open_challenge(self) -> Entry | None:
        """The latest challenge without a response (the one `escrow respond` answers)."""
        return list(self.open_challenges.values())[-1] if self.open_challenges else None

    @property
    def unchecked_response(self) -> Entry | None:
        """The latest response without a challenge-result (the one `escrow check` checks)."""
        pending = [r for c, r in self.responses.items() if c not in self.results]
        return max(pending, key=lambda e: e.seq) if pending else None

    def entry(self, digest: str) -> Entry | None:
        """The record whose envelope has this SHA-256, if it is in the log."""
        return self._by_digest.get(digest)


# -- parsing


def parse(raw: bytes, what: str) -> dict:
    """A stored envelope from untrusted bytes: {"record": R, "signatures": [...]}, canonical,
    R valid against the schema. Every failure is CorruptData naming `what`."""
    env = canon.parse(raw, what, max_size=MAX_RECORD)
    if not isinstance(env, dict) or set(env) != {"record", "signatures"}:
        raise CorruptData(f"{what}: not a signed custody record")
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
        raise CorruptData(f"{what}: expected 1 to {MAX_SIGNATURES} signatures")
    for s in sigs:
        if (not isinstance(s, dict) or set(s) != {"keyid", "alg", "public_key", "sig"}
                or not all(isinstance(v, str) and len(v) <= 256 for v in s.values())
                or not _HEX64.fullmatch(s["keyid"])):  # fmt: skip
            raise CorruptData(f"{what}: malformed signature entry")
        try:
            pub = base64.b64decode(s["public_key"], validate=True)
        except ValueError:
            pub = b""
        if hashlib.sha256(pub).hexdigest() != s["keyid"]:
            raise CorruptData(f"{what}: a signature's public_key does not match its keyid")
    spec.validate(env["record"], SCHEMA, what)
    try:
        canonical = canon.canonical(env)
    except ValueError as e:
        raise CorruptData(f"{what}: cannot be put in canonical form ({e})") from None
    if canonical != raw:
        raise CorruptData(f"{what}: not in canonical JSON form (edited by hand, or not written "
                          "by weightvault)")  # fmt: skip
    return env


def _steward_key(pem: str, key_id: str, what: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CorruptData(f"{what}: the steward's public_key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CorruptData(f"{what}: the steward's public_key is not an Ed25519 key")
    pub = PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if pub.key_id != key_id:
        raise CorruptData(f"{what}: the steward's key_id {key_id[:16]} is not the id of its "
                          f"public_key ({pub.key_id[:16]})")  # fmt: skip
    return pub


def _signer_from_envelope(e: Entry) -> PublicKey | None:
    """The key an envelope's first signature claims (unverified: for trust on first use)."""
    for s in e.signatures:
        try:
            pub = PublicKey(base64.b64decode(s["public_key"], validate=True))
        except (ValueError, TypeError):
            continue
        if pub.key_id == s["keyid"]:
            return pub
    return None


# -- the rules


def _signed_by(e: Entry, keys: list[PublicKey]) -> PublicKey:
    """The key of `keys` whose signature on e verifies. A signature under the right key id
    that does not verify means the record was edited after signing: CorruptData, like any
    other break of the chain (a record signed by the wrong key is a TrustError)."""
    body = canon.canonical(e.record)
    ids = {k.key_id for k in keys}
    try:
        return verify_signatures(PAYLOAD_TYPE, body, [s for s in e.signatures if s["keyid"] in ids],
                                 keys, e.where)  # fmt: skip
    except TrustError as err:
        raise CorruptData(f"{err}: the record was altered after it was signed") from None


class _Checker:
    """Applies the custody rules record by record; verify() and append() share it, so a record
    append() writes is one verify() accepts."""

    def __init__(self, bundle_name: str, trusted: list[PublicKey], bundle_id: str | None):
        self.s = CustodyState(bundle_name, bundle_id)
        self.trusted = trusted

    def apply(self, e: Entry) -> None:
        s, rec, what = self.s, e.record, e.where
        expected = s.next_seq
        if e.seq != expected:
            raise CorruptData(f"{what}: expected record {expected} here; record {expected} is "
                              "missing (removed, or never copied to any store read)")  # fmt: skip
        if rec["sequence"] != e.seq:
            raise CorruptData(f"{what}: says it is record {rec['sequence']}")
        prev = s.head.digest if s.head else None
        if rec["previous"] != prev:
            raise CorruptData(f"{what}: does not follow record {e.seq - 1} (its 'previous' is not "
                              "that record's digest: records before it were removed, reordered "
                              "or edited)")  # fmt: skip
        if rec["bundle"]["name"] != s.bundle_name:
            raise CorruptData(f"{what}: is about bundle {rec['bundle']['name']!r}, not "
                              f"{s.bundle_name!r}")  # fmt: skip
        if s.bundle_id is not None and rec["bundle"]["id"] != s.bundle_id:
            raise CorruptData(f"{what}: names bundle id {rec['bundle']['id'][:16]}, expected "
                              f"{s.bundle_id[:16]}")  # fmt: skip
        event = e.event
        signer, role, who = self._expected_signer(e)
        self._check_signature(e, signer, who)
        actor = rec["actor"]
        if actor["key_id"] != signer.key_id:
            raise CorruptData(f"{what}: actor key_id {actor['key_id'][:16]} is not the signing "
                              f"key {signer.key_id[:16]}")  # fmt: skip
        if actor["role"] != role:
            raise CorruptData(f"{what}: actor role is {actor['role']!r}; a {event} by {who} "
                              f"has role {role!r}")  # fmt: skip
        getattr(self, "_" + event.replace("-", "_"))(e)
        if s.bundle_id is None:
            s.bundle_id = rec["bundle"]["id"]
        s.entries.append(e)
        s._by_digest[e.digest] = e

    def _expected_signer(self, e: Entry) -> tuple[PublicKey, str, str]:
        """(key that must sign e, actor role, description for messages)."""
        s, event, what = self.s, e.event, e.where
        if e.seq == 1:
            if event != "handover" or e.body["from"] is not None:
                raise CorruptData(f"{what}: record 1 must be the depositor's handover, not a "
                                  f"{event}")  # fmt: skip
            ids = {k.key_id for k in self.trusted}
            if not any(sig["keyid"] in ids for sig in e.signatures):
                got = ", ".join(sig["keyid"][:16] for sig in e.signatures)
                raise TrustError(f"{what}: the first handover is signed by key {got}, which "
                                 "is not trusted; pass the depositor's public key with "
                                 "--trust")  # fmt: skip
            key = _signed_by(e, self.trusted)
            s.depositor = s.holder = key
            s.holder_name = e.record["actor"]["name"]
            return key, "depositor", "the depositor"
        assert s.holder is not None and s.steward is not None
        if event == "handover" and e.body["from"] is not None:
            st = s.steward
            if e.body["from"] != st.key_id:
                raise CorruptData(f"{what}: a transfer must come from the current steward "
                                  f"{st.name!r} (key {st.key_id[:16]}), not key "
                                  f"{e.body['from'][:16]}")  # fmt: skip
            if not s.accepted:
                raise CorruptData(f"{what}: steward {st.name!r} transfers custody it never "
                                  "accepted (no receipt for its handover)")  # fmt: skip
            return st.key, "steward", f"the current steward {st.name!r}"
        if event in DEPOSITOR_SIDE:
            return s.holder, "depositor", f"the holder {s.holder_name!r}"
        st = s.steward
        return st.key, "steward", f"the steward {st.name!r} named in record {st.handover.seq}"

    def _check_signature(self, e: Entry, key: PublicKey, who: str) -> None:
        if e.seq == 1:
            return  # checked against the trusted keys in _expected_signer
        if not any(sig["keyid"] == key.key_id for sig in e.signatures):
            got = ", ".join(sig["keyid"][:16] for sig in e.signatures)
            raise TrustError(f"{e.where}: this {e.event} is signed by key {got}, but must be "
                             f"signed by {who}, key {key.key_id}")  # fmt: skip
        _signed_by(e, [key])

    # one method per event: its own consistency checks, then its effect on the state

    def _handover(self, e: Entry) -> None:
        s, b, what = self.s, e.body, e.where
        st = b["steward"]
        key = _steward_key(st["public_key"], st["key_id"], what)
        if key.key_id == e.record["actor"]["key_id"]:
            raise CorruptData(f"{what}: hands the bundle over to the signer's own key")
        text = b["conditions"]["text"]
        if hashlib.sha256(text.encode()).hexdigest() != b["conditions"]["sha256"]:
            raise CorruptData(f"{what}: the conditions' sha256 does not match their text")
        s._transfer_from = s.steward if b["from"] is not None else None
        s.steward = Steward(st["name"], key, st["recipient"], st["replica"], e)
        s.accepted = False
        # challenges and answers belong to the steward they were put to
        s.open_challenges.clear()

    def _receipt(self, e: Entry) -> None:
        s, what = self.s, e.where
        latest = s.latest_handover
        assert latest is not None
        if e.body["handover"] != latest.digest:
            named = s.entry(e.body["handover"])
            at = f"record {named.seq}" if named else "no record of this log"
            raise CorruptData(f"{what}: receipt names handover {e.body['handover'][:16]} "
                              f"({at}), but the latest handover is record {latest.seq} "
                              f"({latest.digest[:16]})")  # fmt: skip
        s.receipts[latest.digest] = e
        if not s.accepted and s._transfer_from is not None:
            # the successor has accepted: the steward that handed over holds the depositor side
            s.holder, s.holder_name = s._transfer_from.key, s._transfer_from.name
            s._transfer_from = None
        s.accepted = True

    def _challenge(self, e: Entry) -> None:
        s, st = self.s, self.s.steward
        assert st is not None
        if e.body["steward"] != st.key_id:
            raise CorruptData(f"{e.where}: challenges key {e.body['steward'][:16]}, but the "
                              f"steward is {st.name!r} (key {st.key_id[:16]})")  # fmt: skip
        s.open_challenges[e.digest] = e

    def _response(self, e: Entry) -> None:
        s, what = self.s, e.where
        ch = s.open_challenges.pop(e.body["challenge"], None)
        if ch is None:
            raise CorruptData(f"{what}: answers challenge {e.body['challenge'][:16]}, which is "
                              "not an open challenge to this steward")  # fmt: skip
        answered = [a["object"] for a in e.body["answers"]]
        if answered != ch.body["objects"]:
            raise CorruptData(f"{what}: does not answer exactly the objects of challenge record "
                              f"{ch.seq}, in order")  # fmt: skip
        s.responses[ch.digest] = e

    def _challenge_result(self, e: Entry) -> None:
        s, b, what = self.s, e.body, e.where
        resp = s.responses.get(b["challenge"])
        if resp is None or resp.digest != b["response"]:
            raise CorruptData(f"{what}: names challenge {b['challenge'][:16]} and response "
                              f"{b['response'][:16]}, which are not a challenge and its "
                              "response in this log")  # fmt: skip
        ch = s.entry(b["challenge"])
        assert ch is not None
        if not set(b["mismatches"]) <= set(ch.body["objects"]):
            raise CorruptData(f"{what}: names mismatching objects that were not challenged")
        s.results[b["challenge"]] = e

    def _release(self, e: Entry) -> None:
        self.s.releases.append(e)


# -- the log on its stores


class CustodyLog:
    """One bundle's custody log, on every store given (name, Store), in order of preference."""

    def __init__(self, stores: list[tuple[str, Store]], bundle_name: str):
        if not stores:
            raise InputError("no store to keep the custody log on")
        self.stores = list(stores)
        self.bundle_name = check_name(bundle_name)
        self.prefix = f"{PREFIX}/{bundle_name}"
        self.unreachable: dict[str, str] = {}  # store -> error, from the last read or write
        self.missing: dict[str, list[int]] = {}  # store -> records it lacks (sync copies them)

    def key(self, seq: int) -> str:
        return record_key(self.bundle_name, seq)

    def _store(self, name: str) -> Store:
        for n, st in self.stores:
            if n == name:
                return st
        raise InputError(f"{name!r}: not one of this custody log's stores")

    def _read_store(self, store: Store) -> dict[int, bytes]:
        out = {}
        for key, size in store.list(self.prefix).items():
            fname = key[len(self.prefix) + 1 :]
            if not _RECORD_FILE.match(fname):
                continue  # not a record file name: nothing weightvault wrote or reads
            seq = int(fname[:8])
            if seq == 0:
                raise CorruptData(f"{store.describe(key)}: record numbers start at 00000001")
            if size > MAX_RECORD:
                raise CorruptData(f"{store.describe(key)}: {size} bytes is larger than the "
                                  f"{MAX_RECORD} allowed for a custody record")  # fmt: skip
            out[seq] = store.read_bytes(key, MAX_RECORD)
        return out

    def entries(self) -> list[Entry]:
        """Every record found on any readable store, parsed, in sequence order. Copies that
        differ between stores are a fork (CorruptData naming both); a store that cannot be read
        is noted in `unreachable`; records a store lacks are noted in `missing`."""
        self.unreachable, copies, readable = {}, {}, []
        for name, st in self.stores:
            try:
                found = self._read_store(st)
            except StorageError as e:
                self.unreachable[name] = str(e)
                continue
            readable.append(name)
            for seq, raw in found.items():
                copies.setdefault(seq, {})[name] = raw
        if not readable:
            detail = "; ".join(f"{n}: {m}" for n, m in self.unreachable.items())
            raise StorageError(f"custody log of {self.bundle_name!r}: no store could be read "
                               f"({detail})")  # fmt: skip
        out = []
        for seq in sorted(copies):
            variants: dict[bytes, list[str]] = {}
            for name in readable:
                if name in copies[seq]:
                    variants.setdefault(copies[seq][name], []).append(name)
            if len(variants) > 1:
                self._fork(seq, variants)
            ((raw, names),) = variants.items()
            what = self._store(names[0]).describe(self.key(seq))
            env = parse(raw, what)
            out.append(Entry(seq, raw, env["record"], env["signatures"], what, tuple(names)))
        self.missing = {n: [e.seq for e in out if n not in e.stores] for n in readable}
        self.missing = {n: seqs for n, seqs in self.missing.items() if seqs}
        return out

    def _fork(self, seq: int, variants: dict[bytes, list[str]]) -> None:
        # a copy that is not even a well-formed record is named as the damaged one
        for raw, names in variants.items():
            parse(raw, self._store(names[0]).describe(self.key(seq)))
        (a, b, *_) = [names[0] for names in variants.values()]
        raise CorruptData(
            f"custody record {seq} of {self.bundle_name!r} differs between store {a!r} "
            f"({self._store(a).describe(self.key(seq))}) and store {b!r} "
            f"({self._store(b).describe(self.key(seq))}): the log has forked (two records were "
            f"written as number {seq}, or one copy was altered); compare the two and keep the "
            "one whose chain verifies"
        )

    def verify(self, trusted: list[PublicKey], *, bundle_id: str | None = None,
               allow_empty: bool = False) -> CustodyState:  # fmt: skip
        """Read every store and check the whole chain against the custody rules. `trusted`:
        the keys record 1 (the depositor's handover) may be signed by. `bundle_id`: if given,
        every record must name it. Raises CorruptData (chain, form, fork), TrustError (a record
        signed by the wrong key), NotFound if there is no record and not `allow_empty`."""
        if not trusted:
            raise InputError("no trusted public key given: pass the depositor's public key "
                             "with --trust")  # fmt: skip
        entries = self.entries()
        if not entries and not allow_empty:
            raise NotFound(f"no custody records for {self.bundle_name!r} on "
                           f"{', '.join(n for n, _ in self.stores)}")  # fmt: skip
        return self._check(entries, trusted, bundle_id).s

    def _check(self, entries: list[Entry], trusted: list[PublicKey],
               bundle_id: str | None) -> _Checker:  # fmt: skip
        c = _Checker(self.bundle_name, trusted, bundle_id)
        for e in entries:
            c.apply(e)
        c.s.missing, c.s.unreachable = dict(self.missing), dict(self.unreachable)
        return c

    def sync(
        self, trusted: list[PublicKey], *, bundle_id: str | None = None
    ) -> list[tuple[str, int]]:
        """Verify, then copy each record to every readable store lacking it. Returns (store,
        seq) of each copy made; a store that cannot be written is noted in `unreachable`."""
        state = self.verify(trusted, bundle_id=bundle_id, allow_empty=True)
        copied = []
        for name, st in self.stores:
            if name in self.unreachable:
                continue
            try:
                copied += [(name, seq) for seq in self._fill(name, st, state.entries)]
            except StorageError as e:
                self.unreachable[name] = str(e)
        return copied

    def _fill(self, name: str, st: Store, entries: list[Entry]) -> list[int]:
        done = []
        for e in entries:
            if name in e.stores:
                continue
            self._put(name, st, e)
            done.append(e.seq)
        return done

    def _put(self, name: str, st: Store, e: Entry) -> None:
        key = self.key(e.seq)
        if not st.put_bytes(key, e.raw, exclusive=True):
            there = st.read_bytes(key, MAX_RECORD)
            if there != e.raw:
                self._fork(e.seq, {e.raw: [e.stores[0]], there: [name]})

    def append(
        self,
        record_body: dict,
        key: SigningKey,
        *,
        actor: str | None = None,
        trusted: list[PublicKey] | None = None,
        bundle_id: str | None = None,
        stores: Iterable[str] | None = None,
    ) -> Entry:
        """Add one record. `record_body` is {"event": E, E: {...}} (see the *_event helpers);
        sequence, previous, time, bundle, actor and tool are filled in, the record is signed
        with `key`, checked against the same rules verify() applies, then created (never
        overwritten) on the first of `stores` (names; default all, in order), and copied to the
        others with any earlier records they lack. Put the store both parties write (the
        steward's replica) first: its create-if-absent decides which of two concurrent
        appends wins; the loser re-reads and retries once, then raises Conflict.

        `actor` names the signer (default: the steward's name from the latest handover, or the
        holder's name); record 1 needs it and `bundle_id`. `trusted` pins the depositor's key;
        without it the key that signed record 1 is taken as is (trust on first use), so call
        verify(trusted) first."""
        targets = [(n, self._store(n)) for n in stores] if stores is not None else self.stores
        if not targets:
            raise InputError("no store to write the custody record to")
        event = record_body.get("event")
        if (event not in EVENTS or set(record_body) != {"event", event}
                or not isinstance(record_body[event], dict)):  # fmt: skip
            raise InputError(f"a custody record body is {{'event': E, E: {{...}}}} with E one of "
                             f"{', '.join(EVENTS)}")  # fmt: skip
        first_name, first = targets[0]
        for attempt in (1, 2):
            entries = self.entries()
            if first_name in self.unreachable:
                raise StorageError(f"{first.describe(self.prefix)}: cannot read the custody log "
                                   f"there ({self.unreachable[first_name]})")  # fmt: skip
            if trusted is not None:
                pinned = trusted
            elif entries:
                tofu = _signer_from_envelope(entries[0])
                pinned = [tofu] if tofu else []
            else:
                pinned = [key.public]
            checker = self._check(entries, pinned, bundle_id)
            entry = self._new_entry(checker.s, record_body, key, actor, bundle_id, first)
            try:
                checker.apply(entry)
            except (CorruptData, TrustError) as err:
                if attempt == 1:
                    raise
                raise Conflict(f"another custody record was added while this one was being "
                               f"written, and it no longer applies: {err}") from None  # fmt: skip
            prior = [e for e in entries if first_name not in e.stores]
            for e in prior:
                self._put(first_name, first, e)
            if first.put_bytes(self.key(entry.seq), entry.raw, exclusive=True):
                break
            if attempt == 2:
                raise Conflict(f"{first.describe(self.key(entry.seq))}: another custody record "
                               "was written with this number at the same time, twice; run the "
                               "command again")  # fmt: skip
        entry = Entry(entry.seq, entry.raw, entry.record, entry.signatures, entry.where,
                      (first_name,))  # fmt: skip
        for name, st in targets[1:]:
            if name in self.unreachable:
                continue  # not read, so not written: `sync` brings it up to date later
            try:
                self._fill(name, st, [*entries, entry])
            except StorageError as e:
                self.unreachable[name] = str(e)
        return entry

    def _new_entry(self, s: CustodyState, body: dict, key: SigningKey, actor: str | None,
                   bundle_id: str | None, first: Store) -> Entry:  # fmt: skip
        event = body["event"]
        bid = bundle_id or s.bundle_id
        if bid is None:
            raise InputError("the first custody record of a bundle needs its bundle id")
        steward_side = event in STEWARD_SIDE or (
            event == "handover" and body[event].get("from") is not None
        )
        if actor is None:
            if steward_side and s.steward is not None:
                actor = s.steward.name
            elif s.entries and not steward_side:
                actor = s.holder_name
            else:
                raise InputError(f"name the signer of this {event} (actor)")
        record = {
            "format": FORMAT,
            "format_version": 1,
            "sequence": s.next_seq,
            "previous": s.head.digest if s.head else None,
            "event": event,
            "time": now(),
            "bundle": {"name": self.bundle_name, "id": bid},
            "actor": {
                "role": "steward" if steward_side else "depositor",
                "name": actor,
                "key_id": key.public.key_id,
            },  # fmt: skip
            "tool": tool(),
            event: body[event],
        }
        what = f"new custody record {s.next_seq} ({event})"
        spec.validate(record, SCHEMA, what)
        env = {"record": record, "signatures": [key.sign(PAYLOAD_TYPE, canon.canonical(record))]}
        raw = canon.canonical(env)
        if len(raw) > MAX_RECORD:
            raise InputError(f"{what}: {len(raw)} bytes is larger than the {MAX_RECORD} allowed")
        return Entry(s.next_seq, raw, record, env["signatures"],
                     first.describe(self.key(s.next_seq)))  # fmt: skip


# -- record bodies


def handover_event(*, steward_name: str, steward_key: PublicKey, replica: str,
                   conditions: str, recipient: str | None = None,
                   transfer_from: str | None = None) -> dict:  # fmt: skip
    """A handover to `steward_name`. `conditions`: the release conditions' text (Markdown,
    as read from the file, decoded as UTF-8). `transfer_from`: the current steward's key id
    when that steward (the signer) transfers custody to a successor; None otherwise."""
    return {"event": "handover", "handover": {
        "steward": {"name": steward_name, "key_id": steward_key.key_id,
                    "public_key": steward_key.pem().decode(), "recipient": recipient,
                    "replica": replica},
        "conditions": {"text": conditions,
                       "sha256": hashlib.sha256(conditions.encode()).hexdigest()},
        "from": transfer_from,
    }}  # fmt: skip


def receipt_event(*, handover: str, level: str, objects: int, nbytes: int, problems: list[str],
                  key_check_method: str, key_check_result: str) -> dict:  # fmt: skip
    """The steward accepts handover (digest `handover`) after an audit of its copy."""
    return {"event": "receipt", "receipt": {
        "handover": handover,
        "audit": {"level": level, "objects": objects, "bytes": nbytes,
                  "problems": [p[:4096] for p in problems[:1000]]},
        "key_check": {"method": key_check_method, "result": key_check_result},
    }}  # fmt: skip


def challenge_event(*, nonce: str, objects: list[str], steward_key_id: str) -> dict:
    body = {"nonce": nonce, "objects": list(objects), "steward": steward_key_id}
    return {"event": "challenge", "challenge": body}


def response_event(*, challenge: str, answers: list[dict]) -> dict:
    return {"event": "response", "response": {"challenge": challenge, "answers": answers}}


def result_event(*, challenge: str, response: str, mismatches: list[str]) -> dict:
    return {"event": "challenge-result", "challenge-result": {
        "challenge": challenge, "response": response,
        "result": "fail" if mismatches else "pass", "mismatches": list(mismatches),
    }}  # fmt: skip


def release_event(*, method: str, shares_used: int, files: int, nbytes: int,
                  dest_note: str) -> dict:  # fmt: skip
    return {"event": "release", "release": {"method": method, "shares_used": shares_used,
                                            "files": files, "bytes": nbytes,
                                            "dest_note": dest_note[:4096]}}  # fmt: skip


# -- challenges: proof that the steward still holds the stored bytes


def make_challenge(object_names: Iterable[str], n: int = DEFAULT_CHALLENGE,
                   rng: random.Random | None = None) -> tuple[str, list[str]]:  # fmt: skip
    """A fresh 32-byte nonce (hex) and up to `n` distinct objects picked at random (sorted).
    `rng` defaults to the operating system's CSPRNG (secrets.SystemRandom); pass a seeded
    random.Random only in tests: a predictable nonce can be answered in advance."""
    rng = rng or secrets.SystemRandom()
    names = sorted(set(object_names))
    if n < 1:
        raise InputError(f"a challenge needs at least one object, not {n}")
    if not names:
        raise InputError("the bundle has no objects to challenge")
    return rng.randbytes(NONCE_BYTES).hex(), sorted(rng.sample(names, min(n, len(names))))


def _nonce(nonce_hex: str) -> bytes:
    if not isinstance(nonce_hex, str) or not _HEX64.fullmatch(nonce_hex):
        raise InputError("a challenge nonce is 64 hex digits")
    return bytes.fromhex(nonce_hex)


def _keyed_digest(store: Store, key: str, nonce: bytes, *, plain: bool = False):
    """SHA-256(nonce || stored bytes), or None if missing or not a regular file; with `plain`,
    (that, SHA-256(stored bytes)) from the same single read."""
    h = hashlib.sha256(nonce)
    p = hashlib.sha256() if plain else None
    try:
        f = store.open_read(key)
    except CorruptData:
        return (None, None) if plain else None  # not a regular file: cannot be the object
    except StorageError:
        if store.size(key) is None:
            return (None, None) if plain else None
        raise
    with f:
        while data := f.read(READ_SIZE):
            h.update(data)
            if p is not None:
                p.update(data)
    return (h.hexdigest(), p.hexdigest()) if p is not None else h.hexdigest()


def answer(store: Store, key_for_object: Callable[[str], str], nonce_hex: str,
           objects: list[str]) -> list[dict]:  # fmt: skip
    """The steward's answers: for each object, SHA-256(nonce || its stored bytes), streamed in
    1 MiB reads (or null if the object is missing or not a regular file).

    Why this proves possession: the nonce is 32 fresh random bytes the steward has never seen,
    and it comes *first*, so hashing cannot start before the challenge and every byte of the
    object must be read after it. A steward that kept only the objects' digests (or anything
    short of the bytes) cannot compute the answer; with the nonce last, SHA-256's internal
    state after the object bytes could have been kept in place of the object."""
    nonce = _nonce(nonce_hex)
    return [{"object": o, "sha256": _keyed_digest(store, key_for_object(o), nonce)}
            for o in objects]  # fmt: skip


def _body(x: Entry | dict, event: str) -> dict:
    if isinstance(x, Entry):
        x = x.record
    if isinstance(x, dict) and x.get("event") == event and event in x:
        return x[event]
    return x  # already the body


def check_answers(stores: Store | list[Store], key_for_object: Callable[[str], str],
                  challenge: Entry | dict, response: Entry | dict) -> list[str]:  # fmt: skip
    """The challenged objects whose answers differ from our own bytes (empty: pass).
    `challenge`, `response`: entries, records or their bodies. Each object is judged against
    the first of `stores` whose copy still hashes to the object's name: a damaged copy of ours
    must never turn into a failure recorded against an honest steward. When none of ours is
    intact, IntegrityError (cannot judge: repair, then check) and nothing is recorded."""
    stores = [stores] if isinstance(stores, Store) else stores
    ch, resp = _body(challenge, "challenge"), _body(response, "response")
    nonce = _nonce(ch["nonce"])
    given = {a["object"]: a["sha256"] for a in resp["answers"]}
    out = []
    for o in ch["objects"]:
        key = key_for_object(o)
        want, tried = None, []
        for store in stores:
            keyed, plain = _keyed_digest(store, key, nonce, plain=True)
            if keyed is not None and plain == o:
                want = keyed
                break
            tried.append(f"{store.describe(key)}: "
                         + ("missing or unreadable" if keyed is None else "damaged"))
        if want is None:
            raise IntegrityError(f"cannot judge the steward's answer for {o}: no intact copy of "
                                 f"ours ({'; '.join(tried)}); repair our replicas first, "
                                 "nothing was recorded")  # fmt: skip
        got = given.get(o)
        if not isinstance(got, str) or not hmac.compare_digest(got, want):
            out.append(o)
    return out


# -- printing


LOG_COLUMNS = ("time", "seq", "event", "actor", "summary", "status")


def format_log(state: CustodyState) -> list[dict]:
    """One row per record, keys LOG_COLUMNS, for a table or --json. status: handover
    accepted | pending | superseded; receipt ok | N problems; challenge open | answered |
    expired; response checked | unchecked; challenge-result pass | fail; release released."""
    rows = []
    latest = state.latest_handover
    for e in state.entries:
        b, ev = e.body, e.event
        if ev == "handover":
            st = b["steward"]
            kind = "transfer" if b["from"] else "handover"
            summary = (f"{kind} to {st['name']} (key {st['key_id'][:16]}) at {st['replica']}; "
                       f"conditions sha256 {b['conditions']['sha256'][:16]}")  # fmt: skip
            if e.digest in state.receipts:
                status = "accepted"
            else:
                status = "pending" if latest is not None and e.seq == latest.seq else "superseded"
        elif ev == "receipt":
            a, k = b["audit"], b["key_check"]
            n = len(a["problems"])
            summary = (f"{a['level']} audit: {a['objects']} objects, {_size(a['bytes'])}, "
                       f"{n or 'no'} problem{'s' * (n != 1)}; key check ({k['method']}): "
                       f"{k['result']}")  # fmt: skip
            status = "ok" if not n else f"{n} problem{'s' * (n != 1)}"
        elif ev == "challenge":
            summary = f"{len(b['objects'])} objects, nonce {b['nonce'][:16]}"
            if e.digest in state.responses:
                status = "answered"
            else:
                status = "open" if e.digest in state.open_challenges else "expired"
        elif ev == "response":
            ch = state.entry(b["challenge"])
            summary = f"{len(b['answers'])} answers to record {ch.seq if ch else '?'}"
            status = "checked" if b["challenge"] in state.results else "unchecked"
        elif ev == "challenge-result":
            ch = state.entry(b["challenge"])
            total = len(ch.body["objects"]) if ch else 0
            if b["result"] == "pass":
                summary = f"all {total} answers match"
            else:
                summary = (f"{len(b['mismatches'])} of {total} answers do not match: "
                           f"{', '.join(m[:16] for m in b['mismatches'][:4])}")  # fmt: skip
            status = b["result"]
        else:
            used = f", {b['shares_used']} shares" if b["method"] == "shares" else ""
            summary = (f"restored with {b['method']}{used}: {b['files']} files, "
                       f"{_size(b['bytes'])}; {b['dest_note']}")  # fmt: skip
            status = "released"
        a = e.record["actor"]
        rows.append({"time": e.record["time"], "seq": e.seq, "event": ev,
                     "actor": f"{a['name']} ({a['role']})", "summary": summary,
                     "status": status})  # fmt: skip
    return rows
