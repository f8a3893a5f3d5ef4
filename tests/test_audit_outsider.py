"""An outsider (tests/outsider_audit.py, written from docs/FORMAT.md sections 4.1, 6, 8 to 9
and the schema alone, importing nothing of weightvault) verifies the audit chains weightvault
really writes, recovers the same full lists, and refuses each kind of tampering.

The chain is built once per module, with the writer's bounds shrunk (3 failures or repairs,
2 bundles inline) so that a small vault spills every list to its file: a version 2 record of
5 simulated failures, a passing full audit of three bundles, a failing one after objects were
deleted and one damaged, the repair of them, and a passing audit again."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import outsider_audit as outsider
import pytest
from conftest import objects_of
from test_audit_record_v2 import _chain, _simulated
from test_audit_record_v3 import _three_bundles

from weightvault.archive import audit, auditlog
from weightvault.archive.auditlog import PAYLOAD_TYPES, Chain, replica_dir, signer_dir
from weightvault.errors import CorruptData
from weightvault.format import canon, keys
from weightvault.storage.store import LocalStore

INLINE = {"failures": 3, "repairs": 3, "transient": 3, "bundles": 2}
NAMES = ("failures", "repairs", "bundles")


@pytest.fixture(scope="module")
def built(sealed_minilm, lab_key, tmp_path_factory):
    """(vault, auditor, {sequence: {list: weightvault's full list}})."""
    tmp = tmp_path_factory.mktemp("outsider")
    vault = tmp / "vault"
    shutil.copytree(sealed_minilm, vault)  # what the vault_copy fixture does, once a module
    auditor = keys.generate(tmp / "audit.key")
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    store = LocalStore(vault)
    wv_lists: dict[int, dict[str, list]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auditlog, "RECORD_BUNDLES", 2)
        mp.setattr(auditlog, "RECORD_FAILURES", 3)

        def note():
            chain = _chain(tmp, store, auditor)
            head = chain.head()
            wv_lists[head.record["sequence"]] = {
                n: list(chain.full_list(head, n)) for n in NAMES}  # fmt: skip

        def run():
            a = audit.audit_replica("v", store, level="full", trusted=[pk], key=auditor,
                                    state=tmp / "state")  # fmt: skip
            note()
            return a

        v2, path = _simulated(tmp, 5)
        first = _chain(tmp, store, auditor).append(v2, auditor, {"failures": path})
        assert first.record["format_version"] == 2
        note()
        _three_bundles(vault, lab_key, tmp)
        assert run().outcome == "pass"
        objs = objects_of(vault)
        for p in objs[:4]:
            p.unlink()
        data = bytearray(objs[4].read_bytes())
        data[0] ^= 1  # same size, other bytes: damaged
        objs[4].write_bytes(bytes(data))
        failed = run()
        assert failed.outcome == "fail" and failed.record["failures_total"] == 5
        r, lost = audit.repair_replica("v", store, [("good", LocalStore(sealed_minilm))],
                                       trusted=[pk], key=auditor, state=tmp / "state")  # fmt: skip
        assert not lost and r.record["repairs_total"] == 5
        note()
        assert run().outcome == "pass"
        assert _chain(tmp, store, auditor).verify([auditor.public, pk]) == (5, [])
    return vault, auditor, wv_lists


def _check(root: Path, auditor) -> outsider.Result:
    return outsider.verify_replica(root, auditor.public.raw, inline=INLINE)


def _copy(built, tmp_path) -> tuple[Path, Path]:
    """A copy of the replica's audits (not its objects), and its chain directory."""
    vault, auditor, _ = built
    shutil.copytree(vault / "audits", tmp_path / "audits")
    return tmp_path, tmp_path / "audits" / signer_dir(auditor.public.key_id)


def test_the_outsider_verifies_the_real_chain_and_recovers_the_full_lists(built):
    vault, auditor, wv_lists = built
    res = _check(vault, auditor)
    assert res.problems == []
    assert sorted(res.records) == [1, 2, 3, 4, 5]
    assert [res.records[n]["format_version"] for n in range(1, 6)] == [2, 3, 3, 3, 3]
    assert res.lists == wv_lists
    # every list spilled to a file somewhere in the chain, and the outsider read each file
    assert len(res.lists[1]["failures"]) == 5 > len(res.records[1]["failures"])
    assert len(res.lists[2]["bundles"]) == 3 > len(res.records[2]["bundles"])
    assert {f["kind"] for f in res.lists[3]["failures"]} == {"missing", "damaged"}
    assert len(res.lists[4]["repairs"]) == 5 > len(res.records[4]["repairs"])
    assert res.records[4]["bundles"] == [] and res.records[4]["bundles_total"] == 0
    # the same key as PEM names the same chain; another key has none here
    assert _check(vault, auditor).records == \
        outsider.verify_replica(vault, auditor.public.pem(), inline=INLINE).records  # fmt: skip
    other = keys.generate(vault.parent / "other.key")
    assert "no audit chain" in _check(vault, other).problems[0]


def test_the_outsiders_bounds_are_the_specifications(built):
    """Without the shrunk bounds, the outsider refuses the test's records: their inline
    share is not the first min(total, 100) items of 8.1, so its bounds are not the writer's."""
    vault, auditor, _ = built
    problems = outsider.verify_replica(vault, auditor.public.raw).problems
    assert any("00000001.json" in p and "failures holds 3 items" in p for p in problems)


def _resign(path: Path, auditor, edit=lambda r: None, version: int | None = None) -> None:
    env = json.loads(path.read_bytes())
    rec = env["record"]
    edit(rec)
    v = rec["format_version"] if version is None else version
    path.write_bytes(canon.canonical({"record": rec, "signatures": [
        auditor.sign(PAYLOAD_TYPES[v], canon.canonical(rec))]}))  # fmt: skip


def _list_file(chain: Path, n: int, name: str) -> Path:
    rec = json.loads((chain / f"{n:08d}.json").read_bytes())["record"]
    return chain / "lists" / f"{rec[f'{name}_sha256']}.jsonl"


def _edit_failures_file(chain, auditor):
    p = _list_file(chain, 3, "failures")
    p.write_bytes(p.read_bytes().replace(b'"missing"', b'"damaged"', 1))
    return p.name, "SHA-256 is not failures_sha256"


def _edit_bundles_file(chain, auditor):
    p = _list_file(chain, 2, "bundles")
    p.write_bytes(p.read_bytes().replace(b'"intact"', b'"lost"', 1))
    return p.name, "SHA-256 is not bundles_sha256"


def _cut_repairs_file(chain, auditor):
    p = _list_file(chain, 4, "repairs")
    b = p.read_bytes()
    p.write_bytes(b[: b.rindex(b"\n", 0, len(b) - 1) + 1])
    return p.name, "4 lines, repairs_total is 5"


def _long_line(chain, auditor):
    p = _list_file(chain, 1, "failures")
    p.write_bytes(b"x" * outsider.MAX_LINE + b"\n" + p.read_bytes())
    return p.name, "longer than"


def _remove_list_file(chain, auditor):
    p = _list_file(chain, 2, "bundles")
    p.unlink()
    return p.name, "missing, bundles_total 3 needs it"


def _remove_record(chain, auditor):
    (chain / "00000002.json").unlink()
    return "00000002.json", "record missing"


def _remove_first_record(chain, auditor):
    (chain / "00000001.json").unlink()
    return "00000001.json", "record missing"


def _v3_signed_as_v2(chain, auditor):
    _resign(chain / "00000005.json", auditor, version=2)
    return "00000005.json", "does not verify under application/vnd.weightvault.audit+json; " \
        "version=3"  # fmt: skip


def _v2_signed_as_v3(chain, auditor):
    _resign(chain / "00000001.json", auditor, version=3)
    return "00000001.json", "version=2"


def _total_disagrees(chain, auditor):
    def edit(r):
        r["failures_total"] += 1

    _resign(chain / "00000003.json", auditor, edit)
    return "00000003.json", "failures_by_kind adds up to 5, failures_total is 6"


def _by_state_miscounts_a_file(chain, auditor):
    """The counts still add up to the total, but do not count the list in the file."""

    def edit(r):
        r["bundles_by_state"] = {"intact": 2, "damaged": 1}

    _resign(chain / "00000005.json", auditor, edit)
    return "jsonl", "bundles_by_state does not count its items"


def _by_kind_miscounts_inline(chain, auditor):
    def edit(r):
        r["failures_total"], r["failures_by_kind"] = 1, {"missing": 1}

    _resign(chain / "00000005.json", auditor, edit)
    return "00000005.json", "failures holds 0 items, failures_total is 1"


def _inline_digest_wrong(chain, auditor):
    def edit(r):
        r["failures_sha256"] = hashlib.sha256(b"x").hexdigest()

    _resign(chain / "00000005.json", auditor, edit)
    return "00000005.json", "failures_sha256 is not the digest"


def _transient_disagrees(chain, auditor):
    def edit(r):
        r["transient_total"] = 2

    _resign(chain / "00000002.json", auditor, edit)
    return "00000002.json", "transient holds 0 items"


def _previous_relinked(chain, auditor):
    def edit(r):
        r["previous"] = "0" * 64

    _resign(chain / "00000004.json", auditor, edit)
    return "00000004.json", "previous is"


def _not_canonical(chain, auditor):
    p = chain / "00000002.json"
    p.write_bytes(json.dumps(json.loads(p.read_bytes()), indent=1).encode())
    return "00000002.json", "not the canonical form"


def _unsigned_field(chain, auditor):
    p = chain / "00000002.json"
    p.write_bytes(p.read_bytes().replace(b'"eventOutcome":"pass"', b'"eventOutcome":"fail"'))
    return "00000002.json", "does not verify"


def _schema(chain, auditor):
    _resign(chain / "00000002.json", auditor, lambda r: r.update(surprise=1))
    return "00000002.json", "schema"


def _inline_not_first(chain, auditor):
    """Signed, counted and digested right, but the inline bundles are not the file's first."""
    _resign(chain / "00000005.json", auditor, lambda r: r["bundles"].reverse())
    return "jsonl", "its first items are not the record's bundles"


def _not_canonical_head(chain, auditor):
    """The newest record re-encoded: its signature still verifies and no later record's
    `previous` covers its bytes, so only the canonical-form check sees it."""
    p = chain / "00000005.json"
    p.write_bytes(json.dumps(json.loads(p.read_bytes()), indent=1).encode())
    return "00000005.json", "not the canonical form"


def _duplicate_key(chain, auditor):
    p = chain / "00000005.json"
    p.write_bytes(p.read_bytes()[:-1] + b',"record":{}}')
    return "00000005.json", "duplicate key 'record'"


def _too_large(chain, auditor):
    with open(chain / "00000005.json", "r+b") as f:
        f.truncate(outsider.MAX_RECORD + 1)
    return "00000005.json", "larger than 67108864 bytes"


TAMPERS = [_edit_failures_file, _edit_bundles_file, _cut_repairs_file, _long_line,
           _remove_list_file, _remove_record, _remove_first_record, _v3_signed_as_v2,
           _v2_signed_as_v3, _total_disagrees, _by_state_miscounts_a_file,
           _by_kind_miscounts_inline, _inline_digest_wrong, _transient_disagrees,
           _previous_relinked, _not_canonical, _unsigned_field, _schema, _too_large,
           _inline_not_first, _not_canonical_head, _duplicate_key]  # fmt: skip


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_"))
def test_the_outsider_refuses_a_tampered_chain(built, tmp_path, tamper):
    _, auditor, _ = built
    root, chain = _copy(built, tmp_path)
    assert _check(root, auditor).problems == []
    where, what = tamper(chain, auditor)
    problems = _check(root, auditor).problems
    assert any(where in p and what in p for p in problems), problems


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_"))
def test_weightvault_refuses_what_the_outsider_refuses(built, tmp_path, tamper, monkeypatch):
    """The same tampers through weightvault's own chain verifier (replica only: an empty local
    state), so that the two readers of the specification agree."""
    monkeypatch.setattr(auditlog, "RECORD_BUNDLES", 2)
    monkeypatch.setattr(auditlog, "RECORD_FAILURES", 3)
    _, auditor, _ = built
    root, chain = _copy(built, tmp_path)

    def problems() -> list[str]:
        store = LocalStore(root)
        c = Chain(replica_dir(tmp_path / "state", store.url), store, auditor.public.key_id)
        try:
            found = c.verify([auditor.public])[1]
        except CorruptData as e:
            return [str(e)]
        return [p for p in found if "local trail" not in p]

    assert problems() == []
    tamper(chain, auditor)
    assert problems()  # it may name another file: the record after a removed one, say


def test_a_removed_newest_record_is_invisible_on_the_replica_alone(built, tmp_path):
    """What the specification does not promise, pinned: a chain's newest record deleted
    leaves a shorter chain that verifies (section 8 links each record to the one before, not
    after). A writer's local copy or a log anchor (section 12) is what shows it."""
    _, auditor, _ = built
    root, chain = _copy(built, tmp_path)
    (chain / "00000005.json").unlink()
    res = _check(root, auditor)
    assert res.problems == [] and sorted(res.records) == [1, 2, 3, 4]
