"""Seal and audit work on a Dask cluster (executors.py): the driver plans, workers move bytes.

Seal: the driver plans chunks from headers only and sends tasks of about TASK_BYTES of chunks.
A worker reads its chunks from the source, encodes them and writes each content-addressed
object straight to the destination store (idempotent: a retried task writes the same bytes
under the same names) and returns the chunk entries. A file wholly inside one task is hashed
there, in order, as in one process (pipeline.py's lane); a file larger than a task is split
over several and one more task per file reads it in order for its SHA-256. The driver checks
that every planned chunk came back as planned, then builds the manifest, signs and commits:
nothing a worker does can commit a bundle, and a driver that dies leaves only objects of an
uncommitted bundle (what `gc` collects).

Audit: the objects chosen by the driver (all, or the sample that keeps the cycle's coverage
promise) are hashed by workers in batches; the driver re-reads any failure itself before
calling it damage, exactly as a one-process audit does.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from weightvault.archive.pipeline import FileDigests, Finisher, default_workers, run
from weightvault.errors import IntegrityError
from weightvault.executors import Executor, StoreSpec, batches, store_spec


def plan_tasks(jobs: list, task_bytes: int,
               length: Callable = lambda j: j.piece.length) -> tuple[list, dict[int, object]]:  # fmt: skip
    """Group chunk jobs (in file order) into tasks: [(jobs, files hashed in the task)], and
    {file index: first job} of files split over tasks (each gets a hashing task). A file is
    split only when it alone is larger than a task; small files share tasks."""
    tasks: list[tuple[list, set[int]]] = []
    split: dict[int, object] = {}
    cur: list = []
    cur_files: set[int] = set()
    n = 0
    i = 0
    while i < len(jobs):
        j = i
        while j < len(jobs) and jobs[j].file == jobs[i].file:
            j += 1
        mine = jobs[i:j]
        size = sum(length(x) for x in mine)
        if size > task_bytes and len(mine) > 1:
            if cur:
                tasks.append((cur, cur_files))
                cur, cur_files, n = [], set(), 0
            split[mine[0].file] = mine[0]
            for group in batches(mine, length, task_bytes):
                tasks.append((group, set()))
        else:
            if cur and n + size > task_bytes:
                tasks.append((cur, cur_files))
                cur, cur_files, n = [], set(), 0
            cur += mine
            if len(mine) > 1:
                cur_files.add(mine[0].file)
            n += size
        i = j
    if cur:
        tasks.append((cur, cur_files))
    return tasks, split


def seal_task_args(spec: StoreSpec, files_io, name: str, level: int, codec_name: str,
                   jobs: list, lane_files: set[int], threads: int) -> tuple:  # fmt: skip
    """Everything one seal task receives: no key, no identity (THREAT-MODEL)."""
    return ("seal", spec, files_io, name, level, codec_name, jobs, lane_files, threads)


def _task(kind: str, *args):
    """The one function workers run (its first argument says which task)."""
    return {"seal": _seal_task, "hash": _hash_task, "check": _check_task, "copy": _copy_task,
            "verify": _verify_task, "vhash": _vhash_task}[kind](*args)  # fmt: skip


def _seal_task(spec: StoreSpec, files_io, name: str, level: int, codec_name: str,
               jobs: list, lane_files: set[int], threads: int) -> tuple:  # fmt: skip
    from weightvault.archive.seal import _commit_object, seal_chunk

    store = spec.open()
    written: list[str] = []
    finisher = Finisher(threads, threads + 1)
    lane = FileDigests()

    def work(job, emit):
        return seal_chunk(job, emit, files_io, store, name, level, codec_name, None,
                          lambda w, key: finisher.submit(
                              lambda: _commit_object(store, w, key, written)), None)  # fmt: skip

    try:
        results = run(jobs, work, lane=lane, needs_lane=lambda j: j.file in lane_files,
                      workers=threads)  # fmt: skip
    except BaseException:
        try:
            finisher.drain()
        except BaseException:  # noqa: BLE001, S110 - the first error is the one to report
            pass
        raise
    finisher.drain()
    return [(j.index, r) for j, r in zip(jobs, results, strict=True)], lane.done, written


def _hash_task(files_io, index: int, f) -> tuple[int, str]:
    """A split file's SHA-256, reading it in order."""
    from weightvault.archive.seal import file_sha256

    return index, file_sha256(files_io, f)


