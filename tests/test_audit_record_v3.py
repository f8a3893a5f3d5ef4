"""Audit record version 3 (FORMAT.md section 8.2): the record's `bundles` list is bounded like
its failures, the first RECORD_BUNDLES entries inline and every entry in a file named by its
digest, so a replica's chain keeps going however many bundles the archive grows to; version
1 and 2 records keep verifying in a chain that goes on in version 3."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import ok, wv

from weightvault.archive import audit, auditlog
from weightvault.archive.auditlog import (
    PAYLOAD_TYPES,
    Chain,
    bundles_total,
    replica_dir,
    signer_dir,
)
from weightvault.errors import CorruptData
from weightvault.format import canon, keys, spec
from weightvault.storage.store import LocalStore


@pytest.fixture
def auditor(tmp_path):
    return keys.generate(tmp_path / "audit.key")


def _three_bundles(vault: Path, lab_key: Path, tmp_path: Path) -> None:
    """Two more small bundles beside minilm: three in all."""
    for name in ("alpha", "beta"):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model": name}))
        (src / "weights.bin").write_bytes(name.encode() * 5000)
        ok(wv("seal", src, "--vault", vault, "--key", lab_key, "--name", name, "--quiet"))


def _v3(items: list[dict], **over) -> dict:
    h = b"".join(canon.canonical(b) + b"\n" for b in items)
    counts: dict[str, int] = {}
    for b in items:
        counts[b["state"]] = counts.get(b["state"], 0) + 1
    rec = {
        "format": "weightvault-audit", "format_version": 3, "sequence": 1, "previous": None,
        "eventType": "fixity check", "eventDateTime": "2026-01-01T00:00:00Z",
        "ended": "2026-01-01T00:00:01Z", "eventOutcome": "pass",
        "replica": {"name": "v", "url": "/x"}, "level": "metadata",
        "agent": {"tool": {"name": "weightvault", "version": "0"}, "key": "0" * 64},
        "objects_checked": 0, "bytes_read": 0, "transient": [], "transient_total": 0,
        "bundles": items[:auditlog.RECORD_BUNDLES], "bundles_total": len(items),
        "bundles_sha256": hashlib.sha256(h).hexdigest(), "bundles_by_state": counts,
        **auditlog.empty_list("failures"), **auditlog.empty_list("repairs"),
        "coverage": {"cycle_days": None, "objects": 0, "verified_within_cycle": 0,
                     "oldest_age_seconds": None},
    }  # fmt: skip
    return rec | over


def _b(i: int, state: str = "intact") -> dict:
    return {"name": f"m{i}", "bundle": f"{i:064x}", "state": state}


def test_an_audit_of_more_bundles_than_a_record_holds(vault_copy, lab_key, tmp_path, auditor,
                                                      monkeypatch):  # fmt: skip
    """Three bundles, a record that holds two: the record has the first two, the count, the
    counts by state and the digest; the file beside the chain (replica and local state) has
    all three and checks against the record; the cross-check and the local state's list of
    what the replica must hold see all three; the chain verifies and goes on, and the next
    audit of the same bundles names the same file."""
    _three_bundles(vault_copy, lab_key, tmp_path)
    from test_audit_record_v2 import auditing

    monkeypatch.setattr(auditlog, "RECORD_BUNDLES", 2)
    store, run = auditing(vault_copy, lab_key, auditor, tmp_path / "state")
    a = run()
    rec = a.record
    assert a.outcome == "pass" and rec["format_version"] == 3
    assert [b["name"] for b in rec["bundles"]] == ["alpha", "beta"]
    assert rec["bundles_total"] == bundles_total(rec) == 3
    assert rec["bundles_by_state"] == {"intact": 3}
    assert [b["name"] for b in a.bundles] == ["alpha", "beta", "minilm"]
    stored = store.root / "audits" / signer_dir(auditor.public.key_id) / "lists" / \
        f"{rec['bundles_sha256']}.jsonl"  # fmt: skip
    assert stored.read_bytes() == b"".join(canon.canonical(b) + b"\n" for b in a.bundles)
    assert Path(a.as_dict()["bundles_file"]).read_bytes() == stored.read_bytes()
    chain = Chain(replica_dir(tmp_path / "state", store.url), store, auditor.public.key_id)
    assert list(chain.full_list(chain.head(), "bundles")) == a.bundles
    assert chain.verify([auditor.public]) == (1, [])
    known = audit.Known(tmp_path / "state")
    audit.remember(known, [a])
    assert set(audit.Known(tmp_path / "state").ids(store.url)) == {"alpha", "beta", "minilm"}
    b = run()
    assert b.record["bundles_sha256"] == rec["bundles_sha256"] and b.record["sequence"] == 2
    assert chain.verify([auditor.public]) == (2, [])
    # the file edited: refused against the signed record, naming it
    head, _, tail = stored.read_bytes().rpartition(b'"intact"')  # the entry past the inline
    stored.write_bytes(head + b'"damaged"' + tail)
    problems = chain.verify([auditor.public])[1]
    assert any(str(stored) in p and "bundles_sha256" in p for p in problems), problems


def test_version_2_chain_continued_in_version_3_verifies(vault_copy, lab_key, tmp_path,
                                                         auditor):  # fmt: skip
    """A version 2 record (bundles inline, no bundles_* members, signed as version=2) followed
    by this version's audit: the chain verifies whole. The version 3 record signed under the
    version 2 payload type is refused."""
    from test_audit_record_v2 import _chain, _simulated

    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    store = LocalStore(vault_copy)
    chain = _chain(tmp_path, store, auditor)
    v2, path = _simulated(tmp_path, 5)
    first = chain.append(v2, auditor, {"failures": path})
    assert first.record["format_version"] == 2 and "bundles_total" not in first.record
    a = audit.audit_replica("v", store, level="metadata", trusted=[pk], key=auditor,
                            state=tmp_path / "state")  # fmt: skip
    assert a.record["format_version"] == 3 and a.record["previous"] == first.digest
    assert _chain(tmp_path, store, auditor).verify([auditor.public]) == (2, [])
    rec_path = store.root / "audits" / signer_dir(auditor.public.key_id) / "00000002.json"
    env = json.loads(rec_path.read_bytes())
    rec_path.write_bytes(canon.canonical({"record": env["record"], "signatures": [
        auditor.sign(PAYLOAD_TYPES[2], canon.canonical(env["record"]))]}))  # fmt: skip
    problems = _chain(tmp_path, store, auditor).verify([auditor.public])[1]
    assert any("00000002.json" in p and "signature" in p.lower() for p in problems), problems


def test_schema_and_counts_of_version_3():
    """The schema requires the bundles_* members in version 3 and forbids them before; at most
    1,000 bundles inline; a record whose bundle counts, states or digest disagree with its
    inline list is refused."""
    bundles = [_b(0), _b(1, "damaged"), _b(2, "lost")]
    full = _v3(bundles)
    spec.validate(full, "audit-record", "v3")
    auditlog.consistent(full, "v3")
    v2 = {k: v for k, v in full.items() if not k.startswith("bundles_")} | {"format_version": 2}
    spec.validate(v2, "audit-record", "v2")
    for member in ("bundles_total", "bundles_sha256", "bundles_by_state"):
        with pytest.raises(CorruptData, match="audit-record schema"):
            spec.validate({k: v for k, v in full.items() if k != member}, "audit-record", "v3")
        with pytest.raises(CorruptData, match="audit-record schema"):
            spec.validate({**v2, member: full[member]}, "audit-record", "v2")
    many = [_b(i) for i in range(1001)]
    with pytest.raises(CorruptData, match="audit-record schema"):
        spec.validate(_v3(many, bundles=many), "audit-record", "v3")
    spec.validate(_v3(many), "audit-record", "v3")  # the first 1,000 inline: fine
    bad = {
        "inline count": {**full, "bundles": bundles[:2]},
        "states sum": {**full, "bundles_by_state": {"intact": 1, "damaged": 1}},
        "states": {**full, "bundles_by_state": {"intact": 3}},
        "digest": {**full, "bundles_sha256": "0" * 64},
    }
    for why, rec in bad.items():
        with pytest.raises(CorruptData, match="^v3: .*bundles"):
            auditlog.consistent(rec, "v3")
            pytest.fail(why)


def test_a_record_is_a_fixity_check_or_a_repair_never_both():
    """FORMAT.md 8.1: a repair record (eventType replication, level repair, and only it) has
    no failures, transient failures or bundles; a fixity record has no repairs."""
    fix = {"object": "objects/" + "0" * 64, "bundle": "m", "outcome": "repaired",
           "detail": "copied from b"}  # fmt: skip
    repairs = {"repairs": [fix], "repairs_total": 1, "repairs_by_outcome": {"repaired": 1},
               "repairs_sha256": hashlib.sha256(canon.canonical(fix) + b"\n").hexdigest()}  # fmt: skip
    repair = _v3([], eventType="replication", level="repair", **repairs)
    spec.validate(repair, "audit-record", "repair")
    auditlog.consistent(repair, "repair")
    for rec, why in [
        (_v3([], **repairs), "a fixity record with repairs"),
        (_v3([_b(0)], eventType="replication", level="repair"), "a repair record with failures "
                                                                "or bundles"),
        ({**repair, "level": "full"}, "eventType 'replication' with level 'full'"),
        (_v3([], level="repair"), "eventType 'fixity check' with level 'repair'"),
    ]:  # fmt: skip
        with pytest.raises(CorruptData, match=f"^r: {why}"):
            auditlog.consistent(rec, "r")


def test_worst_case_bundle_entry_and_the_bound():
    """FORMAT.md 8.2's arithmetic: the largest bundle entry the schema allows is 878 bytes with
    its newline, so 1,000 inline add at most 878,000 bytes to the 19,911,700 of the other
    inline lists: 20,789,700, under a third of the 64 MiB a record may have."""
    worst = {"name": "\x01" * 128, "bundle": "f" * 64, "state": "uncommitted"}
    spec.validate(_v3([worst]), "audit-record", "worst")
    assert len(canon.canonical(worst)) + 1 == 878
    assert 19_911_700 + auditlog.RECORD_BUNDLES * 878 == 20_789_700 < auditlog.MAX_RECORD // 3


def test_the_fast_canonical_form_of_list_items_is_rfc_8785():
    """check_list's fast path (json's sorted compact output) gives exactly canon's RFC 8785
    bytes for list items (ASCII keys, string or null values), control characters, U+2028,
    DEL, non-BMP and all; a lone surrogate has no canonical form and is left to canon."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from weightvault.archive.auditlog import _flat_canonical

    keys_ = st.sampled_from(["object", "bundle", "kind", "expected", "found", "name", "state"])

    @settings(max_examples=500, deadline=None)
    @given(st.dictionaries(keys_, st.none() | st.text(max_size=40), min_size=1))
    def agree(item):
        assert _flat_canonical(item) == canon.canonical(item)

    agree()
    assert _flat_canonical({"name": "\ud800"}) is None
