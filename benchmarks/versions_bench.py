#!/usr/bin/env python3
"""Versions that share storage (issue 17): what a new version costs.

    python benchmarks/versions_bench.py [--size 1GiB] [--repeat 3] [--s3] [--encrypted]
                                        [--json OUT]

A 4-shard bf16 model (each shard a transformer-like safetensors file of normal(0, 0.02)
weights, see run.py) is sealed as v1; v2 changes one 16 MiB tensor of one shard and is sealed
with `--supersedes v1`. Then the record of v2 is amended (an interview transcript), eight more
amendments make ten versions, and a full audit reads the vault. Every step runs the real CLI as
a child process (run.py's `measure`: wall, CPU, peak RSS of the child). Targets (issue 17):
v2 growth <= 1.05 x the stored size of the changed chunks + 1 MiB; seal v2 <= 0.5 x seal v1;
amend < 2 s with growth = record bytes + metadata; the full audit of 10 versions reads each
shared object once. The v1/v2 pair runs --repeat times (median ratio: the machine is shared),
and with --s3 as well with the vault on a SeaweedFS S3 server on loopback.
Results: benchmarks/results/versions.json and --json OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (  # noqa: E402
    GiB,
    MiB,
    dir_size,
    human,
    log,
    make_bf16_model,
    measure,
    parse_size,
    wait_quiet,
    warm,
)

QUIET = [0.0]  # --wait-quiet: seconds to wait, before each measured seal, for an idle machine

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


def pair(label: str, v1: Path, v2: Path, key: Path, vault_args: list, size_of, results: dict,
         env: dict | None = None, enc: tuple[list, list] = ([], [])) -> dict:
    """Seal v1 into an empty vault, then v2 --supersedes v1: walls, ratio and growth. `enc`:
    extra arguments of the two seals (encryption, and what opens v1)."""
    wait_quiet(QUIET[0])
    r1 = measure([*WV, "seal", v1, *vault_args, "--key", key, "--name", "m", "-q", *enc[0]],
                 env=env)  # fmt: skip
    if r1["rc"] != 0:
        raise SystemExit(f"{label} seal v1 failed: {r1['stderr']}")
    before_pool, before_vault = size_of()
    warm(v2)
    wait_quiet(QUIET[0])
    r2 = measure([*WV, "seal", v2, *vault_args, "--key", key, "--name", "m.2", "--supersedes",
                  "m", "--json", *enc[1]], env=env)  # fmt: skip
    if r2["rc"] != 0:
        raise SystemExit(f"{label} seal v2 failed: {r2['stderr']}")
    s2 = json.loads(r2["stdout"])
    after_pool, after_vault = size_of()
    out = {"seal_v1": {k: r1[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")},
           "seal_v2": {k: r2[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")},
           "ratio": round(r2["wall_s"] / r1["wall_s"], 3),
           "files_reused": s2["files_reused"], "chunks_reused": s2.get("chunks_reused"),
           "stored_v1": before_pool, "pool_growth": after_pool - before_pool,
           "vault_growth": after_vault - before_vault, "bytes_new": s2["bytes_new"]}  # fmt: skip
    log(f"{label}: seal v1 {r1['wall_s']:.2f} s ({r1['cpu_s']:.2f} CPU), v2 {r2['wall_s']:.2f} s "
        f"({r2['cpu_s']:.2f} CPU): ratio {out['ratio']}; {s2.get('chunks_reused')} chunks and "
        f"{s2['files_reused']} files reused; vault grew {human(out['vault_growth'])}")
    return out


def summarize(runs: list[dict], changed: int) -> dict:
    """Median ratio of the pairs (each pair ran back to back: the machine is shared, and the
    same seal moved 15-25 % between minutes, FACTS.md), and the growth target."""
    ratios = sorted(r["ratio"] for r in runs)
    growth = max(r["vault_growth"] for r in runs)
    return {"runs": runs, "seal_ratio": ratios[len(ratios) // 2],
            "seal_ok": ratios[len(ratios) // 2] <= 0.5, "changed_chunks_stored": changed,
            "vault_growth": growth, "target_growth": int(1.05 * changed + MiB),
            "growth_ok": growth <= 1.05 * changed + MiB}  # fmt: skip


def s3_pairs(args, work: Path, v1: Path, v2: Path, key: Path, changed_of) -> dict:
    """The same v1/v2 pairs with the vault on SeaweedFS S3 (tests/support/servers.py)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.servers import SeaweedS3

    runs = []
    with SeaweedS3(base_dir=work) as s3:
        c = s3.client()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        for rep in range(args.repeat):
            bucket = s3.make_bucket(f"bench-versions-{rep}")
            cfg = work / f"s3-{rep}.toml"
            cfg.write_text(f'[replicas.cloud]\nurl = "s3://{bucket}/vault"\n'
                           f'storage_options = {{ endpoint_url = "{s3.endpoint_url}" }}\n')

            def size_of(bucket=bucket) -> tuple[int, int]:
                pool = total = 0
                for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix="vault/"):
                    for o in page.get("Contents", []):
                        total += o["Size"]
                        if o["Key"].startswith("vault/objects/"):
                            pool += o["Size"]
                return pool, total

            runs.append(pair(f"s3 run {rep + 1}", v1, v2, key, ["-c", cfg], size_of, {}, env))
            runs[-1]["changed_chunks_stored"] = changed_of(c, bucket)
    return summarize(runs, max(r["changed_chunks_stored"] for r in runs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GiB)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="v1/v2 pairs per store (median)")
    ap.add_argument("--s3", action="store_true", help="also with the vault on SeaweedFS S3")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each seal, wait up to S seconds for an idle machine")
    ap.add_argument("--formats", default="6",
                    help="clear format versions to pair locally, e.g. 6,4 (4: no chunk digests, "
                         "so v2 compares a changed file's chunks by decoding v1's objects)")
    ap.add_argument("--encrypted", action="store_true",
                    help="also encrypted (format version 5: the lineage shares its data key)")
    args = ap.parse_args(argv)
    QUIET[0] = args.wait_quiet
    work = args.work or Path(tempfile.mkdtemp(prefix="wv-versions-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"size": args.size, "steps": {}}
    try:
        v1 = shards(work / "v1", args.size)
        v2 = work / "v2"
        shutil.rmtree(v2, ignore_errors=True)
        tensor, tbytes = change_one_tensor(v1, v2)
        results["changed_tensor"] = {"name": tensor, "bytes": tbytes}
        key = work / "bench.key"
        if not key.exists():
            measure([*WV, "keygen", key])
        warm(v1, v2)
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        by_format: dict[str, list] = {f: [] for f in formats}
        for rep in range(args.repeat):  # the formats alternate, so both see the same minutes
            for fmt in formats:
                vault = work / f"vault-v{fmt}"
                shutil.rmtree(vault, ignore_errors=True)
                warm(v1)
                fv = ["--format-version", fmt]
                by_format[fmt].append(pair(
                    f"local format {fmt} run {rep + 1}", v1, v2, key, ["--vault", vault],
                    lambda vault=vault: (pool(vault), dir_size(vault)), results,
                    enc=(fv, fv)))  # fmt: skip
        for fmt in formats:
            vault = work / f"vault-v{fmt}"
            m1, m2 = manifest(vault, "m"), manifest(vault, "m.2")
            old = {o["name"] for o in m1["objects"]}
            changed = sum(o["size"] for o in m2["objects"] if o["name"] not in old)
            label = "v2" if fmt == formats[0] else f"v2_format{fmt}"
            results[label] = summarize(by_format[fmt], changed)
            log(f"local, format {fmt}: median seal v2 / seal v1 = "
                f"{results[label]['seal_ratio']}; vault grew "
                f"{human(results[label]['vault_growth'])} for {human(changed)} of changed chunks")
        vault = work / f"vault-v{formats[0]}"
        if args.encrypted:
            from pyrage import x25519

            ident = x25519.Identity.generate()
            idfile = work / "reader.agekey"
            idfile.write_text(f"{ident}\n")
            idfile.chmod(0o600)
            to = ["--encrypt-to", str(ident.to_public())]
            eruns = []
            for rep in range(args.repeat):
                evault = work / "vault-enc"
                shutil.rmtree(evault, ignore_errors=True)
                eruns.append(pair(f"encrypted run {rep + 1}", v1, v2, key, ["--vault", evault],
                                  lambda evault=evault: (pool(evault), dir_size(evault)), results,
                                  enc=(to, [*to, "--identity", idfile])))  # fmt: skip
            e1, e2 = manifest(evault, "m"), manifest(evault, "m.2")
            eold = {o["name"] for o in e1["objects"]}
            results["v2_encrypted"] = summarize(eruns, sum(o["size"] for o in e2["objects"]
                                                           if o["name"] not in eold))  # fmt: skip
            log(f"encrypted: median seal v2 / seal v1 = {results['v2_encrypted']['seal_ratio']}; "
                f"vault grew {human(results['v2_encrypted']['vault_growth'])}")
        if args.s3:
            def changed_of(c, bucket: str) -> int:
                def doc(n: str) -> dict:
                    return json.loads(c.get_object(Bucket=bucket, Key=f"vault/bundles/{n}/data/"
                                                   "weightvault.json")["Body"].read())  # fmt: skip
                seen = {o["name"] for o in doc("m")["objects"]}
                return sum(o["size"] for o in doc("m.2")["objects"] if o["name"] not in seen)

            results["v2_s3"] = s3_pairs(args, work, v1, v2, key, changed_of)
            log(f"s3: median seal v2 / seal v1 = {results['v2_s3']['seal_ratio']}")
        pool_v2 = pool(vault)
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
                            "pool_growth": pool(vault) - pool_v2}  # fmt: skip
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
