"""Storage that fails under a running command: a server killed mid-read, an SFTP server stopped
mid-transfer, a disk that fills up. Each time: one clear error naming the replica, the
documented exit code, never a report of damage that is not there, never a visible half bundle,
and the same command completes once the storage is back.

SeaweedFS killed in the middle of a replicate is covered by
tests/test_replicas.py::test_s3_killed_mid_replicate_then_resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, s3_env, write_config, wv
from support.stepper import CountingProxy, Stepper, cli, tree

MARKER = "tagmanifest-sha256.txt"


def one_error(err: str, code_seen: int, code: int) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code_seen == code and len(lines) == 1, (code_seen, err)
    assert lines[0].startswith("weightvault: error: "), err
    return lines[0]


def synthetic_model(d: Path, mib: int) -> Path:
    """A safetensors model of random float32 weights (incompressible), and a config."""
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    n = mib * (1 << 20) // 4 // 4
    save_file({f"layer.{i}.weight": rng.standard_normal(n, dtype=np.float32) for i in range(4)},
              str(d / "model.safetensors"))  # fmt: skip
    (d / "config.json").write_text('{"model_type": "synthetic"}\n')
    return d


# -- SeaweedFS killed in the middle of a full audit


def readable(s3, bucket: str, limit: float = 90.0) -> None:
    """After a restart, wait until SeaweedFS serves every object again (its volumes register
    with the master a little after S3 answers)."""
    c = s3.client(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
    deadline = time.monotonic() + limit
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
    while keys:
        try:
            c.get_object(Bucket=bucket, Key=keys[-1])["Body"].read()
            keys.pop()
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_s3_killed_mid_audit_is_unreachable_not_damage(tmp_path, s3_server, lab_key):
    bucket = s3_server.make_bucket("wv-audit-" + uuid.uuid4().hex[:8])
    env = {**s3_env(s3_server), "WEIGHTVAULT_RETRIES": "0"}  # fail at once: the server is gone
    url = f"s3://{bucket}/vault"
    state = {"state_dir": str(tmp_path / "state")}
    direct = write_config(tmp_path / "direct.toml", lab_key, {"cloud": {
        "url": url, "storage_options": {"endpoint_url": s3_server.endpoint_url}}}, audit=state)  # fmt: skip
    model = synthetic_model(tmp_path / "model", 8)
    ok(wv("-c", direct, "seal", model, "--name", "m", "--chunk-size", "1", "--quiet", env=env))
    with CountingProxy(s3_server.ports["s3"]) as proxy:
        cfg = write_config(tmp_path / "proxied.toml", lab_key, {"cloud": {
            "url": url, "storage_options": {"endpoint_url": proxy.endpoint_url}}}, audit=state)  # fmt: skip
        with Stepper(cli("-c", cfg, "audit", "--level", "full", "--workers", "2"), env=env) as a:
            assert a.run_until(lambda: proxy.down >= 3 << 20), a.finish()
            s3_server.kill()  # in the middle of reading the objects
            try:
                r = a.finish()
            finally:
                s3_server.restart()
    assert r.code == 3, r.out + r.err
    assert "cloud: UNREACHABLE:" in r.out and url in r.out, r.out
    assert "FAIL" not in r.out and "damaged" not in r.out and "missing" not in r.out, r.out
    assert "Traceback" not in r.err, r.err
    records = list((tmp_path / "state").glob("replicas/*/audits/*/*.json"))
    assert not records, "an audit that could not finish left a record"
    readable(s3_server, bucket)
    # the server is back: the same audit passes
    r = ok(wv("-c", cfg.with_name("direct.toml"), "audit", "--level", "full", "--json", env=env))
    (rep,) = r.json()["replicas"]
    assert rep["outcome"] == "pass" and rep["record"]["objects_checked"] >= 8


# -- sshd stopped in the middle of a replicate to SFTP


@pytest.fixture
def own_sshd(tmp_path):
    """An sshd of this test's own, so killing it leaves the session's server alone."""
    from support.servers import SshServer

    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("sshd (Debian openssh-server) is not installed")
    with SshServer(base_dir=tmp_path) as s:
        yield s


def test_sshd_stopped_mid_replicate_then_rerun_completes(tmp_path, own_sshd, lab_key):
    ssh = own_sshd
    root = ssh.root / "vault"
    url = f"sftp://{ssh.user}@127.0.0.1:{ssh.port}{root}"
    cfg = write_config(tmp_path / "wv.toml", lab_key, {
        "primary": {"url": str(tmp_path / "primary")},
        "steward": {"url": url, "identity": str(ssh.client_key_path),
                    "host_key": ssh.host_public_key},
    })  # fmt: skip
    env = {**os.environ, "WEIGHTVAULT_RETRIES": "2"}
    model = synthetic_model(tmp_path / "model", 12)
    ok(wv("seal", model, "--vault", tmp_path / "primary", "--key", lab_key, "--name", "m",
          "--chunk-size", "1", "--quiet"))  # fmt: skip

    def objects() -> int:
        return sum(1 for k in tree(root) if k.startswith(("bundles/m/data/objects/", "objects/")))

    with Stepper(cli("-c", cfg, "replicate", "m", "--to", "steward", "--workers", "2",
                     "--quiet"), env=env) as r:  # fmt: skip
        assert r.run_until(lambda: objects() >= 4), r.finish()
        ssh.kill()  # sshd and every session: the transfer in flight drops
        out = r.finish()
    line = one_error(out.err, out.code, 3)
    assert f"127.0.0.1:{ssh.port}" in line, line
    s = wv("-c", cfg, "status", "--json", env=env)
    assert s.code == 3 and s.json()["m"]["steward"]["state"] == "unreachable"
    ssh.restart()
    s = wv("-c", cfg, "status", "--json", env=env)
    # killed among the objects, which go to the pool first: the bundle's own files may not
    # be there yet (absent) or partly (uncommitted)
    assert s.json()["m"]["steward"]["state"] in ("uncommitted", "absent"), s.out
    r = ok(wv("-c", cfg, "replicate", "m", "--to", "steward", "--json", env=env))
    assert r.json()["present"] >= 4 and r.json()["committed_now"]
    ok(wv("-c", cfg, "verify", "m", "--replica", "steward", "--deep", env=env))
    # scratch files of the transfers cut off: gc removes them, and only them
    leftovers = {k for k in tree(root) if k.startswith("tmp/")}
    g = ok(wv("-c", cfg, "gc", "--replica", "steward", "--grace", "0", "--json", env=env))
    assert {o["key"] for o in g.json()["replicas"][0]["removed"]} == leftovers
    ok(wv("-c", cfg, "verify", "m", "--replica", "steward", env=env))


# -- a full filesystem


@pytest.fixture
def small_fs(tmp_path):
    """A 40 MiB tmpfs (needs root and a kernel that lets this container mount)."""
    d = tmp_path / "fs"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(d)],
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def assert_nothing_half_visible(vault: Path, trust: Path) -> None:
    r = ok(wv("list", "--vault", vault, "--json"))
    for row in r.json():
        ok(wv("verify", row["name"], "--vault", vault, "--trust", trust))
    s = wv("status", "--vault", vault, "--json", "--trust", trust)
    for name, row in json.loads(s.out or "{}").items():
        assert row["vault"]["state"] in ("complete", "uncommitted", "absent"), (name, row)
    # never a manifest that names an absent object, committed or not
    for m in (
        (vault / "bundles").glob("*/data/weightvault.json") if (vault / "bundles").exists() else []
    ):
        doc = json.loads(m.read_bytes())
        objs = m.parent / "objects" if doc["format_version"] < 4 else vault / "objects"
        missing = [o["name"] for o in doc["objects"] if not (objs / o["name"]).exists()]
        assert not missing, f"{m} names absent objects {missing[:3]}"


def test_seal_into_a_full_filesystem(small_fs, minilm_dir, lab_key):
    vault = small_fs / "vault"
    trust = Path(f"{lab_key}.pub")
    r = wv("seal", minilm_dir, "--vault", vault, "--key", lab_key, "--name", "m", "--quiet")
    line = one_error(r.err, r.code, 3)
    assert "no space left on device" in line and str(vault) in line, line
    assert_nothing_half_visible(vault, trust)
    assert not [k for k in tree(vault) if not k.endswith(".lock")], tree(vault)
    g = ok(wv("gc", "--vault", vault, "--trust", trust, "--grace", "0", "--json"))
    assert not g.json()["replicas"][0]["removed"]  # the seal removed its own objects
    assert not (vault / "bundles").exists() or not list((vault / "bundles").iterdir()), \
        "gc leaves no empty bundle directory"  # fmt: skip
    # space is back: a bundle that fits seals and verifies
    small = small_fs.parent / "small"
    small.mkdir()
    shutil.copy(minilm_dir / "vocab.txt", small)
    ok(wv("seal", small, "--vault", vault, "--key", lab_key, "--name", "small", "--quiet"))
    ok(wv("verify", "small", "--vault", vault, "--trust", trust, "--deep"))


def _fill_and_seal(fs: Path, model: Path, ref: Path, lab_key: Path, free: int) -> int:
    """Seal into a vault on `fs` with only `free` bytes left; check what is left behind."""
    trust = Path(f"{lab_key}.pub")
    vault = fs / f"v{free}"
    vault.mkdir()
    (vault / "tmp").mkdir()
    filler = fs / "filler"
    st = os.statvfs(fs)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
    try:
        r = wv("seal", model, "--vault", vault, "--key", lab_key, "--name", "m", "--chunk-size",
               "1", "--quiet")  # fmt: skip
    finally:
        filler.unlink()
    if r.code == 0:
        ok(wv("verify", "m", "--vault", vault, "--trust", trust, "--deep"))
    else:
        assert "no space left on device" in one_error(r.err, r.code, 3)
    assert_nothing_half_visible(vault, trust)
    ok(wv("gc", "--vault", vault, "--trust", trust, "--grace", "0"))
    left = {k for k in tree(vault) if not k.endswith(".lock")}
    want = {k for k in tree(ref) if not k.endswith(".lock")} if r.code == 0 else set()
    if r.code == 0 and "preservation log not updated after seal" in r.err:
        # the disk filled between the bundle's commit and the log's append: the bundle is
        # whole, the log as far as the append got (a later append, gc's here, goes on from
        # there), and the note says why (a known gap: no command appends a committed bundle's
        # statement later; docs/OPERATIONS.md section 5)
        assert "no space left on device" in r.err, r.err
        want = {k for k in want if not k.startswith("log/")}
        left = {k for k in left if not k.startswith("log/")}
    assert left == want, left
    shutil.rmtree(vault)
    return r.code


@pytest.fixture
def small_model(tmp_path, minilm_dir, lab_key):
    """Three small files of the real model, and a reference vault holding them sealed:
    (model, reference vault, object bytes, commit file bytes), in whole 4 KiB pages."""
    model = tmp_path / "model"
    model.mkdir()
    for f in ("tokenizer.json", "vocab.txt", "config.json"):
        shutil.copy(minilm_dir / f, model)
    ref = tmp_path / "ref"
    ok(wv("seal", model, "--vault", ref, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    pages = {k: -(-s // 4096) * 4096 for k, s in tree(ref).items() if not k.endswith(".lock")}
    objs = sum(v for k, v in pages.items() if "/data/objects/" in k or k.startswith("objects/"))
    return model, ref, objs, sum(pages.values()) - objs


def _levels(objs: int, commit: int, n: int) -> list[int]:
    """Free space that runs out among the objects, at points of the commit, and enough."""
    step = max(4096, commit // n)
    return [4096, objs // 2, *range(objs, objs + commit, step), objs + commit + 16384]


def test_disk_fills_during_a_seal(small_fs, small_model, lab_key):
    """The disk fills while the commit files are written, or not at all: one line and exit 3
    (nothing visible, nothing left after gc), or a bundle that verifies. (Full while objects
    are written: test_seal_into_a_full_filesystem; every stage: the slow sweep below.)"""
    model, ref, objs, commit = small_model
    codes = [_fill_and_seal(small_fs, model, ref, lab_key, free)
             for free in (objs + commit // 2, objs + commit + 16384)]  # fmt: skip
    assert codes == [3, 0], codes


@pytest.mark.slow
def test_disk_fills_at_every_stage_of_a_seal(small_fs, small_model, lab_key):
    model, ref, objs, commit = small_model
    codes = {free: _fill_and_seal(small_fs, model, ref, lab_key, free)
             for free in _levels(objs, commit, 12)}  # fmt: skip
    assert 3 in codes.values() and 0 in codes.values(), codes


# -- a disk that reports a write error only when the data is synced


def test_failed_fsync_fails_the_seal_and_leaves_nothing(tmp_path, lab_key, monkeypatch):
    """EIO from fsync (writeback failed: the bytes may never reach the disk) must not be taken
    for success: the seal fails with one StorageError naming the staged object, and no bundle
    is committed or left behind."""
    import errno

    from weightvault.archive import seal
    from weightvault.errors import StorageError
    from weightvault.format import keys
    from weightvault.storage.opener import open_store
    from weightvault.storage.vault import Vault

    model = synthetic_model(tmp_path / "model", 4)
    vault_dir = tmp_path / "vault"
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):  # a staged object
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    store = open_store(str(vault_dir), create=True)
    before = sorted(vault_dir.rglob("*"))
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match=r"\.part: cannot write \(Input/output error\)"):
        seal.seal(str(model), store, keys.load_signing_key(lab_key), seal.SealOptions(name="m"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not Vault(store).is_committed("m")
    assert sorted(vault_dir.rglob("*")) == before


# -- one layer of retries


def test_s3_timeouts_are_retried_by_one_layer_only(tmp_path):
    """An S3 endpoint that accepts and never answers: each of weightvault's attempts is one
    request (botocore's and s3fs's own retries would stack under ours: six requests here)."""
    import socket
    import subprocess
    import sys
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    requests: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)  # read the request, answer nothing
            c.settimeout(5)
            try:
                requests.append(c.recv(65536))
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    code = ("from weightvault.storage.remote import S3Store\n"
            f"S3Store('s3://bucket/vault', {{'endpoint_url': 'http://127.0.0.1:{port}', "
            "'config_kwargs': {'read_timeout': 1, 'connect_timeout': 1}})\n")  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    finally:
        srv.close()
        for c in held:
            c.close()
    assert r.returncode != 0
    assert f"127.0.0.1:{port}" in r.stderr or "bucket" in r.stderr, r.stderr
    assert "unreachable or failing" in r.stderr.splitlines()[-1], r.stderr
    sent = [q for q in requests if q]
    # the bucket check makes three attempts; each is one request, botocore's first
    assert len(sent) == 3, sent
    assert all(b"amz-sdk-request: attempt=1;" in q or b"amz-sdk-request: attempt=1\r" in q
               for q in sent), sent  # fmt: skip


def test_s3_put_streams_the_object_instead_of_holding_it(s3_server):
    """One PUT per object, its body read from the staged file as it is sent: a 128 MiB object
    (a 1 GiB --chunk-size makes them that big and more, one per worker) must not pass through
    memory whole."""
    import subprocess
    import sys

    bucket = s3_server.make_bucket("wv-stream-" + os.urandom(4).hex())
    code = ("import resource, sys\n"
            "from weightvault.storage.remote import S3Store\n"
            "st = S3Store(f's3://{sys.argv[1]}/v', {'endpoint_url': sys.argv[2]})\n"
            "w = st.new_object()\n"
            "piece = bytes(range(256)) * 16384\n"
            "for _ in range(32):\n    w.write(piece)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "assert w.commit('objects/big')\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print((after - before) // 1024, st.size('objects/big'))\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, bucket, s3_server.endpoint_url],
                       env={**os.environ, **s3_env(s3_server)}, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    growth_mib, size = map(int, r.stdout.split())
    assert size == 128 << 20
    assert growth_mib < 32, f"peak RSS grew {growth_mib} MiB during the PUT"
