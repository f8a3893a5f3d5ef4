"""The escrow custody log: the full chain of a bundle in escrow verifies; every way of editing,
removing, forking or mis-signing a record is caught and names the file; storage challenges
pass on an intact copy and name the damaged object on a bad one; hostile record files raise
only weightvault's own errors."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightvault.custody import chain as custody
from weightvault.custody.chain import (
    CustodyLog,
    answer,
    challenge_event,
    check_answers,
    format_log,
    handover_event,
    make_challenge,
    receipt_event,
    release_event,
    response_event,
    result_event,
)
from weightvault.errors import Conflict, CorruptData, NotFound, TrustError, WeightvaultError
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey, generate
from weightvault.storage.store import LocalStore
from weightvault.storage.vault import object_key

NAME = "minilm"
BID = hashlib.sha256(b"example bundle").hexdigest()
CONDITIONS = """# Release conditions for minilm

Release to the Example Foundation if Example Lab is dissolved, or if its board decides the
weights are safe to release. Two of three custodians must agree.
"""


def key_for(obj: str) -> str:
    return object_key(NAME, obj)


@dataclass
class World:
    tmp: Path
    depositor: SigningKey
    steward: SigningKey
    steward2: SigningKey
    stranger: SigningKey
    lab: LocalStore
    vault1: LocalStore  # the first steward's replica
    vault2: LocalStore  # the second steward's replica
    objects: list[str]

    @property
    def trusted(self) -> list[PublicKey]:
        return [self.depositor.public]

    def depositor_log(self) -> CustodyLog:
        # the replica both parties write comes first: its create-if-absent decides races
        return CustodyLog([("steward", self.vault1), ("lab", self.lab)], NAME)

    def steward_log(self) -> CustodyLog:
        return CustodyLog([("steward", self.vault1)], NAME)

    def steward2_log(self) -> CustodyLog:
        return CustodyLog([("steward2", self.vault2)], NAME)

    def record_path(self, store: LocalStore, seq: int) -> Path:
        return store.local_path(custody.record_key(NAME, seq))


@pytest.fixture
def w(tmp_path) -> World:
    keys = {n: generate(tmp_path / f"{n}.key") for n in ("lab", "st1", "st2", "other")}
    stores = [LocalStore(tmp_path / n, create=True) for n in ("lab", "vault1", "vault2")]
    rng = random.Random(7)
    objects = []
    for i in range(12):
        data = rng.randbytes(1000 + 700 * i)
        obj = hashlib.sha256(data).hexdigest()
        objects.append(obj)
        for s in stores:
            s.put_bytes(key_for(obj), data)
    return World(tmp_path, keys["lab"], keys["st1"], keys["st2"], keys["other"], *stores,
                 sorted(objects))  # fmt: skip


def handover(w: World, *, to: SigningKey | None = None, name: str = "Example Archive") -> dict:
    to = to or w.steward
    return handover_event(steward_name=name, steward_key=to.public, replica=w.vault1.url,
                          conditions=CONDITIONS, recipient="age1examplerecipient")  # fmt: skip


def receipt(state: custody.CustodyState) -> dict:
    return receipt_event(handover=state.latest_handover.digest, level="full", objects=12,
                         nbytes=54_000, problems=[], key_check_method="identity",
                         key_check_result="ok: the identity opens the data key")  # fmt: skip


def do_handover(w: World) -> None:
    w.depositor_log().append(handover(w), w.depositor, actor="Example Lab", bundle_id=BID,
                             trusted=w.trusted)  # fmt: skip


def do_accept(w: World, log: CustodyLog | None = None, key: SigningKey | None = None) -> None:
    log = log or w.steward_log()
    state = log.verify(w.trusted)
    log.append(receipt(state), key or w.steward, trusted=w.trusted)


def do_challenge(w: World, log: CustodyLog | None = None, key: SigningKey | None = None,
                 n: int = 4) -> None:  # fmt: skip
    log = log or w.depositor_log()
    state = log.verify(w.trusted)
    nonce, objs = make_challenge(w.objects, n)
    log.append(challenge_event(nonce=nonce, objects=objs, steward_key_id=state.steward.key_id),
               key or w.depositor, trusted=w.trusted)  # fmt: skip


def do_respond(w: World, log: CustodyLog | None = None, store: LocalStore | None = None,
               key: SigningKey | None = None) -> None:  # fmt: skip
    log = log or w.steward_log()
    ch = log.verify(w.trusted).open_challenge
    answers = answer(store or w.vault1, key_for, ch.body["nonce"], ch.body["objects"])
    log.append(response_event(challenge=ch.digest, answers=answers), key or w.steward,
               trusted=w.trusted)  # fmt: skip


def do_check(w: World, log: CustodyLog | None = None, key: SigningKey | None = None) -> list:
    log = log or w.depositor_log()
    state = log.verify(w.trusted)
    resp = state.unchecked_response
    ch = state.entry(resp.body["challenge"])
    mismatches = check_answers(w.lab, key_for, ch, resp)
    log.append(result_event(challenge=ch.digest, response=resp.digest, mismatches=mismatches),
               key or w.depositor, trusted=w.trusted)  # fmt: skip
    return mismatches


def full_chain(w: World) -> None:
    do_handover(w)  # 1
    do_accept(w)  # 2
    do_challenge(w)  # 3
    do_respond(w)  # 4
    assert do_check(w) == []  # 5
    release = release_event(method="shares", shares_used=2, files=7, nbytes=90_000,
                            dest_note="to the Example Foundation")  # fmt: skip
    w.steward_log().append(release, w.steward, trusted=w.trusted)  # 6
    # succession: the first steward hands custody to a second one, on the second's replica
    log = CustodyLog([("steward2", w.vault2), ("steward", w.vault1)], NAME)
    body = handover_event(steward_name="Second Archive", steward_key=w.steward2.public,
                          replica=w.vault2.url, conditions=CONDITIONS, recipient=None,
                          transfer_from=w.steward.public.key_id)  # fmt: skip
    log.append(body, w.steward, trusted=w.trusted)  # 7
    do_accept(w, w.steward2_log(), w.steward2)  # 8


def resign(w: World, path: Path, edit, key: SigningKey) -> None:
    env = json.loads(path.read_bytes())
    edit(env["record"])
    env["signatures"] = [key.sign(custody.PAYLOAD_TYPE, canon.canonical(env["record"]))]
    path.write_bytes(canon.canonical(env))


# -- the chain as it should be


def test_full_chain_verifies(w):
    full_chain(w)
    state = w.steward2_log().verify(w.trusted, bundle_id=BID)
    assert [e.event for e in state.entries] == [
        "handover", "receipt", "challenge", "response", "challenge-result", "release",
        "handover", "receipt",
    ]  # fmt: skip
    assert state.bundle_id == BID
    assert state.depositor == w.depositor.public
    assert state.steward.name == "Second Archive"
    assert state.steward.key_id == w.steward2.public.key_id
    assert state.accepted and state.pending_handover is None
    # after the transfer is accepted, the steward that handed over holds the depositor side
    assert state.holder.key_id == w.steward.public.key_id
    assert state.holder_name == "Example Archive"
    assert state.open_challenge is None and state.unchecked_response is None
    assert len(state.releases) == 1
    rows = format_log(state)
    assert list(rows[0]) == list(custody.LOG_COLUMNS)
    assert [r["status"] for r in rows] == [
        "accepted", "ok", "answered", "checked", "pass", "released", "accepted", "ok",
    ]  # fmt: skip
    assert rows[0]["actor"] == "Example Lab (depositor)"
    assert rows[6]["actor"] == "Example Archive (steward)"
    assert "transfer to Second Archive" in rows[6]["summary"]


def test_pending_handover_and_open_challenge(w):
    do_handover(w)
    state = w.steward_log().verify(w.trusted)
    assert state.pending_handover is not None and not state.accepted
    assert format_log(state)[0]["status"] == "pending"
    do_accept(w)
    do_challenge(w)
    state = w.depositor_log().verify(w.trusted)
    assert state.open_challenge is not None
    assert format_log(state)[-1]["status"] == "open"
    do_respond(w)
    state = w.depositor_log().verify(w.trusted)
    assert state.open_challenge is None
    assert state.unchecked_response is not None
    assert format_log(state)[-1]["status"] == "unchecked"


def test_records_on_disk(w):
    do_handover(w)
    raw = w.record_path(w.vault1, 1).read_bytes()
    assert raw == w.record_path(w.lab, 1).read_bytes()
    env = json.loads(raw)
    assert raw == canon.canonical(env)
    assert env["record"]["previous"] is None
    assert (
        env["record"]["handover"]["conditions"]["sha256"]
        == hashlib.sha256(CONDITIONS.encode()).hexdigest()
    )
    assert w.steward.public.pem().decode() == env["record"]["handover"]["steward"]["public_key"]
    do_accept(w)
    rec2 = json.loads(w.record_path(w.vault1, 2).read_bytes())["record"]
    assert rec2["previous"] == hashlib.sha256(raw).hexdigest()
    assert rec2["receipt"]["handover"] == hashlib.sha256(raw).hexdigest()
    assert rec2["actor"] == {"role": "steward", "name": "Example Archive",
                             "key_id": w.steward.public.key_id}  # fmt: skip


def test_empty_log(w):
    with pytest.raises(NotFound, match="no custody records"):
        w.steward_log().verify(w.trusted)
    assert w.steward_log().verify(w.trusted, allow_empty=True).entries == []


def test_sync_copies_missing_records(w):
    do_handover(w)
    do_accept(w)  # the steward writes only its own replica
    assert not w.record_path(w.lab, 2).exists()
    log = w.depositor_log()
    state = log.verify(w.trusted)
    assert state.missing == {"lab": [2]}
    assert log.sync(w.trusted) == [("lab", 2)]
    assert w.record_path(w.lab, 2).read_bytes() == w.record_path(w.vault1, 2).read_bytes()
    assert log.verify(w.trusted).missing == {}
    assert log.sync(w.trusted) == []


def test_append_fills_earlier_records_on_other_stores(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w)  # written to the steward replica, then to lab with the receipt it lacked
    assert w.record_path(w.lab, 2).exists() and w.record_path(w.lab, 3).exists()


def test_concurrent_append_retries_once(w):
    do_handover(w)
    do_accept(w)

    class Racing(LocalStore):
        raced = False

        def put_bytes(self, key, data, *, exclusive=False):
            if not Racing.raced and key.endswith("00000003.json"):
                Racing.raced = True
                do_challenge(w)  # the depositor's challenge lands first, as record 3
            return super().put_bytes(key, data, exclusive=exclusive)

    racing = Racing(w.vault1.root)
    log = CustodyLog([("steward", racing)], NAME)
    log.append(release_event(method="identity", shares_used=0, files=1, nbytes=5,
                             dest_note="x"), w.steward, trusted=w.trusted)  # fmt: skip
    state = w.depositor_log().verify(w.trusted)
    assert [e.event for e in state.entries][2:] == ["challenge", "release"]


def test_concurrent_append_that_no_longer_applies_is_a_conflict(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w)

    class Racing(LocalStore):
        def put_bytes(self, key, data, *, exclusive=False):
            if key.endswith("00000004.json") and not w.record_path(w.vault1, 4).exists():
                do_respond(w)  # another run of `escrow respond` answers first
            return super().put_bytes(key, data, exclusive=exclusive)

    log = CustodyLog([("steward", Racing(w.vault1.root))], NAME)
    ch = log.verify(w.trusted).open_challenge
    answers = answer(w.vault1, key_for, ch.body["nonce"], ch.body["objects"])
    with pytest.raises(Conflict, match="no longer applies"):
        log.append(response_event(challenge=ch.digest, answers=answers), w.steward,
                   trusted=w.trusted)  # fmt: skip


# -- tampering, removal, forks


def test_one_byte_edit_names_the_file(w):
    full_chain(w)
    path = w.record_path(w.vault2, 3)
    raw = bytearray(path.read_bytes())
    i = raw.index(b'"nonce":"') + len(b'"nonce":"') + 5
    raw[i] = ord("a") if raw[i] != ord("a") else ord("b")  # still valid JSON, still canonical
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match="altered after it was signed") as e:
        w.steward2_log().verify(w.trusted)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("seq", [1, 4, 8])
def test_flipped_byte_anywhere_names_the_file(w, seq):
    full_chain(w)
    path = w.record_path(w.vault2, seq)
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), max(1, len(raw) // 7)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x04
        path.write_bytes(bytes(damaged))
        with pytest.raises(WeightvaultError) as e:
            w.steward2_log().verify(w.trusted)
        assert str(path) in str(e.value), (i, str(e.value))
        assert isinstance(e.value, CorruptData | TrustError)


def test_resigned_record_with_broken_previous(w):
    full_chain(w)
    path = w.record_path(w.vault2, 3)

    def edit(rec):
        rec["previous"] = "0" * 64

    resign(w, path, edit, w.depositor)  # the right key, but the chain is broken
    with pytest.raises(CorruptData, match="does not follow record 2") as e:
        w.steward2_log().verify(w.trusted)
    assert str(path) in str(e.value)


def test_resigned_edited_body_breaks_the_next_record(w):
    full_chain(w)

    def edit(rec):
        rec["challenge"]["objects"] = rec["challenge"]["objects"][:1]

    resign(w, w.record_path(w.vault2, 3), edit, w.depositor)
    with pytest.raises(CorruptData) as e:
        w.steward2_log().verify(w.trusted)
    assert str(w.record_path(w.vault2, 4)) in str(e.value)


def test_not_canonical(w):
    do_handover(w)
    path = w.record_path(w.vault1, 1)
    path.write_bytes(json.dumps(json.loads(path.read_bytes()), indent=1).encode())
    with pytest.raises(CorruptData, match="canonical") as e:
        w.steward_log().verify(w.trusted)
    assert str(path) in str(e.value)


def test_deleted_middle_record(w):
    full_chain(w)
    w.record_path(w.vault2, 4).unlink()
    with pytest.raises(CorruptData, match="expected record 4 here") as e:
        w.steward2_log().verify(w.trusted)
    assert str(w.record_path(w.vault2, 5)) in str(e.value)


def test_deleted_record_restored_from_another_store(w):
    full_chain(w)
    w.record_path(w.vault2, 4).unlink()
    log = CustodyLog([("steward2", w.vault2), ("steward", w.vault1)], NAME)
    # record 8 (the second steward's receipt) was only ever written to its own replica
    assert log.verify(w.trusted).missing == {"steward2": [4], "steward": [8]}
    assert log.sync(w.trusted) == [("steward2", 4), ("steward", 8)]
    w.steward2_log().verify(w.trusted)


def test_fork_between_stores(w):
    do_handover(w)
    do_accept(w)
    # the depositor, not seeing the steward's replica, writes its own record 2 on lab only
    CustodyLog([("lab", w.lab)], NAME).append(
        challenge_event(nonce="1" * 64, objects=w.objects[:2],
                        steward_key_id=w.steward.public.key_id),
        w.depositor, trusted=w.trusted,
    )  # fmt: skip
    with pytest.raises(CorruptData, match="forked") as e:
        w.depositor_log().verify(w.trusted)
    msg = str(e.value)
    assert str(w.record_path(w.vault1, 2)) in msg and str(w.record_path(w.lab, 2)) in msg
    assert "'steward'" in msg and "'lab'" in msg
    with pytest.raises(CorruptData, match="forked"):
        w.depositor_log().sync(w.trusted)


def test_fork_with_a_damaged_copy_names_the_damaged_one(w):
    do_handover(w)
    path = w.record_path(w.lab, 1)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptData) as e:
        w.depositor_log().verify(w.trusted)
    assert str(path) in str(e.value) and "forked" not in str(e.value)


def test_oversized_record(w):
    do_handover(w)
    path = w.record_path(w.vault1, 2)
    path.write_bytes(b" " * (custody.MAX_RECORD + 1))
    with pytest.raises(CorruptData, match="larger than") as e:
        w.steward_log().verify(w.trusted)
    assert str(path) in str(e.value)


# -- who may sign what


def forge(w: World, body: dict, key: SigningKey, role: str, name: str) -> Path:
    """Write record N+1 signed by `key`, bypassing append()'s checks."""
    state = w.steward_log().verify(w.trusted)
    ev = body["event"]
    rec = {"format": "weightvault-custody", "format_version": 1, "sequence": state.next_seq,
           "previous": state.head.digest, "event": ev, "time": "2026-01-01T00:00:00Z",
           "bundle": {"name": NAME, "id": BID},
           "actor": {"role": role, "name": name, "key_id": key.public.key_id},
           "tool": {"name": "weightvault", "version": "0"}, ev: body[ev]}  # fmt: skip
    env = {"record": rec, "signatures": [key.sign(custody.PAYLOAD_TYPE, canon.canonical(rec))]}
    path = w.record_path(w.vault1, state.next_seq)
    w.vault1.put_bytes(custody.record_key(NAME, state.next_seq), canon.canonical(env))
    return path


