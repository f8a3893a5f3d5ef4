#!/usr/bin/env python3
"""Dask executor benchmarks (issue 19). See benchmarks/README.md, "Beyond one machine".

    python benchmarks/cluster.py overhead [--reps 2] [--existing]   # threads vs local-cluster:2
                                                                    # (--existing: vs dask://)
    python benchmarks/cluster.py s3-source [--size 1GiB]             # SeaweedFS bucket vs disk
    python benchmarks/cluster.py s3-audit [--reps 2]                 # audit of an S3 replica
    python benchmarks/cluster.py plan10tb [--chunks 163840]          # driver RSS and CPU only

Every measured command is a child process; wall time, CPU and peak RSS come from its rusage
(os.wait4), as in run.py. The page cache is warm for every run (the input is read once).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
MiB, GiB = 1 << 20, 1 << 30


def wait_quiet(limit: float = 60.0) -> None:
    """Other people's work shares these 2 cores: start when the machine is idle (the last
    second's CPU use under 20 %), or after `limit` seconds anyway."""
    deadline = time.monotonic() + limit

    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    while time.monotonic() < deadline:
        a, b = busy()
        time.sleep(1)
        c, d = busy()
        if (c - a) / max(1, d - b) < 0.2:
            return


def timed(cmd: list[str], env: dict | None = None) -> dict:
    wait_quiet()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    res = {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
           "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}  # fmt: skip
    try:
        doc = json.loads(out)
        if isinstance(doc, dict) and "seconds" in doc:
            res["seal_s"] = doc["seconds"]  # inside seal(): without the cluster's start
        if isinstance(doc, dict) and "tasks" in doc:
            res["tasks"] = doc["tasks"]  # where they ran: the driver's threads or workers
    except ValueError:
        pass
    return res


def wv(*args) -> list[str]:
    return [sys.executable, "-m", "weightvault.cli", *map(str, args)]


def warm(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(16 * MiB):
                    pass


def _inputs(args) -> tuple[Path, Path, Path]:
    """(work dir, the bf16 model of run.py at --size, a signing key), made once per work dir."""
    from run import make_bf16_model

    work = Path(args.work)
    src = make_bf16_model(work / "inputs" / f"bf16-{args.size >> 20}MiB", args.size)
    key = work / "bench.key"
    if not key.exists():
        subprocess.run(wv("keygen", key), check=True, capture_output=True)
    return work, src, key


def overhead(args) -> dict:
    work, src, key = _inputs(args)
    akey = work / "audit.key"  # an audit key is never a bundle signer
    if not akey.exists():
        subprocess.run(wv("keygen", akey), check=True, capture_output=True)
    out: dict = {"size": args.size, "seal": {}, "audit": {}}
    cluster = "local-cluster:2"
    procs: list[subprocess.Popen] = []
    if args.existing:  # a long-running cluster, as in production: no start-up in the timing
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                       "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], **quiet))  # fmt: skip
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                           f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                           "--no-dashboard", "--host", "127.0.0.1"], **quiet))  # fmt: skip
        from distributed import Client

        time.sleep(2)
        with Client(f"tcp://127.0.0.1:{port}", timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)
        cluster = f"dask://127.0.0.1:{port}"
    try:
        _overhead_runs(args, work, src, key, akey, cluster, out)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    for what in ("seal", "audit"):
        best = {ex: min(rs, key=lambda r: r["wall_s"]) for ex, rs in out[what].items()}
        out[what]["best"] = best
        for ex in best:
            if ex == "threads":
                continue
            out[what][f"ratio_wall {ex}"] = round(best[ex]["wall_s"] / best["threads"]["wall_s"], 3)
            if "seal_s" in best["threads"]:
                out[what][f"ratio_inside_seal {ex}"] = round(best[ex]["seal_s"]
                                                             / best["threads"]["seal_s"], 3)  # fmt: skip
    return out


