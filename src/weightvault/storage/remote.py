"""Remote stores: S3-compatible object stores and SFTP, over fsspec, with retries.

Transfer policy lives here, storage semantics in store.py: transient failures (connection
refused or reset, timeouts, throttling, 5xx) are retried with exponential backoff; a missing
bucket, bad credentials or a denied permission fail at once with one clear line.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import hashlib
import os
import random
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlparse

import paramiko

from weightvault.errors import CorruptData, InputError, StorageError
from weightvault.storage.store import FsspecStore, Store

T = TypeVar("T")
RETRIES = int(os.environ.get("WEIGHTVAULT_RETRIES", "5"))
BACKOFF = 0.25
_TRANSIENT_S3 = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                 "RequestTimeTooSkewed", "503", "500", "502", "504"}  # fmt: skip
_FATAL_S3 = {
    "NoSuchBucket": "does not exist (no such bucket)",
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "credentials rejected (unknown access key)",
    "SignatureDoesNotMatch": "credentials rejected (wrong secret key)",
    "InvalidToken": "credentials rejected",
    "ExpiredToken": "credentials expired",
}


def _s3_code(e: BaseException) -> str | None:
    for err in (e, e.__cause__, e.__context__):
        resp = getattr(err, "response", None)
        if isinstance(resp, dict):
            return str(resp.get("Error", {}).get("Code") or resp.get("ResponseMetadata", {})
                       .get("HTTPStatusCode"))  # fmt: skip
    return None


def _transient(e: BaseException) -> bool:
    code = _s3_code(e)
    if code is not None:
        return code in _TRANSIENT_S3
    if isinstance(e, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, EOFError)):
        return True
    name = type(e).__name__
    return any(s in name for s in ("Connect", "Timeout", "SSHException", "ClientOSError",
                                   "ServerDisconnected", "IncompleteRead", "ProtocolError"))  # fmt: skip


def with_retries(fn: Callable[[], T], what: str, *, retries: int = RETRIES,
                 on_retry: Callable[[], None] | None = None) -> T:  # fmt: skip
    for attempt in range(retries + 1):
        try:
            return fn()
        except (StorageError, CorruptData, InputError):
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            _retry_or_raise(e, what, attempt, retries, on_retry)
    raise AssertionError("unreachable")


def _retry_or_raise(e: Exception, what: str, attempt: int, retries: int,
                    on_retry: Callable[[], None] | None) -> None:  # fmt: skip
    """After attempt `attempt` failed with `e`: raise what it means, or back off (and
    reconnect) for another try."""
    code = _s3_code(e)
    if code in _FATAL_S3:
        raise StorageError(f"{what}: {_FATAL_S3[code]}") from None
    if isinstance(e, PermissionError):
        raise StorageError(f"{what}: permission denied") from None
    if isinstance(e, (FileNotFoundError, FileExistsError)):
        raise e  # an answer, not a failure (FileExistsError: an exclusive put lost)
    if not _transient(e) or attempt >= retries:
        if os.environ.get("WEIGHTVAULT_DEBUG"):
            raise e
        detail = str(e) or type(e).__name__
        raise StorageError(f"{what}: unreachable or failing ({detail})") from None
    time.sleep(BACKOFF * (2**attempt) * (0.5 + random.random()))
    if on_retry:
        with contextlib.suppress(Exception):
            on_retry()


class RetryingFsspecStore(FsspecStore):
    def _guard(self, fn, what: str):
        try:
            return with_retries(fn, what, on_retry=self._reconnect)
        except FileNotFoundError:
            raise StorageError(f"{what}: missing") from None
        except OSError as e:
            raise StorageError(f"{what}: {e}") from None

    def _reconnect(self) -> None:
        pass

    def iter_list(self, prefix: str) -> Iterator[tuple[str, int]]:
        # one listing serves both: SFTP and S3 stream iter_times
        for key, size, _ in self.iter_times(prefix):
            yield key, size

    def size(self, key: str) -> int | None:
        def info() -> int | None:
            try:
                return int(self.fs.info(self._p(key))["size"])
            except FileNotFoundError:
                return None

        return self._guard(info, self.describe(key))

    def list_dirs(self, prefix: str) -> list[str]:
        def ls() -> list[dict]:
            try:
                return self.fs.ls(self._p(prefix), detail=True)
            except FileNotFoundError:
                return []

        entries = self._guard(ls, self.describe(prefix))
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e["type"] == "directory")  # fmt: skip

    def delete(self, key: str) -> None:
        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._p(key))

        self._guard(rm, self.describe(key))


class SftpStore(RetryingFsspecStore):
    """SFTP with the server's host key pinned (config `host_key`, or known_hosts)."""

    def __init__(self, url: str, options: dict, *, create: bool = False):
        opts = dict(options)
        u = urlparse(url)
        host_key = opts.pop("host_key", None)
        known_hosts = opts.pop("known_hosts", None) or os.path.expanduser("~/.ssh/known_hosts")
        if "identity" in opts:
            opts["key_filename"] = opts.pop("identity")
        opts.setdefault("timeout", 15)
        opts["host_key_policy"] = PinnedHostKey(u.hostname or "", u.port or 22, host_key,
                                                known_hosts)  # fmt: skip
        opts.setdefault("look_for_keys", "key_filename" not in opts)
        self._local = threading.local()
        self._kwargs = {"host": u.hostname, "port": u.port or 22, **opts}
        if u.username:
            self._kwargs.setdefault("username", u.username)
        Store.__init__(self)
        self.url = url.rstrip("/")
        self.root = (u.path or "/").rstrip("/")
        self._dirs: set[str] = set()
        _ = self.fs  # connect now: a bad host, key or host key fails here, in one line
        if create:
            self.ensure_created()

    @property
    def fs(self):
        # One SSH connection per thread: paramiko's SFTP client deadlocks when worker threads
        # share it.
        fs = getattr(self._local, "fs", None)
        if fs is None:
            fs = self._local.fs = self._connect()
        return fs

    def _connect(self):
        from fsspec.implementations.sftp import SFTPFileSystem

        try:
            return SFTPFileSystem(**self._kwargs, skip_instance_cache=True)
        except paramiko.SSHException as e:
            raise StorageError(f"{self.url}: {e}") from None
        except (OSError, EOFError) as e:
            raise StorageError(f"{self.url}: unreachable ({e})") from None

    def _reconnect(self) -> None:
        fs = getattr(self._local, "fs", None)
        self._local.fs = None
        if fs is not None:
            with contextlib.suppress(Exception):
                fs.client.close()

    def iter_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """(key, size, mtime) under `prefix`/, streamed as each directory is read (paramiko's
        listdir_iter: 50 requests in flight), never whole: the pool is one directory, of about
        15 million entries at 1 PB. On an SSH connection of its own: listdir_iter reads its
        replies off the connection itself, so another request on the same connection between
        two entries (the caller's, in this thread) would take them. SFTP cannot resume a
        listing, so a directory whose listing fails part way is listed again from its start
        after the usual backoff: a key may then come twice (an audit's work tables take each
        once), never not at all."""
        cut = len(self.root) + 1
        stack, entered = [self._p(prefix)], set()
        conn: list = []

        def reconnect() -> None:
            with contextlib.suppress(Exception):
                conn.pop().client.close()

        try:
            while stack:
                d = stack.pop()
                for attempt in range(RETRIES + 1):
                    try:
                        if not conn:
                            conn.append(self._connect())
                        for a in conn[0].ftp.listdir_iter(d):
                            path = f"{d}/{a.filename}"
                            if not stat.S_ISDIR(a.st_mode or 0):  # a file (or link, as find)
                                t = a.st_mtime
                                yield path[cut:], int(a.st_size or 0), \
                                    None if t is None else float(t)  # fmt: skip
                            elif path not in entered:
                                entered.add(path)
                                stack.append(path)
                        break
                    except FileNotFoundError:
                        break  # nothing under this prefix (or gone since it was listed)
                    except (StorageError, CorruptData, InputError):
                        raise
                    except Exception as e:  # noqa: BLE001 - classified there
                        _retry_or_raise(e, self._where(d), attempt, RETRIES, reconnect)
        finally:
            while conn:
                reconnect()

    def _open_prefetched(self, path: str, mode: str = "rb"):
        f = self.fs.ftp.open(path, mode)
        f.prefetch()  # pipelined reads: without it each 32 KiB is a round trip (15x slower)
        return f

    def open_read(self, key: str):
        import io

        from weightvault.storage.store import _CountingReader

        try:
            f = with_retries(lambda: self._open_prefetched(self._p(key)), self.describe(key),
                             on_retry=self._reconnect)  # fmt: skip
        except FileNotFoundError:
            raise StorageError(f"{self.describe(key)}: missing") from None
        reader = _CountingReader(f, self.counters, key, self.describe(key))
        return io.BufferedReader(reader, 1 << 20)

    def _readback_opener(self):
        return self._open_prefetched

    def _rename(self, src: str, dst: str, exclusive: bool) -> bool:
        # posix_rename replaces atomically (an OpenSSH extension); plain SSH_FXP_RENAME refuses
        # an existing target (OpenSSH's server links, then unlinks), which makes it the atomic
        # create-if-absent an exclusive put needs; fsspec's mv is copy-then-delete
        if not exclusive:
            self._guard(lambda: self.fs.ftp.posix_rename(src, dst), self._where(dst))
            return True

        def rename() -> bool:
            try:
                self.fs.ftp.rename(src, dst)
                return True
            except OSError as e:
                refused = e
            try:
                self.fs.ftp.stat(dst)
            except FileNotFoundError:
                raise refused from None  # not because of the target: a real failure, retried
            return False  # another writer got there first

        return self._guard(rename, self._where(dst))


class PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """paramiko host key policy: accept only the configured key or one in known_hosts."""

    def __init__(self, host: str, port: int, pinned: str | None, known_hosts: str):
        self.host, self.port, self.pinned, self.known_hosts = host, port, pinned, known_hosts
        self._keys = paramiko.HostKeys()
        if pinned:
            parts = pinned.split()
            if len(parts) < 2:
                raise InputError(f"host_key {pinned!r}: expected 'TYPE BASE64'")
            try:
                key = paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
            except Exception:  # noqa: BLE001 - paramiko raises several kinds
                raise InputError(
                    f"host_key {pinned[:40]!r}...: not a valid SSH public key"
                ) from None
            self._keys.add(self._name(), key.get_name(), key)
        elif os.path.exists(known_hosts):
            self._keys.load(known_hosts)

    def _name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def missing_host_key(self, client, hostname, key) -> None:
        found = self._keys.lookup(self._name()) or self._keys.lookup(hostname)
        if found and found.get(key.get_name()) == key:
            return
        client.close()
        where = "the configured host_key" if self.pinned else self.known_hosts
        raise paramiko.SSHException(
            f"host key {key.get_name()} SHA256:{base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip('=')} "
            f"of {self._name()} is not the one pinned in {where}; refusing to connect"
        )

    def __repr__(self) -> str:  # fsspec keys its instance cache on the options' repr
        return f"PinnedHostKey({self._name()}, {self.pinned or self.known_hosts})"


