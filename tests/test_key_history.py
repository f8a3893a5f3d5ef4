"""Rotation and revocation statements (issue 21) judged over a list of preservation-log
entries, as the library sees them: which bundles a reader that trusts the original keys accepts
after a rotation, a revocation, and the attacks on both."""

from __future__ import annotations

import hashlib
import json

import pytest

from weightvault.errors import CorruptData, InputError, TrustError
from weightvault.format import canon, keys, keystatement
from weightvault.format.trust import TrustPolicy

PT = "application/vnd.weightvault.manifest+json; version=1"


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    d = tmp_path_factory.mktemp("history-keys")
    return {n: keys.generate(d / n) for n in ("A", "B", "C", "T")}


class Log:
    """A list of log entries and bundles signed into it."""

    def __init__(self):
        self.entries: list[tuple[int, dict]] = []
        self.bundles: dict[str, tuple[bytes, list]] = {}

    def seal(self, name: str, time: str, *signers, logged: bool = True) -> str:
        body = canon.canonical({"name": name})
        bid = hashlib.sha256(body).hexdigest()
        self.bundles[name] = (body, keys.sign_all(list(signers), PT, body))
        if logged:
            self.add({"kind": "sealed", "time": time, "bundle": bid, "name": name})
        return bid

    def add(self, entry: dict) -> None:
        self.entries.append((len(self.entries), {"v": 1, **entry}))

    def statement(self, raw: bytes, time: str) -> None:
        self.add({"kind": "key", "time": time, **json.loads(raw)})

    def verify(self, name: str, roots, threshold: int = 1):
        body, sigs = self.bundles[name]
        policy = TrustPolicy([r.public for r in roots], threshold, self.entries)
        got = policy.verify(PT, body, sigs, name, hashlib.sha256(body).hexdigest())
        return [x.key_id for x in got]


def test_a_rotation_hands_the_slot_to_the_new_key_from_its_entry_on(k):
    log = Log()
    log.seal("old-by-A", "2026-01-01T00:00:00Z", k["A"])
    log.seal("early-by-B", "2026-01-15T00:00:00Z", k["B"])
    log.statement(keystatement.rotation(k["A"], k["B"], reason="laptop retired"),
                  "2026-02-01T00:00:00Z")  # fmt: skip
    log.seal("new-by-B", "2026-03-01T00:00:00Z", k["B"])
    log.seal("late-by-A", "2026-03-02T00:00:00Z", k["A"])
    log.seal("unlogged-by-B", "", k["B"], logged=False)
    log.seal("unlogged-by-A", "", k["A"], logged=False)
    assert log.verify("old-by-A", [k["A"]]) == [k["A"].public.key_id]
    assert log.verify("new-by-B", [k["A"]]) == [k["B"].public.key_id]
    for name, why in (("late-by-A", "succeeded by"), ("early-by-B", "trusted only from entry"),
                      ("unlogged-by-B", "no sealed entry"), ("unlogged-by-A", "no sealed entry")):  # fmt: skip
        with pytest.raises(TrustError, match=why):
            log.verify(name, [k["A"]])
    # a reader that never trusted A is not moved by A's rotation
    with pytest.raises(TrustError, match="unknown key"):
        log.verify("new-by-B", [k["C"]])


def test_a_rotation_signed_by_one_key_only_is_refused(k):
    raw = json.loads(keystatement.rotation(k["A"], k["T"]))
    raw["signatures"] = raw["signatures"][:1]  # the old key's signature alone
    with pytest.raises(TrustError, match="not signed by the new key"):
        keystatement.parse(raw, "stmt")
    log = Log()
    log.add({"kind": "key", "time": "2026-02-01T00:00:00Z", **raw})
    log.seal("by-T", "2026-03-01T00:00:00Z", k["T"])
    with pytest.raises(TrustError, match=r"key [0-9a-f]{16}, which is not trusted: .*not signed "
                                         r"by the new key"):  # fmt: skip
        log.verify("by-T", [k["A"]])
    # and the new key alone (a thief's key claiming a succession) is no better
    raw2 = json.loads(keystatement.rotation(k["A"], k["T"]))
    raw2["signatures"] = raw2["signatures"][1:]
    with pytest.raises(TrustError, match="not signed by the old key"):
        keystatement.parse(raw2, "stmt")


def test_a_revocation_keeps_what_the_log_shows_sealed_before_and_refuses_after(k):
    log = Log()
    log.seal("before", "2026-01-01T00:00:00Z", k["A"])
    log.seal("after-since", "2026-03-01T00:00:00Z", k["A"])
    log.statement(keystatement.revocation(k["A"].public, "2026-02-15T00:00:00Z", [k["A"]],
                                          reason="key file copied off a stolen laptop"),
                  "2026-03-05T00:00:00Z")  # fmt: skip
    log.seal("backdated", "2026-01-02T00:00:00Z", k["A"])  # claims an old time, logged after
    log.seal("unlogged", "", k["A"], logged=False)
    assert log.verify("before", [k["A"]]) == [k["A"].public.key_id]
    for name in ("after-since", "backdated", "unlogged"):
        with pytest.raises(TrustError, match=r"revoked since 2026-02-15T00:00:00Z \(preservation log entry 2\)"):
            log.verify(name, [k["A"]])