def test_receipt_signed_by_another_key(w):
    do_handover(w)
    state = w.steward_log().verify(w.trusted)
    path = forge(w, receipt(state), w.stranger, "steward", "Impostor")
    with pytest.raises(TrustError) as e:
        w.steward_log().verify(w.trusted)
    msg = str(e.value)
    assert str(path) in msg
    assert w.steward.public.key_id in msg  # the key it must be signed by, in full
    assert "Example Archive" in msg


def test_append_refuses_a_record_verify_would_reject(w):
    do_handover(w)
    state = w.steward_log().verify(w.trusted)
    with pytest.raises(TrustError, match=w.steward.public.key_id):
        w.steward_log().append(receipt(state), w.stranger, trusted=w.trusted)
    assert not w.record_path(w.vault1, 2).exists()
    with pytest.raises(TrustError, match="the holder"):  # a steward cannot challenge itself
        do_challenge(w, w.steward_log(), w.steward)


def test_first_handover_must_be_by_a_trusted_key(w):
    do_handover(w)
    with pytest.raises(TrustError, match="not trusted"):
        w.steward_log().verify([w.stranger.public])


def test_first_record_must_be_a_handover(w):
    log = w.steward_log()
    with pytest.raises(CorruptData, match="record 1 must be the depositor's handover"):
        log.append(release_event(method="identity", shares_used=0, files=0, nbytes=0,
                                 dest_note=""), w.steward, actor="S", bundle_id=BID,
                   trusted=w.trusted)  # fmt: skip


