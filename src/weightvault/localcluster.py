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
value before anything else, so its imports, the forkserver, the scheduler and the workers (all
of which inherit it) take the CPU only where the driver leaves it idle; why that costs a long
job nothing is in executors.py.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    if len(sys.argv) > 2 and int(sys.argv[2]):
        os.nice(int(sys.argv[2]))  # first: the imports below are most of the start's CPU
    from weightvault.executors import _start_local

    # the address goes out on a copy of stdout that the cluster's processes do not inherit (they
    # get stderr as their stdout): the driver's read ends when this process does, not theirs
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    cluster = _start_local(int(sys.argv[1]))
    out.write(cluster.scheduler_address + "\n")
    out.flush()
    sys.stdin.buffer.read()  # until the driver closes it, or dies
    os._exit(0)  # nothing the workers still hold is wanted; they exit with this process


if __name__ == "__main__":
    main()