def test_a_revocation_by_an_untrusted_key_changes_nothing_and_is_noted(k):
    log = Log()
    log.seal("b", "2026-03-01T00:00:00Z", k["A"])
    log.statement(keystatement.revocation(k["A"].public, "2026-01-01T00:00:00Z", [k["T"]]),
                  "2026-03-02T00:00:00Z")  # fmt: skip
    policy = TrustPolicy([k["A"].public], 1, log.entries)
    body, sigs = log.bundles["b"]
    assert policy.verify(PT, body, sigs, "b", hashlib.sha256(body).hexdigest())
    assert any("not by the key, a key that named it, nor 1 trusted key" in n
               for n in policy.history.notes)  # fmt: skip


def test_the_key_that_named_a_successor_can_revoke_it(k):
    log = Log()
    log.statement(keystatement.rotation(k["A"], k["B"]), "2026-02-01T00:00:00Z")
    log.seal("by-B", "2026-03-01T00:00:00Z", k["B"])
    assert log.verify("by-B", [k["A"]]) == [k["B"].public.key_id]
    log.statement(keystatement.revocation(k["B"].public, "2026-02-15T00:00:00Z", [k["A"]],
                                          reason="token lost"), "2026-03-05T00:00:00Z")  # fmt: skip
    with pytest.raises(TrustError, match="revoked since 2026-02-15"):
        log.verify("by-B", [k["A"]])


def test_revoking_a_stolen_key_voids_the_rotation_the_thief_made(k):
    log = Log()
    log.statement(keystatement.rotation(k["A"], k["T"]), "2026-03-01T00:00:00Z")  # the thief
    log.seal("by-T", "2026-03-02T00:00:00Z", k["T"])
    assert log.verify("by-T", [k["A"], k["C"]]) == [k["T"].public.key_id]  # until the lab notices
    log.statement(keystatement.revocation(k["A"].public, "2026-02-20T00:00:00Z", [k["C"]]),
                  "2026-03-10T00:00:00Z")  # fmt: skip
    with pytest.raises(TrustError, match="rotation made after that key's revocation"):
        log.verify("by-T", [k["A"], k["C"]])


def test_slots_under_a_threshold(k):
    log = Log()
    log.seal("A+C-early", "2026-01-01T00:00:00Z", k["A"], k["C"])
    log.statement(keystatement.rotation(k["A"], k["B"]), "2026-02-01T00:00:00Z")
    log.seal("B+C", "2026-03-01T00:00:00Z", k["B"], k["C"])
    log.seal("A+B", "2026-03-01T00:00:00Z", k["A"], k["B"])  # one slot, twice
    assert len(log.verify("B+C", [k["A"], k["C"]], threshold=2)) == 2
    assert len(log.verify("A+C-early", [k["A"], k["C"]], threshold=2)) == 2
    with pytest.raises(TrustError, match="succeeded by"):
        log.verify("A+B", [k["A"], k["C"]], threshold=2)
    # under 2-of-N, one other key alone cannot revoke A...
    log.statement(keystatement.revocation(k["A"].public, "2025-01-01T00:00:00Z", [k["C"]]),
                  "2026-03-05T00:00:00Z")  # fmt: skip
    assert len(log.verify("A+C-early", [k["A"], k["C"]], threshold=2)) == 2
    # ...but A itself can
    log.statement(keystatement.revocation(k["A"].public, "2025-01-01T00:00:00Z", [k["A"]]),
                  "2026-03-06T00:00:00Z")  # fmt: skip
    with pytest.raises(TrustError, match="revoked since 2025-01-01"):
        log.verify("A+C-early", [k["A"], k["C"]], threshold=2)


def test_statements_are_checked_as_documents(k):
    raw = json.loads(keystatement.rotation(k["A"], k["B"]))
    raw["statement"]["successor"]["keyid"] = k["C"].public.key_id  # names C, carries B's key
    with pytest.raises(CorruptData, match="not the id of its public_key"):
        keystatement.parse(raw, "stmt")
    raw = json.loads(keystatement.rotation(k["A"], k["B"]))
    raw["statement"]["since"] = "2026-01-01T00:00:00Z"
    with pytest.raises(CorruptData, match="key-statement schema"):
        keystatement.parse(raw, "stmt")
    with pytest.raises(InputError, match="cannot succeed itself"):
        keystatement.rotation(k["A"], k["A"])
    with pytest.raises(InputError, match="time zone"):
        keystatement.parse_time("2026-01-01T00:00:00")
    assert keystatement.parse_time("2026-01-01") == "2026-01-01T00:00:00Z"
    assert keystatement.parse_time("2026-01-01T02:00:00+02:00") == "2026-01-01T00:00:00Z"


def test_the_published_examples_are_valid_signed_statements():
    from pathlib import Path

    ex = Path(__file__).resolve().parents[1] / "manifests" / "examples"
    rot = keystatement.parse(json.loads((ex / "key-statement-rotate.json").read_text()),
                             "rotate example")  # fmt: skip
    rev = keystatement.parse(json.loads((ex / "key-statement-revoke.json").read_text()),
                             "revoke example")  # fmt: skip
    assert rot.kind == "rotate" and rev.kind == "revoke"
    assert rev.key.key_id == rot.successor.key_id and rev.signed_by(rot.key)
