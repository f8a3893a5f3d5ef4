"""An S3 source read in place: botocore's synchronous client lists, HEADs and presigns;
range GETs on the presigned URLs go over http.client straight into buffers this process
owns.

Why not s3fs, as for every other fsspec URL: for the 1 GiB benchmark model, s3fs (aiobotocore,
aiohttp, httpx) costs about 0.6 CPU-s to import and set up, and its cat_file and urllib3's
readinto each copy the body once more than needed: 1.8-2.3 CPU-s of client CPU per GiB
read, against 0.6-0.7 for http.client's readinto into our buffer (benchmarks/README.md,
"Seal from object storage"). On a sealer whose cores are busy encoding, that is the gap
between a bucket seal and a disk seal.

Authentication is botocore's: its credential chain, endpoint, region and signature are
what the presigned URL carries; nothing here signs. Every GET carries `If-Match` with the
ETag the listing gave (and the version id, where it gave one), so bytes of a newer object
never reach a seal: an overwrite fails the next range read, not only the final check.

Storage options are s3fs's (they are also what other fsspec URLs take); an option this
reader cannot honour exactly as s3fs would (requester pays, extra request parameters such as
SSE-C keys, a proxy, an unknown option) leaves the source to s3fs: `for_options` says None.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
from urllib.parse import urlsplit

from weightvault.errors import InputError

URL_LIFETIME = 3600  # seconds a presigned URL is valid
URL_REFRESH = URL_LIFETIME // 2  # a URL older than this is presigned again before use
TIMEOUT = 120.0  # seconds without a byte before a GET is abandoned (and retried)
ERROR_BODY = 4096  # bytes of an error answer read for its code: the body is hostile

# s3fs options with a botocore equivalent (the rest leave the source to s3fs)
_TOP = {"key", "secret", "token", "anon", "profile", "client_kwargs", "config_kwargs",
        "endpoint_url", "skip_instance_cache", "use_listings_cache", "listings_expiry_time",
        "default_block_size", "default_cache_type", "default_fill_cache"}  # fmt: skip
_CLIENT = {"endpoint_url", "region_name", "verify", "use_ssl"}
_CONFIG = {"proxies", "signature_version", "s3", "connect_timeout", "read_timeout", "retries",
           "max_pool_connections", "region_name"}  # fmt: skip


class S3ResponseError(Exception):
    """An S3 error answer, shaped like botocore's so storage.remote classifies it (fatal
    credentials, transient 5xx and SlowDown) in one place."""

    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.response = {"Error": {"Code": code, "Message": message},
                         "ResponseMetadata": {"HTTPStatusCode": status}}  # fmt: skip


class IncompleteReadError(Exception):
    """The body ended before its Content-Length (retried: storage.remote matches the name)."""


def for_options(url: str, options: dict) -> S3Objects | None:
    """A reader for an s3:// URL with these (s3fs-style) options, or None: s3fs must read it
    (and always with WEIGHTVAULT_S3_READER=fsspec, a benchmark's baseline)."""
    if os.environ.get("WEIGHTVAULT_S3_READER") == "fsspec":
        return None
    if urlsplit(url).scheme not in ("s3", "s3a") or not set(options) <= _TOP:
        return None
    ck, cf = options.get("client_kwargs") or {}, options.get("config_kwargs") or {}
    if not (isinstance(ck, dict) and isinstance(cf, dict)) or not set(ck) <= _CLIENT \
            or not set(cf) <= _CONFIG or cf.get("proxies"):  # fmt: skip
        return None
    return S3Objects(options)


class S3Objects:
    """The part of an fsspec filesystem a source needs (find, info), plus `read_range` and
    `open_stream` for the bytes. Thread-safe; pickles to its options (a worker makes its own client)."""

    def __init__(self, options: dict):
        self.options = dict(options)
        self._client = None
        self._signers: dict[str, object] = {}  # bucket -> a client of the bucket's region
        self._urls: dict[tuple, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's HTTP connections

    def __getstate__(self) -> dict:
        return {"options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["options"])

    # -- botocore, for everything but the bytes

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self, region: str | None = None):
        import botocore.session
        from botocore import UNSIGNED
        from botocore.config import Config

        o = self.options
        ck = dict(o.get("client_kwargs") or {})
        if o.get("endpoint_url"):
            ck["endpoint_url"] = o["endpoint_url"]
        if region:
            ck["region_name"] = region
        # one layer of retries, ours (storage.remote.with_retries knows what is fatal)
        # SigV4 presigned URLs (botocore would presign with SigV2, which regions opened since
        # 2014 refuse and AWS has deprecated), unless the options name a signature
        cf = {"max_pool_connections": 32, "proxies": {}, "signature_version": "s3v4",
              "retries": {"total_max_attempts": 1, "mode": "standard"},
              **(o.get("config_kwargs") or {})}  # fmt: skip
        if o.get("anon"):
            cf["signature_version"] = UNSIGNED
        session = botocore.session.Session(profile=o.get("profile"))
        return session.create_client(
            "s3", aws_access_key_id=o.get("key"), aws_secret_access_key=o.get("secret"),
            aws_session_token=o.get("token"), config=Config(**cf), **ck)  # fmt: skip

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def find(self, root: str, detail: bool = True) -> dict:
        """Every object under `root` (bucket/prefix), as s3fs's find(detail=True) gives them."""
        bucket, prefix = self._split(root.rstrip("/"))
        out: dict = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/" if prefix else "")  # fmt: skip
        for page in pages:
            for o in page.get("Contents", []) or []:
                if o["Key"].endswith("/"):  # a "directory" marker object, as s3fs skips it
                    continue
                path = f"{bucket}/{o['Key']}"
                out[path] = {"name": path, "type": "file", "size": o.get("Size", 0),
                             "ETag": o.get("ETag"), "LastModified": o.get("LastModified")}  # fmt: skip
        if not out:
            self._bucket_exists(bucket)
        return out

    def _bucket_exists(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                raise FileNotFoundError(bucket) from None
            raise

    def info(self, path: str, refresh: bool = True) -> dict:
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            h = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                raise FileNotFoundError(path) from None
            raise
        return {"name": path, "type": "file", "size": h.get("ContentLength", 0),
                "ETag": h.get("ETag"), "VersionId": h.get("VersionId"),
                "LastModified": h.get("LastModified")}  # fmt: skip

    def _signer(self, bucket: str):
        """A client whose region is the bucket's: a presigned URL of the wrong region is
        refused by AWS (a named endpoint answers for its own region: the main client)."""
        if self.options.get("endpoint_url") or (self.options.get("client_kwargs") or {}).get(
                "endpoint_url"):  # fmt: skip
            return self.client
        with self._lock:
            hit = self._signers.get(bucket)
        if hit is None:
            from botocore.exceptions import ClientError

            try:
                meta = self.client.head_bucket(Bucket=bucket)["ResponseMetadata"]
            except ClientError as e:
                meta = e.response.get("ResponseMetadata", {})
            region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region")
            hit = self.client if not region or region == self.client.meta.region_name \
                else self._make_client(region)  # fmt: skip
            with self._lock:
                self._signers[bucket] = hit
        return hit

    def _url(self, path: str, version: str | None) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._urls.get((path, version))
        if hit and now - hit[0] < URL_REFRESH:
            return hit[1]
        bucket, key = self._split(path)
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        url = self._signer(bucket).generate_presigned_url("get_object", Params=params,
                                                          ExpiresIn=URL_LIFETIME)  # fmt: skip
        with self._lock:
            self._urls[(path, version)] = (now, url)
        return url

    # -- the bytes

    def _idle(self) -> dict:
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = {}
        return idle

    def _take(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        """An idle keep-alive connection of this thread to `netloc`, or a new one. It is the
        caller's until it gives it back (`_give`) after reading an answer to its end."""
        spare = self._idle().get((scheme, netloc))
        if spare:
            return spare.pop()
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=self._tls())
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT)

    def _give(self, scheme: str, netloc: str, conn: http.client.HTTPConnection) -> None:
        spare = self._idle().setdefault((scheme, netloc), [])
        if len(spare) < 4:  # a thread rarely holds more than two at once
            spare.append(conn)
        else:
            conn.close()

    def _tls(self):
        import ssl

        verify = (self.options.get("client_kwargs") or {}).get("verify")
        if verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            return ctx
        if isinstance(verify, str):
            return ssl.create_default_context(cafile=verify)
        from botocore.httpsession import get_cert_path  # the bundle botocore trusts

        return ssl.create_default_context(cafile=get_cert_path(True))

    def _get(self, path: str, version: str | None, headers: dict, what: str) -> Stream:
        """A GET answered with a body of known length (200 or 206), as a Stream. Raises
        FileNotFoundError (404), InputError (412: no longer the object listed),
        S3ResponseError (other answers), or a transient error for the caller to retry."""
        u = urlsplit(self._url(path, version))
        conn = self._take(u.scheme, u.netloc)
        try:
            conn.request("GET", f"{u.path}?{u.query}", headers=headers)
            r = conn.getresponse()
            if r.status == 404:
                raise FileNotFoundError(what or path)
            if r.status == 412:
                raise InputError(f"{what or path}: changed while it was being sealed (the "
                                 "store no longer has the ETag listed when the seal began); "
                                 "seal again")  # fmt: skip
            if r.status not in (200, 206):
                raise _error(r)
            length = r.getheader("Content-Length")
            if length is None or not length.isdigit():
                raise S3ResponseError(r.status, "BadLength", f"Content-Length {length!r}")
        except BaseException:
            conn.close()  # its state is unknown: a fresh one next time
            raise
        return Stream(self, u, conn, r, int(length))

    def read_range(self, path: str, offset: int, n: int, *, etag: str | None = None,
                   version: str | None = None, what: str = "") -> memoryview:  # fmt: skip
        """Bytes [offset, offset + n) of the object, exactly, as a read-only view of memory
        nothing else holds (so the seal's whole-file hash may queue it without a copy).
        Raises as _get does."""
        import numpy as np

        if n == 0:
            return memoryview(b"")
        headers = {"Range": f"bytes={offset}-{offset + n - 1}"}
        if etag:
            headers["If-Match"] = etag
        body = self._get(path, version, headers, what)
        try:
            if body.status == 200 and offset != 0 or body.left != n:
                raise S3ResponseError(body.status, "BadRange", f"asked for {n} bytes at "
                                      f"{offset}, the answer has {body.left} (Range ignored?)")  # fmt: skip
            buf = np.empty(n, np.uint8)  # not zeroed: every byte is written below, or it fails
            view, got = memoryview(buf), 0
            while got < n:
                got += body.readinto(view[got:])
        finally:
            body.close()  # the connection is reused only after a body read to its end
        return memoryview(buf).toreadonly()

    def open_stream(self, path: str, *, what: str = "") -> Stream:
        """The whole object as a stream (one GET; read/readinto straight from the socket)."""
        return self._get(path, None, {}, what)


class Stream:
    """One object's body; its connection goes back to the pool only when read to its end."""

    def __init__(self, owner: S3Objects, u, conn, r, length: int):
        self._owner, self._u, self._conn, self._r = owner, u, conn, r
        self.status, self.left = r.status, length

    def readinto(self, b) -> int:
        if self.left == 0 or len(b) == 0:
            return 0
        view = memoryview(b)[: self.left]
        n = self._r.readinto(view)
        if not n:
            raise IncompleteReadError(f"body ended with {self.left} bytes still to come")
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(self.left if n is None or n < 0 else min(n, self.left))
        view, got = memoryview(buf), 0
        while got < len(buf):
            got += self.readinto(view[got:])
        return bytes(buf)

    def close(self) -> None:
        if self._conn is None:
            return
        if self.left == 0:
            self._owner._give(self._u.scheme, self._u.netloc, self._conn)
        else:
            self._conn.close()
        self._conn = None


def _error(r: http.client.HTTPResponse) -> S3ResponseError:
    """The S3 error code and message of an error answer."""
    text = (r.read(ERROR_BODY) or b"").decode("utf-8", "replace")
    code = re.search(r"<Code>([A-Za-z0-9.]{1,64})</Code>", text)
    msg = re.search(r"<Message>([^<]{1,200})</Message>", text)
    return S3ResponseError(r.status, code.group(1) if code else str(r.status),
                           msg.group(1).strip() if msg else "")  # fmt: skip