def test_receipt_must_name_the_latest_handover(w):
    do_handover(w)
    old = w.steward_log().verify(w.trusted)
    do_handover(w)  # a second handover (new conditions) supersedes the first
    with pytest.raises(CorruptData, match="latest handover is record 2"):
        w.steward_log().append(receipt(old), w.steward, trusted=w.trusted)
    do_accept(w)
    rows = format_log(w.steward_log().verify(w.trusted))
    assert [r["status"] for r in rows] == ["superseded", "accepted", "ok"]


def test_steward_key_id_must_match_its_pem(w):
    body = handover(w)
    body["handover"]["steward"]["key_id"] = w.stranger.public.key_id
    with pytest.raises(CorruptData, match="is not the id of its public_key"):
        w.depositor_log().append(body, w.depositor, actor="Example Lab", bundle_id=BID,
                                 trusted=w.trusted)  # fmt: skip


def test_transfer_rules(w):
    do_handover(w)
    transfer = handover_event(steward_name="Second Archive", steward_key=w.steward2.public,
                              replica=w.vault2.url, conditions=CONDITIONS,
                              transfer_from=w.steward.public.key_id)  # fmt: skip
    with pytest.raises(CorruptData, match="never accepted"):
        w.steward_log().append(transfer, w.steward, trusted=w.trusted)
    do_accept(w)
    w.steward_log().append(transfer, w.steward, trusted=w.trusted)
    state = w.steward_log().verify(w.trusted)
    assert state.holder == w.depositor.public  # until the successor accepts
    assert state.pending_handover.seq == 3
    do_accept(w, w.steward_log(), w.steward2)
    state = w.steward_log().verify(w.trusted)
    assert state.holder.key_id == w.steward.public.key_id
    with pytest.raises(TrustError, match=w.steward.public.key_id):
        do_challenge(w, w.steward_log(), w.depositor)  # the depositor no longer holds that side
    do_challenge(w, w.steward_log(), w.steward)  # the former steward challenges its successor
    do_respond(w, w.steward_log(), w.vault1, w.steward2)
    with pytest.raises(TrustError, match=w.steward2.public.key_id):
        w.steward_log().append(release_event(method="identity", shares_used=0, files=0,
                                             nbytes=0, dest_note=""), w.steward,
                               trusted=w.trusted)  # fmt: skip