class S3Store(RetryingFsspecStore):
    """S3: every object is one PUT carrying its SHA-256, checked by the server on arrival;
    optional Object Lock retention on every object written."""

    has_checksums = True

    def __init__(self, url: str, options: dict, *, object_lock=None,
                 create: bool = False):  # fmt: skip
        opts = dict(options)
        ep = opts.pop("endpoint_url", None)
        if ep:
            opts.setdefault("client_kwargs", {})["endpoint_url"] = ep
        cfg = opts.setdefault("config_kwargs", {})
        cfg.setdefault("proxies", {})
        cfg.setdefault("connect_timeout", 10)
        cfg.setdefault("read_timeout", 60)
        # one layer of retries (ours, which knows what is fatal), not three stacked. botocore
        # reads max_attempts as retries after the first try (so 1 meant two requests per
        # attempt of ours); total_max_attempts counts them all
        cfg.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        opts.setdefault("skip_instance_cache", True)
        # s3fs's listing cache answers for keys written after a listing from that listing:
        # a new object reads as missing, a deleted one as present. The log's writer took its
        # own published tiles for leftovers that way and overwrote them (a fork).
        opts["use_listings_cache"] = False
        super().__init__(url, opts, create=False)
        self._options = opts
        # s3fs retries cut-off reads and some timeouts five times itself, sleeping up to 15 s
        # each, under each of our attempts: one try per attempt of ours
        self.fs.retries = 1
        self.bucket = self.root.split("/", 1)[0]
        self.object_lock = object_lock
        self._check_bucket()
        if object_lock:
            self._check_object_lock()

    def ensure_created(self) -> None:
        pass  # single PUTs need no scratch area; the bucket itself is checked in __init__

    def _call(self, method: str, **kw) -> Any:
        from fsspec.asyn import sync

        return sync(self.fs.loop, self.fs._call_s3, method, **kw)

    def _check_bucket(self) -> None:
        # A GET, not a HEAD: only a response body says *why* (wrong key, wrong secret, denied)
        try:
            with_retries(lambda: self._call("list_objects_v2", Bucket=self.bucket, MaxKeys=1),
                         f"{self.url}: bucket {self.bucket!r}", retries=2)  # fmt: skip
        except FileNotFoundError:
            raise StorageError(f"{self.url}: bucket {self.bucket!r} does not exist") from None

    def _check_object_lock(self) -> None:
        try:
            cfg = with_retries(
                lambda: self._call("get_object_lock_configuration", Bucket=self.bucket),
                self.url, retries=2,
            )  # fmt: skip
            enabled = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except (FileNotFoundError, StorageError, OSError):
            enabled = False
        if not enabled:
            raise StorageError(
                f"{self.url}: object_lock is configured but bucket {self.bucket!r} has no Object "
                "Lock; create the bucket with Object Lock enabled or remove object_lock"
            )

    def _key(self, key: str) -> str:
        return f"{self.root}/{key}".split("/", 1)[1]

    def iter_times(self, prefix: str, *, page: int = 1000) -> Iterator[tuple[str, int, float | None]]:
        """(key, size, LastModified) under `prefix`/, one ListObjectsV2 page at a time (each
        page retried alone): an audit or gc of a pool of millions of objects never holds its
        whole listing."""
        base = self._key(prefix).rstrip("/") + "/"
        cut = len(self._key(""))
        token: dict = {}
        while True:
            resp = self._guard(lambda kw=token: self._call(
                "list_objects_v2", Bucket=self.bucket, Prefix=base, MaxKeys=page, **kw),
                self.describe(prefix))  # fmt: skip
            for o in resp.get("Contents", ()):
                t = o.get("LastModified")
                yield o["Key"][cut:], int(o.get("Size") or 0), \
                    t.timestamp() if hasattr(t, "timestamp") else None  # fmt: skip
            if not resp.get("IsTruncated"):
                return
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    def prune_dirs(self, prefix: str) -> None:
        pass  # an object store has no directories to leave behind

    def lock_enabled(self) -> bool:
        """Does the bucket have Object Lock (whatever this replica's config says)?"""
        try:
            cfg = with_retries(
                lambda: self._call("get_object_lock_configuration", Bucket=self.bucket),
                self.url, retries=2,
            )  # fmt: skip
        except (FileNotFoundError, StorageError, OSError):
            return False
        return cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def lock_state(self, key: str) -> tuple[dt.datetime | None, bool] | None:
        """(retain-until date, legal hold on) of an object's Object Lock, from one HEAD;
        None if the object is gone."""
        try:
            head = with_retries(lambda: self._call("head_object", Bucket=self.bucket,
                                                   Key=self._key(key)), self.describe(key))  # fmt: skip
        except FileNotFoundError:
            return None
        return (head.get("ObjectLockRetainUntilDate"),
                head.get("ObjectLockLegalHoldStatus") == "ON")  # fmt: skip

    @functools.cached_property
    def _reader(self):
        """storage.s3read's reader for these options, or None (s3fs reads)."""
        from weightvault.storage import s3read

        return s3read.for_options("s3://" + self.root, self._options)

    def open_read(self, key: str):
        """One GET streamed from the socket (storage.s3read), where the options allow: s3fs's
        file object copies each byte three to four times more on its way to the hash."""
        import io

        from weightvault.storage.store import _CountingReader

        fast = self._reader

        def op():
            if fast is not None:
                return fast.open_stream(self._p(key), what=self.describe(key))
            return self.fs.open(self._p(key), "rb", block_size=4 << 20, cache_type="readahead")

        try:
            f = with_retries(op, self.describe(key))
        except FileNotFoundError:
            raise StorageError(f"{self.describe(key)}: missing") from None
        reader = _CountingReader(f, self.counters, key, self.describe(key))
        return io.BufferedReader(reader, 1 << 20)

    def checksum(self, key: str) -> str | None:
        """The server-side SHA-256 (hex) of an object, without reading its bytes; None if the
        object has none (written without a checksum). Missing object: StorageError."""
        try:
            head = with_retries(lambda: self._call("head_object", Bucket=self.bucket,
                                                   Key=self._key(key), ChecksumMode="ENABLED"),
                                self.describe(key))  # fmt: skip
        except FileNotFoundError:
            raise StorageError(f"{self.describe(key)}: missing") from None
        b64 = head.get("ChecksumSHA256")
        if not b64 or "-" in b64:  # a multipart composite is not a digest of the bytes
            return None
        return base64.b64decode(b64).hex()

    def _finish(self, tmp_key: str, key: str, exclusive: bool, sha256: str | None) -> bool:
        # No read-back on S3: the PUT carries the SHA-256 and the server refuses other bytes.
        try:
            h = hashlib.sha256()
            with open(tmp_key, "rb") as f:
                while data := f.read(1 << 20):
                    h.update(data)
            kw: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ChecksumAlgorithm": "SHA256",
                "ChecksumSHA256": base64.b64encode(h.digest()).decode(),
            }
            if exclusive:
                kw["IfNoneMatch"] = "*"
            if self.object_lock:
                until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.object_lock.days)
                kw["ObjectLockMode"] = self.object_lock.mode
                kw["ObjectLockRetainUntilDate"] = until

            def put() -> None:
                with open(tmp_key, "rb") as f:
                    try:
                        self._call("put_object", Body=f, **kw)
                    except OSError as e:
                        # s3fs makes a lost If-None-Match a FileExistsError only when the
                        # server names the condition (AWS does, SeaweedFS does not)
                        if exclusive and _s3_code(e) in ("PreconditionFailed", "412"):
                            raise FileExistsError(self.describe(key)) from None
                        raise

            try:
                with_retries(put, self.describe(key))
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp_key)


def open_remote(url: str, options: dict | None, *, object_lock=None,
                create: bool = False) -> Store:  # fmt: skip
    scheme = urlparse(url).scheme
    options = dict(options or {})
    if scheme in ("s3", "s3a"):
        return S3Store(url, options, object_lock=object_lock, create=create)
    if object_lock:
        raise InputError(f"{url}: object_lock is only available on s3:// replicas")
    if scheme in ("sftp", "ssh"):
        return SftpStore(url, options, create=create)
    store = RetryingFsspecStore(url, options, create=create)
    return store
