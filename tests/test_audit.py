"""Fixity audits and repair on a local, an S3 (SeaweedFS) and an SFTP replica of the real model."""

from __future__ import annotations

import json
import time

import pytest
from conftest import Lab, ok, write_config, wv


@pytest.fixture
def lab(tmp_path, s3_server, ssh_server, lab_key, minilm_dir):
    lab = Lab(
        tmp_path, s3_server, ssh_server, lab_key, audit={"state_dir": str(tmp_path / "state")}
    )
    ok(lab.run("seal", minilm_dir, "--name", "minilm", "--quiet"))
    m = json.loads((tmp_path / "primary/bundles/minilm/data/weightvault.json").read_bytes())
    lab.objects = sorted(o["name"] for o in m["objects"])  # in the pool (FORMAT.md 2.2)
    lab.files = len(lab.objects) + len(m["spec"]) + len(m["record"])  # objects + plain files
    return lab


def failures(r) -> dict[str, set[tuple[str, str]]]:
    out = {}
    for a in r.json()["replicas"]:
        out[a["replica"]] = {
            (f["kind"], f["object"].rsplit("/", 1)[-1]) for f in a["record"]["failures"]
        }
    return out


def test_full_audit_finds_exactly_the_damage_and_repair_fixes_it(lab):
    ok(lab.run("audit", "--level", "full"))
    a, b, c = lab.objects[2], lab.objects[5], lab.objects[9]
    # S3: overwrite one object through the S3 API with one byte flipped
    s3 = lab.s3.client()
    key = f"vault/objects/{a}"
    data = bytearray(s3.get_object(Bucket=lab.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=lab.bucket, Key=key, Body=bytes(data))
    # SFTP: truncate one; local: delete one
    p = lab.sftp_root / "objects" / b
    p.write_bytes(p.read_bytes()[:100])
    (lab.dir / "primary/objects" / c).unlink()

    r = lab.run("audit", "--level", "full", "--json", "--metrics-file", lab.dir / "wv.prom")
    assert r.code == 1, r.err
    assert failures(r) == {"cloud": {("damaged", a)}, "steward": {("size", b)},
                           "primary": {("missing", c)}}  # fmt: skip
    prom = (lab.dir / "wv.prom").read_text()
    assert 'weightvault_audit_missing_objects{replica="primary",level="full"} 1' in prom
    assert 'weightvault_audit_damaged_objects{replica="cloud",level="full"} 1' in prom
    assert 'weightvault_audit_up{replica="steward"} 1' in prom

    r = lab.run("repair", "--json")
    assert r.code == 0, r.out + r.err
    repaired = {x["object"].rsplit("/", 1)[-1] for rep in r.json()["replicas"]
                for x in rep["record"].get("repairs", []) if x["outcome"] == "repaired"}  # fmt: skip
    assert repaired == {a, b, c}
    ok(lab.run("audit", "--level", "full"))
    ok(lab.run("verify", "minilm", "--replica", "cloud", "--deep"))

    # the audit trail verifies; editing or deleting a record breaks it
    v = ok(lab.run("audit-log", "verify", "--json"))
    assert all(x["records"] == 4 and not x["problems"] for x in v.json().values()), v.out
    recs = sorted((lab.dir / "state").glob("replicas/*/audits/*/*.json"))
    target = next(
        p
        for p in recs
        if (p.parent.parent.parent / "url").read_text().startswith(str(lab.dir / "primary"))
    )
    env = json.loads(target.read_bytes())
    env["record"]["objects_checked"] += 1
    original = target.read_bytes()
    target.write_text(json.dumps(env, sort_keys=True, separators=(",", ":")))
    r = lab.run("audit-log", "verify")
    assert r.code == 1 and "primary: 4 records, BROKEN" in r.out
    target.write_bytes(original)
    ok(lab.run("audit-log", "verify"))
    first = sorted(target.parent.glob("*.json"))[0]
    first.unlink()
    r = lab.run("audit-log", "verify")
    assert r.code == 1 and "removed" in r.out


def test_metadata_audit_on_s3_reads_no_payload(lab):
    r = ok(lab.run("audit", "--level", "metadata", "--replica", "cloud", "--json"))
    rec = r.json()["replicas"][0]["record"]
    assert rec["bytes_read"] == 0 and rec["objects_checked"] == lab.files
    lab.s3.client().delete_object(
        Bucket=lab.bucket, Key=f"vault/objects/{lab.objects[0]}"
    )
    r = lab.run("audit", "--level", "metadata", "--replica", "cloud", "--json")
    assert r.code == 1
    assert failures(r) == {"cloud": {("missing", lab.objects[0])}}
    assert r.json()["replicas"][0]["record"]["bytes_read"] == 0


def test_sample_audits_cover_every_object_within_the_cycle(lab):
    seen = []
    for _ in range(4):
        r = ok(lab.run("audit", "--level", "sample", "--replica", "primary", "--cycle-days", "4",
                       "--interval-days", "1", "--json"))  # fmt: skip
        rec = r.json()["replicas"][0]["record"]
        seen.append((rec["objects_checked"], rec["coverage"]["verified_within_cycle"]))
    total = lab.files
    assert 0 < seen[0][0] < total, seen  # each run hashes a share, not everything
    assert [c for _, c in seen] == sorted(c for _, c in seen)
    assert seen[-1][1] == total, seen  # after one cycle of runs, everything was hashed
    assert rec["coverage"]["oldest_age_seconds"] is not None


def test_unreachable_replica_exit_3_others_still_audited(lab, tmp_path, lab_key):
    cfg = write_config(tmp_path / "x.toml", lab_key, {
        "primary": {"url": str(lab.dir / "primary")},
        "cloud": {"url": f"s3://{lab.bucket}/vault",
                  "storage_options": {"endpoint_url": "http://127.0.0.1:9"}},
    }, audit={"state_dir": str(tmp_path / "state2")})  # fmt: skip
    r = wv("-c", cfg, "audit", "--level", "full", "--json", env=lab.env)
    assert r.code == 3, r.err
    assert [a["replica"] for a in r.json()["replicas"]] == ["primary"]
    assert "cloud" in r.json()["unreachable"]


def test_no_healthy_copy_is_reported_loudly(lab):
    m = json.loads((lab.dir / "primary/bundles/minilm/data/weightvault.json").read_bytes())
    st = next(f for f in m["files"] if f["path"] == "model.safetensors")
    obj = st["chunks"][-1]["object"]
    (lab.dir / "primary/objects" / obj).unlink()
    (lab.sftp_root / "objects" / obj).unlink()
    lab.s3.client().delete_object(Bucket=lab.bucket, Key=f"vault/objects/{obj}")
    assert lab.run("audit", "--level", "metadata").code == 1
    r = lab.run("repair")
    assert r.code == 1
    assert "DATA LOSS" in r.err and "NO HEALTHY COPY" in r.err and "model.safetensors" in r.err
    assert "0 repaired, 1 unrepairable" in r.out


def test_transient_bad_read_is_not_called_rot(tmp_path, lab_key, minilm_dir):
    """Re-read before accusing: a read that fails once and then passes is recorded as transient."""
    from weightvault.archive.audit import audit_replica
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    v = tmp_path / "v"
    ok(wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m", "--quiet"))

    class Flaky(LocalStore):
        flipped = False

        def open_read(self, key):
            f = super().open_read(key)
            if "objects" in key and not Flaky.flipped:
                Flaky.flipped = True
                import io

                data = bytearray(f.read())
                f.close()
                data[0] ^= 1
                return io.BytesIO(bytes(data))
            return f

    sk = keys.load_signing_key(lab_key)
    a = audit_replica("v", Flaky(v), level="full", trusted=[sk.public], key=sk,
                      state=tmp_path / "state", workers=1)  # fmt: skip
    assert a.outcome == "pass"
    assert len(a.record["transient"]) == 1 and not a.record["failures"]


def test_audit_driver_holds_one_batch_of_objects_at_a_time(vault_copy, lab_key, tmp_path,
                                                           monkeypatch):  # fmt: skip
    """Driver memory stays flat as the replica grows: what to hash lives in the audit's work
    tables on disk and reaches memory one bounded batch at a time (at 1 PB, 15 million Target
    objects were about 7 GB). Counted, not timed: the Target objects alive while each object
    is hashed, with batches of 2."""
    import gc
    from pathlib import Path

    from weightvault.archive import audit
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    monkeypatch.setattr(audit, "_BATCH_OBJECTS", 2)
    real, alive = audit._hash_check, []

    def counting(store, t):
        alive.append(sum(1 for o in gc.get_objects() if type(o) is audit.Target))
        return real(store, t)

    monkeypatch.setattr(audit, "_hash_check", counting)
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    auditor = keys.generate(tmp_path / "audit.key")
    for level in ("sample", "full"):
        alive.clear()
        a = audit.audit_replica("v", LocalStore(vault_copy), level=level, trusted=[pk],
                                key=auditor, state=tmp_path / "state")  # fmt: skip
        rec = a.record
        assert a.outcome == "pass" and rec["objects_checked"] == len(alive) > 0
        # a batch, and the loop variable still naming the last object of the one before
        assert max(alive) <= 3, (level, max(alive), rec["coverage"]["objects"])
    assert rec["coverage"]["objects"] == rec["objects_checked"] > 4  # full: every object
    assert rec["coverage"]["verified_within_cycle"] == rec["coverage"]["objects"]
    assert list((tmp_path / "state").rglob("verified.db"))  # on disk, not in memory


def _old_sample(targets, verified, at, cycle_days, interval_days):
    """The in-memory sample selection before the work tables (0.4), for comparison."""
    day = 86400.0
    interval, cycle = min(interval_days, cycle_days) * day, cycle_days * day
    budget = sum(t.size for t in targets) * interval / cycle

    def age(t):
        a = verified.age(t.key, at)
        return float("inf") if a is None else a

    chosen, spent = [], 0
    for t in sorted(targets, key=age, reverse=True):
        overdue = age(t) != float("inf") and age(t) + interval > cycle
        if spent >= budget and not overdue:
            break
        chosen.append(t)
        spent += t.size
    return chosen


@pytest.mark.parametrize("seed", range(12))
def test_sample_selection_streamed_from_disk_equals_the_in_memory_one(tmp_path, seed):
    import random

    from weightvault.archive import audit
    from weightvault.archive.auditlog import Verified

    rnd = random.Random(seed)
    at = 1_800_000_000.0
    v = Verified(tmp_path)
    targets = [audit.Target(f"objects/{i:04x}", f"{i:064x}", rnd.choice([1, 5, 64, 1000]),
                            None, f"b{i % 3}") for i in range(rnd.randint(1, 300))]  # fmt: skip
    times = [None, at - 1, at - 86400 * 30, at - 86400 * 89.5, at - 86400 * 120]
    for t in targets:
        when = rnd.choice(times)
        if when is not None:
            v.mark(t.key, when)
    work = audit._Work(v)
    work.add(targets, set())
    for cycle, interval in ((90, 1.0), (90, 7.0), (30, 45.0), (1, 0.5)):
        want = [t.key for t in _old_sample(targets, v, at, cycle, interval)]
        got = [t.key for t in audit._sample(work, at, cycle, interval, None)]
        work.db.execute("DROP TABLE work.chosen")
        assert got == want


def test_verified_state_of_earlier_versions_is_taken_over(tmp_path):
    from weightvault.archive.auditlog import Verified

    (tmp_path / "verified.json").write_text('{"objects/ab": 100.0, "objects/cd": 5}')
    v = Verified(tmp_path)
    assert v.age("objects/ab", 150.0) == 50.0 and v.age("objects/cd", 5) == 0
    assert v.age("objects/ef", 1.0) is None and not (tmp_path / "verified.json").exists()
    v.close()
    assert Verified(tmp_path).age("objects/ab", 100.0) == 0


def test_s3_listing_pages_give_what_list_gives(s3_server, monkeypatch):
    """An audit moves the pool's listing to disk, and gc walks it, a ListObjectsV2 page at a
    time (S3Store.iter_times): the pages, forced small here, hold exactly what the whole
    listing holds, last-modified times (gc's grace period) included."""
    import uuid

    from conftest import s3_env

    from weightvault.storage.opener import open_store

    for k, v in s3_env(s3_server).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    bucket = s3_server.make_bucket("pages-" + uuid.uuid4().hex[:8])
    store = open_store(f"s3://{bucket}/v", {"endpoint_url": s3_server.endpoint_url},
                       create=True)  # fmt: skip
    for i in range(7):
        store.put_bytes(f"objects/{i:064x}", b"x" * i)
    store.put_bytes("objectsX/not-in-the-pool", b"y")
    store.put_bytes("bundles/m/bagit.txt", b"z")
    want = sorted(store.list("objects").items())
    assert len(want) == 7
    paged = sorted(store.iter_times("objects", page=3))
    assert [(k, size) for k, size, _ in paged] == want == sorted(store.iter_list("objects"))
    assert [(k, (size, t)) for k, size, t in paged] == sorted(store.list_times("objects").items())
    assert all(abs(t - time.time()) < 600 for _, _, t in paged)
    assert list(store.iter_times("nothing-here", page=3)) == []


def test_local_listing_streams_as_the_directory_is_read(tmp_path):
    """An audit moves a local pool's listing to disk as it is read (LocalStore.iter_list): the
    pool is one directory, about 15 million entries at 1 PB, which list() holds whole. Each
    entry is looked at when it is reached, so objects removed after the first one came are
    not listed; a listing read whole before the first came would still name them."""
    from weightvault.storage.store import LocalStore

    store = LocalStore(tmp_path / "v", create=True)
    keys = [f"objects/{i:064x}" for i in range(40)]
    for i, k in enumerate(keys):
        store.put_bytes(k, b"x" * i)
    store.put_bytes("objectsX/not-in-the-pool", b"y")
    for k in ("bundles/m/bagit.txt", "bundles/m/data/a/b/c.json", "bundles/n/data/x"):
        store.put_bytes(k, b"z" * len(k))
    for prefix in ("objects", "bundles", "bundles/m", "nothing-here"):
        assert sorted(store.iter_list(prefix)) == sorted(store.list(prefix).items()), prefix
        assert sorted((k, (n, t)) for k, n, t in store.iter_times(prefix)) == \
            sorted(store.list_times(prefix).items()), prefix  # fmt: skip
    it = store.iter_list("objects")
    first, _size = next(it)
    for k in keys:
        if k != first:
            (tmp_path / "v" / k).unlink()
    assert list(it) == []


def test_sftp_listing_streams_as_the_directory_is_read(ssh_server, monkeypatch):
    """An SFTP pool's listing comes as the server sends the directory (paramiko's
    listdir_iter), on an SSH connection of its own: when the first key reaches the caller,
    one entry has been taken from the server's replies, not the whole directory; and the
    stream holds what list() holds, subdirectories included."""
    import uuid

    import paramiko

    from weightvault.storage.opener import open_store

    root = ssh_server.root / uuid.uuid4().hex[:8]
    for i in range(120):
        p = root / "objects" / f"{i:064x}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * i)
    for k in ("objectsX/not-in-the-pool", "bundles/m/bagit.txt", "bundles/m/data/a/b.json"):
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(b"z" * len(k))
    store = open_store(f"sftp://{ssh_server.user}@127.0.0.1:{ssh_server.port}{root}",
                       {"identity": str(ssh_server.client_key_path),
                        "host_key": ssh_server.host_public_key})  # fmt: skip
    real, taken = paramiko.SFTPClient.listdir_iter, []

    def counting(self, path, *a, **kw):
        for attr in real(self, path, *a, **kw):
            taken.append(attr.filename)
            yield attr

    monkeypatch.setattr(paramiko.SFTPClient, "listdir_iter", counting)
    it = store.iter_list("objects")
    first = next(it)
    assert len(taken) == 1
    rest = list(it)
    assert sorted([first, *rest]) == sorted(store.list("objects").items())
    assert len(rest) == 119
    for prefix in ("bundles", "nothing-here"):
        assert sorted(store.iter_list(prefix)) == sorted(store.list(prefix).items()), prefix
    # gc's grace period: the same times as the whole listing's, to the second (SFTP's unit)
    assert sorted((k, n, int(t)) for k, n, t in store.iter_times("objects")) == \
        sorted((k, n, int(t)) for k, (n, t) in store.list_times("objects").items())  # fmt: skip


def test_audit_takes_a_local_pool_listing_as_a_stream(vault_copy, lab_key, tmp_path,
                                                      monkeypatch):  # fmt: skip
    """The audit's work tables are filled from the pool's listing as it streams: a local pool
    is never listed whole (store.list of the pool would hold every key and size at once)."""
    from pathlib import Path

    from weightvault.archive import audit
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    whole = LocalStore.list

    def no_whole_pool(self, prefix):
        assert prefix != "objects", "the pool was listed whole"
        return whole(self, prefix)

    monkeypatch.setattr(LocalStore, "list", no_whole_pool)
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    a = audit.audit_replica("v", LocalStore(vault_copy), level="full", trusted=[pk],
                            key=keys.generate(tmp_path / "audit.key"), state=tmp_path / "s")  # fmt: skip
    assert a.outcome == "pass" and a.record["objects_checked"] > 4


def test_report_shows_the_first_failures_and_names_a_file_with_all(vault_copy, lab_key,
                                                                   tmp_path, monkeypatch):  # fmt: skip
    """A replica gone wholesale fails every object: the signed record (version 2) holds the
    first RECORD_FAILURES, the exact total and the digest of all; the report's lines show the
    first REPORT_FAILURES (past the record's, from the failures file), the exact total, and
    the file in the audit state listing every one. Forced to 3 and 4 here."""
    from pathlib import Path

    from conftest import objects_of

    from weightvault.archive import audit, auditlog
    from weightvault.archive.auditlog import Chain, replica_dir
    from weightvault.cli.app import _audit_lines
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    monkeypatch.setattr(auditlog, "RECORD_FAILURES", 3)
    monkeypatch.setattr(audit, "REPORT_FAILURES", 4)
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    auditor = keys.generate(tmp_path / "audit.key")

    def run():
        return audit.audit_replica("v", LocalStore(vault_copy), level="full", trusted=[pk],
                                   key=auditor, state=tmp_path / "state")  # fmt: skip

    a = run()
    assert a.outcome == "pass" and a.as_dict()["failures_total"] == 0
    assert a.as_dict()["failures_file"] is None
    objs = objects_of(vault_copy)
    for p in objs[:4]:
        p.unlink()
    data = bytearray(objs[4].read_bytes())
    data[0] ^= 1
    objs[4].write_bytes(bytes(data))
    a = run()
    d = a.as_dict()
    assert a.outcome == "fail" and d["failures_total"] == 5
    chain = Chain(replica_dir(tmp_path / "state", a.url), None, auditor.public.key_id)
    head = chain.head()
    signed = head.record
    assert signed == a.record and d["record"] == signed
    assert len(signed["failures"]) == 3 and signed["failures_total"] == 5
    assert signed["failures_by_kind"] == {"damaged": 1, "missing": 4}
    everything = list(chain.full_list(head))
    assert len(everything) == 5 and everything[:3] == signed["failures"]
    listed = Path(d["failures_file"]).read_text().splitlines()
    assert [json.loads(x) for x in listed] == everything
    assert Path(d["failures_file"]).parent == chain.local / "lists"
    lines = _audit_lines(a, 90)
    assert sum(1 for x in lines if x.startswith(("  missing:", "  damaged:"))) == 4
    assert f"1 more failures (5 in all): every one is listed in {d['failures_file']}" in lines[-1]
    json.dumps(d)  # the report stays JSON
    # the chain still reads: the next audit continues it, the failures file is not a record
    assert run().record["sequence"] == 3
