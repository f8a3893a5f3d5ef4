"""`--executor local-cluster:N`: a Dask LocalCluster in a process of its own.

    python -m weightvault.localcluster N [NICE]

The driver starts this at the top of a command and goes on with its own work (executors.py).
It prints the scheduler's address once the N workers are up, then waits until its standard
input closes: the driver is done with it, or died. Then it exits at once, and its workers with
it (each watches its parent through a pipe: distributed's AsyncProcess). A separate process,
rather than a LocalCluster inside the driver, keeps the scheduler off the driver's interpreter
while the driver works, and lets a command that finished early stop a cluster still starting
without waiting for it. It is exec'd fresh: nothing of the driver's memory (no signing key).

NICE (executors.py: $WEIGHTVAULT_CLUSTER_NICE, default 10) is added to this process's nice
value before anything else, and its forkserver, scheduler and workers inherit it. Most of the
start's CPU is importing Dask (here and in the forkserver): that is done on a thread of its
own at Linux's idle scheduling policy (idle_imports), which any other runnable thread of the
machine preempts at once, so the speculative start takes only CPU the driver leaves idle. The
threads that go on to schedule and run tasks never had that policy: they keep the nice value
(a process at the idle policy could never leave it without privileges). Why this costs a long
job nothing is in executors.py.
"""

from __future__ import annotations

import os
import sys


def idle_imports(names) -> None:
    """Import `names` on a thread at the idle scheduling policy (SCHED_IDLE is per thread on
    Linux; elsewhere the thread keeps the process's nice value), and wait for it: the modules
    are then loaded for the whole process, whose other threads never changed policy."""
    import contextlib
    import importlib
    import threading

    def run() -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        for name in names:
            with contextlib.suppress(ImportError):  # the caller's own import says why
                importlib.import_module(name)

    t = threading.Thread(target=run, name="weightvault-idle-imports")
    t.start()
    t.join()


def main() -> None:
    nice = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if nice:
        os.nice(nice)
        idle_imports(("dask", "distributed"))
    from weightvault.executors import _start_local

    # the address goes out on a copy of stdout that the cluster's processes do not inherit (they
    # get stderr as their stdout): the driver's read ends when this process does, not theirs
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    cluster = _start_local(int(sys.argv[1]), idle=bool(nice))
    out.write(cluster.scheduler_address + "\n")
    out.flush()
    sys.stdin.buffer.read()  # until the driver closes it, or dies
    os._exit(0)  # nothing the workers still hold is wanted; they exit with this process


if __name__ == "__main__":
    main()
