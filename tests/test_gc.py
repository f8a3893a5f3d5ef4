"""`weightvault gc`: what interrupted writes leave behind goes, nothing else ever does.

Local vaults, SeaweedFS over S3 (with and without Object Lock) and OpenSSH over SFTP. Orphans
are made the way a crash makes them: a real seal whose commit files are then taken away, so the
objects are exactly what an interrupted seal leaves (tests/test_crash.py kills real seals).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from conftest import ok, one_error, s3_env, write_config, wv

from weightvault.archive.gc import DEFAULT_GRACE, parse_duration, referenced

COMMIT_FILES = ("tagmanifest-sha256.txt", "bag-info.txt", "bagit.txt", "manifest-sha256.txt",
                "weightvault.sig", "data/FORMAT.md", "data/weightvault.json")  # fmt: skip
DAY = 86400


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def backdate(paths, seconds: float) -> None:
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def uncommit(bundle_dir: Path) -> list[Path]:
    """Take a bundle back to the state a seal killed before its commit leaves: its plain
    files, and the objects it added to the vault's pool (FORMAT.md section 2.2): those no
    other bundle in the vault names. Returns those files."""
    vault = bundle_dir.parent.parent
    mine = {o["name"] for o in json.loads((bundle_dir / "data/weightvault.json").read_bytes())
            ["objects"]}  # fmt: skip
    for other in (vault / "bundles").iterdir():
        if other != bundle_dir and (other / "tagmanifest-sha256.txt").exists():
            mine -= {o["name"] for o in json.loads((other / "data/weightvault.json")
                                                    .read_bytes())["objects"]}  # fmt: skip
    for f in COMMIT_FILES:
        (bundle_dir / f).unlink(missing_ok=True)
    pooled = [vault / "objects" / n for n in mine if (vault / "objects" / n).exists()]
    return sorted([*(p for p in bundle_dir.rglob("*") if p.is_file()), *pooled])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_dir) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "tiny"
    d.mkdir()
    for f in ("config.json", "tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir / f, d / f)
    return d


def seal(vault: Path, model: Path, key: Path, name: str, *extra) -> None:
    ok(wv("seal", model, "--vault", vault, "--key", key, "--name", name, "--quiet", *extra))


# -- local vaults


def test_status_names_interrupted_seal_debris_without_failing(vault_copy, minilm_dir, lab_key,
                                                              tmp_path):  # fmt: skip
    seal(vault_copy, minilm_dir, lab_key, "half", "--chunk-size", "4")
    uncommit(vault_copy / "bundles/half")
    r = ok(wv("status", "--vault", vault_copy))
    assert "half: only files of an interrupted seal on vault" in r.err and "gc" in r.err
    assert wv("status", "--vault", vault_copy, "--json").json()["half"]["vault"]["state"] == \
        "uncommitted"  # fmt: skip
    # a committed bundle that a replica lacks is still a failure: replication is behind
    mirror = tmp_path / "mirror"
    ok(wv("replicate", "minilm", "--from", vault_copy, "--to", mirror, "--trust",
          f"{lab_key}.pub", "--quiet"))  # fmt: skip
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"main": {"url": str(vault_copy)},
                                                       "mirror": {"url": str(mirror)}})  # fmt: skip
    r = wv("-c", cfg, "status")
    assert r.code == 0, r.out + r.err
    shutil.rmtree(mirror / "bundles" / "minilm")
    r = wv("-c", cfg, "status", "--json")
    assert r.code == 1 and r.json()["minilm"]["mirror"]["state"] == "absent"


def test_interrupted_seal_orphans_reported_by_dry_run_then_removed(vault_copy, minilm_dir,
                                                                   lab_key):  # fmt: skip
    trust = f"{lab_key}.pub"
    seal(vault_copy, minilm_dir, lab_key, "half", "--chunk-size", "4")
    left = uncommit(vault_copy / "bundles/half")
    part = vault_copy / "tmp" / "0123456789abcdef01234567.part"
    part.write_bytes(b"x" * 1000)
    orphans = {p.relative_to(vault_copy).as_posix(): p.stat().st_size for p in [*left, part]}
    assert len(orphans) > 20
    backdate([*left, part], 2 * DAY)
    before = files(vault_copy)
    assert "half" not in wv("list", "--vault", vault_copy, "--json").out

    r = ok(wv("gc", "--vault", vault_copy, "--trust", trust, "--dry-run", "--json"))
    (rep,) = r.json()["replicas"]
    assert rep["dry_run"] and not rep["kept"]
    assert {o["key"]: o["size"] for o in rep["removed"]} == orphans
    assert rep["bytes"] == sum(orphans.values()) and rep["files"] == len(orphans)
    assert files(vault_copy) == before, "a dry run removed something"
    human = ok(wv("gc", "--vault", vault_copy, "--trust", trust, "--dry-run"))
    assert f"vault: would remove {len(orphans)} files" in human.out
    assert "interrupted seal or replicate of 'half'" in human.out

    r = ok(wv("gc", "--vault", vault_copy, "--trust", trust, "--json"))
    assert {o["key"] for o in r.json()["replicas"][0]["removed"]} == set(orphans)
    after = files(vault_copy)
    assert {k: v for k, v in before.items() if k not in orphans} == after
    assert not (vault_copy / "bundles/half").exists(), "empty directories left behind"
    ok(wv("verify", "minilm", "--vault", vault_copy, "--trust", trust, "--deep"))
    r = ok(wv("gc", "--vault", vault_copy, "--trust", trust, "--grace", "0", "--json"))
    assert not r.json()["replicas"][0]["removed"]


def test_committed_bundle_keeps_everything_its_manifest_names(tmp_path, tiny_model, lab_key):
    v = tmp_path / "v"
    report = tmp_path / "report.md"
    report.write_text("# Post-deployment report\n\nRetired in good health.\n")
    seal(v, tiny_model, lab_key, "tiny", "--chunk-size", "1", "--report", report)
    b = v / "bundles/tiny"
    named = files(b)
    assert any(k.startswith("data/record/") for k in named)
    stray = {
        "bundles/tiny/data/objects/" + hashlib.sha256(b"stray").hexdigest(): b"stray",
        "bundles/tiny/data/record/stray.md": b"not in the manifest",
        "bundles/tiny/data/keys/stray.age": b"not in the manifest either",
    }
    kept = {
        "bundles/tiny/data/notes.txt": b"outside objects/, record/, keys/: left alone",
        "bundles/tiny/extra-tag.txt": b"a tag file: never touched",
        "audits/00000009.json": b"{}",
        "custody/tiny/00000001.json": b"{}",
        "tmp/commit-other.lock": b"",
        "tmp/readme.txt": b"not a scratch file of ours",
        "elsewhere/x.bin": b"outside bundles/ and tmp/",
    }
    for rel, data in {**stray, **kept}.items():
        (v / rel).parent.mkdir(parents=True, exist_ok=True)
        (v / rel).write_bytes(data)
    backdate([p for p in v.rglob("*") if p.is_file()], 30 * DAY)

    r = ok(wv("gc", "--vault", v, "--trust", f"{lab_key}.pub", "--grace", "0", "--json"))
    rep = r.json()["replicas"][0]
    assert {o["key"] for o in rep["removed"]} == set(stray)
    assert all("not named by its signed manifest" in o["reason"] for o in rep["removed"])
    assert {k: h for k, h in files(b).items() if k in named} == named, "a named file changed"
    for rel in stray:
        assert not (v / rel).exists()
    for rel in kept:
        assert (v / rel).exists(), rel
    (b / "data/notes.txt").unlink()  # verify rightly calls an unlisted payload file damage
    (b / "extra-tag.txt").unlink()
    ok(wv("verify", "tiny", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))


def test_grace_period_is_respected(tmp_path, tiny_model, lab_key):
    v = tmp_path / "v"
    trust = ("--trust", f"{lab_key}.pub")
    seal(v, tiny_model, lab_key, "tiny", "--chunk-size", "1")
    seal(v, tiny_model, lab_key, "half", "--chunk-size", "1")
    half = uncommit(v / "bundles/half")
    extra = v / "objects" / hashlib.sha256(b"x").hexdigest()  # in the pool, named by nothing
    extra.write_bytes(b"x")

    def gc(*args):
        r = ok(wv("gc", "--vault", v, *trust, "--json", *args))
        rep = r.json()["replicas"][0]
        return {o["key"] for o in rep["removed"]}, {o["key"]: o["kept"] for o in rep["kept"]}

    # fresh: the default (24 h) and a 1 h grace period keep everything, and say why
    for args in ((), ("--grace", "1h")):
        removed, kept = gc(*args)
        assert not removed and len(kept) == len(half) + 1
        assert all("younger than the grace period" in why for why in kept.values())
    # two hours old, but one file of the uncommitted bundle is new: the whole bundle stays
    backdate([*half, extra], 2 * 3600)
    backdate(half[:1], 60)
    removed, kept = gc("--grace", "1h")
    assert removed == {extra.relative_to(v).as_posix()}
    assert set(kept) == {p.relative_to(v).as_posix() for p in half}
    assert all("may still be writing it" in why for why in kept.values())
    assert all(p.exists() for p in half)
    # all of it older than the grace period: it goes
    backdate(half, 2 * 3600)
    removed, kept = gc("--grace", "90m")
    assert removed == {p.relative_to(v).as_posix() for p in half} and not kept
    ok(wv("verify", "tiny", "--vault", v, *trust, "--deep"))


def test_untrusted_manifest_keeps_its_bundle_whole(tmp_path, tiny_model, lab_key, other_key):
    v = tmp_path / "v"
    seal(v, tiny_model, lab_key, "tiny")
    extra = v / "objects" / hashlib.sha256(b"x").hexdigest()  # in the pool, named by nothing
    extra.write_bytes(b"x")
    backdate([extra], DAY * 2)
    for trust in ((), ("--trust", f"{other_key}.pub")):
        r = ok(wv("gc", "--vault", v, "--grace", "0", "--json", *trust))
        rep = r.json()["replicas"][0]
        assert not rep["removed"] and extra.exists()
        assert any("cannot be trusted" in n for n in rep["notes"]), rep["notes"]
    # a manifest altered after signing: still nothing removed from that bundle
    m = v / "bundles/tiny/data/weightvault.json"
    doc = json.loads(m.read_bytes())
    doc["objects"] = doc["objects"][:1]
    m.write_text(json.dumps(doc))
    r = ok(wv("gc", "--vault", v, "--grace", "0", "--json", "--trust", f"{lab_key}.pub"))
    assert not r.json()["replicas"][0]["removed"] and extra.exists()


def test_encrypted_bundle_envelopes_and_private_section_are_kept(tmp_path, tiny_model, lab_key):
    from pyrage import x25519

    v = tmp_path / "v"
    rec = str(x25519.Identity.generate().to_public())
    seal(v, tiny_model, lab_key, "sealed", "--encrypt-to", rec)
    b = v / "bundles/sealed"
    assert list((b / "data/keys").iterdir()) and (b / "data/private/manifest.sealed").exists()
    (b / "data/keys/recipient-9.age").write_text("not named")
    before = files(b)
    backdate([p for p in v.rglob("*") if p.is_file()], 30 * DAY)
    r = ok(wv("gc", "--vault", v, "--trust", f"{lab_key}.pub", "--grace", "0", "--json"))
    assert {o["key"] for o in r.json()["replicas"][0]["removed"]} == {
        "bundles/sealed/data/keys/recipient-9.age"}  # fmt: skip
    del before["data/keys/recipient-9.age"]
    assert files(b) == before
    ok(wv("verify", "sealed", "--vault", v, "--trust", f"{lab_key}.pub"))


def test_referenced_paths():
    doc = {"objects": [{"name": "ab" * 32}],
           "record": [{"path": "record/report.md", "role": "report"}],
           "encryption": {"private": {"path": "private/manifest.sealed"},
                          "envelopes": [{"path": "keys/share-alice.age"},
                                        {"path": "keys/recipient-1.age"}]}}  # fmt: skip
    refs = referenced(doc)
    for p in ("data/objects/" + "ab" * 32, "data/record/report.md",
              "data/private/manifest.sealed", "data/keys/share-alice.age",
              "data/keys/recipient-1.age"):  # fmt: skip
        assert p in refs
    assert referenced({"objects": [], "record": [], "encryption": None}) == set()


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("7d", 604800),
                                          ("1h30m", 5400), ("0", 0), ("45", 45), ("2w", 1209600),
                                          ("1.5h", 5400)])  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert DEFAULT_GRACE == 86400


def test_usage_errors_and_unreachable_replica(tmp_path, tiny_model, lab_key):
    v = tmp_path / "v"
    seal(v, tiny_model, lab_key, "tiny")
    one_error(wv("gc", "--vault", v, "--grace", "soon"), 2, "--grace 'soon'")
    one_error(wv("gc", "--vault", v, "--grace", "-1h"), 2, "--grace")
    cfg = write_config(tmp_path / "x.toml", lab_key, {
        "primary": {"url": str(v)}, "usb": {"url": str(tmp_path / "unplugged")}})  # fmt: skip
    one_error(wv("-c", cfg, "gc", "--replica", "nope"), 2, "unknown replica 'nope'")
    r = wv("-c", cfg, "gc", "--json")
    assert r.code == 3, r.err
    assert "not a weightvault vault" in r.json()["unreachable"]["usb"]
    assert [x["replica"] for x in r.json()["replicas"]] == ["primary"]


# -- S3 (SeaweedFS) and SFTP (OpenSSH)


def _s3_cfg(tmp_path, lab_key, s3, bucket, *, lock=None, name="cloud.toml"):
    rep = {"url": f"s3://{bucket}/vault", "storage_options": {"endpoint_url": s3.endpoint_url}}
    if lock:
        rep["object_lock"] = lock
    return write_config(tmp_path / name, lab_key, {"cloud": rep})


def _keys(s3, bucket, prefix="vault/") -> set[str]:
    out = set()
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):  # fmt: skip
        out |= {o["Key"] for o in page.get("Contents", [])}
    return out


def test_gc_on_s3_removes_orphans_and_keeps_committed_objects(tmp_path, s3_server, lab_key,
                                                              tiny_model):  # fmt: skip
    bucket = s3_server.make_bucket("wv-gc-" + uuid.uuid4().hex[:8])
    cfg, env = _s3_cfg(tmp_path, lab_key, s3_server, bucket), s3_env(s3_server)
    ok(wv("-c", cfg, "seal", tiny_model, "--name", "tiny", "--chunk-size", "1", "--quiet",
          env=env))  # fmt: skip
    committed = _keys(s3_server, bucket)
    c = s3_server.client()
    orphans = {f"vault/bundles/ghost/data/objects/{'a' * 64}": b"g" * 1000,
               f"vault/bundles/ghost/data/objects/{'b' * 64}": b"h" * 10,
               f"vault/bundles/tiny/data/objects/{'c' * 64}": b"stray"}  # fmt: skip
    for k, data in orphans.items():
        c.put_object(Bucket=bucket, Key=k, Body=data)
    r = ok(wv("-c", cfg, "gc", "--dry-run", "--grace", "0", "--json", env=env))
    assert {o["key"]: o["size"] for o in r.json()["replicas"][0]["removed"]} == {
        k[6:]: len(d) for k, d in orphans.items()}  # fmt: skip
    assert _keys(s3_server, bucket) == committed | set(orphans)
    ok(wv("-c", cfg, "gc", "--grace", "0", env=env))
    assert _keys(s3_server, bucket) == committed


def test_gc_skips_objects_under_object_lock(tmp_path, s3_server, lab_key, tiny_model):
    bucket = s3_server.make_bucket("wv-gclock-" + uuid.uuid4().hex[:8], object_lock=True)
    lock = {"mode": "COMPLIANCE", "days": 1}
    cfg = _s3_cfg(tmp_path, lab_key, s3_server, bucket, lock=lock)
    env = s3_env(s3_server)
    ok(wv("-c", cfg, "seal", tiny_model, "--name", "tiny", "--quiet", env=env))
    committed = _keys(s3_server, bucket)
    c = s3_server.client()
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    retained = {f"vault/bundles/ghost/data/objects/{'a' * 64}",
                f"vault/bundles/tiny/data/objects/{'c' * 64}"}  # fmt: skip
    for k in retained:  # as weightvault writes them to a locked replica
        c.put_object(Bucket=bucket, Key=k, Body=b"orphan", ObjectLockMode="COMPLIANCE",
                     ObjectLockRetainUntilDate=until)  # fmt: skip
    plain = f"vault/bundles/loose/data/objects/{'d' * 64}"  # no retention of its own
    c.put_object(Bucket=bucket, Key=plain, Body=b"orphan too")

    # the replica's own object_lock: anything younger than `days` may be retained
    r = ok(wv("-c", cfg, "gc", "--grace", "0", "--json", env=env))
    rep = r.json()["replicas"][0]
    assert not rep["removed"]
    assert {o["key"] for o in rep["kept"]} == {k[6:] for k in [*retained, plain]}
    assert all(o["kept"].startswith("Object Lock") for o in rep["kept"])
    assert any("under Object Lock" in n for n in rep["notes"])
    assert all("COMPLIANCE retention of 1 days" in o["kept"] for o in rep["kept"])
    versions = c.list_object_versions(Bucket=bucket, Prefix="vault/")
    assert not versions.get("DeleteMarkers"), "gc hid a locked object behind a delete marker"

    # a config that does not mention the lock: each object's own retention is read
    bare = _s3_cfg(tmp_path, lab_key, s3_server, bucket, name="bare.toml")
    r = ok(wv("-c", bare, "gc", "--grace", "0", "--json", env=env))
    rep = r.json()["replicas"][0]
    assert {o["key"] for o in rep["removed"]} == {plain[6:]}
    assert {o["key"] for o in rep["kept"]} == {k[6:] for k in retained}
    assert all("retained until" in o["kept"] for o in rep["kept"])
    assert _keys(s3_server, bucket) == committed | retained


def test_gc_over_sftp(tmp_path, ssh_server, lab_key, tiny_model):
    root = ssh_server.root / uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path / "sftp.toml", lab_key, {"steward": {
        "url": f"sftp://{ssh_server.user}@127.0.0.1:{ssh_server.port}{root}",
        "identity": str(ssh_server.client_key_path), "host_key": ssh_server.host_public_key}})  # fmt: skip
    ok(wv("-c", cfg, "seal", tiny_model, "--name", "tiny", "--quiet"))
    before = files(root)
    ghost = root / "bundles/ghost/data/objects" / ("e" * 64)
    ghost.parent.mkdir(parents=True)
    ghost.write_bytes(b"ghost")
    part = root / "tmp" / "00ff00ff00ff00ff00ff00ff.part"
    part.write_bytes(b"half an upload")
    backdate([ghost, part], 3 * 3600)
    r = ok(wv("-c", cfg, "gc", "--grace", "2h", "--json"))
    assert {o["key"] for o in r.json()["replicas"][0]["removed"]} == {
        "bundles/ghost/data/objects/" + "e" * 64, "tmp/00ff00ff00ff00ff00ff00ff.part"}  # fmt: skip
    assert not (root / "bundles/ghost").exists()
    assert files(root) == before
    ok(wv("-c", cfg, "verify", "tiny", "--deep"))


def test_a_seal_starting_while_gc_runs_keeps_its_bundle(tmp_path, tiny_model, lab_key):
    """Old debris of an interrupted seal, and a new seal of that name starts writing between
    gc's listing and its removal: gc looks again under the bundle's lock and leaves it."""
    from weightvault.archive.gc import gc
    from weightvault.format.keys import load_public_key
    from weightvault.storage.store import LocalStore

    v = tmp_path / "v"
    seal(v, tiny_model, lab_key, "half", "--chunk-size", "1")
    old = uncommit(v / "bundles/half")
    backdate(old, 2 * DAY)

    class Racing(LocalStore):
        def lock(self, name):
            fresh = v / "bundles/half/data/FORMAT.md"
            fresh.write_bytes(b"a new seal's first file")
            return super().lock(name)

    r = gc("v", Racing(v), trusted=[load_public_key(Path(f"{lab_key}.pub"))], grace=3600)
    assert not r.removed and {o.key for o in r.kept} >= {
        p.relative_to(v).as_posix() for p in old}  # fmt: skip
    assert any("written to while gc ran" in n for n in r.notes)
    assert all(p.exists() for p in old)


def test_gc_walks_the_pool_as_a_stream(tmp_path, tiny_model, lab_key):
    """At 1 PB the pool is some 15 million objects: gc walks its listing as it comes and never
    asks for it whole (the pool's list and list_times fail here); a key a retried listing
    gives twice (SFTP) is one orphan, removed once; what a signed manifest names stays."""
    from weightvault.archive.gc import gc
    from weightvault.format.keys import load_public_key
    from weightvault.storage.store import LocalStore

    v = tmp_path / "v"
    seal(v, tiny_model, lab_key, "keep", "--chunk-size", "1")
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    (other / "extra.bin").write_bytes(os.urandom(3 << 20))
    seal(v, other, lab_key, "half", "--chunk-size", "1")
    left = uncommit(v / "bundles/half")
    pooled = {p.relative_to(v).as_posix() for p in left if p.parent.name == "objects"}
    assert len(pooled) == 3  # extra.bin's three chunks
    backdate(left, 2 * DAY)

    class Streaming(LocalStore):
        def list(self, prefix):
            assert prefix != "objects", "the pool listed whole"
            return super().list(prefix)

        def list_times(self, prefix):
            assert prefix != "objects", "the pool listed whole"
            return super().list_times(prefix)

        def iter_times(self, prefix):
            for item in super().iter_times(prefix):
                yield item
                yield item  # as a listing retried part way gives it

    r = gc("v", Streaming(v), trusted=[load_public_key(Path(f"{lab_key}.pub"))], grace=3600)
    removed = [o.key for o in r.removed]
    assert len(removed) == len(set(removed)) == len(left) and pooled <= set(removed)
    assert not r.kept and not any(p.exists() for p in left)
    ok(wv("verify", "keep", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))


def test_gc_holds_the_named_pool_keys_on_disk():
    """The pool keys signed manifests name (15 million at 1 PB: some 2.5 GB as a Python set)
    live in a temporary SQLite database: adding and asking about 300,000 of them leaves gc's
    Python memory flat."""
    import tracemalloc

    from weightvault.archive.spill import KeySet

    keys = KeySet()
    tracemalloc.start()
    for start in range(0, 300_000, 10_000):
        keys.update(f"objects/{i:064x}" for i in range(start, start + 10_000))
    hits = sum(f"objects/{i:064x}" in keys for i in range(0, 600_000, 2))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert hits == 150_000 and len(keys) == 300_000
    assert "objects/" + "f" * 64 not in keys
    assert peak < 2 << 20, peak
    keys.close()