def test_bundle_id_is_pinned(w):
    do_handover(w)
    with pytest.raises(CorruptData, match="bundle id"):
        w.steward_log().verify(w.trusted, bundle_id="f" * 64)


# -- challenges


def test_make_challenge():
    names = [f"{i:064x}" for i in range(20)]
    nonce, objs = make_challenge(names, 8)
    assert len(bytes.fromhex(nonce)) == 32 and len(objs) == 8
    assert objs == sorted(set(objs)) and set(objs) <= set(names)
    assert make_challenge(names, 8)[0] != nonce
    assert make_challenge(names[:3], 8)[1] == names[:3]
    a, b = make_challenge(names, 4, random.Random(1)), make_challenge(names, 4, random.Random(1))
    assert a == b


def test_answer_is_keyed_by_the_nonce(w):
    obj = w.objects[0]
    data = w.vault1.local_path(key_for(obj)).read_bytes()
    nonce = "ab" * 32
    (a,) = answer(w.vault1, key_for, nonce, [obj])
    assert a == {"object": obj, "sha256": hashlib.sha256(bytes.fromhex(nonce) + data).hexdigest()}
    assert answer(w.vault1, key_for, "cd" * 32, [obj])[0]["sha256"] != a["sha256"]


def test_challenge_answered_correctly_passes(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w, n=12)
    do_respond(w)
    assert do_check(w) == []
    assert format_log(w.depositor_log().verify(w.trusted))[-1]["status"] == "pass"


