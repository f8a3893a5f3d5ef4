"""S3 sources read by storage.s3read: presigned range GETs into our own buffers, pinned to the
listed ETag. Against SeaweedFS (the real model, byte-identical to s3fs's reading) and against
a scripted hostile HTTP server (every answer a store might give instead of the bytes)."""

from __future__ import annotations

import http.server
import queue
import secrets
import threading

import pytest
from test_dask import EPOCH, tree, upload

from weightvault.archive import pipeline, remote_source
from weightvault.archive.seal import SealOptions, seal
from weightvault.errors import InputError, StorageError
from weightvault.format import keys
from weightvault.storage import s3read
from weightvault.storage.store import LocalStore

# -- which sources it reads


@pytest.mark.parametrize("options, fast", [
    ({}, True),
    ({"endpoint_url": "http://127.0.0.1:1", "key": "k", "secret": "s"}, True),
    ({"client_kwargs": {"endpoint_url": "http://h", "region_name": "eu-west-1"}}, True),
    ({"anon": True, "config_kwargs": {"proxies": {}}}, True),
    ({"requester_pays": True}, False),  # a request parameter presigning would not carry
    ({"s3_additional_kwargs": {"SSECustomerKey": "x"}}, False),
    ({"config_kwargs": {"proxies": {"https": "http://proxy:3128"}}}, False),
    ({"client_kwargs": {"aws_account_id": "1"}}, False),  # an option it does not know
    ({"version_aware": True}, False),
])  # fmt: skip
def test_reader_serves_only_options_it_can_honour_exactly(options, fast):
    got = s3read.for_options("s3://bucket/prefix/", options)
    assert (got is not None) is fast
    assert s3read.for_options("gs://bucket/prefix/", {}) is None


def test_presigned_urls_are_sigv4_in_the_buckets_own_region(monkeypatch):
    """Without an endpoint (AWS), a URL is presigned for the region HeadBucket names (a URL
    of another region is refused there); with one, by the main client, never asking. No
    network: presigning is local and HeadBucket is stubbed."""
    fs = s3read.for_options("s3://b/p/", {"key": "AKIDEXAMPLE", "secret": "s" * 40,
                                          "client_kwargs": {"region_name": "us-east-1"}})  # fmt: skip
    regions = {"far": "eu-west-1", "near": "us-east-1"}
    monkeypatch.setattr(fs.client, "head_bucket", lambda Bucket: {
        "ResponseMetadata": {"HTTPHeaders": {"x-amz-bucket-region": regions[Bucket]}}})
    far, near = fs._url("far/k/x.bin", None), fs._url("near/k", None)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in far and "%2Feu-west-1%2Fs3%2F" in far
    assert "%2Fus-east-1%2Fs3%2F" in near
    ep = s3read.for_options("s3://b/p/", {"endpoint_url": "http://127.0.0.1:9", "key": "k",
                                          "secret": "s" * 40})  # fmt: skip
    monkeypatch.setattr(ep.client, "head_bucket", lambda Bucket: pytest.fail("asked"))
    assert ep._url("b/k", None).startswith("http://127.0.0.1:9/b/k?")