def _overhead_runs(args, work, src, key, akey, cluster, out) -> None:
    # a LocalCluster also runs with the driver's own tasks turned off (every task on a worker):
    # the cost of Dask itself, start-up included, rather than of the executor as shipped
    runs = [("threads", "threads", None), (cluster, cluster, None)]
    if cluster.startswith("local-cluster"):
        runs.append((f"{cluster} workers only", cluster, {"WEIGHTVAULT_DRIVER_TASKS": "0"}))
    for rep in range(args.reps):
        for name, ex, extra in runs:
            env = {**os.environ, **(extra or {})}
            warm(src)
            v = work / f"vault-{len(name)}-{rep}"
            subprocess.run(["rm", "-rf", str(v), str(work / f"state-{rep}")], check=True)
            r = timed(wv("seal", src, "--vault", v, "--key", key, "--name", "m", "--json", "-q",
                         "--executor", ex), env)  # fmt: skip
            out["seal"].setdefault(name, []).append(r)
            warm(v)
            r = timed(wv("audit", "--vault", v, "--level", "full", "--key", akey, "--trust",
                         f"{key}.pub", "--json",
                         "--state-dir", work / f"state-{rep}", "--executor", ex), env)  # fmt: skip
            out["audit"].setdefault(name, []).append(r)
            subprocess.run(["rm", "-rf", str(v), str(work / f"state-{rep}")], check=True)


def s3_source(args) -> dict:
    """The same model sealed from local disk, from a SeaweedFS bucket with the shipped reader
    (presigned range GETs, storage/s3read.py) and with s3fs's cat_file (what the code used
    before; WEIGHTVAULT_S3_READER=fsspec), side by side, in two layouts of the 2 cores:
    "shared" (server and seal on both) and "own-core" (the server pinned to the last CPU, every
    seal to the others: a lab's object store runs on machines of its own, not on the sealer's
    cores). Also the server's own CPU per seal."""
    from serve_bench import proc_cpu_s
    from support.servers import SeaweedS3

    work, src, key = _inputs(args)
    out: dict = {"size": args.size, "cpus": os.cpu_count()}
    cpus = sorted(os.sched_getaffinity(0))
    out["weed_args"] = args.weed_arg
    with SeaweedS3(base_dir=work, extra_args=tuple(args.weed_arg)) as s3:
        server = s3._proc.pid
        bucket = s3.make_bucket("bench-src")
        cpu0 = proc_cpu_s(server)
        c = s3.client()
        for p in src.rglob("*"):
            if p.is_file():
                with open(p, "rb") as body:
                    c.put_object(Bucket=bucket, Key=f"m/{p.relative_to(src).as_posix()}",
                                 Body=body)  # fmt: skip
        out["server_cpu_s_upload"] = round(proc_cpu_s(server) - cpu0, 2)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        s3_args = [f"s3://{bucket}/m/", "--source-option", f"endpoint_url={s3.endpoint_url}"]
        sources = {"disk": ([src], env), "s3": (s3_args, env),
                   "s3-s3fs": (s3_args, {**env, "WEIGHTVAULT_S3_READER": "fsspec"})}  # fmt: skip
        layouts = {"shared": (cpus, [])}
        if len(cpus) > 1:
            layouts["own-core"] = (cpus[-1:], ["taskset", "-c",
                                               ",".join(map(str, cpus[:-1]))])  # fmt: skip
        for layout, (server_cpus, prefix) in layouts.items():
            subprocess.run(["taskset", "-a", "-cp", ",".join(map(str, server_cpus)),
                            str(server)], check=True, capture_output=True)  # fmt: skip
            runs = out.setdefault(layout, {})
            for rep in range(args.reps):
                warm(src)
                for name, (where, e) in sources.items():
                    v = work / f"vault-{name}-{rep}"
                    cpu0 = proc_cpu_s(server)
                    r = timed(prefix + wv("seal", *where, "--vault", v, "--key", key, "--name",
                                          "m", "--json", "-q"), e)  # fmt: skip
                    r["server_cpu_s"] = round(proc_cpu_s(server) - cpu0, 2)
                    runs.setdefault(name, []).append(r)
                    subprocess.run(["rm", "-rf", str(v)], check=True)
            best = {n: min(rs, key=lambda r: r["wall_s"]) for n, rs in runs.items()}
            for n in ("s3", "s3-s3fs"):  # >= 0.8 is the target
                runs[f"speed_ratio_{n}"] = round(best["disk"]["wall_s"] / best[n]["wall_s"], 3)
                pairs = sorted(d["wall_s"] / b["wall_s"]
                               for d, b in zip(runs["disk"], runs[n], strict=True))
                runs[f"pair_ratios_{n}"] = [round(x, 3) for x in pairs]  # each rep's own pair
                runs[f"median_pair_ratio_{n}"] = round(statistics.median(pairs), 3)
                runs[f"{n}_MBps"] = round(args.size / MiB / best[n]["wall_s"], 1)
            runs["disk_MBps"] = round(args.size / MiB / best["disk"]["wall_s"], 1)
    return out


