"""Run the real CLI in a child process with a fixed time and memory bound, and measure it.

The child gets an address-space limit (RLIMIT_AS, 2 GiB: a decompression bomb that tried to
inflate would die of MemoryError rather than take the machine down), the common default limit
of 1024 open files, a maximum file size of 1.5 GiB (RLIMIT_FSIZE: it stands for a filesystem's
or a quota's limit; Python ignores SIGXFSZ, so a write past it fails with EFBIG), and a
wall-clock timeout after which it is killed. Its peak resident memory is read from the kernel's
accounting of that one child (os.wait4), not sampled, through a small intermediate process
(tests/hostile/spawn.py: a child of pytest itself would start from pytest's peak).
"""

from __future__ import annotations

import os
import signal
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


SPAWN = Path(__file__).with_name("spawn.py")


def spawn(argv: list[str], **popen) -> tuple[subprocess.Popen, int]:
    """Start argv under the limits; returns the process and the read end of the pipe on which
    it reports the command's peak RSS (in bytes) when the command ends."""
    r, w = os.pipe()
    cmd = [sys.executable, "-S", str(SPAWN), str(w), str(AS_LIMIT), str(NOFILE), str(FSIZE),
           "--", *argv]  # fmt: skip
    try:
        p = subprocess.Popen(cmd, pass_fds=(w,), start_new_session=True, **popen)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return p, r


def peak_rss(report_fd: int) -> int:
    with os.fdopen(report_fd, "rb") as f:
        data = f.read().strip()
    return int(data) if data else 0


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
        p, report = spawn(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env)
        killed = False
        while True:
            pid, status, _usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
                pid, status, _usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait
        out.seek(0)
        err.seek(0)
        return Run(argv, None if killed else p.returncode, out.read(KEEP).decode(errors="replace"),
                   err.read(KEEP).decode(errors="replace"), peak_rss(report), seconds)  # fmt: skip