def seal_on_cluster(ex: Executor, jobs: list, files_io, store, name: str, opts,
                    written: list[str], on_bytes: Callable[[int], None] | None) -> tuple:  # fmt: skip
    """(results in job order, {file index: sha256} of multi-chunk files, {file index: its
    chunks' BLAKE3 as chunks_blake3}), as seal's one-process pipeline gives them; no SHA-256 of
    files whose digest the driver has already (`_Job.hashed`: a changed file of a new
    version)."""
    spec = store_spec(store)
    tasks, split = plan_tasks(jobs, ex.task_bytes)
    threads = opts.workers or default_workers()
    hashed = {j.file for j in jobs if j.hashed}
    items: list[tuple] = [("hash", files_io, i, j.src) for i, j in split.items()
                          if i not in hashed]  # fmt: skip
    items += [seal_task_args(spec, files_io, name, opts.level, opts.codec, t, lanes - hashed,
                             threads) for t, lanes in tasks]  # fmt: skip
    results: list = [None] * len(jobs)
    digests: dict[int, str] = {}
    # each file's chunks' BLAKE3 (format version 6), 32 bytes a chunk at its place: held as
    # one string per result until the manifest, they were 30 MB of a 10 TB seal's driver
    first: dict[int, int] = {}
    count: dict[int, int] = {}
    for k, j in enumerate(jobs):
        first.setdefault(j.file, k)
        count[j.file] = count.get(j.file, 0) + 1
    b3: dict[int, bytearray] = {}

    def done(_i: int, out) -> None:
        if isinstance(out[0], int):  # a hashing task
            digests[out[0]] = out[1]
            return
        chunks, lane_done, keys = out
        written.extend(keys)
        digests.update(lane_done)
        for idx, r in chunks:
            c = r["chunk"]
            # one string object per codec and dtype name, not one per unpickled chunk
            c["codec"] = sys.intern(c["codec"])
            if "dtype" in c:
                c["dtype"] = sys.intern(c["dtype"])
            d = r.pop("blake3", None)
            if d:
                f = jobs[idx].file
                buf = b3.get(f)
                if buf is None:
                    buf = b3[f] = bytearray(32 * count[f])
                at = 32 * (idx - first[f])
                buf[at : at + 32] = bytes.fromhex(d)
            results[idx] = r
            if on_bytes:
                on_bytes(r["chunk"]["length"])

    ex.map(_task, items, label="weightvault-seal", on_done=done)
    # Coverage: every planned chunk came back, as planned; every split file was hashed
    for job, r in zip(jobs, results, strict=True):
        c = (r or {}).get("chunk") or {}
        if (c.get("offset"), c.get("length")) != (job.piece.offset, job.piece.length):
            raise IntegrityError(f"{job.src.path}: chunk at offset {job.piece.offset} did not "
                                 "come back from the cluster as planned")  # fmt: skip
    missing = [i for i in {j.file for j in jobs if j.multi and not j.hashed} if i not in digests]
    if missing:
        raise IntegrityError(f"the cluster returned no SHA-256 for {len(missing)} file(s)")
    return results, digests, {f: buf.hex() for f, buf in b3.items()}


# -- audit


def _check_task(spec: StoreSpec, targets: list, threads: int) -> tuple[list, int]:
    from weightvault.archive.audit import _hash_check

    store = spec.open()
    out = run(targets, lambda t, _e: _hash_check(store, t), workers=threads)
    return out, store.counters.payload_read


def hash_on_cluster(ex: Executor, store, targets: list, workers: int | None) -> list:
    """audit's `run(to_hash, _hash_check)` on the cluster: a failure dict or None per target,
    in order; payload bytes the workers read are added to this store's counters."""
    spec = store_spec(store)
    groups = batches(targets, lambda t: t.size, ex.task_bytes)
    threads = workers or default_workers()
    outs = ex.map(_task, [("check", spec, g, threads) for g in groups], label="weightvault-audit")
    results: list = []
    for res, nbytes in outs:
        results += res
        store.counters.add(read=nbytes, payload=True)
    if len(results) != len(targets):
        raise IntegrityError("the cluster did not check every object planned")
    return results


# -- replicate


def _copy_task(src_specs: list[StoreSpec], dst_spec: StoreSpec, batch: list,
               threads: int) -> list:  # fmt: skip
    from weightvault.archive.replicate import copy_if_needed

    sources = [s.open() for s in src_specs]
    dst = dst_spec.open()
    return run(batch, lambda b, _e: copy_if_needed(sources, dst, *b), workers=threads)


