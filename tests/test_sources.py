"""Hub sources end to end: huggingface_hub's own download path against a local Hub server."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys

import pytest
from conftest import wv
from support.hubserver import HubServer, hub_env

REPO = "sentence-transformers/all-MiniLM-L6-v2"
ST_SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(scope="module")
def hub(minilm_dir):
    with HubServer(minilm_dir, REPO) as server:
        yield server


def manifest(vault, name):
    return json.loads((vault / "bundles" / name / "data" / "weightvault.json").read_bytes())


def same_tree(a, b):
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def test_hub_repo_at_branch_records_commit_and_checks_lfs(hub, minilm_dir, lab_key, tmp_path):
    env = hub_env(hub)
    v = tmp_path / "v"
    r = wv("seal", f"hf://{REPO}@main", "--vault", v, "--key", lab_key, "--name", "hub",
           "--hf-cache", tmp_path / "hfcache", "--json", env=env)  # fmt: skip
    assert r.code == 0, r.err
    src = manifest(v, "hub")["source"]
    assert src["kind"] == "hf-hub" and src["repo_id"] == REPO
    assert src["revision"] == "main" and src["commit"] == hub.commit
    assert src["verified_files"] >= 1 and src["verified_against"] == "Hub LFS sha256"
    assert src["endpoint"] == hub.url
    out = tmp_path / "out"
    assert wv("restore", "hub", out, "--vault", v, "--trust", f"{lab_key}.pub").code == 0
    assert same_tree(minilm_dir, out)


def test_hub_lying_lfs_digest_is_refused(minilm_dir, lab_key, tmp_path):
    with HubServer(minilm_dir, REPO, lfs_sha_override={"model.safetensors": "0" * 64}) as bad:
        v = tmp_path / "v"
        r = wv("seal", f"hf://{REPO}@{bad.commit}", "--vault", v, "--key", lab_key,
               "--hf-cache", tmp_path / "hfcache", env=hub_env(bad))  # fmt: skip
    assert r.code == 1, r.err
    assert "model.safetensors" in r.err and "differs from the Hub LFS sha256 " + "0" * 64 in r.err
    assert wv("list", "--vault", v, "--json").json() == []
    assert not list(v.glob("bundles/*/data/objects/*")), "objects of a refused seal remain"
    # nor in the pool: the seal removes what it added once no other seal can be reusing it
    assert not list(v.glob("objects/*")) and not [p for p in v.rglob("bundles/**/*")
                                                  if p.is_file()]  # fmt: skip


def test_hub_unknown_repo_and_revision(hub, lab_key, tmp_path):
    env = hub_env(hub)
    r = wv("seal", "hf://nobody/nothing@main", "--vault", tmp_path / "v", "--key", lab_key,
           "--hf-cache", tmp_path / "c", env=env)  # fmt: skip
    assert r.code == 2 and "repository 'nobody/nothing' not found" in r.err
    r = wv("seal", f"hf://{REPO}@v9.9", "--vault", tmp_path / "v", "--key", lab_key,
           "--hf-cache", tmp_path / "c", env=env)  # fmt: skip
    assert r.code == 2 and "revision 'v9.9' not found" in r.err
    r = wv("seal", "hf://justaname", "--vault", tmp_path / "v", "--key", lab_key, env=env)
    assert r.code == 2 and "expected hf://ORG/NAME@REVISION" in r.err


def test_hub_cache_snapshot_directory(hub, minilm_dir, lab_key, tmp_path):
    cache = tmp_path / "hfcache"
    code = (
        "import sys; from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({REPO!r}, revision='main', cache_dir=sys.argv[1]))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(cache)], env=hub_env(hub),
                       capture_output=True, text=True, check=True)  # fmt: skip
    snap = p.stdout.strip().splitlines()[-1]
    assert "/snapshots/" in snap
    v = tmp_path / "v"
    r = wv("seal", snap, "--vault", v, "--key", lab_key, "--json")
    assert r.code == 0, r.err
    assert r.json()["name"] == "all-MiniLM-L6-v2"
    src = manifest(v, "all-MiniLM-L6-v2")["source"]
    assert src["kind"] == "hf-cache" and src["repo_id"] == REPO and src["commit"] == hub.commit
    assert src["refs"] == ["main"] and src["verified_files"] >= 1
    st = next(
        f for f in manifest(v, "all-MiniLM-L6-v2")["files"] if f["path"] == "model.safetensors"
    )
    assert st["sha256"] == ST_SHA
    out = tmp_path / "out"
    assert (
        wv("restore", "all-MiniLM-L6-v2", out, "--vault", v, "--trust", f"{lab_key}.pub").code == 0
    )
    assert same_tree(minilm_dir, out)
    assert not any(p.is_symlink() for p in out.rglob("*"))
