"""Smoke tests for the loopback servers in tests/support/servers.py."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import subprocess

import fsspec
import paramiko
import pytest
import s3fs
from botocore.exceptions import ClientError
from support.servers import SeaweedS3, SshServer, _alive, _ed25519_keypair, _process_tree


def _assert_all_gone(tree: list[tuple[int, str]], pattern: str) -> None:
    alive = [pid for pid, start in tree if _alive(pid, start)]
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    assert not alive and not found.strip(), f"left running: {alive} {found}"


@pytest.fixture(scope="module")
def s3():
    with SeaweedS3() as server:
        yield server
        tree = _process_tree(server.pid)
    _assert_all_gone(tree, f"weed .*{re.escape(str(server.dir))}")
    assert not server.dir.exists()


@pytest.fixture(scope="module")
def ssh():
    with SshServer() as server:
        yield server
        tree = _process_tree(server.pid)
    _assert_all_gone(tree, f"sshd .*{re.escape(str(server.dir))}")
    assert not server.dir.exists()


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def test_s3fs_put_list_get_rm(s3, tmp_path):
    bucket = s3.make_bucket("smoke-s3fs")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.storage_options())
    src = tmp_path / "w.bin"
    src.write_bytes(b"\x00\x01" * 70_000)
    fs.put_file(str(src), f"{bucket}/dir/w.bin")
    assert fs.ls(f"{bucket}/dir") == [f"{bucket}/dir/w.bin"]
    assert fs.cat_file(f"{bucket}/dir/w.bin") == src.read_bytes()
    fs.rm(f"{bucket}/dir/w.bin")
    assert not fs.exists(f"{bucket}/dir/w.bin")


def test_s3_sha256_checked_on_arrival_and_returned(s3):
    bucket = s3.make_bucket("smoke-checksum")
    client = s3.client(
        retries={"mode": "standard", "max_attempts": 1}
    )  # legacy mode retries BadDigest
    data = b"weights" * 1000
    with pytest.raises(ClientError) as exc:
        client.put_object(
            Bucket=bucket, Key="k", Body=data,
            ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64sha256(b"other"),
        )  # fmt: skip
    assert _error_code(exc) == "BadDigest"
    client.put_object(
        Bucket=bucket,
        Key="k",
        Body=data,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=_b64sha256(data),
    )
    head = client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == _b64sha256(data)


def test_s3_conditional_put(s3):
    bucket = s3.make_bucket("smoke-conditional")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_s3_object_lock_compliance_blocks_version_delete(s3):
    bucket = s3.make_bucket("smoke-locked", object_lock=True)
    client = s3.client()
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    version = client.put_object(
        Bucket=bucket, Key="w", Body=b"worm", ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )["VersionId"]  # fmt: skip
    for extra in ({}, {"BypassGovernanceRetention": True}):
        with pytest.raises(ClientError) as exc:
            client.delete_object(Bucket=bucket, Key="w", VersionId=version, **extra)
        assert _error_code(exc) == "AccessDenied"
    with pytest.raises(ClientError):  # COMPLIANCE retention cannot be shortened
        client.put_object_retention(
            Bucket=bucket, Key="w", VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until - dt.timedelta(hours=23)},
        )  # fmt: skip
    with pytest.raises(ClientError) as exc:
        client.delete_bucket(Bucket=bucket)
    assert _error_code(exc) == "BucketNotEmpty"
    body = client.get_object(Bucket=bucket, Key="w", VersionId=version)["Body"].read()
    assert body == b"worm"


def test_s3_data_survives_kill_and_restart(s3):
    bucket = s3.make_bucket("smoke-restart")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"durable")
    endpoint = s3.endpoint_url
    s3.kill()
    s3.start()
    assert s3.endpoint_url == endpoint
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"durable"


def test_sftp_put_file_with_pinned_host_key(ssh, tmp_path):
    assert ssh.host_public_key.startswith("ssh-ed25519 AAAA")
    assert ssh.known_hosts_path.read_text().startswith(f"[127.0.0.1]:{ssh.port} ssh-ed25519 ")
    fs = fsspec.filesystem("sftp", skip_instance_cache=True, **ssh.storage_options())
    src = tmp_path / "w.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    fs.put_file(str(src), f"{ssh.root}/a/w.bin")
    assert fs.cat_file(f"{ssh.root}/a/w.bin") == src.read_bytes()


def test_sftp_wrong_pinned_host_key_is_refused(ssh):
    other = _ed25519_keypair(ssh.dir / "impostor_key", "impostor")
    wrong = ssh.dir / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{ssh.port} {other}\n")
    with pytest.raises(paramiko.SSHException, match="not pinned"):
        fsspec.filesystem("sftp", skip_instance_cache=True, **ssh.storage_options(wrong))


def test_sftp_reject_policy_alone_refuses_every_host(ssh):
    # fsspec loads no known_hosts, so "reject" is not a way to pin a key
    opts = {**ssh.storage_options(), "host_key_policy": "reject"}
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        fsspec.filesystem("sftp", skip_instance_cache=True, **opts)