def test_steward_copy_with_a_flipped_byte_fails(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w, n=12)
    bad = w.objects[5]
    p = w.vault1.local_path(key_for(bad))
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 1
    p.write_bytes(bytes(raw))
    do_respond(w)
    assert do_check(w) == [bad]
    state = w.depositor_log().verify(w.trusted)
    row = format_log(state)[-1]
    assert row["status"] == "fail" and bad[:16] in row["summary"]
    assert state.entries[-1].body["mismatches"] == [bad]


def test_steward_missing_object_fails(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w, n=12)
    gone = w.objects[0]
    w.vault1.local_path(key_for(gone)).unlink()
    do_respond(w)
    ch = w.steward_log().verify(w.trusted).entries[-1]
    assert ch.body["answers"][0] == {"object": gone, "sha256": None}
    assert do_check(w) == [gone]


def test_steward_cannot_answer_from_digests(w):
    """A steward that kept only each object's SHA-256 has nothing to combine with the nonce."""
    do_handover(w)
    do_accept(w)
    do_challenge(w, n=3)
    state = w.depositor_log().verify(w.trusted)
    ch = state.open_challenge
    fake = [{"object": o, "sha256": hashlib.sha256(bytes.fromhex(ch.body["nonce"]) +
                                                   bytes.fromhex(o)).hexdigest()}
            for o in ch.body["objects"]]  # fmt: skip
    w.steward_log().append(response_event(challenge=ch.digest, answers=fake), w.steward,
                           trusted=w.trusted)  # fmt: skip
    assert do_check(w) == ch.body["objects"]


