"""Audit record version 2 (FORMAT.md section 8.1): a bounded failures list in the signed record,
the full list in a file named by its digest, checked against the record before it is used;
version 1 records and chains that go on in version 2 keep verifying."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import objects_of, wv

from weightvault.archive import audit, auditlog
from weightvault.archive.auditlog import (
    MAX_LINE,
    MAX_RECORD,
    PAYLOAD_TYPES,
    BoundedList,
    Chain,
    replica_dir,
    signer_dir,
)
from weightvault.errors import CorruptData, IntegrityError, StorageError
from weightvault.format import canon, keys, spec
from weightvault.storage.store import LocalStore


def _fake(i: int, kind: str = "missing") -> dict:
    return {"object": f"objects/{i:064x}", "bundle": "minilm", "kind": kind,
            "expected": f"{i:064x}", "found": "missing"}  # fmt: skip


def _record(version: int, failures: list[dict] | None = None, **fields) -> dict:
    """A fixity record as audit_replica writes it, with the failure members given."""
    rec = {
        "format": "weightvault-audit", "format_version": version, "eventType": "fixity check",
        "eventDateTime": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:00:01Z",
        "eventOutcome": "fail" if (failures or fields.get("failures_total")) else "pass",
        "replica": {"name": "v", "url": "/x"}, "level": "full",
        "agent": {"tool": {"name": "weightvault", "version": "0"}, "key": "0" * 64},
        "objects_checked": 0, "bytes_read": 0, "bundles": [], "failures": failures or [],
        "transient": [], "repairs": [],
        "coverage": {"cycle_days": None, "objects": 0, "verified_within_cycle": 0,
                     "oldest_age_seconds": None},
    }  # fmt: skip
    if version == 2:
        rec |= {"transient_total": 0, **auditlog.empty_list("repairs")}
    return {**rec, **fields}


def _simulated(tmp: Path, n: int, version: int = 2) -> tuple[dict, Path | None]:
    """A record of an audit that found `n` failures (version 2: and its failures file)."""
    if version == 1:
        return _record(1, [_fake(i) for i in range(n)]), None
    fl = BoundedList(tmp)
    for i in range(n):
        fl.add(_fake(i, "damaged" if i % 10 == 0 else "missing"))
    path = fl.finish()
    return _record(2, **fl.fields()), path


def auditing(vault: Path, lab_key: Path, auditor, state: Path):
    """(the vault's store, a function running a full audit of it as `auditor`, trusting the
    lab's key)."""
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    store = LocalStore(vault)
    return store, lambda: audit.audit_replica("v", store, level="full", trusted=[pk],
                                              key=auditor, state=state)  # fmt: skip


@pytest.fixture
def auditor(tmp_path):
    return keys.generate(tmp_path / "audit.key")


def _chain(tmp_path, store, key) -> Chain:
    return Chain(replica_dir(tmp_path / "state", store.url), store, key.public.key_id)


def _remote_file(store: LocalStore, key, rec) -> Path:
    return store.root / "audits" / signer_dir(key.public.key_id) / "lists" / \
        f"{rec['failures_sha256']}.jsonl"  # fmt: skip


def test_worst_case_failure_size_and_record_bound(tmp_path, auditor):
    """FORMAT.md 8.1's arithmetic, with the real constants: the largest failure the schema
    allows (every character a control character, escaped as six bytes) is MAX_LINE
    bytes with its newline, and a record with both inline lists full of them is signed,
    stored and read back, as is a repair record full of the largest repairs: all three
    lists together would still be under a third of MAX_RECORD."""
    worst = {"object": "\x01" * 4096, "bundle": "\x01" * 128, "kind": "unreadable",
             "expected": "\x01" * 4096, "found": "\x01" * 4096}  # fmt: skip
    line = canon.canonical(worst) + b"\n"
    assert len(line) == MAX_LINE == 74_567
    fl = BoundedList(tmp_path / "tmp")
    for _ in range(auditlog.RECORD_FAILURES):
        fl.add(worst)
    for i in range(50):  # past the record's share: only in the file
        fl.add(_fake(i))
    path = fl.finish()
    assert path is not None and fl.total == 150 and len(fl.inline) == 100
    # the largest repair: smaller than a failure
    fix = {"object": "\x01" * 4096, "bundle": "\x01" * 128, "outcome": "unrepairable",
           "detail": "\x01" * 4096}  # fmt: skip
    assert len(canon.canonical(fix)) + 1 == 49_983
    reps = BoundedList(tmp_path / "tmp", "repairs")
    for _ in range(120):
        reps.add(fix)
    rpath = reps.finish()
    rec = _record(2, **fl.fields(), transient=[worst] * 100, transient_total=100)
    store = LocalStore(tmp_path / "v", create=True)
    chain = _chain(tmp_path, store, auditor)
    entry = chain.append(rec, auditor, {"failures": path})
    # a record is a fixity check or a repair, never both (FORMAT.md 8.1): the three lists'
    # 19,911,700 bytes bound either, the fixity record's two lists 14,913,400
    assert 2 * 100 * MAX_LINE + 100 * 49_983 == 19_911_700 < MAX_RECORD // 3
    assert 14_913_400 < len(entry.raw) < 14_913_400 + 4096, len(entry.raw)
    fix_rec = _record(2, eventType="replication", level="repair",
                      **auditlog.empty_list("failures")) | reps.fields()
    fixed = chain.append(fix_rec, auditor, {"repairs": rpath})
    assert 4_998_300 < len(fixed.raw) < 4_998_300 + 4096, len(fixed.raw)
    assert chain.verify([auditor.public]) == (2, [])
    assert len(list(chain.full_list(fixed, "repairs"))) == 120
    assert [f["kind"] for f in chain.full_list(entry)] == ["unreadable"] * 100 + \
        ["missing"] * 50  # fmt: skip


def test_audit_past_the_record_bound_keeps_its_chain_and_repairs_everything(
        sealed_minilm, vault_copy, lab_key, tmp_path, auditor, monkeypatch):  # fmt: skip
    """A replica that lost every object (more than RECORD_FAILURES, forced to 3): the signed
    record holds the first 3, the true total and the digest of the full list, whose file is
    on the replica and in the local state, byte for byte; the chain verifies, the next audit
    continues it, and repair restores every object, not only the record's first."""
    monkeypatch.setattr(auditlog, "RECORD_FAILURES", 3)
    store, run = auditing(vault_copy, lab_key, auditor, tmp_path / "state")
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    assert run().outcome == "pass"
    objs = objects_of(vault_copy)
    assert len(objs) > 3
    for p in objs:
        p.unlink()
    a = run()
    rec = a.record
    assert rec["format_version"] == 3 and a.outcome == "fail"
    assert rec["failures_total"] == len(objs) == a.as_dict()["failures_total"]
    assert rec["failures_by_kind"] == {"missing": len(objs)}
    assert len(rec["failures"]) == 3
    remote = _remote_file(store, auditor, rec)
    local = Path(a.failures_file)
    assert remote.read_bytes() == local.read_bytes()
    assert hashlib.sha256(local.read_bytes()).hexdigest() == rec["failures_sha256"]
    chain = _chain(tmp_path, store, auditor)
    every = list(chain.full_list(chain.head()))
    assert {f["object"].rsplit("/", 1)[-1] for f in every} == {p.name for p in objs}
    assert every[:3] == rec["failures"]
    assert chain.verify([auditor.public, pk]) == (2, [])
    assert not list(local.parent.parent.glob(".failures.*"))  # no temporary file left

    good = tmp_path / "good"
    shutil.copytree(sealed_minilm, good)
    r, lost = audit.repair_replica("v", store, [("good", LocalStore(good))], trusted=[pk],
                                   key=auditor, state=tmp_path / "state")  # fmt: skip
    assert not lost and r.outcome == "pass"
    # the repair record is bounded the same way: its first 3 repairs, the count, the file
    rr = r.record
    assert len(rr["repairs"]) == 3 and rr["repairs_total"] == len(objs)
    assert rr["repairs_by_outcome"] == {"repaired": len(objs)} and r.repaired == \
        {"minilm": len(objs)}  # fmt: skip
    chain = _chain(tmp_path, store, auditor)
    repairs = list(chain.full_list(chain.head(), "repairs"))
    assert {x["object"].rsplit("/", 1)[-1] for x in repairs} == {p.name for p in objs}
    assert Path(r.as_dict()["repairs_file"]).read_bytes() == \
        (store.root / "audits" / signer_dir(auditor.public.key_id) / "lists" /
         f"{rr['repairs_sha256']}.jsonl").read_bytes()  # fmt: skip
    assert all(p.exists() for p in objs)
    a = run()
    assert a.outcome == "pass" and a.record["sequence"] == 4
    assert _chain(tmp_path, store, auditor).verify([auditor.public, pk]) == (4, [])


EDITS = {
    "edited": lambda b: b.replace(b'"missing"', b'"damaged"', 1),
    "truncated": lambda b: b[: b.rindex(b"\n", 0, len(b) - 1) + 1],
    "cut mid-line": lambda b: b[:-5],
    "extra line": lambda b: b + b.split(b"\n", 1)[0] + b"\n",
    "long line": lambda b: b"x" * MAX_LINE + b"\n" + b,
}


@pytest.mark.parametrize("how", sorted(EDITS))
def test_a_changed_failures_file_is_refused_naming_it(tmp_path, auditor, how):
    """The file is checked against the signed record before a line is used: one changed
    copy is refused with a line naming it (the other copy, intact, is used); both changed,
    reading the full list fails with one line naming both (IntegrityError: exit 1)."""
    store = LocalStore(tmp_path / "v", create=True)
    chain = _chain(tmp_path, store, auditor)
    rec, path = _simulated(tmp_path / "tmp", 150)
    entry = chain.append(rec, auditor, {"failures": path})
    local, remote = chain.list_path(entry.record), _remote_file(store, auditor, rec)
    want = list(chain.full_list(entry))
    assert len(want) == 150
    local.write_bytes(EDITS[how](local.read_bytes()))
    assert list(chain.full_list(entry)) == want  # the replica's copy checks
    count, problems = chain.verify([auditor.public])
    assert count == 1 and len(problems) == 1 and str(local) in problems[0], problems
    remote.write_bytes(EDITS[how](remote.read_bytes()))
    with pytest.raises(IntegrityError) as e:
        list(chain.full_list(entry))
    msg = str(e.value)
    assert "\n" not in msg and str(local) in msg and str(remote) in msg, msg
    assert e.value.exit_code == 1
    problems = chain.verify([auditor.public])[1]
    assert len(problems) == 2 and str(remote) in problems[1], problems
    assert not list(local.parent.glob(".failures.*"))  # the private copies are gone


def test_cli_verify_and_repair_refuse_a_changed_failures_file(vault_copy, lab_key, tmp_path,
                                                            auditor):  # fmt: skip
    """Through the CLI, with the real RECORD_FAILURES: an audit record of 150 simulated
    failures in the replica's chain; `audit-log verify` passes, then names the edited file
    (exit 1), and `repair` stops with one error line naming it (exit 1)."""
    store = LocalStore(vault_copy)
    state = tmp_path / "state"
    chain = Chain(replica_dir(state, store.url), store, auditor.public.key_id)
    rec, path = _simulated(tmp_path / "tmp", 150)
    entry = chain.append(rec, auditor, {"failures": path})
    common = ("--vault", vault_copy, "--trust", f"{lab_key}.pub", "--key", tmp_path / "audit.key",
              "--state-dir", state)  # fmt: skip
    r = wv("audit-log", "verify", *common)
    assert r.code == 0 and "1 records, INTACT" in r.out, r.out + r.err
    for p in (chain.list_path(entry.record), _remote_file(store, auditor, rec)):
        p.write_bytes(p.read_bytes()[:-1])
    r = wv("audit-log", "verify", *common)
    assert r.code == 1 and "BROKEN" in r.out, r.out + r.err
    assert str(_remote_file(store, auditor, rec)) in r.out
    r = wv("repair", *common)
    assert r.code == 1, r.out + r.err
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert len(lines) == 1 and "weightvault: error:" in lines[0], r.err
    assert str(chain.list_path(entry.record)) in lines[0]


def test_version_1_chain_continued_in_version_2_verifies(vault_copy, lab_key, tmp_path, auditor):
    """A chain written by the previous version (version 1 records, every failure inline,
    signed as version=1) and then continued by this one verifies whole; a version 1 record's
    failures are read inline by repair; a record signed under the other version's payload
    type is refused."""
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    store = LocalStore(vault_copy)
    chain = _chain(tmp_path, store, auditor)
    v1, _ = _simulated(tmp_path, 150, version=1)
    first = chain.append(v1, auditor)
    env = json.loads(first.raw)
    assert env["record"]["format_version"] == 1
    keys.verify_signatures(PAYLOAD_TYPES[1], canon.canonical(env["record"]), env["signatures"],
                           [auditor.public], "v1")  # fmt: skip
    assert len(list(chain.full_list(first))) == 150  # inline, no file
    a = audit.audit_replica("v", store, level="full", trusted=[pk], key=auditor,
                            state=tmp_path / "state")  # fmt: skip
    assert a.record["format_version"] == 3 and a.record["sequence"] == 2
    assert a.record["previous"] == first.digest
    assert _chain(tmp_path, store, auditor).verify([auditor.public]) == (2, [])
    # the same first record signed as version 2 (a downgrade or an upgrade): refused
    path = store.root / "audits" / signer_dir(auditor.public.key_id) / "00000001.json"
    forged = canon.canonical({"record": env["record"], "signatures": [auditor.sign(
        PAYLOAD_TYPES[2], canon.canonical(env["record"]))]})  # fmt: skip
    path.write_bytes(forged)
    problems = _chain(tmp_path, store, auditor).verify([auditor.public])[1]
    assert any(str(path.parent) in p and "signature" in p.lower() for p in problems), problems


def test_schema_and_counts_of_each_version(tmp_path):
    """The schema requires the version 2 members in version 2 and forbids them in 1; a
    version 2 record whose counts disagree with its lists is refused."""
    v2, _ = _simulated(tmp_path, 5)
    full = {**v2, "sequence": 1, "previous": None}
    spec.validate(full, "audit-record", "v2")
    auditlog.consistent(full, "v2")
    v1 = {**_record(1, [_fake(1)]), "sequence": 1, "previous": None}
    spec.validate(v1, "audit-record", "v1")
    for member in ("failures_total", "failures_sha256", "failures_by_kind", "repairs_total",
                   "repairs_sha256", "repairs_by_outcome", "transient_total"):
        with pytest.raises(CorruptData, match="audit-record schema"):
            spec.validate({**v1, member: full[member]}, "audit-record", "v1")
        with pytest.raises(CorruptData, match="audit-record schema"):
            spec.validate({k: v for k, v in full.items() if k != member}, "audit-record", "v2")
    with pytest.raises(CorruptData, match="audit-record schema"):
        spec.validate({**full, "failures": [_fake(i) for i in range(101)],
                       "failures_total": 101}, "audit-record", "v2")  # fmt: skip
    bad = {
        "inline count": {**full, "failures": full["failures"][:4]},
        "kinds sum": {**full, "failures_by_kind": {"missing": 4}},
        "digest": {**full, "failures_sha256": "0" * 64},
        "kinds": {**full, "failures_by_kind": {"missing": 5}},
        "transient": {**full, "transient_total": 2},
    }
    for rec in bad.values():
        with pytest.raises(CorruptData, match="^v2: "):
            auditlog.consistent(rec, "v2")


def test_the_failures_file_goes_to_the_replica_before_its_record(tmp_path, auditor,
                                                                 monkeypatch):  # fmt: skip
    """A replica that takes the record but not its file never holds a record naming a file it
    lacks: the record stays local, and the next append puts the file, then the record."""
    store = LocalStore(tmp_path / "v", create=True)
    chain = _chain(tmp_path, store, auditor)
    rec, path = _simulated(tmp_path / "tmp", 150)
    real = Chain._put_list

    def refuse(self, *a):
        raise StorageError("replica full")

    monkeypatch.setattr(Chain, "_put_list", refuse)
    entry = chain.append(rec, auditor, {"failures": path})
    sub = store.root / "audits" / signer_dir(auditor.public.key_id)
    assert not sub.exists() and chain.list_path(entry.record).exists()
    monkeypatch.setattr(Chain, "_put_list", real)
    rec2, path2 = _simulated(tmp_path / "tmp", 3)
    assert path2 is None
    chain.append(rec2, auditor)
    assert sorted(p.name for p in sub.glob("*.json")) == ["00000001.json", "00000002.json"]
    assert _remote_file(store, auditor, rec).read_bytes() == \
        chain.list_path(entry.record).read_bytes()  # fmt: skip
    assert chain.verify([auditor.public]) == (2, [])


@pytest.mark.slow
def test_failures_past_the_record_are_not_held_in_memory(tmp_path):
    """300,000 failures (a replica that lost about 19 TB of 64 MiB objects) go through the
    audit's BoundedList with a flat memory: only the record's first 100 are held."""
    import tracemalloc

    fl = BoundedList(tmp_path)
    tracemalloc.start()
    for i in range(300_000):
        fl.add(_fake(i))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    path = fl.finish()
    assert peak < 2 << 20, peak  # a list of them: about 300 MB
    assert fl.total == 300_000 and len(fl.inline) == 100
    assert path.stat().st_size == 300_000 * 217
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fl.fields()["failures_sha256"]
    path.unlink()


class _Endless:
    """A hostile failures file that never ends: `unit` repeated; reading past `limit` bytes
    fails the test (the reader should have stopped long before)."""

    def __init__(self, unit: bytes, limit: int = 64 << 20, head: bytes = b""):
        self.unit, self.limit, self.given, self.head = unit, limit, 0, head

    def read(self, n: int) -> bytes:
        assert self.given < self.limit, "read on past any bound"
        data = self.head[:n]
        self.head = self.head[n:]
        data += (self.unit * ((n - len(data)) // len(self.unit) + 1))[: n - len(data)]
        self.given += n
        return data


def test_an_endless_failures_file_is_refused_early(tmp_path):
    """The checks bound what is read from storage: lines past failures_total, or one line
    past MAX_LINE, stop the reading there."""
    rec, path = _simulated(tmp_path, 150)
    whole = path.read_bytes()
    last = whole[whole.rindex(b"\n", 0, len(whole) - 1) + 1 :]
    src = _Endless(last, head=whole)  # the real list, then its last line for ever
    with pytest.raises(IntegrityError, match="^f: more lines than the 150"):
        auditlog.check_list(src, "f", rec)
    assert src.given <= 2 << 20  # the first read's megabyte, and the next
    src = _Endless(whole[: whole.index(b"\n") + 1])  # the first line for ever
    with pytest.raises(IntegrityError, match="^f: line 2: its first items are not the "):
        auditlog.check_list(src, "f", rec)
    assert src.given <= 1 << 20
    src = _Endless(b"x")
    with pytest.raises(IntegrityError, match=f"^f: line 1 is longer than {MAX_LINE}"):
        auditlog.check_list(src, "f", rec)
    assert src.given <= 1 << 20


def test_a_lost_local_state_takes_the_list_files_back_from_the_replica(tmp_path, auditor):
    """The local state lost, the next append resumes from the replica's verified chain and
    takes each record's list file with it (checked first), so `audit-log verify` finds both
    copies whole; a list file that does not check is not taken (verify names it)."""
    store = LocalStore(tmp_path / "v", create=True)
    rec, path = _simulated(tmp_path / "tmp", 150)
    entry = _chain(tmp_path, store, auditor).append(rec, auditor, {"failures": path})
    shutil.rmtree(tmp_path / "state")
    chain = _chain(tmp_path, store, auditor)
    again, _ = _simulated(tmp_path / "tmp", 0)
    assert chain.append(again, auditor).seq == 2
    assert chain.list_path(entry.record).read_bytes() == \
        _remote_file(store, auditor, rec).read_bytes()  # fmt: skip
    assert chain.verify([auditor.public]) == (2, [])
    shutil.rmtree(tmp_path / "state")
    remote = _remote_file(store, auditor, rec)
    remote.write_bytes(remote.read_bytes()[:-1])
    chain = _chain(tmp_path, store, auditor)
    assert chain.append(again, auditor).seq == 3
    assert not chain.list_path(entry.record).exists()
    problems = chain.verify([auditor.public])[1]
    assert len(problems) == 2 and str(remote) in problems[1], problems
    assert not list(chain.local.glob(".failures.*"))


def test_an_outsider_recomputes_the_list_digest(tmp_path):
    """FORMAT.md 8.1's list bytes, recomputed with nothing but json and hashlib: each item's
    canonical JSON (sorted keys, no spaces, UTF-8) and a line feed; for the example record
    of a real audit (manifests/examples/audit-record-v2.json) and for a list kept in a file,
    whose bytes are exactly those."""
    def outsider(items) -> str:
        return hashlib.sha256(b"".join(
            json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n" for x in items)).hexdigest()  # fmt: skip

    example = Path(__file__).parent.parent / "manifests/examples/audit-record-v2.json"
    rec = json.loads(example.read_text())
    assert rec["failures_total"] == len(rec["failures"]) == 2
    assert outsider(rec["failures"]) == rec["failures_sha256"]
    assert outsider([]) == rec["repairs_sha256"]
    v3 = json.loads(example.with_name("audit-record-v3.json").read_text())  # FORMAT.md 8.2
    assert v3["bundles_total"] == len(v3["bundles"]) == 1
    assert outsider(v3["bundles"]) == v3["bundles_sha256"]
    odd = [{**_fake(i), "found": "é\x01\"\\ \u2028 \U0001F600"} for i in range(150)]
    fl = BoundedList(tmp_path)
    for x in odd:
        fl.add(x)
    path = fl.finish()
    assert outsider(odd) == fl.fields()["failures_sha256"]
    assert [json.loads(x) for x in path.read_bytes().splitlines(keepends=True)] == odd


def test_a_crashed_audits_list_file_is_swept_and_a_live_ones_is_not(tmp_path):
    """A crashed audit leaves its temporary full list (as large as the damage it listed) in
    the local chain directory; the next audit removes it. Another audit still running (its
    file locked by its process, however long ago it last found a failure) keeps its file."""
    import subprocess
    import sys

    live = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path\n"
         "from weightvault.archive.auditlog import BoundedList\n"
         "fl = BoundedList(Path(sys.argv[1])); fl.add({'object': 'o', 'bundle': 'b', "
         "'kind': 'missing', 'expected': 'e', 'found': 'missing'}); fl._f.flush()\n"
         "print(fl.path, flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        live_path = Path(live.stdout.readline().strip())
        crashed = BoundedList(tmp_path)
        crashed.add(_fake(1))
        crashed._f.close()  # the process died: its lock went with it, the file stayed
        assert live_path.exists() and crashed.path.exists()
        nxt = BoundedList(tmp_path)
        assert not crashed.path.exists()
        assert live_path.exists() and live_path.read_bytes().count(b"\n") == 1
        nxt.discard()
    finally:
        live.communicate("")
    assert live.returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == [live_path.name]  # its owner left it


@pytest.mark.parametrize("line", [b"[" * 20_000 + b"]" * 20_000, b'{"bundle":"minilm",'
                                  b'"expected":1.50,"found":"missing","kind":"missing",'
                                  b'"object":"o"}', b'{"bundle":"\\ud800","found":"x",'
                                  b'"kind":"missing","object":"o" }'])  # fmt: skip
def test_a_hostile_line_past_the_inline_items_is_refused_not_raised(tmp_path, line):
    """Lines past the record's inline share that json can barely read (nested 20,000 deep), or
    that have no canonical form (a float, a lone surrogate): refused by name like any other
    bad line, never an exception past the check."""
    import io

    rec, path = _simulated(tmp_path, 150)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[120] = line + b"\n"
    with pytest.raises(IntegrityError, match="^f: line 121 (is not JSON|is not an item|is not "
                                             "in canonical form)"):  # fmt: skip
        auditlog.check_list(io.BytesIO(b"".join(lines)), "f", rec)
