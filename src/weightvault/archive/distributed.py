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
from collections.abc import Callable

from weightvault.archive.pipeline import FileDigests, Finisher, default_workers, pieces, run
from weightvault.errors import IntegrityError
from weightvault.executors import Executor, StoreSpec, batches, store_spec
from weightvault.format import codec


def plan_tasks(jobs: list, task_bytes: int) -> tuple[list[tuple[list, set[int]]], dict[int, object]]:
    """Group chunk jobs (in file order) into tasks: [(jobs, files hashed in the task)], and
    {file index: source file} of files split over tasks (each gets a hashing task). A file is
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
        size = sum(x.piece.length for x in mine)
        if size > task_bytes and len(mine) > 1:
            if cur:
                tasks.append((cur, cur_files))
                cur, cur_files, n = [], set(), 0
            split[mine[0].file] = mine[0].src
            for group in batches(mine, lambda x: x.piece.length, task_bytes):
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
    return {"seal": _seal_task, "hash": _hash_task, "check": _check_task}[kind](*args)


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
    h = hashlib.sha256()
    fh = files_io.open(f)
    try:
        for off, n in pieces(f.size, codec.PIECE):
            buf = fh.pread(n, off)
            if len(buf) != n:
                from weightvault.errors import InputError

                raise InputError(f"{f.abspath}: file shrank while sealing")
            h.update(buf)
    finally:
        fh.close()
    return index, h.hexdigest()


def seal_on_cluster(ex: Executor, jobs: list, files_io, store, name: str, opts,
                    written: list[str], on_bytes: Callable[[int], None] | None) -> tuple:  # fmt: skip
    """(results in job order, {file index: sha256} of multi-chunk files), as seal's one-process
    pipeline returns them."""
    spec = store_spec(store)
    tasks, split = plan_tasks(jobs, ex.task_bytes)
    threads = opts.workers or default_workers()
    items: list[tuple] = [("hash", files_io, i, f) for i, f in split.items()]
    items += [seal_task_args(spec, files_io, name, opts.level, opts.codec, t, lanes, threads)
              for t, lanes in tasks]  # fmt: skip
    results: list = [None] * len(jobs)
    digests: dict[int, str] = {}

    def done(_i: int, out) -> None:
        if isinstance(out[0], int):  # a hashing task
            digests[out[0]] = out[1]
            return
        chunks, lane_done, keys = out
        written.extend(keys)
        digests.update(lane_done)
        for idx, r in chunks:
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
    missing = [i for i in {j.file for j in jobs if j.multi} if i not in digests]
    if missing:
        raise IntegrityError(f"the cluster returned no SHA-256 for {len(missing)} file(s)")
    return results, digests


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
