"""Where the work runs: this process's threads (the default), or a Dask cluster.

`--executor threads` | `local-cluster:N` (a LocalCluster of N worker processes started for
the command, in a process of its own: localcluster.py) | `dask://HOST:PORT` (an existing
scheduler; `tcp://` and `tls://` work too).
Dask is an optional extra: `pip install weightvault[dask]`.

What crosses to a worker is only what the task needs: a store's URL and storage options, a
source's URL and options, chunk plans. Never a signing key, an identity or a data key: the
driver alone signs and commits. Filesystems are made inside tasks (s3fs is not fork-safe,
and a worker on another machine has its own network and credentials).

A LocalCluster runs at a lower CPU priority than the driver: nice +CLUSTER_NICE, inherited by
its forkserver, scheduler and workers ($WEIGHTVAULT_CLUSTER_NICE; 0 turns all of this off),
and its imports of Dask, most of its start-up CPU, on a thread at Linux's idle scheduling
policy (localcluster.py). It is started speculatively at the top of a command, and while it
starts the driver is doing the command's own work (keys, listing, headers, planning, its first
tasks): on the same cores, about a CPU-second of start-up competed with that work, and a job
of one task, which never uses the cluster, paid for it in wall time. Now the start takes what
the driver leaves idle. It costs a long job nothing: a LocalCluster shares the driver's
machine, so while the driver's threads keep the cores busy the job advances as fast either
way, and once the workers are up the driver mostly waits for them, and a priority decides
nothing between a process and an idle core. The workers do keep the nice value (an
unprivileged process cannot take it back; they never get the idle policy, which they could
not leave at all), so against other CPU-bound work on the machine they get a smaller share
than the threads executor would: with Linux's per-session autogroups or separate cgroups,
only against work of the same session or cgroup. Background sealing and fixity giving way to
what a machine's users run is what one wants of an archive; where it is not, set the
variable to 0. An existing cluster (dask://) is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from weightvault.errors import InputError, StorageError

THREADS = "threads"
TASK_BYTES = 2 << 30  # one task's share of chunks (the brief: 1-4 GiB)
# A task whose worker dies is run again by the scheduler (distributed.scheduler.allowed-failures,
# default 3); a task that raises is not retried: the error (bad credentials, a source that
# changed) is an answer, and our storage layer already retried what was transient.
RETRIES = 3
# added to a LocalCluster's nice value: a conventional "background" priority (nice(1)'s default
# increment), about a tenth of the CPU share of a nice-0 process that wants the same core; not
# 19, so that its scheduler, still on the path of every task, never waits long for a turn
CLUSTER_NICE = 10


@dataclass
class Executor:
    """An executor named on the command line; `cluster()` connects (or starts) it."""

    spec: str = THREADS
    kind: str = THREADS  # threads | local | remote
    n_workers: int = 0
    address: str = ""
    nice: int = 0  # added to a LocalCluster's nice value (CLUSTER_NICE)
    # bytes of chunks per task; $WEIGHTVAULT_TASK_BYTES overrides (tests split small files)
    task_bytes: int = field(default_factory=lambda: int(os.environ.get("WEIGHTVAULT_TASK_BYTES",
                                                                       TASK_BYTES)))  # fmt: skip
    _client: Any = field(default=None, repr=False)
    _cluster: Any = field(default=None, repr=False)
    _starting: Any = field(default=None, repr=False)  # (thread, result box) of a LocalCluster
    _session: bool = field(default=False, repr=False)
    # where tasks ran: this process's threads while a LocalCluster started, or its workers
    tasks: dict = field(default_factory=lambda: {"driver": 0, "workers": 0})

    @property
    def distributed(self) -> bool:
        return self.kind != THREADS

    def start(self) -> None:
        """Begin starting a LocalCluster (idempotent), in a process of its own (localcluster.py):
        it comes up while the driver loads keys, lists the source, reads headers and plans, and
        a command done before it is up stops it at once instead of waiting for it. An existing
        cluster (dask://) is connected to when first needed."""
        if self.kind != "local" or self._starting is not None or self._client is not None:
            return
        import subprocess
        import sys
        import tempfile

        err = tempfile.TemporaryFile()  # noqa: SIM115 - read if the cluster fails to start
        proc = subprocess.Popen([sys.executable, "-m", "weightvault.localcluster",
                                 str(self.n_workers), str(self.nice)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)  # fmt: skip
        box: dict = {}

        def wait_up() -> None:
            line = proc.stdout.readline().decode().strip()
            if line:
                box["address"] = line
                return
            proc.wait()
            err.seek(0)
            last = (err.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            box["error"] = StorageError(f"--executor {self.spec}: the LocalCluster did not "
                                        f"start ({last[:300]})")  # fmt: skip

        t = threading.Thread(target=wait_up, name="weightvault-cluster-start", daemon=True)
        t.start()
        self._starting = (t, box)
        self._cluster = proc
        atexit.register(self.close)  # a command that fails before using it still stops it

    @contextlib.contextmanager
    def session(self) -> Iterator[Executor]:
        """One cluster for a whole command (not one per replica): started now (a LocalCluster,
        in the background), stopped at the end."""
        self.start()
        self._session = True
        try:
            yield self
        finally:
            self._session = False
            self.close()

    @contextlib.contextmanager
    def cluster(self) -> Iterator[Any]:
        """A dask.distributed Client: the session's, or one for this call alone."""
        if self._session:
            yield self._connect()
            return
        try:
            yield self._connect()
        finally:
            self.close()

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            from distributed import Client
        except ImportError:
            raise InputError(f"--executor {self.spec} needs Dask: pip install "
                             "'weightvault[dask]'") from None  # fmt: skip
        address = self.address
        if self.kind == "local":
            self.start()
            t, box = self._starting
            t.join()
            if "error" in box:
                raise box["error"]
            address = box["address"]
        with _quiet():
            try:
                # a LocalCluster that printed its address is up; one slow to answer is
                # waiting for CPU at its lower priority (CLUSTER_NICE), not unreachable
                self._client = Client(address, timeout="30s" if self.kind == "local" else "10s")
            except (OSError, TimeoutError) as e:
                raise StorageError(f"--executor {self.spec}: cannot reach the Dask "
                                   f"scheduler ({e})") from None  # fmt: skip
        return self._client

    def close(self) -> None:
        """Stop what this executor started. Called once every result is in (or the command
        failed): nothing a worker still holds is wanted, so a LocalCluster is neither waited
        for (if still starting) nor asked to retire its workers gracefully: its process exits
        when its standard input closes, and its workers with it."""
        client, proc = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with _quiet(), contextlib.suppress(Exception):
                client.close(timeout=5)
        if proc is not None:
            if self._starting is not None and self._starting[0].is_alive():
                proc.kill()  # still starting: nothing of it is needed (its workers follow it)
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001 - a cluster that will not stop is killed
                proc.kill()
                proc.wait()
        if self._starting is not None:
            self._starting[0].join()
            self._starting = None

    def map(self, fn: Callable, items: Iterable, *, label: str = "task",
            on_done: Callable[[int, Any], None] | None = None) -> list:  # fmt: skip
        """Run fn(*item) for every item on the cluster; results in item order. A task whose
        worker died is run again elsewhere; the first task that raised raises here.

        local-cluster:N only: while its worker processes are still starting, a thread of this
        driver runs tasks itself (the same machine, and the same process as the key, so no
        rule about what workers receive is touched); the rest go to the workers once they
        are up. `tasks` counts where they ran. $WEIGHTVAULT_DRIVER_TASKS=0 turns this off."""
        items = list(items)
        out: list = [None] * len(items)
        here: list[tuple[int, Any]] = []
        helper = None
        pending = list(range(len(items)))
        lock = threading.Lock()
        failed: list[BaseException] = []
        if items and self._starting is not None and _driver_tasks():
            starting = self._starting[0]

            def drive() -> None:
                while starting.is_alive():
                    with lock:
                        if not pending:
                            return
                        i = pending.pop(0)
                    try:
                        here.append((i, fn(*items[i])))
                    except BaseException as e:  # noqa: BLE001 - raised by map below
                        failed.append(e)
                        return

            helper = threading.Thread(target=drive, name="weightvault-driver-tasks", daemon=True)
            helper.start()
        try:
            while helper is not None and helper.is_alive() and self._starting[0].is_alive():
                helper.join(0.01)  # until the workers are up, or the driver has done it all
            with lock:
                rest, pending[:] = list(pending), []
            if rest and not failed:
                with self.cluster() as client:
                    self._on_cluster(client, fn, items, rest, label, out, on_done)
        finally:
            if helper is not None:
                helper.join()
        if failed:
            raise failed[0]
        for i, r in here:
            out[i] = r
            if on_done:
                on_done(i, r)
        self.tasks["driver"] += len(here)
        self.tasks["workers"] += len(items) - len(here)
        return out

    def _on_cluster(self, client, fn: Callable, items: list, which: list[int], label: str,
                    out: list, on_done) -> None:  # fmt: skip
        from distributed import as_completed

        futs = [client.submit(fn, *items[i], pure=False, key=f"{label}-{i}-{_token()}")
                for i in which]  # fmt: skip
        index = {f.key: i for i, f in zip(which, futs, strict=True)}
        try:
            for fut in as_completed(futs):
                i = index[fut.key]
                out[i] = _result(fut, self.spec)
                if on_done:
                    on_done(i, out[i])
                fut.release()
        except BaseException:
            client.cancel(futs)
            raise


def _driver_tasks() -> bool:
    return os.environ.get("WEIGHTVAULT_DRIVER_TASKS", "1") != "0"


# imported once in the forkserver, so every worker forked from it starts with them loaded
_PRELOAD = ("distributed", "dask", "cloudpickle", "msgpack", "tornado", "toolz", "numpy",
            "zstandard", "weightvault.archive.distributed", "weightvault.archive.seal",
            "weightvault.archive.audit", "weightvault.archive.replicate",
            "weightvault.archive.verify", "weightvault.storage.opener")  # fmt: skip


def _start_local(n_workers: int, *, idle: bool = False) -> Any:
    """A LocalCluster of worker processes forked from a forkserver (run by localcluster.py, in
    a process of its own). The forkserver is a fresh interpreter that imports Dask and
    weightvault once (`idle`: at the idle scheduling policy, clusterpreload.py); each worker
    is a fork of it, so none pays the imports again, as spawned workers did (about 1 s of
    start-up each on this project's machine)."""
    import multiprocessing

    import dask
    from distributed import LocalCluster
    from distributed import utils as dutils

    method = {"distributed.worker.multiprocessing-method": "forkserver"}
    with _quiet(), dask.config.set(method):
        # Dask sets its own forkserver preload list once per process, importing every optional
        # package it knows (pandas among them) here to build it: ours replaces it, so say it
        # is set (a Dask without the flag sets its list on first use instead: workers then
        # import weightvault at their first task, slower but the same)
        dutils._forkserver_preload_set = True
        preload = ["weightvault.clusterpreload"] if idle else list(_PRELOAD)
        multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None)  # fmt: skip


def _result(fut, spec: str):
    from distributed.client import FutureCancelledError

    try:
        return fut.result()
    except FutureCancelledError as e:
        raise StorageError(f"--executor {spec}: a task was lost ({e})") from None
    except Exception as e:
        from distributed.scheduler import KilledWorker

        if isinstance(e, KilledWorker):
            raise StorageError(f"--executor {spec}: a task failed on {RETRIES + 1} workers "
                               "that each died running it") from None  # fmt: skip
        raise


def _token() -> str:
    import secrets

    return secrets.token_hex(6)


@contextlib.contextmanager
def _quiet():
    """Dask logs start-up and shutdown chatter at INFO/WARNING to stderr: one line per error
    is the CLI's promise, so keep it to errors."""
    names = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker",
             "distributed.core", "distributed.comm", "distributed.client")  # fmt: skip
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lv in old.items():
            logging.getLogger(n).setLevel(lv)


def parse(spec: str | None) -> Executor:
    spec = (spec or THREADS).strip()
    if spec == THREADS:
        return Executor()
    if spec.startswith("local-cluster:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or not 1 <= int(n) <= 256:
            raise InputError(f"--executor {spec}: expected local-cluster:N with N workers 1..256")
        nice = os.environ.get("WEIGHTVAULT_CLUSTER_NICE", str(CLUSTER_NICE)).strip()
        if not nice.isdigit() or int(nice) > 19:
            raise InputError(f"$WEIGHTVAULT_CLUSTER_NICE={nice!r}: expected 0..19 (added to "
                             "the LocalCluster's nice value; 0: the driver's priority)")  # fmt: skip
        return Executor(spec, "local", n_workers=int(n), nice=int(nice))
    for scheme in ("dask://", "tcp://", "tls://"):
        if spec.startswith(scheme):
            rest = spec[len(scheme):]
            host, _, port = rest.rpartition(":")
            if not host or not port.isdigit():
                raise InputError(f"--executor {spec}: expected dask://HOST:PORT")
            return Executor(spec, "remote", address=("tcp://" if scheme == "dask://"
                                                     else scheme) + rest)  # fmt: skip
    raise InputError(f"--executor {spec}: expected threads, local-cluster:N or dask://HOST:PORT")


# -- stores, reopened inside a task


@dataclass(frozen=True)
class StoreSpec:
    """How a worker opens the same store: URL, storage options, Object Lock setting."""

    url: str
    options: dict
    object_lock: Any = None

    def open(self):
        from weightvault.storage.opener import open_store

        return open_store(self.url, self.options, object_lock=self.object_lock)


def store_spec(store) -> StoreSpec:
    args = getattr(store, "open_args", None)
    if args is not None:
        return StoreSpec(*args)
    from weightvault.storage.store import LocalStore

    if isinstance(store, LocalStore):
        return StoreSpec(str(store.root), {})
    raise InputError(f"{store.url}: this store cannot be opened on a cluster worker")


def batches(items: list, size_of: Callable[[Any], int], budget: int) -> list[list]:
    """Consecutive items in groups of about `budget` bytes (one item may exceed it)."""
    out: list[list] = []
    cur: list = []
    n = 0
    for it in items:
        s = size_of(it)
        if cur and n + s > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(it)
        n += s
    if cur:
        out.append(cur)
    return out
