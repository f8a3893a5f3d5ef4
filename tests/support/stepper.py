"""Run the real CLI in a subprocess under a test's control, for crash and fault tests.

The process runs in short slices (SIGCONT, a few milliseconds, SIGSTOP). Between slices it is
stopped, every thread of it, so the test can look at what it has written so far and act at an
exact point of its progress: SIGKILL it (a crash), or kill a storage server under it and let
it continue (a fault). Kill points are defined by what is on disk (bytes, files) or by how long
the process has been allowed to run, never by wall-clock timing of the test machine, so a slow
CI machine reaches the same points, only later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def cli(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "weightvault.cli", *map(str, args)]


def _states(pid: int) -> list[str] | None:
    """The scheduler state of every thread of pid; None once it has exited (or is a zombie)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    out = []
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # a thread that just ended
        out.append(raw[raw.rindex(")") + 2])
    if not out or all(s in "ZX" for s in out):
        return None
    return out


@dataclass
class Outcome:
    killed: bool  # we SIGKILLed it (False: it exited by itself)
    code: int
    out: str
    err: str
    ran: float  # seconds it was allowed to run


class Stepper:
    """A CLI process run slice by slice. Use as a context manager: it is killed on exit."""

    def __init__(self, cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
                 slice_s: float = 0.003):  # fmt: skip
        self.slice = slice_s
        self.ran = 0.0
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        self._signal(signal.SIGSTOP)
        self._wait_stopped()

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc) -> None:
        if self.p.poll() is None:
            self._signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.p.communicate(timeout=30)

    @property
    def pid(self) -> int:
        return self.p.pid

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.p.pid, sig)

    def _wait_stopped(self) -> bool:
        """True once every thread is stopped, False if the process has exited."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = _states(self.p.pid)
            if st is None:
                return False
            if all(s in "tTZX" for s in st):
                return True
            time.sleep(0.0002)
        raise TimeoutError(f"process {self.p.pid} did not stop")

    def step(self) -> bool:
        """Let it run one slice. False once it has exited."""
        self._signal(signal.SIGCONT)
        t0 = time.monotonic()
        time.sleep(self.slice)
        self._signal(signal.SIGSTOP)
        alive = self._wait_stopped()
        self.ran += time.monotonic() - t0
        return alive

    def run_until(self, cond: Callable[[], bool], *, limit: float = 300.0) -> bool:
        """Step until cond() holds (checked while it is stopped): True, and it stays stopped.
        False if it exited first."""
        deadline = time.monotonic() + limit
        while True:
            if cond():
                return True
            if not self.step():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not reached in {limit} s: {self.p.args}")

    def kill(self) -> Outcome:
        """SIGKILL, as a crash or an OOM killer would."""
        self._signal(signal.SIGKILL)
        out, err = self.p.communicate(timeout=30)
        return Outcome(self.p.returncode == -signal.SIGKILL, self.p.returncode, out, err,
                       self.ran)  # fmt: skip

    def finish(self, timeout: float = 300.0) -> Outcome:
        """Let it run freely to the end."""
        self._signal(signal.SIGCONT)
        out, err = self.p.communicate(timeout=timeout)
        return Outcome(False, self.p.returncode, out, err, self.ran)


def tree(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under root (files vanishing meanwhile skipped)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(FileNotFoundError):
                out[os.path.relpath(p, root)] = os.lstat(p).st_size
    return out


def io_read_chars(pid: int) -> int:
    """Bytes the process has read through read(2) and friends, sockets included."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CountingProxy:
    """A TCP proxy on loopback in front of a server, counting the bytes the server sends back,
    so a test can act when a client has read so much (a server killed mid-read)."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        import socket
        import threading

        self.upstream = (host, upstream_port)
        self.down = 0
        self._lock = threading.Lock()
        self._socks: list = []
        self._srv = socket.create_server((host, 0))
        self.port = self._srv.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.upstream[0]}:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()  # the server is down: the client sees the connection drop
                continue
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            import socket

            for s in (src, dst):  # shutdown, not just close: it wakes the other pump's recv
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._srv.close()
        import socket

        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
