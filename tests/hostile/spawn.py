"""Intermediate process of tests/hostile/run.py: set the limits, run the command as a child
of this small process, and report that child's own peak RSS.

Why not run the command directly: on exec the kernel records the peak RSS of the address
space being replaced as the new program's, and a child of pytest (forked or vforked) starts
from pytest's, which late in a full run is several hundred MiB. Forked from this process
instead, the command starts from a few MiB. Usage: spawn.py REPORT_FD AS NOFILE FSIZE -- ARGV
"""

import os
import resource
import signal
import sys


def main() -> None:
    report_fd, as_limit, nofile, fsize = map(int, sys.argv[1:5])
    argv = sys.argv[6:]
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.set_inheritable(report_fd, False)  # EOF for the reader once this process is gone
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    os.write(report_fd, f"{usage.ru_maxrss * 1024}\n".encode())
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: die of the same one, so the caller sees what happened
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
