"""The test-support layer itself: the real MiniLM weights and the fake Hub serving them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from support.hubserver import DEFAULT_REPO_ID, HubServer, hub_env, patch_hub_endpoint
from support.model import WEIGHTS_SHA256, WEIGHTS_SIZE, ensure_minilm

MODEL_FILES = {
    ".gitattributes",
    "1_Pooling/config.json",
    "README.md",
    "config.json",
    "config_sentence_transformers.json",
    "data_config.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
}
FAKE_SHA = "0" * 64


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return ensure_minilm()


@pytest.fixture(scope="session")
def minilm_digests(minilm_dir: Path) -> dict[str, str]:
    return tree_digests(minilm_dir)


@pytest.fixture(scope="session")
def hub(minilm_dir: Path):
    with HubServer(minilm_dir) as server:
        yield server


@pytest.fixture
def hub_url(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> str:
    patch_hub_endpoint(monkeypatch, hub.url)
    return hub.url


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by posix path; huggingface_hub's own
    bookkeeping under ``.cache/`` left out."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != ".cache"
    }


def test_ensure_minilm_files_and_weights(minilm_dir: Path, minilm_digests: dict[str, str]) -> None:
    assert set(minilm_digests) == MODEL_FILES
    assert (minilm_dir / "model.safetensors").stat().st_size == WEIGHTS_SIZE
    assert minilm_digests["model.safetensors"] == WEIGHTS_SHA256
    with safe_open(minilm_dir / "model.safetensors", framework="numpy") as f:
        keys = list(f.keys())
        emb = f.get_tensor("embeddings.word_embeddings.weight")
    assert len(keys) > 100
    assert emb.shape == (30522, 384)  # BERT vocab x MiniLM hidden size
    assert ensure_minilm() == minilm_dir  # second call is a cache hit


@pytest.mark.parametrize("revision", ["main", "commit"])
def test_snapshot_download_to_cache_dir(
    hub: HubServer, hub_url: str, minilm_digests: dict[str, str], tmp_path: Path, revision: str
) -> None:
    rev = hub.commit if revision == "commit" else revision
    cache = tmp_path / "hf-cache"
    snap = Path(snapshot_download(hub.repo_id, revision=rev, cache_dir=cache))

    assert (
        snap == cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / hub.commit
    )
    assert tree_digests(snap) == minilm_digests
    refs = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs"
    assert (refs / "main").is_file() == (rev == "main")
    if rev == "main":
        assert (refs / "main").read_text() == hub.commit
    # The blob of an LFS file is named by the sha256 the Hub announced.
    blobs = snap.parents[1] / "blobs"
    assert (blobs / WEIGHTS_SHA256).stat().st_size == WEIGHTS_SIZE


@pytest.mark.parametrize("revision", ["main", "commit"])
def test_snapshot_download_to_local_dir(
    hub: HubServer, hub_url: str, minilm_digests: dict[str, str], tmp_path: Path, revision: str
) -> None:
    rev = hub.commit if revision == "commit" else revision
    local = tmp_path / "model"
    out = snapshot_download(
        hub.repo_id, revision=rev, cache_dir=tmp_path / "hf-cache", local_dir=local
    )

    assert Path(out) == local.resolve()
    assert tree_digests(local) == minilm_digests
    # Pitfall: a local_dir download leaves the client's metadata inside the target.
    assert (local / ".cache" / "huggingface").is_dir()
    assert not any(p.is_symlink() for p in local.rglob("*"))


def test_model_info_files_metadata(hub: HubServer, hub_url: str, minilm_dir: Path) -> None:
    info = HfApi().model_info(hub.repo_id, revision="main", files_metadata=True)
    assert info.sha == hub.commit
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == MODEL_FILES

    weights = siblings["model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == WEIGHTS_SHA256
    assert weights.size == weights.lfs.size == WEIGHTS_SIZE

    # Non-LFS blob ids must be git's own, as the Hub reports them.
    config = siblings["config.json"]
    assert config.lfs is None
    if git := shutil.which("git"):
        expected = subprocess.run(
            [git, "hash-object", str(minilm_dir / "config.json")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert config.blob_id == expected

    bare = HfApi().model_info(hub.repo_id, revision=hub.commit)
    assert bare.siblings is not None and all(
        s.lfs is None and s.size is None for s in bare.siblings
    )


def test_top_level_functions_follow_the_patch(hub: HubServer, hub_url: str) -> None:
    # huggingface_hub.model_info is bound to an HfApi built at import time.
    assert huggingface_hub.model_info(hub.repo_id).sha == hub.commit


def test_resolve_headers_and_range(hub: HubServer, hub_url: str, minilm_dir: Path) -> None:
    url = hf_hub_url(hub.repo_id, "model.safetensors", revision="main")
    assert url.startswith(hub.url)
    meta = get_hf_file_metadata(url)
    assert (meta.commit_hash, meta.etag, meta.size) == (hub.commit, WEIGHTS_SHA256, WEIGHTS_SIZE)

    import httpx2  # huggingface_hub 2.x's HTTP client; a hard dependency of it

    data = (minilm_dir / "model.safetensors").read_bytes()
    r = httpx2.get(url, headers={"Range": "bytes=0-7"})
    assert (r.status_code, r.headers["Content-Range"]) == (206, f"bytes 0-7/{WEIGHTS_SIZE}")
    header_len = int.from_bytes(r.content, "little")
    r = httpx2.get(url, headers={"Range": f"bytes=8-{7 + header_len}"})
    assert r.content == data[8 : 8 + header_len]
    assert json.loads(r.content)["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert httpx2.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert httpx2.get(url, headers={"Range": f"bytes={WEIGHTS_SIZE}-"}).status_code == 416


def test_lfs_sha_override_is_served_and_not_checked_by_the_client(
    minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubServer(minilm_dir, lfs_sha_override={"model.safetensors": FAKE_SHA}) as liar:
        patch_hub_endpoint(monkeypatch, liar.url)
        info = HfApi().model_info(liar.repo_id, files_metadata=True)
        (weights,) = [s for s in info.siblings if s.rfilename == "model.safetensors"]
        assert weights.lfs.sha256 == FAKE_SHA
        snap = Path(
            snapshot_download(
                liar.repo_id, cache_dir=tmp_path / "c", allow_patterns=["*.safetensors"]
            )
        )
    # huggingface_hub files the real bytes under the lied-about name: verifying is our job.
    blob = snap.parents[1] / "blobs" / FAKE_SHA
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == WEIGHTS_SHA256


def test_lfs_sha_override_must_name_an_lfs_file(minilm_dir: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        HubServer(minilm_dir, lfs_sha_override={"config.json": FAKE_SHA})


def test_not_found_errors(hub: HubServer, hub_url: str, tmp_path: Path) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing", cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(hub.repo_id, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub.repo_id, "missing.bin", cache_dir=tmp_path / "c")


def test_subprocess_with_hub_env(hub: HubServer, tmp_path: Path) -> None:
    script = (
        "import sys, huggingface_hub as h\n"
        "print(h.model_info(sys.argv[1]).sha)\n"
        "print(h.hf_hub_download(sys.argv[1], 'config.json', cache_dir=sys.argv[2]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, DEFAULT_REPO_ID, str(tmp_path / "c")],
        env=hub_env(hub),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    assert out[0] == hub.commit
    assert Path(out[1]).read_bytes() == (hub.model_dir / "config.json").read_bytes()
    assert ("HEAD", f"/{DEFAULT_REPO_ID}/resolve/main/config.json") in hub.requests
