"""Seal and audit on a Dask cluster (real LocalCluster processes), sources in object storage.

Cluster starts cost seconds: the default suite starts few; the kill tests are slow."""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import minilm_changed, ok, one_error, plain_count, s3_env, write_config, wv

from weightvault.archive import distributed
from weightvault.archive.seal import SealOptions, seal
from weightvault.errors import InputError
from weightvault.executors import Executor, parse
from weightvault.format import keys
from weightvault.storage.store import LocalStore

pytest.importorskip("distributed")

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def tree(root: Path) -> dict[str, bytes]:
    """Every file of a vault's bundles and of its object pool, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for d in ("bundles", "objects") for p in sorted((root / d).rglob("*"))
            if p.is_file()}  # fmt: skip


def upload(s3, bucket: str, prefix: str, src: Path) -> None:
    c = s3.client()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            with open(p, "rb") as body:
                c.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(src).as_posix()}",
                             Body=body)  # fmt: skip


class InProcess(Executor):
    """A 'cluster' that runs every task here, recording what each task was sent."""

    def __init__(self):
        super().__init__("local-cluster:1", "local", n_workers=1, task_bytes=24 << 20)
        self.sent: list[tuple] = []

    def map(self, fn, items, *, label="task", on_done=None):
        out = []
        for i, it in enumerate(items):
            self.sent.append(it)
            r = fn(*pickle.loads(pickle.dumps(it)))  # what a worker would unpickle
            out.append(r)
            if on_done:
                on_done(i, r)
        return out


# -- no cluster needed


def test_plan_tasks_groups_small_files_and_splits_big_ones():
    from weightvault.archive.seal import _Job
    from weightvault.archive.sources import SourceFile
    from weightvault.format.chunking import Piece

    def file(i, sizes):
        f = SourceFile(f"f{i}", Path(f"/x/f{i}"), sum(sizes), 0o644, 0)
        return [(i, f, Piece(sum(sizes[:k]), s), k == len(sizes) - 1, len(sizes) > 1)
                for k, s in enumerate(sizes)]  # fmt: skip

    specs = file(0, [10]) + file(1, [10, 10]) + file(2, [30, 30, 30, 5]) + file(3, [4])
    jobs = [_Job(f, src, p, last, multi, n) for n, (f, src, p, last, multi) in enumerate(specs)]
    tasks, split = distributed.plan_tasks(jobs, 40)
    assert list(split) == [2]  # only the file bigger than a task is split (and hashed apart)
    shapes = [([j.index for j in t], lanes) for t, lanes in tasks]
    assert shapes == [([0, 1, 2], {1}), ([3], set()), ([4], set()), ([5, 6], set()),
                      ([7], set())]  # fmt: skip
    assert sorted(j.index for t, _ in tasks for j in t) == list(range(len(jobs)))


def test_bad_executor_is_one_line(tmp_path, minilm_dir, lab_key):
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key,
           "--executor", "local-cluster:zero")  # fmt: skip
    one_error(r, 2, "local-cluster:N")
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key,
           "--source-option", "novalue")  # fmt: skip
    one_error(r, 2, "KEY=VALUE")
    assert parse("dask://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    for bad in ("-5", "20", "low"):
        r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key, "--executor",
               "local-cluster:2", env={**os.environ, "WEIGHTVAULT_CLUSTER_NICE": bad})  # fmt: skip
        one_error(r, 2, "WEIGHTVAULT_CLUSTER_NICE")
    assert not (tmp_path / "v").exists()


def test_local_cluster_priority_is_lowered_by_cluster_nice(monkeypatch):
    """A LocalCluster starts beside the driver's own work, at CLUSTER_NICE below it unless
    $WEIGHTVAULT_CLUSTER_NICE says otherwise (0: the driver's priority); dask:// is not ours."""
    from weightvault.executors import CLUSTER_NICE

    assert parse("local-cluster:2").nice == CLUSTER_NICE == 10
    monkeypatch.setenv("WEIGHTVAULT_CLUSTER_NICE", "0")
    assert parse("local-cluster:2").nice == 0
    monkeypatch.setenv("WEIGHTVAULT_CLUSTER_NICE", "19")
    assert parse("local-cluster:2").nice == 19
    assert parse("dask://10.0.0.1:8786").nice == 0


def test_workers_get_no_key_and_split_files_hash_as_in_one_process(tmp_path, minilm_dir,
                                                                   monkeypatch):  # fmt: skip
    """What crosses to a worker holds no signing key, no key path; a file split over several
    tasks (hashed by its own task) gives the same bundle as one process."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH["SOURCE_DATE_EPOCH"])
    key_path = tmp_path / "secret-lab.key"
    sk = keys.generate(key_path)
    ex = InProcess()
    a = seal(str(minilm_dir), LocalStore(tmp_path / "a", create=True), sk,
             SealOptions(name="m", chunk_size=8 << 20, executor=ex))  # fmt: skip
    b = seal(str(minilm_dir), LocalStore(tmp_path / "b", create=True), sk,
             SealOptions(name="m", chunk_size=8 << 20))  # fmt: skip
    assert a.bundle == b.bundle and tree(tmp_path / "a") == tree(tmp_path / "b")
    kinds = [it[0] for it in ex.sent]
    assert kinds.count("hash") == 1 and kinds.count("seal") >= 4  # the 87 MiB file was split
    blob = pickle.dumps(ex.sent)
    assert key_path.read_bytes() not in blob and str(key_path).encode() not in blob
    secret = _private_bytes(sk)
    assert len(secret) == 32 and secret not in blob


def _private_bytes(sk) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return sk._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())  # fmt: skip


def test_encrypted_seal_on_a_cluster_is_refused(tmp_path, minilm_dir, lab_key):
    import pyrage

    rcpt = str(pyrage.x25519.Identity.generate().to_public())
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key, "--encrypt-to",
           rcpt, "--executor", "local-cluster:1")  # fmt: skip
    one_error(r, 2, "cannot seal an encrypted bundle")


# -- a real LocalCluster (processes)


def test_cluster_seal_is_byte_identical_and_audits(tmp_path, minilm_dir, lab_key, other_key):
    env = {**os.environ, **EPOCH}
    ok(wv("seal", minilm_dir, "--vault", tmp_path / "one", "--key", lab_key, "--name", "m",
          "--chunk-size", "16", env=env))  # fmt: skip
    # 32 MiB tasks: the 87 MiB safetensors file is split over tasks and hashed by its own;
    # every task on the workers (not on the driver while they start: executors.Executor.map)
    r = ok(wv("seal", minilm_dir, "--vault", tmp_path / "dask", "--key", lab_key, "--name", "m",
              "--chunk-size", "16", "--executor", "local-cluster:2", "--json",
              env={**env, "WEIGHTVAULT_TASK_BYTES": str(32 << 20),
                   "WEIGHTVAULT_DRIVER_TASKS": "0"}))  # fmt: skip
    assert r.json()["tasks"]["driver"] == 0 and r.json()["tasks"]["workers"] >= 4
    assert tree(tmp_path / "one") == tree(tmp_path / "dask")
    audit = ("audit", "--vault", tmp_path / "dask", "--level", "full", "--key", other_key,
             "--trust", f"{lab_key}.pub", "--state-dir", tmp_path / "state", "--json")
    # as shipped: the driver runs tasks itself while the workers start; where each ran is
    # counted (which one depends on timing), and the result is the same either way
    r = ok(wv(*audit, "--executor", "local-cluster:2"))
    assert sum(r.json()["tasks"].values()) == 1  # one batch of objects, well under 2 GiB
    rec = r.json()["replicas"][0]["record"]
    assert rec["eventOutcome"] == "pass"
    assert rec["objects_checked"] == 21 + plain_count(tmp_path / "dask", "m")  # + spec copies
    assert rec["bytes_read"] == sum(len(v) for k, v in tree(tmp_path / "dask").items()
                                    if k.startswith("objects/"))  # the pool (FORMAT.md 2.2)
    small = {**os.environ, "WEIGHTVAULT_TASK_BYTES": str(32 << 20)}
    r = ok(wv("verify", "m", "--vault", tmp_path / "dask", "--trust", f"{lab_key}.pub",
              "--deep", "--executor", "local-cluster:2", "--json", env=small))  # fmt: skip
    # the split file is read twice: by its chunk tasks and, in order, by its hashing task
    assert r.json()["ok"] and r.json()["bytes_checked"] >= rec["bytes_read"]


def test_new_version_on_a_cluster_equals_one_process(tmp_path, minilm_dir, lab_key):
    """seal --supersedes on a cluster: unchanged files are judged by the driver first, and
    workers take the changed file's chunks that its digests proved equal, as one
    process does; the two vaults end byte-identical."""
    env = {**os.environ, **EPOCH}
    v2 = minilm_changed(minilm_dir, tmp_path / "v2")
    outs = []
    for where, extra in (("one", ()), ("dask", ("--executor", "local-cluster:2"))):
        ok(wv("seal", minilm_dir, "--vault", tmp_path / where, "--key", lab_key, "--name", "m",
              "--chunk-size", "16", env=env))  # fmt: skip
        r = ok(wv("seal", v2, "--vault", tmp_path / where, "--key", lab_key, "--name", "m.2",
                  "--chunk-size", "16", "--supersedes", "m", "--json", *extra, env=env))  # fmt: skip
        outs.append(r.json())
    assert tree(tmp_path / "one") == tree(tmp_path / "dask")
    assert outs[0]["chunks_reused"] == outs[1]["chunks_reused"] > 0
    assert outs[0]["files_reused"] == outs[1]["files_reused"] > 0


@pytest.mark.slow
def test_cluster_replicates_and_finds_damage(tmp_path, minilm_dir, lab_key, other_key):
    ok(wv("seal", minilm_dir, "--vault", tmp_path / "dask", "--key", lab_key, "--name", "m",
          "--chunk-size", "16"))  # fmt: skip
    small = {**os.environ, "WEIGHTVAULT_TASK_BYTES": str(32 << 20)}
    ok(wv("replicate", "m", "--from", tmp_path / "dask", "--to", tmp_path / "copy", "--trust",
          f"{lab_key}.pub", "--executor", "local-cluster:2", env=small))  # fmt: skip
    assert tree(tmp_path / "copy") == tree(tmp_path / "dask")
    audit = ("audit", "--vault", tmp_path / "dask", "--level", "full", "--key", other_key,
             "--trust", f"{lab_key}.pub", "--state-dir", tmp_path / "state", "--json")
    # damage is found by the workers and confirmed by the driver's re-read
    victim = max((tmp_path / "dask/objects").iterdir(),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    r = wv(*audit, "--executor", "local-cluster:1")
    assert r.code == 1, r.err
    fails = r.json()["replicas"][0]["record"]["failures"]
    assert [f["object"].rsplit("/", 1)[-1] for f in fails] == [victim.name]
    r = wv("verify", "m", "--vault", tmp_path / "dask", "--trust", f"{lab_key}.pub", "--deep",
           "--executor", "local-cluster:2", "--json", env=small)  # fmt: skip
    assert r.code == 1 and [p["where"].rsplit("/", 1)[-1] for p in r.json()["problems"]
                            if p["kind"] == "damaged"] == [victim.name]  # fmt: skip


@pytest.fixture
def weed(s3_server):
    return s3_server


def test_seal_s3_source_to_s3_replica_on_cluster_equals_one_process(tmp_path, weed, minilm_dir,
                                                                    lab_key):  # fmt: skip
    """Done-when of issue 19: the real model in a SeaweedFS bucket, sealed in place with a
    LocalCluster into an S3 replica, byte-identical to a one-process seal of the same files."""
    src_bucket = weed.make_bucket("src-" + secrets.token_hex(4))
    dst_bucket = weed.make_bucket("dst-" + secrets.token_hex(4))
    upload(weed, src_bucket, "ckpt/step-1", minilm_dir)
    env = {**s3_env(weed), **EPOCH, "WEIGHTVAULT_DRIVER_TASKS": "0"}  # the workers seal
    ep = f"endpoint_url={weed.endpoint_url}"
    for prefix, extra in (("one", []), ("dask", ["--executor", "local-cluster:2"])):
        cfg = write_config(tmp_path / f"{prefix}.toml", lab_key, {"s3": {
            "url": f"s3://{dst_bucket}/{prefix}",
            "storage_options": {"endpoint_url": weed.endpoint_url}}})  # fmt: skip
        ok(wv("-c", cfg, "seal", f"s3://{src_bucket}/ckpt/step-1/", "--name", "m",
              "--source-option", ep, *extra, env=env))  # fmt: skip
    c = weed.client()

    def bundle(prefix):
        out = {}
        pages = [page for sub in ("bundles", "objects")
                 for page in c.get_paginator("list_objects_v2").paginate(
                     Bucket=dst_bucket, Prefix=f"{prefix}/{sub}/")]  # fmt: skip
        for page in pages:
            for o in page.get("Contents", []):
                body = c.get_object(Bucket=dst_bucket, Key=o["Key"])["Body"].read()
                out[o["Key"].split("/", 1)[1]] = body
        return out

    one, dask = bundle("one"), bundle("dask")
    assert one == dask and len([k for k in one if k.startswith("objects/")]) >= 5
    # and it restores to the same bytes as the bucket held
    cfg = tmp_path / "dask.toml"
    ok(wv("-c", cfg, "restore", "m", tmp_path / "out", env=env))
    assert (tmp_path / "out/model.safetensors").read_bytes() == \
        (minilm_dir / "model.safetensors").read_bytes()


def test_source_object_overwritten_mid_seal_is_refused(tmp_path, weed, minilm_dir):
    bucket = weed.make_bucket("chg-" + secrets.token_hex(4))
    upload(weed, bucket, "m", minilm_dir)
    env = s3_env(weed)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        fired = []

        def overwrite(_n):
            if not fired:
                fired.append(1)
                weed.client().put_object(Bucket=bucket, Key="m/config.json", Body=b"{}\n")

        sk = keys.generate(tmp_path / "k.key")
        store = LocalStore(tmp_path / "v", create=True)
        with pytest.raises(InputError) as e:
            seal(f"s3://{bucket}/m", store, sk,
                 SealOptions(name="m", source_options={"endpoint_url": weed.endpoint_url}),
                 on_bytes=overwrite)  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    msg = str(e.value)
    assert "\n" not in msg and f"s3://{bucket}/m/config.json" in msg and "changed" in msg
    assert e.value.exit_code == 2
    assert not (tmp_path / "v/bundles/m/data/weightvault.json").exists()
    assert not list((tmp_path / "v").rglob("objects/*"))  # what it wrote is removed


def test_remote_source_missing_or_empty_is_one_line(tmp_path, weed, lab_key):
    bucket = weed.make_bucket("empty-" + secrets.token_hex(4))
    r = wv("seal", f"s3://{bucket}/nothing/", "--vault", tmp_path / "v", "--key", lab_key,
           "--source-option", f"endpoint_url={weed.endpoint_url}", env=s3_env(weed))  # fmt: skip
    one_error(r, 2, f"s3://{bucket}/nothing/", "empty")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcs:
    """A scheduler and worker processes on loopback (what `dask scheduler` / `dask worker`
    start on a real cluster)."""

    def __init__(self, tmp: Path, workers: int, env: dict | None = None):
        self.port = _free_port()
        self.procs: list[subprocess.Popen] = []
        self.tmp = tmp
        log = open(tmp / "scheduler.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-dashboard"], stdout=log, stderr=log))  # fmt: skip
        self.workers = [self._worker(i, env) for i in range(workers)]
        self._wait(workers)

    def _worker(self, i, env):
        log = open(self.tmp / f"worker-{i}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads",
             "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=log, stderr=log, env=env or os.environ.copy())  # fmt: skip
        self.procs.append(p)
        return p

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _wait(self, n: int) -> None:
        from distributed import Client

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with Client(self.address, timeout="5s") as c:
                    c.wait_for_workers(n, timeout=30)
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("dask cluster did not start")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cluster_that_cannot_reach_the_replica_is_one_line_exit_3(tmp_path, weed, minilm_dir,
                                                                  lab_key):  # fmt: skip
    """The driver reaches the S3 replica; the cluster's worker has wrong credentials."""
    bucket = weed.make_bucket("far-" + secrets.token_hex(4))
    bad = {**s3_env(weed), "AWS_SECRET_ACCESS_KEY": "wrong" + secrets.token_hex(8)}
    procs = DaskProcs(tmp_path, 1, env=bad)
    try:
        cfg = write_config(tmp_path / "c.toml", lab_key, {"s3": {
            "url": f"s3://{bucket}/v", "storage_options": {"endpoint_url": weed.endpoint_url}}})  # fmt: skip
        r = wv("-c", cfg, "seal", minilm_dir, "--name", "m", "--executor",
               f"dask://127.0.0.1:{procs.port}", env=s3_env(weed))  # fmt: skip
        one_error(r, 3, f"s3://{bucket}/v", "credentials rejected")
        r = wv("-c", cfg, "list", "--json", env=s3_env(weed))
        assert "\"m\"" not in r.out
    finally:
        procs.close()


@pytest.mark.slow
def test_worker_killed_mid_seal_is_retried_with_identical_result(tmp_path, minilm_dir, lab_key):
    env = {**os.environ, **EPOCH}
    ok(wv("seal", minilm_dir, "--vault", tmp_path / "one", "--key", lab_key, "--name", "m",
          "--chunk-size", "2", env=env))  # fmt: skip
    procs = DaskProcs(tmp_path, 2)
    try:
        objects = tmp_path / "dask/objects"
        victim = procs.workers[0]
        killed = threading.Event()
        before_commit: list[bool] = []

        def killer():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed.is_set():
                if objects.is_dir() and any(objects.iterdir()):
                    victim.send_signal(signal.SIGKILL)
                    # killed before the driver committed: the seal was still under way
                    before_commit.append(not (objects.parent / "weightvault.json").exists())
                    killed.set()
                    return
                time.sleep(0.005)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        ok(wv("seal", minilm_dir, "--vault", tmp_path / "dask", "--key", lab_key, "--name",
              "m", "--chunk-size", "2", "--executor", f"dask://127.0.0.1:{procs.port}",
              env={**env, "WEIGHTVAULT_TASK_BYTES": str(4 << 20)}))  # fmt: skip
        t.join()
        assert killed.is_set() and before_commit == [True]
        assert victim.wait(10) == -signal.SIGKILL
        assert tree(tmp_path / "one") == tree(tmp_path / "dask")
    finally:
        procs.close()


@pytest.mark.slow
def test_driver_killed_mid_seal_leaves_only_what_gc_collects(tmp_path, minilm_dir, lab_key):
    vault = tmp_path / "v"
    cmd = [sys.executable, "-m", "weightvault.cli", "seal", str(minilm_dir), "--vault",
           str(vault), "--key", str(lab_key), "--name", "m", "--chunk-size", "2",
           "--executor", "local-cluster:2"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "WEIGHTVAULT_TASK_BYTES": str(4 << 20)})  # fmt: skip
    objects = vault / "objects"  # the pool (FORMAT.md 2.2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (objects.is_dir() and any(objects.iterdir())):
        assert p.poll() is None, "the seal finished before it could be killed"
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(3)  # the LocalCluster's workers exit when their parent does
    assert not (vault / "bundles/m/data/weightvault.json").exists()
    r = ok(wv("gc", "--vault", vault, "--grace", "0", "--json"))
    assert r.json()
    left = [p for p in (vault / "bundles").rglob("*") if p.is_file()]
    assert left == [], left
    r = ok(wv("list", "--vault", vault, "--json"))
    assert "\"m\"" not in r.out


