"""Replicas on real servers: a local directory, SeaweedFS over S3, and OpenSSH over SFTP."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
import uuid

import pytest
from conftest import Lab, ok, write_config, wv


def tree_equal(a, b) -> bool:
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


@pytest.fixture
def lab(tmp_path, s3_server, ssh_server, lab_key):
    return Lab(tmp_path, s3_server, ssh_server, lab_key)


def objects_in_bucket(lab, name="minilm", source=None):
    """The keys of bundle `name`'s objects in the bucket's pool (FORMAT.md section 2.2); its
    manifest is read from the bucket, or from the local vault `source`."""
    c = lab.s3.client()
    if source is not None:
        m = json.loads((source / "bundles" / name / "data/weightvault.json").read_bytes())
    else:
        m = json.loads(c.get_object(Bucket=lab.bucket, Key=f"vault/bundles/{name}/data/"
                                    "weightvault.json")["Body"].read())  # fmt: skip
    resp = c.list_objects_v2(Bucket=lab.bucket, Prefix="vault/objects/")
    mine = {f"vault/objects/{o['name']}" for o in m["objects"]}
    return [o["Key"] for o in resp.get("Contents", []) if o["Key"] in mine]


def test_seal_lands_on_every_replica_and_status_is_complete(lab, minilm_dir, tmp_path):
    r = lab.run("seal", minilm_dir, "--name", "minilm", "--json", "--quiet")
    assert r.code == 0, r.err
    assert r.json()["replicas"] == {"primary": "complete", "cloud": "complete",
                                    "steward": "complete"}  # fmt: skip
    s = lab.run("status", "--json")
    assert s.code == 0, s.err
    assert {k: v["state"] for k, v in s.json()["minilm"].items()} == {
        "primary": "complete", "cloud": "complete", "steward": "complete"}  # fmt: skip
    # every chunk on S3 carries the server-checked SHA-256 equal to its name
    c = lab.s3.client()
    for key in objects_in_bucket(lab):
        head = c.head_object(Bucket=lab.bucket, Key=key, ChecksumMode="ENABLED")
        import base64

        assert base64.b64decode(head["ChecksumSHA256"]).hex() == key.rsplit("/", 1)[1]
    for rep in ("cloud", "steward"):
        v = lab.run("verify", "minilm", "--replica", rep, "--json")
        assert v.code == 0 and v.json()["replica"] == rep, v.err
        out = tmp_path / f"out-{rep}"
        ok(lab.run("restore", "minilm", out, "--replica", rep))
        assert tree_equal(minilm_dir, out)


def test_deleted_chunk_on_s3_is_reported_and_replicate_restores_it(lab, minilm_dir):
    ok(lab.run("seal", minilm_dir, "--name", "minilm", "--quiet"))
    gone = objects_in_bucket(lab)[3]
    lab.s3.client().delete_object(Bucket=lab.bucket, Key=gone)
    s = lab.run("status", "--json")
    assert s.code == 1
    assert s.json()["minilm"]["cloud"]["state"] == "incomplete"
    assert s.json()["minilm"]["cloud"]["missing"] == 1
    r = lab.run("replicate", "minilm", "--to", "cloud", "--json")
    assert r.code == 0, r.err
    assert r.json()["copied"] == 1 and r.json()["events"][0]["key"].endswith(gone.rsplit("/")[-1])
    ok(lab.run("status"))
    ok(lab.run("verify", "minilm", "--replica", "cloud"))


def test_wrong_bytes_on_target_are_replaced_and_reported(lab, minilm_dir):
    ok(lab.run("seal", minilm_dir, "--name", "minilm", "--quiet"))
    key = objects_in_bucket(lab)[0]
    c = lab.s3.client()
    size = c.head_object(Bucket=lab.bucket, Key=key)["ContentLength"]
    c.put_object(Bucket=lab.bucket, Key=key, Body=b"\x00" * size)  # same size, wrong bytes
    r = lab.run("replicate", "minilm", "--to", "cloud", "--json")
    assert r.code == 0, r.err
    (ev,) = r.json()["events"]
    assert ev["action"] == "replaced" and key.endswith(ev["key"].rsplit("/")[-1])
    ok(lab.run("verify", "minilm", "--replica", "cloud"))
    # SFTP: a flipped byte of the same size is found with --verify-existing
    obj = sorted((lab.sftp_root / "objects").iterdir())[0]
    data = bytearray(obj.read_bytes())
    data[7] ^= 0xFF
    obj.write_bytes(bytes(data))
    assert lab.run("verify", "minilm", "--replica", "steward").code == 1
    r = lab.run("replicate", "minilm", "--to", "steward", "--verify-existing", "--json")
    assert r.code == 0 and r.json()["events"][0]["action"] == "replaced", r.err
    ok(lab.run("verify", "minilm", "--replica", "steward"))


def test_replicate_by_url_without_config(lab, minilm_dir, lab_key, tmp_path):
    v = tmp_path / "solo"
    assert wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m").code == 0
    url = f"s3://{lab.bucket}/by-url"
    cfg = write_config(tmp_path / "only-s3.toml", lab_key, {
        "x": {"url": url, "storage_options": {"endpoint_url": lab.s3.endpoint_url}}})  # fmt: skip
    r = wv("-c", cfg, "replicate", "m", "--from", v, "--to", "x", env=lab.env)
    assert r.code == 0, r.err
    r = wv("replicate", "m", "--from", v, "--to", tmp_path / "copy2", "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    assert wv("verify", "m", "--vault", tmp_path / "copy2", "--trust", f"{lab_key}.pub").code == 0


def test_read_falls_back_when_a_replica_is_down(lab, minilm_dir, tmp_path, lab_key):
    ok(lab.run("seal", minilm_dir, "--name", "minilm", "--quiet"))
    dead = write_config(tmp_path / "dead.toml", lab_key, {
        "cloud": {"url": f"s3://{lab.bucket}/vault",
                  "storage_options": {"endpoint_url": "http://127.0.0.1:9"}},
        "primary": {"url": str(tmp_path / "primary")},
    })  # fmt: skip
    r = wv("-c", dead, "verify", "minilm", "--replica", "cloud", "--json", env=lab.env)
    assert r.code == 0, r.err
    assert r.json()["replica"] == "primary"


def test_seal_with_a_replica_down_completes_the_others_and_says_which_is_behind(
        lab, minilm_dir, tmp_path, lab_key):  # fmt: skip
    cfg = write_config(tmp_path / "half.toml", lab_key, {
        "primary": {"url": str(tmp_path / "p2")},
        "cloud": {"url": f"s3://{lab.bucket}/v2",
                  "storage_options": {"endpoint_url": "http://127.0.0.1:9"}},
    })  # fmt: skip
    r = wv("-c", cfg, "seal", minilm_dir, "--name", "m", "--quiet", env=lab.env)
    assert r.code == 3
    assert "sealed on primary but not on cloud" in r.err
    assert wv("-c", cfg, "verify", "m", "--replica", "primary", env=lab.env).code == 0


def test_s3_killed_mid_replicate_then_resumed(lab, minilm_dir, tmp_path, lab_key):
    """SeaweedFS dies in the middle of a replicate; after a restart the next run completes."""
    v = tmp_path / "src"
    assert wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m",
              "--chunk-size", "1", "--quiet").code == 0  # fmt: skip
    cmd = [sys.executable, "-m", "weightvault.cli", "-c", str(lab.cfg), "replicate", "m",
           "--from", str(v), "--to", "cloud", "--workers", "2", "--quiet"]  # fmt: skip
    p = subprocess.Popen(
        cmd, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(objects_in_bucket(lab, "m", v)) < 10:
        time.sleep(0.05)
    lab.s3.kill()
    try:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 3, err
        assert "cloud" in err or "127.0.0.1" in err
    finally:
        lab.s3.restart()
    s = lab.run("status", "--json")
    # killed among the objects it may not have reached the bundle's own files yet (the
    # objects go to the pool first): then the bundle is absent from every listing
    assert s.json().get("m", {}).get("cloud", {"state": "absent"})["state"] in (
        "uncommitted", "absent")
    r = lab.run("replicate", "m", "--from", str(v), "--to", "cloud", "--json")
    assert r.code == 0, r.err
    assert r.json()["present"] >= 10 and r.json()["committed_now"]
    ok(lab.run("verify", "m", "--replica", "cloud"))


# -- bad input and faults: one line, documented code


def one_line(r):
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("weightvault: error: "), r.err
    return lines[0]


def test_unknown_replica(lab):
    r = lab.run("verify", "minilm", "--replica", "nope")
    assert r.code == 2 and "unknown replica 'nope'" in one_line(r)


@pytest.mark.parametrize("text,msg", [
    ('[replicas.a]\nurl = "x"\nurll = "y"\n', "unknown key 'replicas.a.urll'"),
    ('[replicas.a]\nurl = \n', "line 2"),
    ('[replicas.a]\nrole = "boss"\nurl = "x"\n', "replicas.a.role: expected one of"),
    ('[replicas.a]\nurl = "x"\nobject_lock = { mode = "COMPLIANCE", days = 1 }\n',
     "only s3:// replicas support Object Lock"),
    ('colour = "blue"\n', "unknown key 'colour'"),
])  # fmt: skip
def test_malformed_config(tmp_path, text, msg):
    cfg = tmp_path / "weightvault.toml"
    cfg.write_text(text)
    r = wv("-c", cfg, "status")
    assert r.code == 2 and msg in one_line(r) and str(cfg) in one_line(r)


def test_unreachable_endpoint(lab, tmp_path, lab_key):
    cfg = write_config(tmp_path / "x.toml", lab_key, {"cloud": {
        "url": f"s3://{lab.bucket}/v", "storage_options": {"endpoint_url": "http://127.0.0.1:9"}}})  # fmt: skip
    r = wv("-c", cfg, "list", env=lab.env)
    assert r.code == 3 and "unreachable" in one_line(r)


def test_wrong_credentials(lab, tmp_path, lab_key):
    env = {**lab.env, "AWS_SECRET_ACCESS_KEY": "wrong" * 8}
    r = wv("-c", lab.cfg, "list", "--replica", "cloud", env=env)
    # falls back to the next replica for reads; status says which one failed and why
    s = wv("-c", lab.cfg, "status", env=env)
    assert s.code == 3 and "credentials rejected" in s.err
    assert r.code == 0


def test_missing_bucket(lab, tmp_path, lab_key):
    cfg = write_config(tmp_path / "x.toml", lab_key, {"cloud": {
        "url": "s3://no-such-bucket-here/v",
        "storage_options": {"endpoint_url": lab.s3.endpoint_url}}})  # fmt: skip
    r = wv("-c", cfg, "list", env=lab.env)
    assert r.code == 3 and "bucket 'no-such-bucket-here': does not exist" in one_line(r)


def test_object_lock_refused_on_bucket_without_it_and_applied_with_it(lab, minilm_dir, tmp_path,
                                                                      lab_key):  # fmt: skip
    lock = {"mode": "COMPLIANCE", "days": 1}
    cfg = write_config(tmp_path / "x.toml", lab_key, {"cloud": {
        "url": f"s3://{lab.bucket}/v", "object_lock": lock,
        "storage_options": {"endpoint_url": lab.s3.endpoint_url}}})  # fmt: skip
    r = wv("-c", cfg, "seal", minilm_dir, "--name", "m", env=lab.env)
    assert r.code == 3 and "has no Object Lock" in one_line(r)
    locked = lab.s3.make_bucket("wv-lock-" + uuid.uuid4().hex[:8], object_lock=True)
    cfg = write_config(tmp_path / "y.toml", lab_key, {"cloud": {
        "url": f"s3://{locked}/v", "object_lock": lock,
        "storage_options": {"endpoint_url": lab.s3.endpoint_url}}})  # fmt: skip
    r = wv("-c", cfg, "seal", minilm_dir, "--name", "m", "--quiet", env=lab.env)
    assert r.code == 0, r.err
    c = lab.s3.client()
    key = c.list_objects_v2(Bucket=locked, Prefix="v/objects/")["Contents"][0]["Key"]
    head = c.head_object(Bucket=locked, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    vid = head["VersionId"]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        c.delete_object(Bucket=locked, Key=key, VersionId=vid)


def test_sftp_host_key_mismatch_refused(lab, tmp_path, lab_key):
    cfg = write_config(tmp_path / "x.toml", lab_key, {"steward": {
        "url": f"sftp://{lab.ssh.user}@127.0.0.1:{lab.ssh.port}{lab.sftp_root}",
        "identity": str(lab.ssh.client_key_path),
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGGsUeC8tqW9GZG1dRk2Rw9a4Vvh0cKzE6q7nFo3m7xY"}})  # fmt: skip
    r = wv("-c", cfg, "list", env=lab.env)
    assert r.code == 3 and "not the one pinned" in one_line(r)


@pytest.mark.parametrize("replica", ["steward", "cloud"])
def test_exclusive_put_loses_to_a_writer_that_got_there_after_the_check(lab, replica,
                                                                        monkeypatch):  # fmt: skip
    """Create-if-absent (how a manifest is committed) decided by the server, not by the
    exists check before the upload: a second writer that lands between the two must win, and
    its bytes must stay. On SFTP that is OpenSSH's plain rename, on S3 If-None-Match."""
    from weightvault.config import load
    from weightvault.storage.replicas import ReplicaSet

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", lab.env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", lab.env["AWS_SECRET_ACCESS_KEY"])
    store = ReplicaSet(load(lab.cfg)).store(replica, create=True)
    key = "bundles/race/manifest.json"
    assert store.put_bytes(key, b"first writer", exclusive=True)
    monkeypatch.setattr(type(store), "exists", lambda self, k: False)  # the check saw nothing
    assert not store.put_bytes(key, b"second writer", exclusive=True)
    assert store.read_bytes(key, 100) == b"first writer"
    assert store.put_bytes(key, b"replaced", exclusive=False)
    assert store.read_bytes(key, 100) == b"replaced"
    if replica == "steward":  # the loser's upload is not left behind
        assert not [p for p in (lab.sftp_root / "tmp").iterdir() if p.suffix == ".part"]
