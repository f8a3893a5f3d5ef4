"""Real storage servers on 127.0.0.1 for tests: SeaweedFS (S3) and OpenSSH sshd (SFTP).

Both are context managers independent of pytest::

    with SeaweedS3() as s3:
        s3.make_bucket("vault", object_lock=True)
        fs = s3fs.S3FileSystem(**s3.storage_options())

    with SshServer() as ssh:
        fs = fsspec.filesystem("sftp", **ssh.storage_options())
        fs.put_file(local, f"{ssh.root}/x")

Nothing listens beyond loopback and nothing is contacted beyond it: SeaweedFS telemetry is
off and the clients built here ignore proxy environment variables.

SeaweedFS pitfalls handled here (``weed`` 4.48, ``weed mini``):

* an HTTP port given by flag that is taken makes ``weed`` exit, but a taken gRPC port is
  silently replaced by another one, so after start-up every port is checked against the
  process's own listening sockets;
* the embedded worker dials the admin gRPC port at admin HTTP port + 10000 whatever
  ``-admin.port.grpc`` says, so every gRPC port is its HTTP port + 10000;
* gRPC unix sockets go to ``/tmp/seaweedfs-<svc>-grpc-<port>.sock`` regardless of TMPDIR and
  survive a SIGKILL; they are removed at stop (only those named after our ports);
* the data dir is deleted only after the process has exited (deleting first can hang it).

sshd forks one process per connection and each calls setsid(), so killing the listener's
process group misses live sessions: the whole process tree is signalled.

fsspec's SFTPFileSystem trusts any host key on first use by default and never loads a
known_hosts file (so ``host_key_policy="reject"`` refuses every host); ``storage_options()``
pins the key with :class:`PinnedHostKeyPolicy` (``host_key_policy`` needs fsspec >= 2026.9.0).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
_GRPC_OFFSET = 10000  # SeaweedFS's own convention, see module docstring
_WEED_SERVICES = ("master", "volume", "filer", "s3", "admin")


# ---------------------------------------------------------------- ports and processes


def _port_is_free(port: int) -> bool:
    # No SO_REUSEADDR: stricter than the servers' own bind, so a yes here is a real yes.
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port that is free right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _free_weed_ports() -> dict[str, int]:
    """HTTP ports P with P and P + 10000 free, below the ephemeral range (32768+) so
    outgoing connections cannot take them between the check and weed's bind."""
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    while len(chosen) < len(_WEED_SERVICES):
        port = random.randrange(10000, 22700)
        pair = {port, port + _GRPC_OFFSET}
        if pair & taken or not all(map(_port_is_free, pair)):
            continue
        chosen[_WEED_SERVICES[len(chosen)]] = port
        taken |= pair
    return chosen


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, starttime) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def _process_tree(root: int) -> list[tuple[int, str]]:
    """(pid, starttime) of root and all its descendants, children before parents."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))):
            children.setdefault(st[0], []).append(int(entry))
    order: list[int] = []

    def visit(pid: int) -> None:
        for child in children.get(pid, []):
            visit(child)
        order.append(pid)

    visit(root)
    # starttime guards against signalling a recycled pid later on
    return [(pid, st[2]) for pid in order if (st := _stat(pid))]


def _alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"


def _reaped(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is None or st[2] != start


def _end_process(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM a server and every process it spawned, children first; SIGKILL whatever is
    still alive after ``grace`` seconds (0: SIGKILL at once).

    A dead child gets a moment to be reaped by its parent before that parent is signalled:
    orphans go to PID 1, and this machine's PID 1 leaves zombies around for a while.
    """
    if proc is None:
        return
    deadline = time.monotonic() + grace
    tree = _process_tree(proc.pid) if proc.poll() is None else []
    for pid, start in tree:
        if pid == proc.pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if deadline > time.monotonic():
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=deadline - time.monotonic())
            continue  # SIGKILLed with its group below
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # sshd session processes can sit out a SIGTERM: give children a second at most
            if sig == signal.SIGTERM:
                until = min(deadline, time.monotonic() + 1)
            else:
                until = time.monotonic() + 10
            if not _alive(pid, start) or time.monotonic() >= until:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            while _alive(pid, start) and time.monotonic() < until:
                time.sleep(0.02)
        reap_by = time.monotonic() + 0.5
        while not _reaped(pid, start) and time.monotonic() < reap_by:
            time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the server itself and any stray in its group
    proc.wait(timeout=10)
    if survivors := [pid for pid, start in tree if _alive(pid, start)]:
        raise RuntimeError(f"processes survived SIGKILL: {survivors}")