def test_cluster_audit_and_deep_verify_find_damage_in_process(vault_copy, lab_key, tmp_path):
    """The cluster code paths of audit and verify --deep (tasks pickled and run as a worker
    would, stores reopened from their spec), without the cost of starting a cluster."""
    from weightvault.archive.audit import audit_replica
    from weightvault.archive.verify import verify

    store = LocalStore(vault_copy)
    pk = keys.load_public_key(Path(f"{lab_key}.pub"))
    auditor = keys.generate(tmp_path / "audit.key")
    ex = InProcess()
    ex.task_bytes = 16 << 20  # several tasks; the model's big file split over them
    a = audit_replica("v", store, level="full", trusted=[pk], key=auditor,
                      state=tmp_path / "state", executor=ex)  # fmt: skip
    stored = sum(p.stat().st_size for p in (vault_copy / "objects").iterdir())
    assert a.outcome == "pass" and a.record["bytes_read"] == stored  # counted from the workers
    assert verify(store, "minilm", [pk], deep=True, executor=ex).ok
    victim = max((vault_copy / "objects").iterdir(),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 1
    victim.write_bytes(bytes(data))
    a = audit_replica("v", LocalStore(vault_copy), level="full", trusted=[pk], key=auditor,
                      state=tmp_path / "state", executor=ex)  # fmt: skip
    assert [f["object"].rsplit("/", 1)[-1] for f in a.record["failures"]] == [victim.name]
    r = verify(LocalStore(vault_copy), "minilm", [pk], deep=True, executor=ex)
    assert [p.where.rsplit("/", 1)[-1] for p in r.problems if p.kind == "damaged"] == \
        [victim.name]
    assert {it[0] for it in ex.sent} >= {"check", "verify", "vhash"}


def test_source_version_tag_compares_what_both_sides_have():
    from weightvault.archive.remote_source import _same as same

    # a listing without the version id that a HEAD of a versioned bucket returns: unchanged
    assert same(('"e"', "v1", 5, None), ('"e"', None, 5, None))
    assert not same(('"e2"', "v1", 5, None), ('"e"', "v1", 5, None))  # overwritten
    assert not same(('"e"', "v2", 5, None), ('"e"', "v1", 5, None))  # new version, same bytes
    assert not same((None, None, 6, 1.0), (None, None, 5, 1.0))  # no ETag: size and mtime
    assert not same((None, None, 5, 2.0), (None, None, 5, 1.0))


def test_sftp_replica_on_a_cluster_equals_one_process(tmp_path, ssh_server, minilm_dir, lab_key,
                                                      other_key):  # fmt: skip
    """An SFTP replica's storage options (identity file, pinned host key) reach the workers,
    which open their own SSH connections: seal and audit on a LocalCluster write and read it."""
    import uuid

    env = {**os.environ, **EPOCH, "WEIGHTVAULT_DRIVER_TASKS": "0"}  # every task on a worker
    trees = {}
    for prefix, extra in (("one", []), ("dask", ["--executor", "local-cluster:1"])):
        root = ssh_server.root / uuid.uuid4().hex[:8]
        cfg = write_config(tmp_path / f"{prefix}.toml", lab_key, {"steward": {
            "url": f"sftp://{ssh_server.user}@127.0.0.1:{ssh_server.port}{root}",
            "identity": str(ssh_server.client_key_path),
            "host_key": ssh_server.host_public_key}})  # fmt: skip
        r = ok(wv("-c", cfg, "seal", minilm_dir, "--name", "m", "--chunk-size", "16", "--json",
                  *extra, env=env))  # fmt: skip
        trees[prefix] = tree(root)
    assert r.json()["tasks"] == {"driver": 0, "workers": 1}
    assert trees["one"] == trees["dask"] and any(k.startswith("objects/") for k in trees["one"])
    r = ok(wv("-c", cfg, "audit", "--level", "full", "--key", other_key, "--trust",
              f"{lab_key}.pub", "--state-dir", tmp_path / "state", "--json", "--executor",
              "local-cluster:1", env=env))  # fmt: skip
    rec = r.json()["replicas"][0]["record"]
    assert rec["eventOutcome"] == "pass" and r.json()["tasks"]["workers"] == 1
    assert rec["bytes_read"] == sum(len(v) for k, v in trees["dask"].items()
                                    if k.startswith("objects/"))  # fmt: skip


def test_sources_table_gives_a_source_its_storage_options(tmp_path, weed, minilm_dir, lab_key):
    """[sources.NAME] in the config: the storage options of sources under a URL prefix (the
    longest prefix wins; --source-option overrides); bad tables are one line, exit 2."""
    from weightvault import config as configmod

    bucket = weed.make_bucket("cfgsrc-" + secrets.token_hex(4))
    upload(weed, bucket, "ckpt/step-1", minilm_dir)
    cfg = write_config(tmp_path / "c.toml", lab_key, {"v": {"url": str(tmp_path / "v")}},
                       sources={"lab": {"url": f"s3://{bucket}/",
                                        "storage_options": {"endpoint_url": weed.endpoint_url}},
                                "other": {"url": f"s3://{bucket}/ck",
                                          "storage_options": {"anon": True}}})  # fmt: skip
    loaded = configmod.load(cfg)
    assert loaded.source_options(f"s3://{bucket}/ckpt/step-1/") == {
        "endpoint_url": weed.endpoint_url}  # "ck" is not a prefix at a '/' boundary
    assert loaded.source_options(f"s3://{bucket}/ck/x") == {"anon": True}
    assert loaded.source_options("s3://elsewhere/x") == {}
    r = ok(wv("-c", cfg, "seal", f"s3://{bucket}/ckpt/step-1/", "--name", "m", "--json",
              env=s3_env(weed)))  # fmt: skip
    assert r.json()["files"] == len([p for p in minilm_dir.rglob("*") if p.is_file()])
    r = wv("-c", cfg, "seal", f"s3://{bucket}/ckpt/step-1/", "--name", "m2", "--source-option",
           "endpoint_url=http://127.0.0.1:9", env=s3_env(weed))  # fmt: skip
    assert r.code != 0  # the command line's option wins, and that endpoint answers nothing
    bad = write_config(tmp_path / "bad.toml", lab_key, {}, sources={"x": {"url": "/a/dir"}})
    one_error(wv("-c", bad, "list"), 2, "sources.x.url")


def test_local_cluster_workers_are_forked_from_a_fresh_forkserver_not_the_driver(monkeypatch):
    """The driver holds the signing key in memory; a LocalCluster's workers are forks of a
    forkserver that was exec'd fresh (it never held this process's memory), not forks of the
    driver, and nothing the driver loaded reaches them that way."""
    from weightvault.executors import parse

    def parent() -> tuple[int, bytes, int, int]:
        pp = os.getppid()
        return (pp, Path(f"/proc/{pp}/cmdline").read_bytes(), os.getpriority(os.PRIO_PROCESS, 0),
                os.sched_getscheduler(0))  # fmt: skip

    monkeypatch.setenv("WEIGHTVAULT_DRIVER_TASKS", "0")
    monkeypatch.delenv("WEIGHTVAULT_CLUSTER_NICE", raising=False)
    ex = parse("local-cluster:1")
    with ex.session():
        [(ppid, cmdline, nice, policy)] = ex.map(parent, [()])
    assert ppid != os.getpid() and b"multiprocessing.forkserver" in cmdline
    assert ex.tasks == {"driver": 0, "workers": 1}
    # the worker (like the forkserver and scheduler) gives way to the driver (executors.py)
    # at a lower nice value, never the idle policy its imports ran at (a worker could not
    # leave it, and would wait for any other work on the machine)
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + ex.nice) > 0
    assert policy == os.SCHED_OTHER
