"""Parallel chunk work with one ordered lane.

Chunk workers (a small thread pool; hashlib, zstandard and numpy release the GIL) each process
one chunk start to finish. Whole-file SHA-256 needs the file's bytes in order, so workers also
hand their plaintext pieces to a single lane thread that consumes them in chunk order. Memory is
bounded by bytes, not chunks: a worker ahead of the lane waits once LANE_BUDGET bytes are
queued for it, while the worker of the chunk the lane is consuming never waits. That chunk
always has a worker (jobs start in order), so the lane never waits on work that cannot start.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from weightvault.errors import Interrupted

J = TypeVar("J")
R = TypeVar("R")
_END = object()


# Bytes queued for the ordered lane (pieces of chunks after the one it is consuming), whatever
# the core count or chunk size. Counting chunks instead (two open 64 MiB chunks) left the
# worker of a short chunk idle until the long one before it was done: tensor-aligned chunks
# are uneven, and seal of 1 GiB bf16 in 32 + 64 MiB chunks spent 15-25 % of worker time so.
LANE_BUDGET = 128 << 20


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_tuned: list[bool] = []


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse (once per process). By default it
    hands every freed block of a few MiB back to the kernel, so the next piece buffer costs
    page faults and zeroing all over again; on a VM whose host reclaims freed guest memory,
    touching it again is slower still. Restoring 1 GiB took 1.6 s of system time without
    this, 0.8 s with. The price: the process keeps its peak heap until it exits."""
    if _tuned:
        return
    _tuned.append(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # piece buffers from the heap, not fresh mmaps
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


class _Gate:
    """The lane's byte budget. `take` waits while admitting a piece would queue more than the
    budget, except for the job the lane is consuming once its own pieces are drained: so at
    most one piece beyond the budget waits for the lane, and that job always moves on (the
    lane cannot drain later jobs' pieces before it)."""

    def __init__(self, budget: int, cancelled: threading.Event):
        self.budget, self.cancelled = budget, cancelled
        self.queued = 0
        self.by_job: dict[int, int] = {}  # bytes queued, per job sequence number
        self.head = 0  # sequence number of the lane job being consumed
        self.cond = threading.Condition()

    def take(self, seq: int, n: int) -> None:
        with self.cond:
            while (self.queued and self.queued + n > self.budget
                   and not (seq == self.head and not self.by_job.get(seq))
                   and not self.cancelled.is_set()):  # fmt: skip
                self.cond.wait(0.2)
            self.queued += n
            self.by_job[seq] = self.by_job.get(seq, 0) + n

    def give(self, seq: int, n: int) -> None:
        with self.cond:
            self.queued -= n
            left = self.by_job[seq] - n
            if left:
                self.by_job[seq] = left
            else:
                del self.by_job[seq]
            self.cond.notify_all()

    def advance(self, seq: int) -> None:
        with self.cond:
            self.head = seq
            self.cond.notify_all()


class Emit:
    """What a worker holds for its chunk: hand pieces to the lane (or drop them if unneeded).
    A piece is bytes, or anything with its size given (restore hands over (offset, length)).
    A writable memoryview may be scratch its owner writes again, so the lane gets a copy; a
    read-only one is a view of memory nobody writes again (bytes, or a source block read
    for this piece alone, remote_source._RemoteHandle) and is queued as it is."""

    def __init__(self, q: queue.SimpleQueue | None, cancelled: threading.Event,
                 gate: _Gate | None = None, seq: int = 0):  # fmt: skip
        self._q, self._cancelled, self._gate, self._seq = q, cancelled, gate, seq

    def __call__(self, piece, size: int | None = None) -> None:
        if self._cancelled.is_set():
            raise Interrupted("cancelled")
        if self._q is not None:
            if isinstance(piece, memoryview) and not piece.readonly:
                piece = bytes(piece)
            n = len(piece) if size is None else size
            if self._gate is not None:
                self._gate.take(self._seq, n)
            self._q.put((piece, n))

    def close(self) -> None:
        if self._q is not None:
            self._q.put(_END)


class Lane(Generic[J]):
    """The consumer side: called on the lane thread, in job order."""

    def piece(self, job: J, data: bytes) -> None: ...

    def end(self, job: J) -> None: ...


class FileDigests(Lane):
    """Whole-file SHA-256 over pieces arriving in order. Jobs carry `file` (an index) and
    `last` (the file's last chunk)."""

    def __init__(self) -> None:
        self._h: dict = {}
        self.done: dict[int, str] = {}

    def piece(self, job, data: bytes) -> None:
        if job.file not in self._h:
            self._h[job.file] = hashlib.sha256()
        self._h[job.file].update(data)

    def end(self, job) -> None:
        if job.last:
            self.done[job.file] = self._h.pop(job.file, hashlib.sha256()).hexdigest()


def run(
    jobs: Iterable[J],
    work: Callable[[J, Emit], R],
    *,
    lane: Lane[J] | None = None,
    needs_lane: Callable[[J], bool] = lambda j: True,
    workers: int | None = None,
    window: int | None = None,
    budget: int = LANE_BUDGET,
) -> list[R]:
    """Run `work` on every job; return results in job order. The first error cancels the rest
    and is re-raised (workers stop at their next piece). At most `window` lane jobs are open
    (started and not yet consumed), and at most about `budget` bytes are queued for the lane."""
    keep_freed_memory()
    workers = workers or default_workers()
    window = window or 2 * workers
    if isinstance(jobs, Sequence):  # else an iterator that may yield jobs as others finish
        workers = min(workers, max(1, len(jobs)))
    cancelled = threading.Event()
    slots = threading.Semaphore(window)
    gate = _Gate(budget, cancelled)
    order: queue.SimpleQueue = queue.SimpleQueue()  # (job, piece queue) in submission order
    lane_error: list[BaseException] = []

    def lane_loop() -> None:
        try:
            while True:
                try:
                    item = order.get(timeout=0.2)
                except queue.Empty:
                    if cancelled.is_set():
                        return
                    continue
                if item is None:
                    return
                seq, job, q = item
                gate.advance(seq)
                while True:
                    try:
                        data = q.get(timeout=0.2)
                    except queue.Empty:
                        if cancelled.is_set():
                            return  # a cancelled job may never send its end
                        continue
                    if data is _END:
                        break
                    if isinstance(data, BaseException):
                        raise data
                    piece, n = data
                    if not cancelled.is_set():
                        lane.piece(job, piece)  # type: ignore[union-attr]
                    del piece, data  # memory back before the budget is
                    gate.give(seq, n)
                if not cancelled.is_set():
                    lane.end(job)  # type: ignore[union-attr]
                slots.release()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            lane_error.append(e)
            cancelled.set()
            slots.release()

    def wrapped(job: J, q: queue.SimpleQueue | None, seq: int) -> R:
        emit = Emit(q, cancelled, gate, seq)
        try:
            return work(job, emit)
        except BaseException as e:
            cancelled.set()
            if q is not None:
                q.put(e)
            raise
        finally:
            emit.close()

    lane_thread = None
    if lane is not None:
        lane_thread = threading.Thread(target=lane_loop, name="weightvault-lane", daemon=True)
        lane_thread.start()
    futures: list[Future] = []
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="weightvault") as pool:
            for seq, job in enumerate(jobs):
                q = None
                if lane is not None and needs_lane(job):
                    while not slots.acquire(timeout=0.2):
                        if cancelled.is_set():
                            break
                    if cancelled.is_set():
                        break
                    q = queue.SimpleQueue()
                    order.put((seq, job, q))
                if cancelled.is_set():
                    break
                futures.append(pool.submit(wrapped, job, q, seq))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if cancelled.is_set():
                for f in futures:
                    f.cancel()
    except KeyboardInterrupt:
        cancelled.set()
        raise
    finally:
        order.put(None)
        if lane_thread is not None:
            lane_thread.join()
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
    errors += lane_error
    # The cause, not the cancellations it set off in other workers
    real = [e for e in errors if not isinstance(e, Interrupted)]
    if real or errors:
        raise (real or errors)[0]
    return [f.result() for f in futures]