def s3_audit(args) -> dict:
    """A full audit of the 1 GiB model on an S3 replica (SeaweedFS on this machine): objects
    read by storage/s3read (one GET streamed from the socket) against s3fs's file objects
    (WEIGHTVAULT_S3_READER=fsspec), and a local replica for scale. Server CPU counted too."""
    from conftest import write_config
    from serve_bench import proc_cpu_s
    from support.servers import SeaweedS3

    work, src, key = _inputs(args)
    akey = work / "audit.key"
    if not akey.exists():
        subprocess.run(wv("keygen", akey), check=True, capture_output=True)
    out: dict = {"size": args.size}
    with SeaweedS3(base_dir=work) as s3:
        server = s3._proc.pid
        bucket = s3.make_bucket("bench-vault")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
               "XDG_STATE_HOME": str(work / "xdg")}  # fmt: skip
        cfgs = {"s3": write_config(work / "s3.toml", key, {"r": {
                    "url": f"s3://{bucket}/v",
                    "storage_options": {"endpoint_url": s3.endpoint_url}}}),
                "local": write_config(work / "local.toml", key, {"r": {
                    "url": str(work / "audit-vault")}})}  # fmt: skip
        for cfg in cfgs.values():
            subprocess.run(wv("-c", cfg, "seal", src, "--name", "m", "-q"), env=env,
                           check=True, capture_output=True)  # fmt: skip
        runs = {"local": (cfgs["local"], env), "s3": (cfgs["s3"], env),
                "s3-s3fs": (cfgs["s3"], {**env, "WEIGHTVAULT_S3_READER": "fsspec"})}
        for rep in range(args.reps):
            for name, (cfg, e) in runs.items():
                cpu0 = proc_cpu_s(server)
                r = timed(wv("-c", cfg, "audit", "--level", "full", "--key", akey, "--json",
                             "--state-dir", work / f"astate-{name}-{rep}"), e)  # fmt: skip
                r["server_cpu_s"] = round(proc_cpu_s(server) - cpu0, 2)
                out.setdefault(name, []).append(r)
                subprocess.run(["rm", "-rf", str(work / f"astate-{name}-{rep}")], check=True)
        best = {n: min(out[n], key=lambda r: r["wall_s"]) for n in runs}
        out["s3fs_over_s3read_cpu"] = round(best["s3-s3fs"]["cpu_s"] / best["s3"]["cpu_s"], 2)
        out["s3_MBps"] = round(args.size / MiB / best["s3"]["wall_s"], 1)
        out["s3-s3fs_MBps"] = round(args.size / MiB / best["s3-s3fs"]["wall_s"], 1)
        out["local_MBps"] = round(args.size / MiB / best["local"]["wall_s"], 1)
    return out


# -- the 10 TB planning and signing simulation (driver only; workers' results are synthetic)


