"""What a LocalCluster's forkserver imports (executors._start_local): Dask and the task code of
weightvault, so that every worker forked from the forkserver starts with them loaded; on a
thread at the idle scheduling policy (localcluster.idle_imports), so that this, most of a
cluster's start-up CPU, takes only what the driver leaves idle. The forkserver's own thread,
which forks the workers, keeps the process's priority."""

from weightvault.executors import _PRELOAD
from weightvault.localcluster import idle_imports

idle_imports(_PRELOAD)
