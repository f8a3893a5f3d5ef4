"""What an audit's failures cost: peak RSS and time of recording N failures (a replica that lost
N objects) as a version 1 record (every failure in memory and in the signed record) and as a
version 2 record (the first 100 in the record, the rest streamed to a digest-named file).

Each case runs in a fresh process (peak RSS is per process): it builds the failures the way
audit_replica does, appends the record to a chain on a local replica (schema validation,
signing, both copies written) and reads the chain's head back as the next audit would.

    python benchmarks/audit_failures_bench.py [--failures 320000]

With `--bundles N` it records an audit of a replica holding N bundles (and no failures)
instead, as a version 2 record (every bundle inline) and a version 3 record (FORMAT.md 8.2:
the first 1,000 inline, all of them in a digest-named file).

    python benchmarks/audit_failures_bench.py --bundles 600000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _failure(i: int) -> dict:
    return {"object": f"objects/{i:064x}", "bundle": "model", "kind": "missing",
            "expected": f"{i:064x}", "found": "missing"}  # fmt: skip


def _base(version: int) -> dict:
    return {
        "format": "weightvault-audit", "format_version": version, "eventType": "fixity check",
        "eventDateTime": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:00:01Z",
        "eventOutcome": "fail", "replica": {"name": "r", "url": "/r"}, "level": "metadata",
        "agent": {"tool": {"name": "weightvault", "version": "0"}, "key": "0" * 64},
        "objects_checked": 0, "bytes_read": 0, "bundles": [], "transient": [],
        "coverage": {"cycle_days": None, "objects": 0, "verified_within_cycle": 0,
                     "oldest_age_seconds": None},
    }  # fmt: skip


def _bundle(i: int) -> dict:
    return {"name": f"model-{i:08d}", "bundle": f"{i:064x}", "state": "intact"}


def one(version: int, n: int, what: str = "failures") -> dict:
    from weightvault.archive import auditlog
    from weightvault.archive.auditlog import BoundedList, Chain, empty_list
    from weightvault.errors import CorruptData
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    work = Path(tempfile.mkdtemp(prefix="wv-auditbench-"))
    key = keys.generate(work / "a.key")
    store = LocalStore(work / "replica", create=True)
    chain = Chain(work / "state", store, key.public.key_id)
    t0 = time.perf_counter()
    if what == "bundles":
        rec = {**_base(version), **empty_list("failures"), "transient_total": 0,
               **empty_list("repairs")}  # fmt: skip
        files = None
        if version == 2:
            rec["bundles"] = [_bundle(i) for i in range(n)]
        else:
            bl = BoundedList(chain.local, "bundles")
            for i in range(n):
                bl.add(_bundle(i))
            path = bl.finish()
            rec |= bl.fields()
            files = {"bundles": path} if path else None
    elif version == 1:
        failures = [_failure(i) for i in range(n)]
        rec, files = {**_base(1), "failures": failures, "repairs": []}, None
    else:
        fl = BoundedList(chain.local)
        for i in range(n):
            fl.add(_failure(i))
        path = fl.finish()
        rec = {**_base(2), **fl.fields(), "transient_total": 0, **empty_list("repairs")}
        files = {"failures": path} if path else None
    entry = chain.append(rec, key, files)
    t1 = time.perf_counter()
    try:
        readable = Chain(work / "state", store).verify([key.public])[1] == []
    except CorruptData:
        readable = False
    t2 = time.perf_counter()
    size = len(entry.raw)
    listed = sum(1 for _ in Chain(work / "state", store, key.public.key_id).full_list(
        entry, what)) if readable else 0  # fmt: skip
    shutil.rmtree(work)
    return {"version": version, what: n, "record_bytes": size,
            "record_limit": auditlog.MAX_RECORD, "chain_readable": readable,
            "full_list_read": listed, "write_s": round(t1 - t0, 2),
            "verify_s": round(t2 - t1, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--failures", type=int, default=320_000)
    ap.add_argument("--bundles", type=int, help="N bundles and no failures (version 2 vs 3)")
    ap.add_argument("--one", type=int, choices=(1, 2, 3), help=argparse.SUPPRESS)
    a = ap.parse_args()
    what, n = ("bundles", a.bundles) if a.bundles else ("failures", a.failures)
    if a.one:
        print(json.dumps(one(a.one, n, what)))
        return
    for v in ((2, 3) if a.bundles else (1, 2)):
        p = subprocess.run([sys.executable, __file__, "--one", str(v), f"--{what}", str(n)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        print(p.stdout.strip())


if __name__ == "__main__":
    main()
