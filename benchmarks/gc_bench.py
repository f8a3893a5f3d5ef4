"""What gc's walk of the object pool costs as the pool grows: peak RSS and time of deciding,
for every object in a pool of N, whether a signed manifest names it (N - 1,000 named, 1,000
orphans), the way gc did it before (the named keys in a Python set, the pool's listing as one
dict of key -> (size, mtime)) and the way it does now (the named keys in gc's temporary SQLite
set, the listing streamed by Store.iter_times).

The pool is synthetic (a store whose listing generates keys: a real pool of a million files
takes longer to create than to collect), so this measures gc's own memory and CPU, not the
backend's listing. Each case runs in a fresh process (peak RSS is per process).

    python benchmarks/gc_bench.py [--objects 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ORPHANS = 1_000


def _key(i: int) -> str:
    return f"objects/{i:064x}"


def _listing(n: int):
    t = time.time() - 86400
    for i in range(n):
        yield _key(i), 64 << 20, t


def _case(mode: str, n: int) -> dict:
    from weightvault.archive.gc import _HEX64
    from weightvault.archive.spill import KeySet

    t0 = time.perf_counter()
    named_keys = (_key(i) for i in range(ORPHANS, n))  # as the manifests name them
    if mode == "set+dict":
        named: set[str] | KeySet = set(named_keys)
        listing = {k: (s, t) for k, s, t in _listing(n)}.items()
        walk = ((k, s, t) for k, (s, t) in listing)
    else:
        named = KeySet()
        named.update(named_keys)
        walk = _listing(n)
    t1 = time.perf_counter()
    orphans, seen = [], set()
    for key, size, _ in walk:
        if key in seen or not _HEX64.match(key.rsplit("/", 1)[-1]) or key in named:
            continue
        seen.add(key)
        orphans.append((key, size))
    t2 = time.perf_counter()
    assert len(orphans) == ORPHANS
    return {"mode": mode, "objects": n, "name_s": round(t1 - t0, 2), "walk_s": round(t2 - t1, 2),
            "us_per_object": round((t2 - t0) / n * 1e6, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(_case(a.case, a.objects)))
        return
    rows = []
    for mode in ("set+dict", "sqlite+stream"):
        out = subprocess.run([sys.executable, __file__, "--case", mode, "--objects",
                              str(a.objects)], capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout))
    print(f"{'mode':<15}{'objects':>10}{'name s':>8}{'walk s':>8}{'us/obj':>8}{'peak RSS':>10}")
    for r in rows:
        print(f"{r['mode']:<15}{r['objects']:>10}{r['name_s']:>8}{r['walk_s']:>8}"
              f"{r['us_per_object']:>8}{r['peak_rss_mib']:>7} MiB")
    old, new = rows
    print(f"memory new/old {new['peak_rss_mib'] / old['peak_rss_mib']:.2f}, "
          f"time new/old {new['us_per_object'] / old['us_per_object']:.2f}")


if __name__ == "__main__":
    main()
