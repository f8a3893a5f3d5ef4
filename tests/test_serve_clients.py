"""`weightvault serve` with the oldest huggingface_hub the project supports (pyproject: >=0.24),
in a virtualenv of its own, and over a vault on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ok, wv
from support.hubserver import patch_hub_endpoint

from weightvault.access.server import serve
from weightvault.format.keys import load_public_key
from weightvault.storage.opener import open_store

OLDEST = "huggingface_hub>=0.24,<0.25"
REPO = "weightvault/minilm"
WEIGHTS = "model.safetensors"

# Run by the old client: every call the server must answer, results as JSON on stdout.
OLD_CLIENT = r"""
import hashlib, json, os, sys
from pathlib import Path
import huggingface_hub as hh
from huggingface_hub import (HfFileSystem, get_safetensors_metadata, hf_hub_download,
                             snapshot_download)
from huggingface_hub.utils import (EntryNotFoundError, RepositoryNotFoundError,
                                   RevisionNotFoundError)
repo, cache = sys.argv[1], Path(sys.argv[2])
out = {"version": hh.__version__}
d = Path(snapshot_download(repo, cache_dir=cache / "snap"))
out["snapshot"] = {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(d.rglob("*")) if p.is_file()}
out["commit"] = d.name
p = hf_hub_download(repo, "1_Pooling/config.json", cache_dir=cache / "one")
out["one"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
meta = get_safetensors_metadata(repo)
out["tensors"] = len(meta.files_metadata["model.safetensors"].tensors)
fs = HfFileSystem()
with fs.open(f"{repo}/model.safetensors", "rb") as f:
    f.seek(30_000_000)
    out["range"] = hashlib.sha256(f.read(2_000_000)).hexdigest()
errors = {}
for label, call in [
    ("repo", lambda: hf_hub_download("weightvault/nope", "config.json", cache_dir=cache / "e")),
    ("revision", lambda: hf_hub_download(repo, "config.json", revision="0" * 40,
                                         cache_dir=cache / "e")),
    ("entry", lambda: hf_hub_download(repo, "nope.bin", cache_dir=cache / "e")),
]:
    try:
        call()
        errors[label] = None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        errors[label] = [c.__name__ for c in type(e).__mro__]
out["errors"] = errors
print(json.dumps(out))
"""


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def old_hub_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("hub-0.24") / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
    py = venv / "bin" / "python"
    p = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", OLDEST],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    if p.returncode != 0:
        pytest.skip(f"cannot install {OLDEST}: {p.stderr.strip().splitlines()[-1:]}")
    return py


@pytest.mark.slow
def test_oldest_supported_client(old_hub_python, sealed_minilm, lab_key, minilm_dir, tmp_path):
    store = open_store(str(sealed_minilm))
    with serve(store, [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
        env |= {"HF_ENDPOINT": s.url, "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HOME": str(tmp_path / "home"),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1"}  # fmt: skip
        p = subprocess.run([old_hub_python, "-c", OLD_CLIENT, REPO, tmp_path], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        commit = s.catalog.repos[REPO].refs["main"]
    assert out["version"].startswith("0.24.")
    assert out["snapshot"] == digests(minilm_dir)
    assert out["commit"] == commit
    assert out["one"] == digests(minilm_dir)["1_Pooling/config.json"]
    weights = (minilm_dir / WEIGHTS).read_bytes()
    header = json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])
    assert out["tensors"] == len(header) - ("__metadata__" in header)
    assert out["range"] == hashlib.sha256(weights[30_000_000:32_000_000]).hexdigest()
    assert "RepositoryNotFoundError" in out["errors"]["repo"]
    assert "RevisionNotFoundError" in out["errors"]["revision"]
    assert "EntryNotFoundError" in out["errors"]["entry"]


@pytest.mark.slow
def test_serve_over_s3(s3_server, minilm_dir, lab_key, tmp_path, monkeypatch):
    """The vault on SeaweedFS: the model downloads byte-identical, and a reader that asks for
    the header and then one tensor (exact ranges) moves only the header chunk and that
    tensor's chunks out of the store (its byte counter)."""
    import urllib.request
    import uuid

    import numpy as np
    from huggingface_hub import snapshot_download
    from safetensors.numpy import load_file

    from weightvault.access import open_bundle

    bucket = s3_server.make_bucket("wv-serve-" + uuid.uuid4().hex[:8])
    url = f"s3://{bucket}/vault"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    cfg = tmp_path / "weightvault.toml"
    cfg.write_text(f'signing_key = "{lab_key}"\ntrusted_keys = ["{lab_key}.pub"]\n'
                   f'[replicas.cloud]\nurl = "{url}"\n'
                   f'storage_options = {{ endpoint_url = "{s3_server.endpoint_url}" }}\n')  # fmt: skip
    ok(wv("-c", cfg, "seal", minilm_dir, "--name", "minilm", "--quiet", env=env))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(k, env[k])
    trusted = [load_public_key(Path(f"{lab_key}.pub"))]
    store = open_store(url, {"endpoint_url": s3_server.endpoint_url})
    with serve(store, trusted) as s:
        patch_hub_endpoint(monkeypatch, s.url)
        d = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache"))
        assert digests(d) == digests(minilm_dir)
    weights = (minilm_dir / WEIGHTS).read_bytes()
    with serve(store, trusted) as s:  # a fresh server: nothing fetched yet
        doc = s.catalog.repos[REPO].by_commit[s.catalog.repos[REPO].refs["main"]].manifest.doc
        f = next(f for f in doc["files"] if f["path"] == WEIGHTS)
        sizes = {o["name"]: o["size"] for o in doc["objects"]}

        def get(a: int, b: int) -> bytes:
            req = urllib.request.Request(f"{s.url}/{REPO}/resolve/main/{WEIGHTS}",
                                         headers={"Range": f"bytes={a}-{b}"})  # fmt: skip
            with urllib.request.urlopen(req) as r:
                assert r.status == 206
                return r.read()

        before = store.counters.payload_read
        n = int.from_bytes(get(0, 7), "little")
        header = json.loads(get(8, 8 + n - 1))
        header.pop("__metadata__", None)
        name = max(header, key=lambda k: header[k]["data_offsets"])  # in the smaller last chunk
        a, b = (8 + n + x for x in header[name]["data_offsets"])
        assert get(a, b - 1) == weights[a:b]
        moved = store.counters.payload_read - before
        wanted = [c for c in f["chunks"] if c["offset"] < b and c["offset"] + c["length"] > a]
        assert moved == sizes[f["chunks"][0]["object"]] + sum(sizes[c["object"]] for c in wanted)
        assert moved < sum(sizes.values()) / 2
    r = open_bundle(store, "minilm", trust=trusted)
    assert np.array_equal(r.tensor(WEIGHTS, name), load_file(minilm_dir / WEIGHTS)[name])
