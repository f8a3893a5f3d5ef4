#!/usr/bin/env python3
"""Versions that share storage (issue 17): what a new version costs.

    python benchmarks/versions_bench.py [--size 1GiB] [--json OUT]

A 4-shard bf16 model (each shard a transformer-like safetensors file of normal(0, 0.02)
weights, see run.py) is sealed as v1; v2 changes one 16 MiB tensor of one shard and is sealed
with `--supersedes v1`. Then the record of v2 is amended (an interview transcript), eight more
amendments make ten versions, and a full audit reads the vault. Every step runs the real CLI as
a child process (run.py's `measure`: wall, CPU, peak RSS of the child). Targets (issue 17):
v2 growth <= 1.05 x the stored size of the changed chunks + 1 MiB; seal v2 <= 0.5 x seal v1;
amend < 2 s with growth = record bytes + metadata; the full audit of 10 versions reads each
shared object once. Results: benchmarks/results/versions.json and --json OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import GiB, MiB, dir_size, human, log, make_bf16_model, measure, parse_size, warm  # noqa: E402

WV = [sys.executable, "-m", "weightvault.cli"]


def shards(dest: Path, size: int) -> Path:
    """Four shards of size/4 each, from run.py's generator (different seeds)."""
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        d = make_bf16_model(dest.parent / f".gen-{dest.name}-{i}", size // 4, seed=i)
        target = dest / f"model-{i + 1:05d}-of-00004.safetensors"
        if not target.exists():
            shutil.copy(d / "model.safetensors", target)
    (dest / "config.json").write_text('{"model_type": "bench", "shards": 4}')
    return dest


def change_one_tensor(src: Path, dest: Path, shard: int = 2) -> tuple[str, int]:
    """dest = src with one tensor of one shard changed (every element's low bit flipped):
    the largest tensor of at most 16 MiB. Returns (tensor, bytes)."""
    shutil.copytree(src, dest)
    p = dest / f"model-{shard:05d}-of-00004.safetensors"
    with open(p, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        cands = [(v["data_offsets"][1] - v["data_offsets"][0], k) for k, v in header.items()
                 if k != "__metadata__" and v["data_offsets"][1] - v["data_offsets"][0] <= 16 * MiB]  # fmt: skip
        size, name = max(cands)
        start = base + header[name]["data_offsets"][0]
        f.seek(start)
        data = bytearray(f.read(size))
        for i in range(0, len(data), 2):
            data[i] ^= 1
        f.seek(start)
        f.write(data)
    return name, size


def pool(vault: Path) -> int:
    return dir_size(vault / "objects")


def manifest(vault: Path, name: str) -> dict:
    return json.loads((vault / "bundles" / name / "data/weightvault.json").read_bytes())


def step(label: str, cmd: list, results: dict) -> dict:
    r = measure([*WV, *cmd])
    if r["rc"] != 0:
        raise SystemExit(f"{label} failed: {r['stderr']}")
    log(f"{label}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, {r['peak_rss_mib']} MiB")
    results["steps"][label] = {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mib",
                                                 "other_cpu_s")}  # fmt: skip
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GiB)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="wv-versions-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"size": args.size, "steps": {}}
    try:
        v1 = shards(work / "v1", args.size)
        v2 = work / "v2"
        shutil.rmtree(v2, ignore_errors=True)
        tensor, tbytes = change_one_tensor(v1, v2)
        results["changed_tensor"] = {"name": tensor, "bytes": tbytes}
        vault = work / "vault"
        shutil.rmtree(vault, ignore_errors=True)
        key = work / "bench.key"
        if not key.exists():
            measure([*WV, "keygen", key])
        warm(v1, v2)
        step("seal v1", ["seal", v1, "--vault", vault, "--key", key, "--name", "m", "-q"],
             results)  # fmt: skip
        before_pool, before_vault = pool(vault), dir_size(vault)
        warm(v2)
        step("seal v2 --supersedes", ["seal", v2, "--vault", vault, "--key", key, "--name", "m.2",
                                      "--supersedes", "m", "-q"], results)  # fmt: skip
        m1, m2 = manifest(vault, "m"), manifest(vault, "m.2")
        old = {o["name"] for o in m1["objects"]}
        changed = sum(o["size"] for o in m2["objects"] if o["name"] not in old)
        growth = dir_size(vault) - before_vault
        results["v2"] = {
            "stored_v1": before_pool, "pool_growth": pool(vault) - before_pool,
            "vault_growth": growth, "changed_chunks_stored": changed,
            "target_growth": int(1.05 * changed + MiB),
            "growth_ok": growth <= 1.05 * changed + MiB,
            "seal_ratio": round(results["steps"]["seal v2 --supersedes"]["wall_s"]
                                / results["steps"]["seal v1"]["wall_s"], 3),
        }  # fmt: skip
        results["v2"]["seal_ok"] = results["v2"]["seal_ratio"] <= 0.5
        log(f"v2: vault grew {human(growth)} for {human(changed)} of changed chunks "
            f"(v1 stored {human(before_pool)}); seal v2 / seal v1 = {results['v2']['seal_ratio']}")
        # amend the record: an interview transcript
        interview = work / "later.jsonl"
        interview.write_text("".join(
            json.dumps({"role": r, "content": f"turn {i}", "time": "2026-01-05T10:00:00Z"}) + "\n"
            for i, r in enumerate(["interviewer", "model"] * 50)))  # fmt: skip
        before = dir_size(vault)
        step("amend", ["amend", "m.2", "--vault", vault, "--key", key, "--interview",
                       interview, "--name", "m.3"], results)  # fmt: skip
        meta = dir_size(vault / "bundles/m.3") - interview.stat().st_size
        results["amend"] = {"vault_growth": dir_size(vault) - before,
                            "record_bytes": interview.stat().st_size, "metadata_bytes": meta,
                            "pool_growth": 0 if pool(vault) == before_pool + results["v2"][
                                "pool_growth"] else pool(vault) - before_pool}  # fmt: skip
        results["amend"]["time_ok"] = results["steps"]["amend"]["wall_s"] < 2
        report = work / "report.md"
        prev = "m.3"
        for i in range(4, 11):
            report.write_text(f"# Report, revision {i}\n")
            r = measure([*WV, "amend", prev, "--vault", vault, "--key", key, "--report", report,
                         "--name", f"m.{i}"])  # fmt: skip
            assert r["rc"] == 0, r["stderr"]
            prev = f"m.{i}"
        akey = work / "audit.key"
        if not akey.exists():
            measure([*WV, "keygen", akey])
        state = work / "state"
        shutil.rmtree(state, ignore_errors=True)
        r = step("full audit of 10 versions", ["audit", "--vault", vault, "--level", "full",
                                               "--trust", f"{key}.pub", "--key", akey,
                                               "--state-dir", state, "--json"], results)  # fmt: skip
        rec = json.loads(r["stdout"])["replicas"][0]["record"]
        results["audit"] = {"versions": 10, "bytes_read": rec["bytes_read"],
                            "pool_bytes": pool(vault),
                            "ratio": round(rec["bytes_read"] / pool(vault), 3)}  # fmt: skip
        log(f"audit of 10 versions read {human(rec['bytes_read'])}; the pool holds "
            f"{human(pool(vault))}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = json.dumps(results, indent=2)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "versions.json").write_text(out + "\n")
    if args.json:
        args.json.write_text(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