def test_emit_copies_writable_views_but_queues_read_only_ones():
    """A read-only view is memory nobody writes again (remote_source hands out only those):
    the lane may keep it. A writable one may be scratch reused at the next piece."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    emit = pipeline.Emit(q, threading.Event())
    scratch = bytearray(b"abcd")
    emit(memoryview(scratch))
    emit(memoryview(b"wxyz").toreadonly())
    scratch[:] = b"ZZZZ"  # the owner writes its scratch again
    first, second = q.get()[0], q.get()[0]
    assert bytes(first) == b"abcd" and isinstance(first, bytes)
    assert isinstance(second, memoryview) and second.readonly


# -- against SeaweedFS


@pytest.fixture
def aws(s3_server, monkeypatch):
    for k, v in (("AWS_ACCESS_KEY_ID", s3_server.access_key),
                 ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key),
                 ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(k, v)
    return s3_server


def test_seal_from_bucket_is_byte_identical_with_either_reader(tmp_path, aws, minilm_dir,
                                                               monkeypatch):  # fmt: skip
    bucket = aws.make_bucket("rd-" + secrets.token_hex(4))
    upload(aws, bucket, "m", minilm_dir)
    for k, v in EPOCH.items():
        monkeypatch.setenv(k, v)
    sk = keys.generate(tmp_path / "k.key")
    out = {}
    for reader in ("s3read", "fsspec"):
        monkeypatch.setenv("WEIGHTVAULT_S3_READER", reader)
        store = LocalStore(tmp_path / reader, create=True)
        src = remote_source.resolve(f"s3://{bucket}/m/", {"endpoint_url": aws.endpoint_url})
        assert isinstance(src.files_io.fs, s3read.S3Objects) is (reader == "s3read")
        seal(f"s3://{bucket}/m/", store, sk,
             SealOptions(name="m", source_options={"endpoint_url": aws.endpoint_url}))  # fmt: skip
        out[reader] = tree(tmp_path / reader)
    assert out["s3read"] == out["fsspec"] and len(out["s3read"]) > 5


def test_directory_markers_are_not_files(aws):
    """Consoles and some tools create empty `prefix/` objects: not files of the source."""
    bucket = aws.make_bucket("dm-" + secrets.token_hex(4))
    c = aws.client()
    c.put_object(Bucket=bucket, Key="m/", Body=b"")
    c.put_object(Bucket=bucket, Key="m/sub/", Body=b"")
    c.put_object(Bucket=bucket, Key="m/sub/a.bin", Body=b"a" * 10)
    src = remote_source.resolve(f"s3://{bucket}/m/", {"endpoint_url": aws.endpoint_url})
    assert [f.path for f in src.files] == ["sub/a.bin"]


def test_range_read_of_an_overwritten_object_is_refused(aws):
    """If-Match: once the object is replaced, no range of the new one is returned."""
    bucket = aws.make_bucket("ow-" + secrets.token_hex(4))
    c = aws.client()
    c.put_object(Bucket=bucket, Key="m/a.bin", Body=b"1" * 100_000)
    fs = s3read.for_options(f"s3://{bucket}/m/", {"endpoint_url": aws.endpoint_url})
    info = fs.find(f"{bucket}/m")[f"{bucket}/m/a.bin"]
    assert bytes(fs.read_range(f"{bucket}/m/a.bin", 10, 5, etag=info["ETag"])) == b"11111"
    c.put_object(Bucket=bucket, Key="m/a.bin", Body=b"2" * 100_000)
    with pytest.raises(InputError, match="changed while it was being sealed"):
        fs.read_range(f"{bucket}/m/a.bin", 10, 5, etag=info["ETag"], what="s3://x/m/a.bin")
    c.delete_object(Bucket=bucket, Key="m/a.bin")
    with pytest.raises(FileNotFoundError):
        fs.read_range(f"{bucket}/m/a.bin", 10, 5)


# -- against a store that answers anything but the bytes


class Script(http.server.BaseHTTPRequestHandler):
    """Each GET takes the next answer: (status, headers, body, bytes actually sent)."""

    answers: queue.SimpleQueue
    seen: list

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(dict(self.headers))
        status, headers, body, send = self.answers.get_nowait()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[:send])
        self.close_connection = send < len(body) or self.close_connection

    def log_message(self, *a):
        pass


@pytest.fixture
def hostile():
    answers: queue.SimpleQueue = queue.SimpleQueue()
    seen: list = []
    handler = type("H", (Script,), {"answers": answers, "seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.handle_error = lambda *a: None  # a client that hangs up mid-body is expected here
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()

    def answer(status, body=b"", headers=None, send=None):
        h = {"Content-Length": str(len(body)), **(headers or {})}
        answers.put((status, h, body, len(body) if send is None else send))

    fs = s3read.for_options("s3://b/p/", {"endpoint_url": f"http://127.0.0.1:{srv.server_port}",
                                          "key": "AKIDEXAMPLE", "secret": "s" * 40})  # fmt: skip
    f = remote_source.RemoteFile("w.bin", "b/p/w.bin", 1 << 20, 0o644, 0,
                                 tag=('"e1"', None, 1 << 20, None))  # fmt: skip
    files = remote_source.FsspecFiles("s3://b/p/", {}, fs)
    yield answer, files, f, seen
    srv.shutdown()
    srv.server_close()


def _xml(code: str, msg: str = "m") -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{msg}</Message></Error>" \
        .encode()  # fmt: skip


def test_range_get_sends_the_listed_etag_and_takes_exact_bytes(hostile):
    answer, files, f, seen = hostile
    answer(206, b"x" * 100, {"Content-Range": f"bytes 100-199/{1 << 20}"})
    got = files.read_range(f, 100, 100, "s3://b/p/w.bin")
    assert bytes(got) == b"x" * 100 and got.readonly
    assert seen[-1]["Range"] == "bytes=100-199" and seen[-1]["If-Match"] == '"e1"'


@pytest.mark.parametrize("answers, error, needle", [
    # a store that ignores Range and sends the whole object
    ([(200, b"y" * 300)], StorageError, "Range ignored"),
    # a length other than the one asked for
    ([(206, b"y" * 99)], StorageError, "the answer has 99"),
    ([(403, _xml("AccessDenied"))], StorageError, "access denied"),
    ([(403, _xml("SignatureDoesNotMatch"))], StorageError, "wrong secret key"),
    ([(412, _xml("PreconditionFailed"))], InputError, "changed while it was being sealed"),
    ([(404, _xml("NoSuchKey"))], InputError, "source object not found"),
    # an error answer of 8 MiB, with markup in it: only its first 4 KiB are read
    ([(400, _xml("Bad<b>", "z" * (8 << 20)))], StorageError, "unreachable or failing"),
])  # fmt: skip
def test_hostile_answers_are_one_line_naming_the_object(hostile, answers, error, needle):
    answer, files, f, _ = hostile
    for status, body in answers:
        answer(status, body)
    with pytest.raises(error) as e:
        files.read_range(f, 100, 100, "s3://b/p/w.bin")
    msg = str(e.value)
    assert needle in msg and "s3://b/p/w.bin" in msg and "\n" not in msg and len(msg) < 400


def test_transient_answers_are_retried(hostile, monkeypatch):
    monkeypatch.setattr("weightvault.storage.remote.BACKOFF", 0.001)
    answer, files, f, seen = hostile
    answer(503, _xml("SlowDown"))
    answer(206, b"z" * 100, send=40)  # the body stops short, the connection closes
    answer(500, _xml("InternalError"))
    answer(206, b"z" * 100)
    assert bytes(files.read_range(f, 0, 100, "s3://b/p/w.bin")) == b"z" * 100
    assert len(seen) == 4


def test_a_store_that_keeps_failing_is_one_line(hostile, monkeypatch):
    monkeypatch.setattr("weightvault.storage.remote.BACKOFF", 0.001)
    answer, files, f, _ = hostile
    for _ in range(20):
        answer(206, b"z" * 100, send=10)
    with pytest.raises(StorageError, match="s3://b/p/w.bin: unreachable or failing"):
        files.read_range(f, 0, 100, "s3://b/p/w.bin")


def test_read_buffers_are_not_shared_between_reads(hostile):
    """Each read gets memory of its own: a view handed to the whole-file hash stays valid."""
    answer, files, f, _ = hostile
    answer(206, b"a" * 64)
    answer(206, b"b" * 64)
    one = files.read_range(f, 0, 64, "w")
    two = files.read_range(f, 64, 64, "w")
    assert bytes(one) == b"a" * 64 and bytes(two) == b"b" * 64