def copy_on_cluster(ex: Executor, sources: list, dst, batch: list, workers: int | None,
                    on_bytes: Callable[[int], None] | None) -> list:  # fmt: skip
    """replicate's per-object step on the cluster: each (wanted item, listed size, verify) is
    copied from the first source with a good copy, by workers, straight to the target."""
    specs = [store_spec(s) for s in sources]
    dspec = store_spec(dst)
    threads = workers or default_workers()
    groups = batches(batch, lambda b: b[0][2], ex.task_bytes)

    def done(i: int, events: list) -> None:
        if on_bytes:
            on_bytes(sum(b[0][2] for b, e in zip(groups[i], events, strict=True) if e))

    outs = ex.map(_task, [("copy", specs, dspec, g, threads) for g in groups],
                  label="weightvault-replicate", on_done=done)  # fmt: skip
    events = [e for out in outs for e in out]
    if len(events) != len(batch):
        raise IntegrityError("the cluster did not copy or check every object planned")
    return events


# -- verify --deep


@dataclass(frozen=True)
class VJob:
    """One chunk to decode, with what a worker needs of the manifest for it."""

    file: int
    last: bool
    multi: bool
    chunk: dict
    obj: dict
    path: str
    expect: str | None
    blake3: str | None = None  # the chunk's digest (format version 6)


def _verify_task(spec: StoreSpec, name: str, jobs: list, lane_files: set[int],
                 threads: int) -> tuple:  # fmt: skip
    from weightvault.archive.verify import _problem
    from weightvault.storage.chunkio import decode_chunk

    store = spec.open()
    lane = FileDigests()

    def work(j: VJob, emit):
        key = _okey(name, j.chunk["object"])
        try:
            decode_chunk(store, key, j.obj, j.chunk, file_path=j.path,
                         emit=emit if j.file in lane_files else None, expect=j.expect,
                         blake3=j.blake3)  # fmt: skip
        except IntegrityError as e:
            return _problem(store, key, e)
        return None

    found = run(jobs, work, lane=lane, needs_lane=lambda j: j.file in lane_files, workers=threads)
    return found, lane.done, store.counters.bytes_read


def _vhash_task(spec: StoreSpec, name: str, index: int, jobs: list) -> tuple:
    """A split file's SHA-256, decoding its chunks in order (a damaged chunk: no digest; the
    chunk's own task reports the damage)."""
    from weightvault.storage.chunkio import decode_chunk

    store = spec.open()
    h = hashlib.sha256()
    try:
        for j in jobs:
            decode_chunk(store, _okey(name, j.chunk["object"]), j.obj, j.chunk,
                         file_path=j.path, emit=h.update)  # fmt: skip
    except IntegrityError:
        return ("vhash", index, None, store.counters.bytes_read)
    return ("vhash", index, h.hexdigest(), store.counters.bytes_read)


def _okey(name: str | None, obj: str) -> str:
    from weightvault.storage.vault import object_key, pool_key

    return pool_key(obj) if name is None else object_key(name, obj)


def verify_on_cluster(ex: Executor, store, name: str, files: list[dict], objects: dict,
                      workers: int | None, on_bytes: Callable[[int], None] | None) -> tuple:  # fmt: skip
    """verify --deep's chunk decoding on the cluster: (problems or None per chunk, {file index:
    sha256} of multi-chunk files), as the one-process pipeline returns them. `name`: the
    bundle whose bag holds the objects (format versions 1-3), None for the vault's pool."""
    from weightvault.archive.restore import chunk_digest, chunk_jobs

    jobs = [VJob(j.file, j.last, j.multi, j.chunk, objects[j.chunk["object"]],
                 files[j.file]["path"], chunk_digest(files[j.file], j.chunk), j.blake3)
            for j in chunk_jobs(files)]  # fmt: skip
    spec = store_spec(store)
    threads = workers or default_workers()
    tasks, split = plan_tasks(jobs, ex.task_bytes, lambda j: j.chunk["length"])
    items: list[tuple] = [("vhash", spec, name, i, [j for j in jobs if j.file == i])
                          for i in split]  # fmt: skip
    items += [("verify", spec, name, t, lanes, threads) for t, lanes in tasks]
    digests: dict[int, str] = {}
    found: list = []

    def done(i: int, out) -> None:
        if out[0] == "vhash":
            _, idx, digest, nbytes = out
            if digest is not None:
                digests[idx] = digest
        else:
            problems, lane_done, nbytes = out
            digests.update(lane_done)
            found.extend(problems)
            if on_bytes:
                on_bytes(sum(j.chunk["length"] for j in items[i][3]))
        store.counters.add(read=nbytes, payload=True)

    ex.map(_task, items, label="weightvault-verify", on_done=done)
    if len(found) != len(jobs):
        raise IntegrityError("the cluster did not decode every chunk planned")
    return found, digests
