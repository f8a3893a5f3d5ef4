"""The preservation log's costs (issue 16): append latency on a local vault, proving one entry
in a 1,000,000-entry log (time and tiles read), a year of daily audits' size, and the log's
share of sealing the real MiniLM.

    python benchmarks/log_bench.py [--entries 1000000] [--appends 200] [--json out.json]

Scratch goes to /dev/shm when it exists (tmpfs), else the system temp dir; it is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from weightvault.format import keys  # noqa: E402
from weightvault.log import check, note, tlog  # noqa: E402
from weightvault.log import statements as st  # noqa: E402
from weightvault.log.store import LogStore, State, append, log_verifier  # noqa: E402
from weightvault.storage.store import LocalStore  # noqa: E402


def scratch(base: str | None) -> Path:
    root = base or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    return Path(tempfile.mkdtemp(prefix="wv-logbench-", dir=root))


def du(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def bench_append(d: Path, key, n: int, disk: Path | None) -> dict:
    out = {}
    for label, where in (("tmpfs", d / "append"), ("disk", disk)):
        if where is None:
            continue
        store = LocalStore(where, create=True)
        log = LogStore(store, log_verifier(key.public.raw))
        state = State.load(where / "state", "bench")
        times = []
        for i in range(n):
            s = st.replicated(hashlib.sha256(b"%d" % i).hexdigest(), f"model-{i}", "primary")
            t = time.perf_counter()
            append(log, key, [s], state)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[label] = {"appends": n, "median_ms": round(statistics.median(times), 2),
                      "p95_ms": round(times[int(0.95 * n) - 1], 2), "max_ms": round(times[-1], 2)}  # fmt: skip
        shutil.rmtree(where, ignore_errors=True)
    return out


def bench_million(d: Path, key, n: int, proofs: int) -> dict:
    """Tiles of an n-entry log written to disk (entry bundles are not needed to prove), a
    signed checkpoint, then inclusion proofs from a cold LogStore each."""
    t = time.perf_counter()
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    edge, changed = tlog.extend(0, {}, leaves)
    build = time.perf_counter() - t
    root = tlog.Tree(n, lambda lv, i, w: b"".join(edge[lv])).root()
    vault = d / "million"
    LocalStore(vault, create=True)
    for lv, i, h in changed:
        p = vault / "log" / tlog.tile_path(lv, i, len(h))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"".join(h))
    ver = log_verifier(key.public.raw)
    cp = note.Checkpoint(ver.name, n, root)
    sig = note.sign(cp.text(), cp.origin, key.public.raw, key.sign_raw)
    (vault / "log/checkpoint").write_bytes(note.Note(cp.text(), (sig,)).encode())
    tiles_bytes = du(vault / "log")
    rnd = random.Random(1)
    times, reads = [], []
    for _ in range(proofs):
        idx = rnd.randrange(n)
        log = LogStore(LocalStore(vault), ver)  # cold: no tile cached
        t = time.perf_counter()
        head = log.head(scan=False)
        path = log.tree(n).inclusion(idx)
        assert tlog.verify_inclusion(leaves[idx], idx, n, path, head.root)
        times.append((time.perf_counter() - t) * 1000)
        reads.append(log.tiles_read)
    shutil.rmtree(vault, ignore_errors=True)
    return {"entries": n, "tiles_written": len(changed), "tiles_mb": round(tiles_bytes / 1e6, 1),
            "build_s": round(build, 2), "proofs": proofs,
            "proof_median_ms": round(statistics.median(times), 2),
            "proof_max_ms": round(max(times), 2), "tiles_read_max": max(reads),
            "tiles_read_median": statistics.median(reads)}  # fmt: skip


def bench_year(d: Path, key, bundles: int, replicas: int) -> dict:
    """365 daily audits of `replicas` replicas, one `audited` statement per replica per day
    (as `weightvault audit` appends), written for real; and what per-bundle statements would
    cost, from the measured size of one."""
    vault = d / "year"
    log = LogStore(LocalStore(vault, create=True), log_verifier(key.public.raw))
    seals = [st.sealed(hashlib.sha256(b"%d" % b).hexdigest(), f"model-{b}", 10**10, "a" * 64, 3,
                       False) for b in range(bundles)]  # fmt: skip
    reps = [st.replicated(hashlib.sha256(b"%d" % b).hexdigest(), f"model-{b}", f"replica-{r}")
            for b in range(bundles) for r in range(replicas)]  # fmt: skip
    for i in range(0, len(seals), 250):
        append(log, key, seals[i : i + 250], None)
    for i in range(0, len(reps), 250):
        append(log, key, reps[i : i + 250], None)
    base = du(vault / "log")
    t = time.perf_counter()
    for day in range(365):
        stamp = time.strftime("%Y-%m-%dT03:00:00Z", time.gmtime(1798761600 + day * 86400))
        stmts = [st.make("audited", time=stamp, replica=f"replica-{r}", level="sample",
                         result="ok", bundles=bundles, objects=bundles * 40,
                         bytes=bundles * 10**8, damage=0,
                         record=hashlib.sha256(b"%d/%d" % (day, r)).hexdigest())
                 for r in range(replicas)]  # fmt: skip
        append(log, key, stmts, None)
    secs = time.perf_counter() - t
    total = du(vault / "log")
    per_bundle = len(st.make("audited", replica="replica-0", level="sample", result="ok",
                             bundles=1, objects=40, bytes=10**8, damage=0, record="a" * 64))
    n_pb = 365 * bundles * replicas
    # entry + 2-byte prefix + its leaf hash + upper tiles (1/255 more) per statement
    per_bundle_mb = n_pb * (per_bundle + 2 + 32 * 256 / 255) / 1e6
    rep = check.verify(log)
    shutil.rmtree(vault, ignore_errors=True)
    return {"bundles": bundles, "replicas": replicas, "seal_and_replicated_mb": round(base / 1e6, 2),
            "year_of_audits_mb": round((total - base) / 1e6, 2), "log_total_mb": round(total / 1e6, 2),
            "entries": rep.entries, "appends_per_second": round(365 / secs, 1),
            "if_one_statement_per_bundle_per_audit_mb": round(per_bundle_mb, 1)}  # fmt: skip


def bench_seal_share(d: Path, keypath: Path) -> dict | None:
    """Seal the real MiniLM (library call, one replica) with and without the log's append."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from support.model import ensure_minilm

        model = ensure_minilm()
    except Exception as e:  # noqa: BLE001 - the model is optional here
        return {"skipped": str(e)}
    from weightvault.archive.seal import SealOptions
    from weightvault.archive.seal import seal as do_seal

    key = keys.load_signing_key(keypath)
    seals, appends = [], []
    for i in range(3):
        v = d / f"seal{i}"
        store = LocalStore(v, create=True)
        t = time.perf_counter()
        r = do_seal(str(model), store, key, SealOptions(name="minilm"))
        seals.append(time.perf_counter() - t)
        log = LogStore(store, log_verifier(key.public.raw))
        t = time.perf_counter()
        append(log, key, [st.sealed(r.bundle, r.name, r.bytes_stored, key.public.key_id, 3,
                                    False), st.replicated(r.bundle, r.name, "vault")],
               State.load(v / "state", "x"))  # fmt: skip
        appends.append(time.perf_counter() - t)
        shutil.rmtree(v, ignore_errors=True)
    s, a = statistics.median(seals), statistics.median(appends)
    return {"seal_s": round(s, 3), "append_ms": round(a * 1000, 2), "share_pct": round(100 * a / s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--proofs", type=int, default=50)
    ap.add_argument("--appends", type=int, default=200)
    ap.add_argument("--bundles", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--dir", help="scratch directory [default: /dev/shm]")
    ap.add_argument("--disk", help="also time appends on this (real disk) directory")
    ap.add_argument("--no-seal", action="store_true", help="skip sealing MiniLM")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    d = scratch(a.dir)
    try:
        key = keys.generate(d / "bench.key")
        disk = Path(tempfile.mkdtemp(prefix="wv-logbench-", dir=a.disk)) if a.disk else None
        res = {"append": bench_append(d, key, a.appends, disk)}
        print(json.dumps(res), flush=True)
        res["prove"] = bench_million(d, key, a.entries, a.proofs)
        print(json.dumps(res["prove"]), flush=True)
        res["year"] = bench_year(d, key, a.bundles, a.replicas)
        print(json.dumps(res["year"]), flush=True)
        if not a.no_seal:
            res["seal"] = bench_seal_share(d, d / "bench.key")
            print(json.dumps(res["seal"]), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if a.disk and disk:
            shutil.rmtree(disk, ignore_errors=True)


if __name__ == "__main__":
    main()