def _fake_fs_module(n_files: int, file_size: int, chunk: int):
    """A fake fsspec filesystem: n safetensors files whose headers are generated (one bf16
    tensor per chunk-sized slab) and whose bytes are never read."""
    import fsspec
    from fsspec.spec import AbstractFileSystem

    per_file = file_size // chunk
    header = {"__metadata__": {"format": "pt"}}
    for t in range(per_file):
        header[f"layers.{t}.mlp.weight"] = {"dtype": "BF16", "shape": [chunk // 2],
                                            "data_offsets": [t * chunk, (t + 1) * chunk]}  # fmt: skip
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    head = len(hb).to_bytes(8, "little") + hb
    size = len(head) + per_file * chunk

    class Fake(AbstractFileSystem):
        protocol = "wvfake"

        def _info(self, i: int) -> dict:
            return {"name": f"model/model-{i:05d}-of-{n_files:05d}.safetensors", "size": size,
                    "type": "file", "ETag": f'"{i:032x}"'}  # fmt: skip

        def find(self, path, detail=False, **kw):
            d = {(x := self._info(i))["name"]: x for i in range(n_files)}
            return d if detail else list(d)

        def info(self, path, **kw):
            i = int(path.rsplit("model-", 1)[1][:5])
            return self._info(i)

        def cat_file(self, path, start=None, end=None, **kw):
            return head[start:end]

    fsspec.register_implementation("wvfake", Fake, clobber=True)
    return size


def plan10tb(args) -> dict:
    """Run in a child (`_plan10tb_child`) so its rusage is the driver's alone."""
    r = timed([sys.executable, __file__, "_plan10tb_child", "--chunks", str(args.chunks),
               "--work", args.work])  # fmt: skip
    doc = json.loads(Path(args.work, "plan10tb.json").read_text())
    return {**doc, **{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")}}


def _plan10tb_child(args) -> None:
    import hashlib

    from weightvault.archive import distributed
    from weightvault.archive.seal import SealOptions, seal
    from weightvault.executors import Executor
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    chunk = 64 * MiB
    per_file = 80  # 5 GiB shards, as large checkpoints ship
    n_files = args.chunks // per_file
    _fake_fs_module(n_files, per_file * chunk, chunk)
    t_plan = [0.0]

    class Synthetic(Executor):
        """Answers each task as a worker would, without bytes: the driver's work only."""

        def map(self, fn, items, *, label="task", on_done=None):
            t_plan[0] = time.process_time()
            for i, it in enumerate(items):
                if it[0] == "hash":
                    r = (it[2], hashlib.sha256(str(it[2]).encode()).hexdigest())
                else:
                    jobs = it[6]
                    res = [(j.index, {"chunk": {"offset": j.piece.offset,
                                                "length": j.piece.length,
                                                "codec": "fsplit-bf16" if j.piece.dtype else "zstd",
                                                "object": hashlib.sha256(
                                                    j.index.to_bytes(8, "big")).hexdigest()}
                                      | ({"dtype": j.piece.dtype} if j.piece.dtype else {}),
                                      "size": j.piece.length * 7 // 10, "file_sha256": None,
                                      "blake3": hashlib.sha256(  # format version 6
                                          j.index.to_bytes(9, "big")).hexdigest()})
                           for j in jobs]  # fmt: skip
                    r = (res, {}, [])
                if on_done:
                    on_done(i, r)
            return []

    work = Path(args.work)
    sk = keys.generate(work / "sim.key") if not (work / "sim.key").exists() else \
        keys.load_signing_key(work / "sim.key")
    store = LocalStore(work / "sim-vault", create=True)
    ex = Synthetic("local-cluster:1", "local", n_workers=1)
    assert distributed  # the real seal path: plan_tasks, coverage check, manifest, sign, commit
    c0 = time.process_time()
    r = seal("wvfake://model/", store, sk, SealOptions(name=f"sim{int(time.time())}",
                                                       executor=ex))  # fmt: skip
    c1 = time.process_time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    doc = {"chunks": args.chunks, "files": n_files, "bytes_in": r.bytes_in,
           "driver_cpu_s": round(c1 - c0, 2),
           "driver_cpu_ms_per_1000_chunks": round((c1 - c0) / args.chunks * 1e6, 1),
           "planning_cpu_s": round(t_plan[0] - c0, 2),
           "peak_rss_mib_self": round(ru.ru_maxrss / 1024, 1),
           "manifest_bytes": (store.root / "bundles" / r.name / "data" /
                              "weightvault.json").stat().st_size}  # fmt: skip
    Path(args.work, "plan10tb.json").write_text(json.dumps(doc))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["overhead", "s3-source", "s3-audit", "plan10tb",
                                     "_plan10tb_child"])  # fmt: skip
    ap.add_argument("--size", type=int, default=GiB)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--weed-arg", action="append", default=[],
                    help="s3-source: an extra flag for `weed mini` (a tuned store)")  # fmt: skip
    ap.add_argument("--chunks", type=int, default=163840)
    ap.add_argument("--work", default=None)
    ap.add_argument("--existing", action="store_true",
                    help="overhead: against a running scheduler + 2 workers (dask://)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))
    own = args.work is None
    if own:
        args.work = tempfile.mkdtemp(prefix="wv-cluster-bench-")
    if args.what == "_plan10tb_child":
        _plan10tb_child(args)
        return
    try:
        res = {"overhead": overhead, "s3-source": s3_source, "s3-audit": s3_audit,
               "plan10tb": plan10tb}[args.what](args)  # fmt: skip
    finally:
        if own:  # a 1 GiB model and its vaults: a GB or more left in /tmp otherwise
            shutil.rmtree(args.work, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