def _listening_ports(pid: int) -> set[int]:
    """TCP ports on which the process itself holds a listening socket."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # 0A: TCP_LISTEN
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- SeaweedFS


class SeaweedS3:
    """``weed mini`` (master, volume, filer, S3) on loopback with a random key pair.

    Buckets are not created on upload (unlike weed's default) and a non-empty bucket cannot
    be deleted, as on AWS.
    """

    def __init__(self, *, base_dir: str | os.PathLike | None = None, startup_timeout: float = 60.0,
                 extra_args: tuple[str, ...] = ()):  # fmt: skip
        self.extra_args = tuple(extra_args)  # benchmarks: a tuned server (-filer.maxMB=64 ...)
        self.dir = Path(tempfile.mkdtemp(prefix="wv-weed-", dir=base_dir))
        self.startup_timeout = startup_timeout
        self.access_key = "wv" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log = self.dir / "weed.out"
        self._ports_seen: set[int] = set()  # includes gRPC ports weed moved to by itself

    # -- life cycle

    def __enter__(self) -> SeaweedS3:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SeaweedS3:
        """Start on fresh free ports, or on the same ports again after stop/kill."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("already running")
        attempts = 1 if self.ports else 3  # fresh ports may lose a race: pick again
        for attempt in range(attempts):
            if not self.ports or attempt:
                self.ports = _free_weed_ports()
            try:
                self._launch()
                return self
            except _PortTrouble:
                _end_process(self._proc, 0)
                self._remove_grpc_sockets()
                if attempt == attempts - 1:
                    raise
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to 15 s, SIGKILL; then delete the data dir and the sockets."""
        self._halt(grace=15)
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as in a crash. Data stays for :meth:`restart` (or :meth:`stop`)."""
        self._halt(grace=0)

    def restart(self, *, graceful: bool = True) -> None:
        """Stop (keeping data) and start again on the same ports and keys."""
        self._halt(grace=15 if graceful else 0)
        self.start()

    def _halt(self, grace: float) -> None:
        _end_process(self._proc, grace)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        ports = self._ports_seen | {p + _GRPC_OFFSET for p in self.ports.values()}
        for port in ports:
            for d in {Path("/tmp"), Path(tempfile.gettempdir())}:
                for sock in d.glob(f"seaweedfs-*-grpc-{port}.sock"):
                    sock.unlink(missing_ok=True)
        self._ports_seen.clear()

    def _launch(self) -> None:
        for sub in ("data", "logs", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        config = self.dir / "s3.json"
        identity = {
            "name": "test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        # Stale sockets from a SIGKILLed run carry our port numbers.
        self._remove_grpc_sockets()
        for name in ("s3.sock", "filer.sock"):
            (self.dir / name).unlink(missing_ok=True)
        port_flags = []
        for svc, port in self.ports.items():
            port_flags += [f"-{svc}.port={port}", f"-{svc}.port.grpc={port + _GRPC_OFFSET}"]
        cmd = [
            shutil.which("weed") or "weed", f"-logdir={self.dir / 'logs'}", "mini",
            f"-dir={self.dir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-s3.config={config}", f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
            *port_flags, *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(self.dir / "tmp")}
        t0 = time.monotonic()
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        self._wait_ready(t0)
        self._check_ports(t0)
        self.startup_seconds = time.monotonic() - t0

    def _check_ports(self, t0: float) -> None:
        """Every port asked for, and no other: the admin server may still be starting after
        S3 works, while a port weed moved on its own never comes."""
        expected = {p + off for p in self.ports.values() for off in (0, _GRPC_OFFSET)}
        while True:
            actual = _listening_ports(self._proc.pid)
            self._ports_seen |= actual
            if actual == expected:
                return
            if actual - expected or time.monotonic() - t0 > self.startup_timeout:
                raise _PortTrouble(
                    f"weed listens on {sorted(actual)}, asked for {sorted(expected)}\n"
                    + _tail(self._log)
                )
            time.sleep(0.05)

    def _wait_ready(self, t0: float) -> None:
        """Until a real PUT succeeds. The banner's 'ready' does not mean that: after a SIGKILL
        the first PUT can wait about 5 s for a writable volume."""
        client = self.client(connect_timeout=1, read_timeout=15, retries={"max_attempts": 1})
        probe = "wv-probe-" + secrets.token_hex(4)
        last: Exception | None = None
        while time.monotonic() - t0 < self.startup_timeout:
            if self._proc.poll() is not None:
                log = _tail(self._log)
                if "Port allocation failed" in log:
                    raise _PortTrouble(log)
                raise RuntimeError(f"weed exited with {self._proc.returncode}:\n{log}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # noqa: BLE001 - anything means "not ready yet"
                last = e
                time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS not ready after {self.startup_timeout:.0f} s (last error: {last!r}):\n"
            + _tail(self._log)
        )

    # -- clients

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self._log, lines)

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
            "config_kwargs": {"proxies": {}},  # never send loopback traffic to an env proxy
        }

    def client(self, **config: Any):
        """An S3 client (botocore's, which boto3 only wraps: s3fs already brings botocore, and
        a separate boto3 must match the botocore that aiobotocore pins, which made pip walk back
        through every boto3 release); keyword arguments go to ``botocore.config.Config``."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(**{"proxies": {}, "retries": {"max_attempts": 3}, **config}),
        )

    def make_bucket(self, name: str, object_lock: bool = False) -> str:
        """Create a bucket; with ``object_lock`` it is also versioned (checked, not assumed)."""
        client = self.client()
        if object_lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
            lock = client.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]
            versioning = client.get_bucket_versioning(Bucket=name).get("Status")
            if lock.get("ObjectLockEnabled") != "Enabled" or versioning != "Enabled":
                raise RuntimeError(f"object lock not in force on {name}: {lock}, {versioning}")
        else:
            client.create_bucket(Bucket=name)
        return name


class _PortTrouble(RuntimeError):
    pass


# ---------------------------------------------------------------- sshd


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept a server only if its host key is listed in ``known_hosts_path``.

    fsspec's SFTPFileSystem loads no known_hosts file, so every key reaches this policy;
    a key that is not listed raises instead of being trusted on first use.
    """

    def __init__(self, known_hosts_path: str | os.PathLike):
        self.known_hosts_path = str(known_hosts_path)
        self._keys = paramiko.HostKeys(self.known_hosts_path)

    def missing_host_key(self, client, hostname, key) -> None:
        if not self._keys.check(hostname, key):
            client.close()  # else paramiko leaves the transport thread and socket open
            raise paramiko.SSHException(
                f"host key {key.get_name()} {key.fingerprint} for {hostname} "
                f"is not pinned in {self.known_hosts_path}"
            )

    def __repr__(self) -> str:  # fsspec keys its instance cache on the repr of the options
        return f"PinnedHostKeyPolicy({self.known_hosts_path!r})"


def _ed25519_keypair(private_path: Path, comment: str) -> str:
    """Write an OpenSSH private key (mode 0600) and its .pub; return the public line."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    public_line = public.decode()
    Path(f"{private_path}.pub").write_text(f"{public_line} {comment}\n")
    return public_line


class SshServer:
    """Debian's sshd on 127.0.0.1, key login only, for the current user, with SFTP."""

    host = LOOPBACK

    def __init__(self, *, base_dir: str | os.PathLike | None = None, startup_timeout: float = 20.0):
        self.dir = Path(tempfile.mkdtemp(prefix="wv-sshd-", dir=base_dir))
        self.startup_timeout = startup_timeout
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.root = self.dir / "root"
        self.client_key_path = self.dir / "client_ed25519"
        self.known_hosts_path = self.dir / "known_hosts"
        self.port: int | None = None
        self.host_public_key: str | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log = self.dir / "sshd.log"

    def __enter__(self) -> SshServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SshServer:
        sshd = shutil.which("sshd", path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
        if not sshd:
            raise RuntimeError("sshd not found: apt-get install openssh-server")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation chroot
        self.root.mkdir()
        host_key = self.dir / "ssh_host_ed25519_key"
        self.host_public_key = _ed25519_keypair(host_key, "weightvault-test-host")
        client_public = _ed25519_keypair(self.client_key_path, "weightvault-test-client")
        authorized = self.dir / "authorized_keys"
        authorized.write_text(client_public + "\n")
        t0 = time.monotonic()
        for attempt in range(3):  # the kernel's free port may be taken before sshd binds it
            self.port = free_port()
            self.known_hosts_path.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
            config = self.dir / "sshd_config"
            config.write_text(
                "\n".join([
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",  # the temp dir and keys are not laid out as in ~/.ssh
                    "UsePAM no",
                    "UseDNS no",
                    "MaxStartups 100",  # tests open connections in parallel
                    "Subsystem sftp internal-sftp",
                ]) + "\n"
            )  # fmt: skip
            with open(self._log, "ab") as log:
                # absolute path: sshd refuses to re-exec itself otherwise
                self._proc = subprocess.Popen(
                    [sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            try:
                self._wait_ready()
                break
            except _PortTrouble:
                _end_process(self._proc, 0)
                if attempt == 2:
                    raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self) -> None:
        """Until an SFTP session with the pinned host key and the client key works."""
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = _tail(self._log)
                if "Address already in use" in log:
                    raise _PortTrouble(log)
                raise RuntimeError(f"sshd exited with {self._proc.returncode}:\n{log}")
            try:
                with self.ssh_client() as client, client.open_sftp() as sftp:
                    sftp.listdir(str(self.root))
                return
            except (OSError, paramiko.SSHException) as e:
                last = e
                if isinstance(e, OSError) and e.errno not in (errno.ECONNREFUSED, None):
                    raise
                time.sleep(0.1)
        raise TimeoutError(
            f"sshd not ready after {self.startup_timeout:.0f} s (last error: {last!r}):\n"
            + _tail(self._log)
        )

    def stop(self) -> None:
        """SIGTERM sshd and its session processes, SIGKILL after 10 s, delete the temp dir."""
        _end_process(self._proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL sshd and every session: connections drop mid-transfer."""
        _end_process(self._proc, 0)

    def restart(self) -> None:
        """Start sshd again (after :meth:`kill`) on the same port, keys and files."""
        _end_process(self._proc, 0)
        sshd = shutil.which("sshd", path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._wait_ready()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self._log, lines)

    def storage_options(self, known_hosts_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem("sftp", ...)``, host key pinned."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "key_filename": str(self.client_key_path),
            "look_for_keys": False,  # only the key given, not ~/.ssh/id_*
            "allow_agent": False,
            "timeout": 10,
            "host_key_policy": PinnedHostKeyPolicy(known_hosts_path or self.known_hosts_path),
        }

    def ssh_client(self) -> paramiko.SSHClient:
        """A connected paramiko client (same pinning as :meth:`storage_options`)."""
        opts = self.storage_options()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(opts.pop("host_key_policy"))
        try:
            client.connect(opts.pop("host"), **opts)
        except BaseException:
            client.close()
            raise
        return client