class Finisher:
    """Runs the last step of each job (a written object's fsync and rename, or its upload) on
    threads of its own, so the worker goes on to its next chunk meanwhile. Seal's workers
    spent 0.5-0.65 s of 1 GiB's 1.8 s waiting in fsync, a quarter of their time, which left
    the two cores about 160 % busy. At most `pending` steps wait at once (bounding what is
    written but not yet committed); the first failure is raised by the next `submit`, and
    by `drain`, which waits for them all and must be called before trusting the results."""

    def __init__(self, threads: int, pending: int):
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="weightvault-finish")
        self._slots = threading.Semaphore(max(1, pending))
        self._errors: list[BaseException] = []  # the first is raised; kept, not rescanned

    def submit(self, step: Callable[[], object]) -> None:
        self._raise_first()
        self._slots.acquire()

        def run() -> None:
            try:
                step()
            except BaseException as e:  # noqa: BLE001 - handed to submit / drain
                self._errors.append(e)
            finally:
                self._slots.release()

        self._pool.submit(run)

    def _raise_first(self) -> None:
        if self._errors:
            raise self._errors[0]

    def drain(self) -> None:
        self._pool.shutdown(wait=True)
        self._raise_first()


def pieces(total: int, size: int) -> Iterable[tuple[int, int]]:
    for off in range(0, total, size):
        yield off, min(size, total - off)