def test_response_must_answer_every_object_in_order(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w, n=3)
    ch = w.steward_log().verify(w.trusted).open_challenge
    answers = answer(w.vault1, key_for, ch.body["nonce"], ch.body["objects"])[:2]
    with pytest.raises(CorruptData, match="exactly the objects"):
        w.steward_log().append(response_event(challenge=ch.digest, answers=answers), w.steward,
                               trusted=w.trusted)  # fmt: skip


def test_result_must_name_a_response(w):
    do_handover(w)
    do_accept(w)
    do_challenge(w)
    ch = w.depositor_log().verify(w.trusted).open_challenge
    body = result_event(challenge=ch.digest, response="0" * 64, mismatches=[])
    with pytest.raises(CorruptData, match="not a challenge and its response"):
        w.depositor_log().append(body, w.depositor, trusted=w.trusted)


# -- hostile record files


FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])  # fmt: skip


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_record_bytes(w, data):
    path = w.record_path(w.vault1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(WeightvaultError):
        w.steward_log().verify(w.trusted)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=80),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", max_size=12), kids,
                      max_size=4),
    max_leaves=12,
)  # fmt: skip


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@pytest.fixture
def chain(w) -> World:
    full_chain(w)
    return w


@FUZZ
@given(data=st.data())
def test_fuzz_signed_records(chain, data):
    """Any change to any record, even one re-signed by the key that must sign it, is either
    accepted by the rules or refused with weightvault's own error naming the file."""
    w = chain
    seq = data.draw(st.integers(1, 8))
    path = w.record_path(w.vault2, seq)
    original = path.read_bytes()
    env = json.loads(original)
    rec = copy.deepcopy(env["record"])
    where = data.draw(st.sampled_from(list(_paths(rec))[1:]))
    value = data.draw(JSON)
    node = rec
    for k in where[:-1]:
        node = node[k]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[where[-1]]
    else:
        node[where[-1]] = value
    signer = {1: w.depositor, 3: w.depositor, 5: w.depositor, 7: w.steward, 8: w.steward2}.get(
        seq, w.steward
    )
    env = {"record": rec, "signatures": [signer.sign(custody.PAYLOAD_TYPE, canon.canonical(rec))]}
    path.write_bytes(canon.canonical(env))
    try:
        try:
            state = w.steward2_log().verify(w.trusted)
        except WeightvaultError as e:
            assert "custody" in str(e) or str(w.tmp) in str(e)
        else:
            format_log(state)
    finally:
        path.write_bytes(original)


