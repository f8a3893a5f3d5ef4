"""Benchmark the fsplit codec against plain zstd -3.

Prints, per data set: stored size as a fraction of the input, and encode / decode MB/s on one
core (4 MiB blocks, as the chunk writer feeds them), then the same with --threads workers.

    PYTHONPATH=src python benchmarks/fsplit_bench.py [--size-mib 256] [--model PATH] [--threads 2]

Data sets: bf16 normal(0, 0.02) of --size-mib MiB and f16 normal(0, 0.02) of --f16-mib MiB,
generated; the tensor data of a real fp32 safetensors file (all-MiniLM-L6-v2 by default) if
one is found: --model, else $WEIGHTVAULT_TEST_MODEL_DIR/model.safetensors, else
~/.cache/weightvault-test/all-MiniLM-L6-v2/model.safetensors, else /tmp/minilm/model.safetensors.

Decode speed depends a lot on how glibc's malloc hands back freed memory: run once more with
MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_MMAP_THRESHOLD_=67108864 to see the ceiling.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard

from weightvault.format import fsplit

MB = 1e6


def bf16_normal(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray()
    step = 16 << 20
    for start in range(0, size // 2, step):
        n = min(step, size // 2 - start)
        f = rng.normal(0.0, 0.02, n).astype(np.float32).view(np.uint32)
        f = f + 0x7FFF + ((f >> 16) & 1)  # round to nearest even
        out += (f >> 16).astype("<u2").tobytes()
    return bytes(out)


def find_model(arg: str | None) -> Path | None:
    cands = []
    if arg:
        cands.append(Path(arg))
    if os.environ.get("WEIGHTVAULT_TEST_MODEL_DIR"):
        cands.append(Path(os.environ["WEIGHTVAULT_TEST_MODEL_DIR"]) / "model.safetensors")
    cands.append(Path.home() / ".cache/weightvault-test/all-MiniLM-L6-v2/model.safetensors")
    cands.append(Path("/tmp/minilm/model.safetensors"))
    return next((p for p in cands if p.is_file()), None)


def tensor_data(path: Path) -> bytes:
    raw = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw)
    json.loads(raw[8 : 8 + hlen])
    return raw[8 + hlen :]


def blocks(data: bytes) -> list[memoryview]:
    mv = memoryview(data)
    return [mv[i : i + fsplit.BLOCK_MAX] for i in range(0, len(data), fsplit.BLOCK_MAX)]


def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, dtype: str, data: bytes, threads: int, reps: int) -> None:
    blks = blocks(data)
    codec = fsplit.codec_name(dtype)
    n = len(data)
    enc = [fsplit.encode_block(dtype, b) for b in blks]  # also warms the per-thread buffers
    stored = b"".join(enc)
    assert b"".join(fsplit.iter_decode(codec, io.BytesIO(stored).read, n)) == data

    def encode_all() -> None:
        for b in blks:
            fsplit.encode_block(dtype, b)

    def decode_all() -> None:
        for _ in fsplit.iter_decode(codec, io.BytesIO(stored).read, n):
            pass

    t_enc = best_time(encode_all, reps)
    t_dec = best_time(decode_all, reps)

    z3 = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    zenc = [z3.compress(b) for b in blks]
    zsize = sum(len(b) for b in zenc)
    t_z3 = best_time(lambda: [z3.compress(b) for b in blks], reps)
    t_z3d = best_time(lambda: [zd.decompress(b) for b in zenc], reps)

    print(f"{name}: {n / 2**20:.1f} MiB, {len(blks)} blocks of up to 4 MiB")
    print(
        f"  fsplit  stored {len(stored) / n:.4f}  encode {n / t_enc / MB:6.0f} MB/s"
        f"  decode {n / t_dec / MB:6.0f} MB/s  (1 thread)"
    )
    print(
        f"  zstd-3  stored {zsize / n:.4f}  encode {n / t_z3 / MB:6.0f} MB/s"
        f"  decode {n / t_z3d / MB:6.0f} MB/s  (1 thread, same blocks)"
    )
    if threads > 1:
        with ThreadPoolExecutor(threads) as ex:
            # warm every worker's buffers first
            list(ex.map(lambda b: fsplit.encode_block(dtype, b), blks))

            def dec(i: int) -> None:
                r = io.BytesIO(enc[i]).read
                for _ in fsplit.iter_decode(codec, r, len(blks[i])):
                    pass

            t_enc = best_time(
                lambda: list(ex.map(lambda b: fsplit.encode_block(dtype, b), blks)), reps
            )
            t_dec = best_time(lambda: list(ex.map(dec, range(len(blks)))), reps)
        print(
            f"  fsplit  {threads} threads: encode {n / t_enc / MB:6.0f} MB/s"
            f"  decode {n / t_dec / MB:6.0f} MB/s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--f16-mib", type=int, default=64, help="size of the f16 set; 0 skips it")
    ap.add_argument("--model", help="an fp32 safetensors file")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=3, help="timed runs; the best is shown")
    args = ap.parse_args()

    bench(
        f"bf16 normal(0, 0.02), {args.size_mib} MiB",
        "BF16",
        bf16_normal(args.size_mib << 20),
        args.threads,
        args.reps,
    )
    if args.f16_mib:
        f16 = np.random.default_rng(1).normal(0.0, 0.02, args.f16_mib << 19).astype("<f2")
        bench(
            f"f16 normal(0, 0.02), {args.f16_mib} MiB",
            "F16",
            f16.tobytes(),
            args.threads,
            args.reps,
        )
    model = find_model(args.model)
    if model is None:
        print("MiniLM fp32: no model file found, skipped")
    else:
        bench(f"fp32 tensor data of {model}", "F32", tensor_data(model), args.threads, args.reps)


if __name__ == "__main__":
    main()
