"""Access without restore (issue 18): `weightvault serve` against `weightvault restore`.

    python benchmarks/serve_bench.py                 # 1 GiB synthetic bf16, 3 rounds
    python benchmarks/serve_bench.py --size 64MiB --rounds 1 --json out.json

Measures, on one sealed bundle of the synthetic bf16 model of benchmarks/run.py:

- restore: `weightvault restore` wall time (the CLI as a user runs it, start-up included) and
  peak RSS;
- serve: stock huggingface_hub `snapshot_download` (in a client process, HF_ENDPOINT pointed at
  a running `weightvault serve`) timed around the call, every file then checked against the
  input's SHA-256; the server's peak RSS (VmHWM from /proc after all rounds);
- the ratio of the two throughputs (target >= 0.8);
- one tensor of about 64 MiB (`lm_head.weight`) read in place: time to its first byte and the
  bytes moved out of the store (the storage layer's counters), through the Python API, and the
  time to first byte of the same range over HTTP from the running server.

Rounds alternate restore and serve; the best of each is kept (every round is in the JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    make_bf16_model,  # noqa: E402
    measure,
    parse_size,
    sha256_file,
    warm,
)

MiB = 1 << 20
CLIENT = r"""
import sys, time
from huggingface_hub import snapshot_download
t0 = time.perf_counter()
d = snapshot_download(sys.argv[1], cache_dir=sys.argv[2])
print(time.perf_counter() - t0, d)
"""


def wv(*args) -> list[str]:
    return [sys.executable, "-m", "weightvault.cli", *map(str, args)]


def start_server(vault: Path, pub: Path) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(wv("serve", "--vault", vault, "--trust", pub, "--bind", "127.0.0.1:0"),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(120):
        p.kill()
        raise SystemExit("serve did not start")
    m = re.search(r"at (http://127\.0\.0\.1:\d+)", p.stdout.readline())
    if not m:
        p.kill()
        raise SystemExit("serve printed no URL")
    return p, m.group(1)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a running process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None, help="scratch dir, kept (default: a temp dir)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    own = args.work is None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wv-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(args, work)
    finally:
        if own:  # a 1 GiB model, its vault and caches: 1.7 GB was left in /tmp before
            shutil.rmtree(work, ignore_errors=True)


def _bench(args, work: Path) -> int:
    size = parse_size(args.size)
    src = make_bf16_model(work / "model", size)
    weights = src / "model.safetensors"
    want = sha256_file(weights)
    key = work / "bench.key"
    if not key.exists():
        subprocess.run(wv("keygen", key), check=True, capture_output=True)
    vault = work / "vault"
    if vault.exists():
        shutil.rmtree(vault)
    subprocess.run(wv("seal", src, "--vault", vault, "--key", key, "--name", "bench", "--quiet"),
                   check=True)  # fmt: skip
    pub = Path(f"{key}.pub")
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1",
           "HF_HOME": str(work / "hf-home")}  # fmt: skip
    rounds = []
    server, url = start_server(vault, pub)
    try:
        env["HF_ENDPOINT"] = url
        for i in range(args.rounds):
            warm(vault)
            dest = work / "restored"
            shutil.rmtree(dest, ignore_errors=True)
            r = measure(wv("restore", "bench", dest, "--vault", vault, "--trust", pub, "--quiet"))
            assert r["rc"] == 0, r["stderr"]
            assert sha256_file(dest / "model.safetensors") == want
            shutil.rmtree(dest)
            warm(vault)
            cache = work / "hf-cache"
            shutil.rmtree(cache, ignore_errors=True)
            cpu0 = proc_cpu_s(server.pid)
            c = measure([sys.executable, "-c", CLIENT, "weightvault/bench", cache], env=env)
            server_cpu = round(proc_cpu_s(server.pid) - cpu0, 2)
            assert c["rc"] == 0, c["stderr"]
            secs, snap = c["stdout"].split()
            assert sha256_file(Path(snap) / "model.safetensors") == want
            shutil.rmtree(cache)
            rounds.append({"restore_wall_s": r["wall_s"], "restore_rss_mib": r["peak_rss_mib"],
                           "restore_cpu_s": r["cpu_s"], "server_cpu_s": server_cpu,
                           "client_cpu_s": c["cpu_s"], "load_1min": os.getloadavg()[0],
                           "serve_download_s": round(float(secs), 4),
                           "client_wall_s": c["wall_s"], "client_rss_mib": c["peak_rss_mib"]})  # fmt: skip
            print(f"round {i + 1}: restore {r['wall_s']:.2f} s ({r['cpu_s']:.2f} CPU s), "
                  f"snapshot_download through serve {float(secs):.2f} s (server {server_cpu:.2f} "
                  f"+ client {c['cpu_s']:.2f} CPU s), load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)  # fmt: skip
        # the client alone: the same file from a plain HTTP server that only reads it
        # (tests/support/hubserver.py), the ceiling any server can reach with this client
        plain = plain_http_rounds(src, env, work, want, args.rounds)
        server_rss = vm_hwm_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    # one tensor over HTTP, from a fresh server (nothing fetched yet): first byte of its range
    server, url = start_server(vault, pub)
    try:
        ttfb_http = http_tensor_ttfb(url, vault, pub)
    finally:
        server.terminate()
        server.wait(30)
    tensor = api_tensor(vault, pub)
    best_r = min(x["restore_wall_s"] for x in rounds)
    best_s = min(x["serve_download_s"] for x in rounds)
    out = {
        "input_bytes": weights.stat().st_size,
        "rounds": rounds,
        "restore_wall_s": best_r,
        "restore_MBps": round(weights.stat().st_size / best_r / 1e6, 1),
        "serve_download_s": best_s,
        "serve_MBps": round(weights.stat().st_size / best_s / 1e6, 1),
        "ratio_serve_vs_restore": round(best_r / best_s, 3),
        "plain_http_rounds": plain,
        "plain_http_download_s": min(x["download_s"] for x in plain),
        "ratio_plain_http_vs_restore": round(best_r / min(x["download_s"] for x in plain), 3),
        "server_peak_rss_mib": server_rss,
        "restore_peak_rss_mib": min(x["restore_rss_mib"] for x in rounds),
        "restore_cpu_s": min(x["restore_cpu_s"] for x in rounds),
        "serve_cpu_s": min(x["server_cpu_s"] + x["client_cpu_s"] for x in rounds),
        "tensor": {**tensor, "http_ttfb_s": ttfb_http},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def plain_http_rounds(src: Path, env: dict, work: Path, want: str, rounds: int) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.hubserver import HubServer

    out = []
    with HubServer(src, "weightvault/bench") as hub:
        for _ in range(rounds):
            warm(src)
            cache = work / "hf-cache-plain"
            shutil.rmtree(cache, ignore_errors=True)
            c = measure([sys.executable, "-c", CLIENT, "weightvault/bench", cache],
                        env={**env, "HF_ENDPOINT": hub.url})  # fmt: skip
            assert c["rc"] == 0, c["stderr"]
            secs, snap = c["stdout"].split()
            assert sha256_file(Path(snap) / "model.safetensors") == want
            shutil.rmtree(cache)
            out.append({"download_s": round(float(secs), 4), "client_cpu_s": c["cpu_s"]})
    return out


def _tensor_range(vault: Path, pub: Path):
    from weightvault.access import open_bundle

    r = open_bundle(vault, "bench", trust=[pub])
    t = max(r.tensors("model.safetensors").values(), key=lambda t: t.end - t.start)
    return r, t


def http_tensor_ttfb(url: str, vault: Path, pub: Path) -> float:
    _r, t = _tensor_range(vault, pub)
    req = urllib.request.Request(f"{url}/weightvault/bench/resolve/main/model.safetensors",
                                 headers={"Range": f"bytes={t.start}-{t.end - 1}"})  # fmt: skip
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as resp:
        resp.read(1)
        ttfb = time.perf_counter() - t0
        while resp.read(4 * MiB):
            pass
    return round(ttfb, 4)


def api_tensor(vault: Path, pub: Path) -> dict:
    """Time to first byte and store bytes moved for the biggest tensor, via the Python API
    (header read first, as a client reading one tensor does)."""
    r, t = _tensor_range(vault, pub)
    c = r.store.counters
    f = next(f for f in r.manifest.files if f["path"] == "model.safetensors")
    sizes = r.manifest.objects
    chunks = [x for x in f["chunks"] if x["offset"] < t.end and x["offset"] + x["length"] > t.start]
    header_stored = sizes[f["chunks"][0]["object"]]["size"]
    before = c.payload_read
    t0 = time.perf_counter()
    it = r.iter_range("model.safetensors", t.start, t.end)
    first = next(it)
    ttfb = time.perf_counter() - t0
    h = hashlib.sha256(first)
    n = len(first)
    for piece in it:
        h.update(piece)
        n += len(piece)
    total = time.perf_counter() - t0
    moved = c.payload_read - before
    return {"name": t.name, "bytes": t.end - t.start, "read": n, "ttfb_s": round(ttfb, 4),
            "read_s": round(total, 4), "store_bytes_moved": moved,
            "its_chunks_stored": sum(sizes[x["object"]]["size"] for x in chunks),
            "its_chunks": len(chunks), "header_chunk_stored": header_stored,
            "bundle_stored": r.manifest.bytes_stored}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