# -- the schema


EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"


@pytest.mark.parametrize("example,mutate,where", [
    ("handover", lambda r: r.update(event="receipt"), "(top)"),  # body under another event
    ("handover", lambda r: r.update(receipt={}), "(top)"),  # a second body
    ("handover", lambda r: r.update(extra=1), "(top)"),
    ("handover", lambda r: r.update(previous="ab" * 32 + "\n"), "previous"),
    ("handover", lambda r: r["handover"]["steward"].update(public_key="not a key"), "public_key"),
    ("challenge", lambda r: r["actor"].update(role="steward"), "role"),
    ("response", lambda r: r["actor"].update(role="depositor"), "role"),
    ("challenge", lambda r: r["challenge"].update(nonce="00"), "nonce"),
])  # fmt: skip
def test_schema_rejects(example, mutate, where):
    rec = json.loads((EXAMPLES / f"custody-{example}.json").read_text())
    spec.validate(rec, "custody-record", "example")
    mutate(rec)
    with pytest.raises(CorruptData, match=f"schema at [^:]*{re.escape(where)}"):
        spec.validate(rec, "custody-record", "example")


def test_schema_result_and_release_consistency():
    res = json.loads((EXAMPLES / "custody-challenge-result.json").read_text())
    res["challenge-result"]["mismatches"] = [res["challenge-result"]["challenge"]]
    with pytest.raises(CorruptData):
        spec.validate(res, "custody-record", "pass with mismatches")
    rel = json.loads((EXAMPLES / "custody-release.json").read_text())
    rel["release"]["method"] = "identity"
    with pytest.raises(CorruptData):
        spec.validate(rel, "custody-record", "identity release naming shares")
