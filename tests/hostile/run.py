"""Run the real CLI in a child process with a fixed time and memory bound, and measure it.

The child gets an address-space limit (RLIMIT_AS, 2 GiB: a decompression bomb that tried to
inflate would die of MemoryError rather than take the machine down), the common default limit
of 1024 open files, a maximum file size of 1.5 GiB (RLIMIT_FSIZE: it stands for a filesystem's
or a quota's limit; Python ignores SIGXFSZ, so a write past it fails with EFBIG), and a
wall-clock timeout after which it is killed. Its peak resident memory is read from the kernel's
accounting of that one child (os.wait4), not sampled.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

AS_LIMIT = 2 << 30
NOFILE = 1024
FSIZE = 3 << 29
TIMEOUT = 60.0
PREFIX = "weightvault: error: "
KEEP = 1 << 20  # bytes of each output stream kept for the assertions


@dataclass(repr=False)
class Run:
    args: tuple[str, ...]
    code: int | None  # None: killed at the timeout
    out: str
    err: str
    maxrss: int  # bytes
    seconds: float

    def __repr__(self) -> str:  # cheap: pytest shows it in every failure report
        return f"Run({' '.join(self.args[:2])}, exit {self.code})"

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    def describe(self) -> str:
        return (f"weightvault {' '.join(self.args)}\n  exit {self.code}, "
                f"{self.maxrss >> 20} MiB peak, {self.seconds:.2f} s\n"
                f"  stdout: {self.out[:2000]!r}\n  stderr: {self.err[-4000:]!r}")  # fmt: skip


def _limits() -> None:  # runs in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child_env(tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    # scratch files of the child land where the test can check that none are left behind;
    # one BLAS thread keeps the address space small and the same on every machine
    env.update(TMPDIR=str(tmpdir), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
    return env


def run_cli(*args: str | os.PathLike, cwd: Path, env: dict[str, str],
            timeout: float = TIMEOUT) -> Run:  # fmt: skip
    argv = tuple(map(str, args))
    cmd = [sys.executable, "-m", "weightvault.cli", *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                             env=env, preexec_fn=_limits)  # fmt: skip
        killed = False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                p.kill()
                killed = True
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait
        out.seek(0)
        err.seek(0)
        return Run(argv, None if killed else p.returncode, out.read(KEEP).decode(errors="replace"),
                   err.read(KEEP).decode(errors="replace"), usage.ru_maxrss * 1024, seconds)  # fmt: skip
