"""Escrow: handing a bundle to a third-party steward, its acceptance, challenges that prove
it still holds every byte, and release by quorum. Each step is a signed custody record
(custody.py) kept on the steward's replica and on the depositor's replicas.

The depositor runs handover, challenge and check with its own config (its replicas, its
signing key, [stewards.NAME]); the steward runs accept, respond and release with its config
(its replica, its key, the depositor's public key in trusted_keys). Neither needs the other's
secrets: the steward audits ciphertext, and opens the bundle only with a quorum of shares.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.config import Config
from weightvault.custody import chain as custody
from weightvault.custody.unlock import Keys, check_keys
from weightvault.errors import (
    Conflict,
    CorruptData,
    InputError,
    IntegrityError,
    StorageError,
    TrustError,
)
from weightvault.format.keys import PublicKey, SigningKey, load_public_key
from weightvault.storage.replicas import ReplicaSet
from weightvault.storage.store import Store
from weightvault.storage.vault import Bundle, Vault, object_key

MAX_CONDITIONS = 256 << 10


@dataclass
class EscrowResult:
    event: str
    bundle: str
    name: str
    record: int  # sequence number of the record written
    digest: str  # SHA-256 of the record written
    stores: list[str]
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _holding(rs: ReplicaSet, name: str, skip: set[str] = frozenset()) -> list[tuple[str, Store]]:
    """Reachable replicas that hold the bundle committed."""
    out = []
    for n in rs.names:
        if n in skip:
            continue
        st = rs.try_store(n)
        if st is not None and Vault(st).is_committed(name):
            out.append((n, st))
    return out


def _load(stores: list[tuple[str, Store]], name: str, trusted: list[PublicKey]) -> Bundle:
    errors = []
    for n, st in stores:
        try:
            return Vault(st).load(name, trusted)
        except StorageError as e:
            errors.append(f"{n}: {e}")
    raise StorageError(f"bundle {name!r}: no replica could be read ({'; '.join(errors)})")


def _result(entry: custody.Entry, b: Bundle, log: custody.CustodyLog, **detail) -> EscrowResult:
    written = [n for n, _ in log.stores if n not in log.unreachable]
    return EscrowResult(entry.event, b.bundle_id, b.name, entry.seq, entry.digest, written,
                        detail)  # fmt: skip


def _read_conditions(path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the release conditions ({e.strerror})") from None
    if len(data) > MAX_CONDITIONS:
        raise InputError(f"{path}: release conditions over {MAX_CONDITIONS} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: release conditions must be UTF-8 text") from None
    if not text.strip():
        raise InputError(f"{path}: release conditions are empty")
    return text


# -- depositor side


def handover(cfg: Config, name: str, steward: str, conditions: Path, key: SigningKey,
             trusted: list[PublicKey], *, workers: int | None = None,
             on_bytes=None) -> EscrowResult:  # fmt: skip
    """Replicate the bundle to the steward's replica, then sign the handover record there and on
    every replica of ours that holds the bundle. Also a steward-to-steward transfer, when the
    signer is the current, accepted steward."""
    from weightvault.archive.replicate import replicate

    sc = cfg.steward(steward)
    text = _read_conditions(conditions)
    steward_key = load_public_key(sc.public_key)
    rs = ReplicaSet(cfg)
    dst = rs.try_store(sc.replica, create=True)
    if dst is None:
        raise StorageError(f"steward {steward!r}: its replica {sc.replica!r} is unreachable "
                           f"({rs.errors.get(sc.replica)}); nothing was handed over")  # fmt: skip
    ours = _holding(rs, name, {sc.replica})
    if not ours:
        raise StorageError(f"bundle {name!r}: no reachable replica of ours holds it")
    trusted = trusted + [key.public]
    b = _load(ours, name, trusted)
    replicate([s for _, s in ours], dst, b.bundle_id, trusted, workers=workers,
              on_bytes=on_bytes)  # fmt: skip
    log = custody.CustodyLog([(sc.replica, dst), *ours], name)
    state = log.verify(trusted, bundle_id=b.bundle_id, allow_empty=True)
    high_water(cfg, state)
    transfer = None
    if state.steward is not None:
        if state.steward.key_id == steward_key.key_id:
            h = state.steward.handover
            if h.body["conditions"]["text"] != text:
                raise Conflict(f"bundle {name!r} is already handed over to {steward!r} (record "
                               f"{h.seq}) under other conditions; a new handover needs a new "
                               "steward")  # fmt: skip
            # the same handover again (say, after a crash): finish copying the log, no new record
            log.sync(trusted, bundle_id=b.bundle_id)
            return _result(h, b, log, steward=sc.display, steward_key=steward_key.key_id,
                           replica=dst.url, transfer=h.body["from"] is not None,
                           already=True)  # fmt: skip
        if state.accepted and state.steward.key_id == key.public.key_id:
            transfer = key.public.key_id
    # the steward's age recipient goes on record only if the bundle really is encrypted to it
    enc = b.manifest.encryption
    recipient = sc.recipient if enc and sc.recipient in {e["recipient"] for e in
                                                         enc["envelopes"]} else None  # fmt: skip
    body = custody.handover_event(steward_name=sc.display, steward_key=steward_key,
                                  replica=dst.url, conditions=text, recipient=recipient,
                                  transfer_from=transfer)  # fmt: skip
    actor = state.steward.name if transfer else (cfg.organization or "depositor")
    entry = log.append(body, key, actor=actor, trusted=trusted, bundle_id=b.bundle_id)
    _mark(cfg, b.bundle_id, entry)
    return _result(entry, b, log, steward=sc.display, steward_key=steward_key.key_id,
                   replica=dst.url, transfer=bool(transfer))  # fmt: skip


def challenge(cfg: Config, name: str, steward: str, key: SigningKey, trusted: list[PublicKey],
              n: int = custody.DEFAULT_CHALLENGE) -> EscrowResult:  # fmt: skip
    sc = cfg.steward(steward)
    log, b, state, trusted = _depositor_log(cfg, sc.replica, name, key, trusted)
    if state.steward is None or not state.accepted:
        raise InputError(f"bundle {name!r}: no accepted handover to challenge (see escrow log)")
    nonce, objects = custody.make_challenge([o["name"] for o in b.manifest.doc["objects"]], n)
    entry = log.append(custody.challenge_event(nonce=nonce, objects=objects,
                                               steward_key_id=state.steward.key_id),
                       key, trusted=trusted)  # fmt: skip
    _mark(cfg, b.bundle_id, entry)
    return _result(entry, b, log, objects=len(objects), steward=state.steward.name)


def check(cfg: Config, name: str, steward: str, key: SigningKey,
          trusted: list[PublicKey]) -> EscrowResult:  # fmt: skip
    """Check the steward's latest answers against our own replica; the result is recorded
    either way, and a failure raises IntegrityError after it is."""
    sc = cfg.steward(steward)
    log, b, state, trusted = _depositor_log(cfg, sc.replica, name, key, trusted)
    resp = state.unchecked_response
    if resp is None:
        raise InputError(f"bundle {name!r}: no answered challenge to check (see escrow log)")
    ch = state.entry(resp.body["challenge"])
    ours = _holding(ReplicaSet(cfg), name, {sc.replica})
    mismatches = custody.check_answers([s for _n, s in ours],
                                       lambda o: object_key(b.manifest, o), ch, resp)  # fmt: skip
    entry = log.append(custody.result_event(challenge=ch.digest, response=resp.digest,
                                            mismatches=mismatches), key, trusted=trusted)  # fmt: skip
    _mark(cfg, b.bundle_id, entry)
    res = _result(entry, b, log, result="fail" if mismatches else "pass",
                  mismatches=mismatches, objects=len(ch.body["objects"]))  # fmt: skip
    if mismatches:
        raise ChallengeFailed(res)
    return res


class ChallengeFailed(IntegrityError):
    def __init__(self, res: EscrowResult):
        self.result = res
        n = len(res.detail["mismatches"])
        super().__init__(f"bundle {res.name}: the steward's answers for {n} of "
                         f"{res.detail['objects']} challenged objects do not match our copy "
                         f"({', '.join(m[:16] for m in res.detail['mismatches'][:4])}); "
                         f"recorded as custody record {res.record}")  # fmt: skip


def _depositor_log(cfg: Config, steward_replica: str, name: str, key: SigningKey,
                   trusted: list[PublicKey]):  # fmt: skip
    rs = ReplicaSet(cfg)
    ours = _holding(rs, name, {steward_replica})
    if not ours:
        raise StorageError(f"bundle {name!r}: no reachable replica of ours holds it")
    trusted = trusted + [key.public]
    b = _load(ours, name, trusted)
    dst = rs.try_store(steward_replica)
    stores = ([(steward_replica, dst)] if dst is not None else []) + ours
    log = custody.CustodyLog(stores, name)
    state = log.verify(trusted, bundle_id=b.bundle_id)
    high_water(cfg, state)
    return log, b, state, trusted


# -- steward side


def _steward_log(cfg: Config, name: str, key: SigningKey | None, trusted: list[PublicKey],
                 replica: str | None = None):  # fmt: skip
    rs = ReplicaSet(cfg)
    names = [replica] if replica else rs.names
    stores = _holding(rs, name, set(rs.names) - set(names))
    if not stores:
        raise StorageError(f"bundle {name!r}: not on any reachable replica of this config"
                           + (f" ({'; '.join(f'{n}: {e}' for n, e in rs.errors.items())})"
                              if rs.errors else ""))  # fmt: skip
    if not trusted:
        raise InputError("no trusted public key: put the depositor's public key in "
                         "trusted_keys or pass --trust")  # fmt: skip
    b = _load(stores, name, trusted)
    log = custody.CustodyLog(stores, name)
    state = log.verify(trusted, bundle_id=b.bundle_id)
    high_water(cfg, state)
    if key is not None and (state.steward is None or state.steward.key_id != key.public.key_id):
        named = state.steward.key_id[:16] if state.steward else "none"
        raise TrustError(f"bundle {name!r}: this key ({key.public.key_id[:16]}) is not the "
                         f"steward the latest handover names ({named})")  # fmt: skip
    return log, b, state, stores


def accept(cfg: Config, name: str, key: SigningKey, trusted: list[PublicKey], keys: Keys, *,
           replica: str | None = None, workers: int | None = None,
           on_bytes=None) -> EscrowResult:  # fmt: skip
    """Full audit of our copy, the depositor's signature (checked on load), the key check;
    then a receipt signed by us naming the handover. A damaged copy is not accepted."""
    from weightvault.archive.verify import verify

    log, b, state, stores = _steward_log(cfg, name, key, trusted, replica)
    pending = state.pending_handover
    if pending is None:  # accepted already (a re-run, say after a crash): report the receipt
        r = state.receipts[state.steward.handover.digest]
        log.sync(trusted, bundle_id=b.bundle_id)
        a, k = r.body["audit"], r.body["key_check"]
        return _result(r, b, log, audit={"objects": a["objects"], "bytes": a["bytes"]},
                       key_check=dict(k), already=True)  # fmt: skip
    where, st = stores[0]
    report = verify(st, name, trusted, workers=workers, on_bytes=on_bytes)
    if not report.ok:
        raise IntegrityError(f"bundle {name!r} on {where}: the copy handed over is damaged, not "
                             f"accepted: {report.problems[0]}"
                             + (f" (and {len(report.problems) - 1} more)"
                                if len(report.problems) > 1 else ""))  # fmt: skip
    method, result = check_keys(st, b, keys)
    entry = log.append(custody.receipt_event(handover=pending.digest, level="full",
                                             objects=report.objects, nbytes=report.bytes_checked,
                                             problems=[], key_check_method=method,
                                             key_check_result=result),
                       key, trusted=trusted)  # fmt: skip
    _mark(cfg, b.bundle_id, entry)
    return _result(entry, b, log, audit={"objects": report.objects,
                                         "bytes": report.bytes_checked},
                   key_check={"method": method, "result": result})  # fmt: skip


def respond(cfg: Config, name: str, key: SigningKey, trusted: list[PublicKey], *,
            replica: str | None = None) -> EscrowResult | None:  # fmt: skip
    """Answer the open challenge; None if there is none (so cron can run it daily)."""
    log, b, state, stores = _steward_log(cfg, name, key, trusted, replica)
    ch = state.open_challenge
    if ch is None:
        return None  # nothing asked: a scheduled respond is quiet
    answers = custody.answer(stores[0][1], lambda o: object_key(b.manifest, o), ch.body["nonce"],
                             ch.body["objects"])  # fmt: skip
    entry = log.append(custody.response_event(challenge=ch.digest, answers=answers), key,
                       trusted=trusted)  # fmt: skip
    _mark(cfg, b.bundle_id, entry)
    return _result(entry, b, log, answered=len(answers),
                   missing=[a["object"] for a in answers if a["sha256"] is None])  # fmt: skip


def release(cfg: Config, name: str, dest: Path, key: SigningKey, trusted: list[PublicKey],
            keys: Keys, *, replica: str | None = None, workers: int | None = None,
            on_bytes=None, note: str = "") -> EscrowResult:  # fmt: skip
    """Restore bit-exact with a quorum (or an identity), then record the release."""
    from weightvault.archive.restore import restore
    from weightvault.custody.unlock import data_key

    log, b, state, stores = _steward_log(cfg, name, key, trusted, replica)
    if not state.accepted:
        raise InputError(f"bundle {name!r}: the handover is not accepted yet; run escrow accept")
    if not keys:
        raise InputError("a release needs the quorum's shares (--share FILE, repeated) or an "
                         "identity (--identity FILE)")  # fmt: skip
    where, st = stores[0]
    method, used = "identity", 0
    if b.manifest.encryption is not None:
        _dk, method, detail = data_key(st, b, keys)  # fails before anything is written
        used = int(detail.split()[0]) if method == "shares" else 0
    r = restore(st, name, dest, trusted, keys=keys, workers=workers, on_bytes=on_bytes,
                bundle=b)  # fmt: skip
    entry = log.append(custody.release_event(method=method, shares_used=used,
                                             files=r.files, nbytes=r.bytes,
                                             dest_note=note or f"restored from {where}"),
                       key, trusted=trusted)  # fmt: skip
    _mark(cfg, b.bundle_id, entry)
    return _result(entry, b, log, dest=r.dest, files=r.files, bytes=r.bytes)


def log_state(cfg: Config, name: str, trusted: list[PublicKey], *, replica: str | None = None):
    """The verified custody log, read from every reachable replica holding the bundle."""
    rs = ReplicaSet(cfg)
    names = [replica] if replica else rs.names
    stores = _holding(rs, name, set(rs.names) - set(names))
    if not stores:
        errors = "; ".join(f"{n}: {e}" for n, e in rs.errors.items())
        raise StorageError(f"bundle {name!r}: not on any reachable replica"
                           + (f" ({errors})" if errors else ""))  # fmt: skip
    if not trusted:
        raise InputError("no trusted public key: pass the depositor's public key with --trust")
    log = custody.CustodyLog(stores, name)
    state = log.verify(trusted)
    # Keep what we saw: the other side's records go onto our own replicas, and the newest
    # record's digest into the local state, so a record cut from the log later is named.
    own = [(n, st) for n, st in stores if rs.replica(n).role != "escrow"]
    for n, st in own:
        with contextlib.suppress(StorageError):
            log._fill(n, st, state.entries)
    high_water(cfg, state)
    return state


def _water_path(cfg: Config, bundle_id: str) -> Path:
    from weightvault.archive.auditlog import state_root

    return state_root(cfg.audit.get("state_dir")) / "custody" / f"{bundle_id}.json"


def high_water(cfg: Config, state: custody.CustodyState) -> None:
    """Refuse a custody log shorter than one seen before, naming the first record gone, and
    remember the newest record seen (state_dir/custody/<bundle id>.json)."""
    if not state.entries or state.bundle_id is None:
        return
    path = _water_path(cfg, state.bundle_id)
    try:
        seen = json.loads(path.read_text())
    except FileNotFoundError:
        seen = None
    except (ValueError, OSError) as e:
        raise CorruptData(f"{path}: unreadable local custody state ({e})") from None
    entries = state.entries
    if isinstance(seen, dict) and isinstance(seen.get("seq"), int) and seen["seq"] >= 1:
        n = seen["seq"]
        if len(entries) < n or entries[n - 1].digest != seen.get("digest"):
            raise IntegrityError(
                f"custody log of {state.bundle_name!r}: record {n} (sha256 "
                f"{str(seen.get('digest'))[:16]}, seen {seen.get('at', '?')}) is missing or "
                f"changed now; the log holds {len(entries)} records (records were removed "
                "from every replica this machine can read)")
        if len(entries) == n:
            return
    _mark(cfg, state.bundle_id, entries[-1])


def _mark(cfg: Config, bundle_id: str, entry: custody.Entry) -> None:
    from weightvault.archive.auditlog import now

    path = _water_path(cfg, bundle_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"seq": entry.seq, "digest": entry.digest, "at": now()},
                              sort_keys=True))  # fmt: skip
    os.replace(tmp, path)
