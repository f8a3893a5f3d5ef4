"""Where the work runs: this process's threads (the default), or a Dask cluster.

`--executor threads` | `local-cluster:N` (a LocalCluster of N worker processes started for
the command) | `dask://HOST:PORT` (an existing scheduler; `tcp://` and `tls://` work too).
Dask is an optional extra: `pip install weightvault[dask]`.

What crosses to a worker is only what the task needs: a store's URL and storage options, a
source's URL and options, chunk plans. Never a signing key, an identity or a data key: the
driver alone signs and commits. Filesystems are made inside tasks (s3fs is not fork-safe,
and a worker on another machine has its own network and credentials).
"""

from __future__ import annotations

import contextlib
import logging
import os
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


@dataclass
class Executor:
    """An executor named on the command line; `cluster()` connects (or starts) it."""

    spec: str = THREADS
    kind: str = THREADS  # threads | local | remote
    n_workers: int = 0
    address: str = ""
    # bytes of chunks per task; $WEIGHTVAULT_TASK_BYTES overrides (tests split small files)
    task_bytes: int = field(default_factory=lambda: int(os.environ.get("WEIGHTVAULT_TASK_BYTES",
                                                                       TASK_BYTES)))  # fmt: skip
    _client: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.kind != THREADS

    @contextlib.contextmanager
    def cluster(self) -> Iterator[Any]:
        """A dask.distributed Client for the length of one command."""
        if self._client is not None:
            yield self._client
            return
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError(f"--executor {self.spec} needs Dask: pip install "
                             "'weightvault[dask]'") from None  # fmt: skip
        with _quiet():
            if self.kind == "local":
                cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None)  # fmt: skip
                client = Client(cluster)
            else:
                cluster = None
                try:
                    client = Client(self.address, timeout="10s")
                except (OSError, TimeoutError) as e:
                    raise StorageError(f"--executor {self.spec}: cannot reach the Dask "
                                       f"scheduler ({e})") from None  # fmt: skip
        self._client = client
        try:
            yield client
        finally:
            self._client = None
            with _quiet(), contextlib.suppress(Exception):
                client.close()
                if cluster is not None:
                    cluster.close()

    def map(self, fn: Callable, items: Iterable, *, label: str = "task",
            on_done: Callable[[int, Any], None] | None = None) -> list:  # fmt: skip
        """Run fn(*item) for every item on the cluster; results in item order. A task whose
        worker died is run again elsewhere; the first task that raised raises here."""
        from distributed import as_completed

        items = list(items)
        with self.cluster() as client:
            futs = [client.submit(fn, *it, pure=False, key=f"{label}-{i}-"
                                  f"{_token()}") for i, it in enumerate(items)]  # fmt: skip
            index = {f.key: i for i, f in enumerate(futs)}
            out: list = [None] * len(futs)
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
        return out


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
        return Executor(spec, "local", n_workers=int(n))
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
