"""Access without restore (docs/ACCESS.md): stock huggingface_hub against `weightvault serve`
on loopback, with the real model; the in-place Python API; `cat`; `restore --hf-cache`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ok, one_error, wv
from support.hubserver import patch_hub_endpoint

from weightvault.access import open_bundle
from weightvault.access.hub import Catalog
from weightvault.access.server import serve
from weightvault.errors import InputError, NotFound
from weightvault.format.keys import load_public_key
from weightvault.storage.opener import open_store

REPO = "weightvault/minilm"
WEIGHTS = "model.safetensors"


def model_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def originals(minilm_dir) -> dict[str, bytes]:
    return model_files(minilm_dir)


@pytest.fixture(scope="module")
def hub(sealed_minilm, lab_key):
    """The real server over the sealed real model (read-only: the shared vault is safe)."""
    store = open_store(str(sealed_minilm))
    with serve(store, [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        yield s


@pytest.fixture
def client(hub, monkeypatch, tmp_path):
    """huggingface_hub pointed at the server, Xet left enabled: the server never offers it."""
    from huggingface_hub import constants

    patch_hub_endpoint(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return hub


def commit_of(hub) -> str:
    return hub.catalog.repos[REPO].refs["main"]


# -- the four client calls, byte for byte


def test_snapshot_download_is_byte_identical(client, originals, tmp_path):
    from huggingface_hub import snapshot_download

    d = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache"))
    assert d.name == commit_of(client)
    assert model_files(d) == originals
    # the cache is the Hub's layout: LFS-style blobs named by SHA-256
    blob = (d / WEIGHTS).resolve()
    assert blob.name == hashlib.sha256(originals[WEIGHTS]).hexdigest()


def test_hf_hub_download_by_branch_and_commit(client, originals, tmp_path):
    from huggingface_hub import hf_hub_download

    p = hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / "c1")
    assert Path(p).read_bytes() == originals[WEIGHTS]
    p = hf_hub_download(REPO, "1_Pooling/config.json", revision=commit_of(client),
                        cache_dir=tmp_path / "c2")  # fmt: skip
    assert Path(p).read_bytes() == originals["1_Pooling/config.json"]


def test_get_safetensors_metadata_matches_the_file(client, originals):
    from huggingface_hub import get_safetensors_metadata

    meta = get_safetensors_metadata(REPO)
    got = meta.files_metadata[WEIGHTS].tensors
    n = int.from_bytes(originals[WEIGHTS][:8], "little")
    header = json.loads(originals[WEIGHTS][8 : 8 + n])
    header.pop("__metadata__", None)
    assert {k: (t.dtype, t.shape, list(t.data_offsets)) for k, t in got.items()} == {
        k: (v["dtype"], v["shape"], v["data_offsets"]) for k, v in header.items()
    }


def test_hffilesystem_seek_and_read_a_range(client, originals):
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(skip_instance_cache=True)
    assert fs.info(f"{REPO}/{WEIGHTS}")["size"] == len(originals[WEIGHTS])
    assert sorted(fs.ls(REPO, detail=False)) == sorted(
        {f"{REPO}/{p.split('/')[0]}" for p in originals}
    )
    with fs.open(f"{REPO}/{WEIGHTS}", "rb") as f:
        f.seek(40_000_000)
        assert f.read(1_000_000) == originals[WEIGHTS][40_000_000:41_000_000]
        f.seek(-10, os.SEEK_END)
        assert f.read() == originals[WEIGHTS][-10:]
    assert fs.cat_file(f"{REPO}/config.json") == originals["config.json"]


# -- what a client gets when something is missing or out of range


def test_unknown_repo_revision_and_file_raise_the_clients_errors(client, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("weightvault/nope", "config.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nope", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="0" * 40, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "no/such/file.bin", cache_dir=tmp_path)


def http(url: str, method: str = "GET", headers: dict | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_ranges_and_headers(hub, originals):
    url = f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}"
    size = len(originals[WEIGHTS])
    status, h, body = http(url, "HEAD")
    assert status == 200 and body == b""
    assert re.fullmatch(r"[0-9a-f]{40}", h["X-Repo-Commit"])
    sha = hashlib.sha256(originals[WEIGHTS]).hexdigest()
    assert h["ETag"] == h["X-Linked-Etag"] == f'"{sha}"'
    assert int(h["X-Linked-Size"]) == int(h["Content-Length"]) == size
    assert not [k for k in h if k.lower().startswith("x-xet")]
    status, h, body = http(url, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == originals[WEIGHTS][100:200]
    assert h["Content-Range"] == f"bytes 100-199/{size}"
    status, h, body = http(url, headers={"Range": f"bytes={size - 5}-{size + 100}"})
    assert status == 206 and body == originals[WEIGHTS][-5:]
    status, h, body = http(url, headers={"Range": "bytes=-7"})
    assert status == 206 and body == originals[WEIGHTS][-7:]
    for past in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        status, h, _ = http(url, headers={"Range": past})
        assert status == 416 and h["Content-Range"] == f"bytes */{size}"
    status, h, _ = http(f"{hub.url}/{REPO}/resolve/main/missing.bin", "HEAD")
    assert status == 404 and h["X-Error-Code"] == "EntryNotFound"
    status, h, _ = http(f"{hub.url}/api/models/{REPO}/revision/{'1' * 40}")
    assert status == 404 and h["X-Error-Code"] == "RevisionNotFound"
    status, h, _ = http(f"{hub.url}/api/models/a/b")
    assert status == 404 and h["X-Error-Code"] == "RepoNotFound"
    status, _, body = http(f"{hub.url}/api/models/{REPO}/tree/main?recursive=true")
    assert status == 200 and b"xet" not in body.lower()
    status, _, _ = http(url, "PUT")
    assert status == 405


def test_tree_pages_are_followed(hub, originals, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(hub, "page", 3)
    files = [e.path for e in HfApi(endpoint=hub.url).list_repo_tree(REPO, recursive=True)
             if hasattr(e, "size") and not hasattr(e, "tree_id")]  # fmt: skip
    assert sorted(files) == sorted(originals)


def test_concurrent_clients(client, originals, tmp_path):
    from huggingface_hub import HfFileSystem, hf_hub_download

    results: dict[int, object] = {}

    def download(i: int) -> None:
        try:
            if i % 2:
                p = hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / f"c{i}")
                results[i] = Path(p).read_bytes() == originals[WEIGHTS]
            else:
                fs = HfFileSystem(skip_instance_cache=True)
                with fs.open(f"{REPO}/{WEIGHTS}", "rb") as f:
                    f.seek(i * 1_000_000)
                    results[i] = f.read(3_000_000) == originals[WEIGHTS][i * 1_000_000 :][:3_000_000]
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=download, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == {i: True for i in range(6)}


# -- trust and damage


def weights_chunk_objects(vault: Path, name: str = "minilm") -> list[tuple[dict, Path]]:
    doc = json.loads((vault / "bundles" / name / "data" / "weightvault.json").read_bytes())
    f = next(f for f in doc["files"] if f["path"] == WEIGHTS)
    objs = vault / "bundles" / name / "data" / "objects"
    return [(c, objs / c["object"]) for c in f["chunks"]]


def test_damaged_chunk_ends_the_response_never_wrong_bytes(vault_copy, lab_key, originals,
                                                           tmp_path, monkeypatch, caplog):  # fmt: skip
    from huggingface_hub import hf_hub_download

    chunks = weights_chunk_objects(vault_copy)
    chunk, obj = chunks[len(chunks) // 2]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))
    store = open_store(str(vault_copy))
    with serve(store, [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        patch_hub_endpoint(monkeypatch, s.url)
        caplog.set_level(logging.ERROR, "weightvault.serve")
        with pytest.raises(Exception) as err:  # noqa: B017 - the client's own transfer error
            hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / "cache")
        assert "HfHubHTTPError" not in [c.__name__ for c in type(err.value).__mro__]
        blobs = list((tmp_path / "cache").rglob("blobs/*"))
        assert all(not b.name.endswith(hashlib.sha256(originals[WEIGHTS]).hexdigest())
                   for b in blobs)  # fmt: skip
        assert not list((tmp_path / "cache").rglob(f"snapshots/*/{WEIGHTS}"))
        assert obj.name in caplog.text
        # the range read of the damaged chunk stops short; the bytes it sent are the right ones
        url = f"{s.url}/{REPO}/resolve/main/{WEIGHTS}"
        a, b = chunk["offset"], chunk["offset"] + chunk["length"] - 1
        with pytest.raises(Exception):  # noqa: B017 - IncompleteRead or a reset
            http(url, headers={"Range": f"bytes={a}-{b}"})
        # other chunks are still served
        good, _ = chunks[0]
        status, _, body = http(url, headers={"Range": f"bytes=0-{good['length'] - 1}"})
        assert status == 206 and body == originals[WEIGHTS][: good["length"]]


def test_untrusted_bundle_is_not_served(tmp_path, minilm_dir, lab_key, other_key, monkeypatch):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    vault = tmp_path / "vault"
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text("{}\n")
    ok(wv("seal", small, "--vault", vault, "--key", lab_key, "--name", "mine", "--quiet"))
    ok(wv("seal", small, "--vault", vault, "--key", other_key, "--name", "theirs", "--quiet"))
    store = open_store(str(vault))
    with serve(store, [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        assert set(s.catalog.repos) == {"weightvault/mine"}
        assert "theirs" in s.catalog.skipped
        patch_hub_endpoint(monkeypatch, s.url)
        assert Path(hf_hub_download("weightvault/mine", "config.json",
                                    cache_dir=tmp_path / "c")).read_text() == "{}\n"  # fmt: skip
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("weightvault/theirs", "config.json", cache_dir=tmp_path / "c")


def test_no_trusted_key_serves_nothing(sealed_minilm):
    with pytest.raises(InputError):
        Catalog(open_store(str(sealed_minilm)), [])


def test_serving_never_writes_to_the_vault(vault_copy, lab_key, tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    def state():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in vault_copy.rglob("*")}

    before = state()
    with serve(open_store(str(vault_copy)), [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        patch_hub_endpoint(monkeypatch, s.url)
        snapshot_download(REPO, cache_dir=tmp_path / "cache")
    assert state() == before


def test_bind_is_loopback_unless_allowed(sealed_minilm, lab_key):
    from weightvault.access.server import check_bind

    assert check_bind("127.0.0.1", False) and check_bind("::1", False)
    assert check_bind("localhost", False)
    with pytest.raises(InputError, match="--allow-non-loopback"):
        check_bind("0.0.0.0", False)
    assert check_bind("0.0.0.0", True) is False  # allowed, and known to be non-loopback
    r = wv("serve", "--vault", sealed_minilm, "--trust", f"{lab_key}.pub", "--bind", "0.0.0.0:0")
    one_error(r, 2, "0.0.0.0", "--allow-non-loopback")


def test_serve_command(sealed_minilm, lab_key, originals, tmp_path):
    """The CLI itself, as a user starts it, on a free loopback port."""
    import selectors

    cmd = [sys.executable, "-m", "weightvault.cli", "serve", "--vault", str(sealed_minilm),
           "--trust", f"{lab_key}.pub", "--bind", "127.0.0.1:0"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        assert sel.select(60), "serve printed nothing"
        first = p.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", first).group(1)
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HOME": str(tmp_path / "home"),
               "NO_PROXY": "127.0.0.1"}  # fmt: skip
        code = ("import sys; from huggingface_hub import hf_hub_download; "
                f"print(hf_hub_download({REPO!r}, 'config.json', cache_dir=sys.argv[1]))")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()).read_bytes() == originals["config.json"]
    finally:
        p.terminate()
        p.wait(30)
    assert "GET /weightvault/minilm/resolve/" in p.stderr.read()


def test_hub_sealed_bundle_keeps_its_repo_id_and_commit(tmp_path, minilm_dir, lab_key,
                                                        monkeypatch, originals):  # fmt: skip
    """A Hub cache snapshot sealed, then served as the repo and commit it came from."""
    from huggingface_hub import snapshot_download

    commit = "c0ffee00" * 5
    repo_dir = tmp_path / "hf" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snap = repo_dir / "snapshots" / commit
    for rel, data in originals.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    vault = tmp_path / "vault"
    ok(wv("seal", snap, "--vault", vault, "--key", lab_key, "--name", "minilm-hub", "--quiet"))
    with serve(open_store(str(vault)), [load_public_key(Path(f"{lab_key}.pub"))]) as s:
        assert list(s.catalog.repos) == ["sentence-transformers/all-MiniLM-L6-v2"]
        patch_hub_endpoint(monkeypatch, s.url)
        d = Path(snapshot_download("sentence-transformers/all-MiniLM-L6-v2",
                                   cache_dir=tmp_path / "cache"))  # fmt: skip
        assert d.name == commit
        assert model_files(d) == originals


# -- the Python API


def test_open_bundle_files_tensors_and_file_objects(sealed_minilm, lab_key, originals):
    import numpy as np
    from safetensors.numpy import load

    r = open_bundle(sealed_minilm, "minilm", trust=[f"{lab_key}.pub"])
    assert {f.path: f.size for f in r.files()} == {k: len(v) for k, v in originals.items()}
    ref = load(originals[WEIGHTS])
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.bias"):
        a = r.tensor(WEIGHTS, name)
        assert a.dtype == ref[name].dtype and np.array_equal(a, ref[name])
    with r.open(WEIGHTS) as f:
        f.seek(123_456)
        assert f.read(10) == originals[WEIGHTS][123_456:123_466]
        assert f.read(1_000_000) == originals[WEIGHTS][123_466:1_123_466]
        f.seek(-3, os.SEEK_END)
        assert f.read() == originals[WEIGHTS][-3:] and f.read() == b""
    assert r.read("vocab.txt", 5, 50) == originals["vocab.txt"][5:50]
    assert r.read(WEIGHTS) == originals[WEIGHTS] and WEIGHTS in r._proved
    assert r.read(WEIGHTS) == originals[WEIGHTS]
    with pytest.raises(NotFound):
        r.tensor(WEIGHTS, "no.such.tensor")
    with pytest.raises(NotFound):
        r.open("missing.txt")
    import weightvault

    assert weightvault.open_bundle is open_bundle


def test_open_bundle_refuses_an_untrusted_signature(sealed_minilm, other_key):
    from weightvault.errors import TrustError

    with pytest.raises(TrustError):
        open_bundle(sealed_minilm, "minilm", trust=[f"{other_key}.pub"])


def test_one_tensor_reads_only_the_header_and_its_chunks(sealed_minilm, lab_key):
    """Store byte counters: one tensor costs the header chunk plus the chunks holding it."""
    r = open_bundle(sealed_minilm, "minilm", trust=[f"{lab_key}.pub"])
    name = "encoder.layer.3.attention.self.query.weight"
    doc = r.manifest.doc
    f = next(f for f in doc["files"] if f["path"] == WEIGHTS)
    sizes = {o["name"]: o["size"] for o in doc["objects"]}
    before = r.store.counters.payload_read
    t = r.tensors(WEIGHTS)[name]
    header_read = r.store.counters.payload_read - before
    assert header_read == sizes[f["chunks"][0]["object"]]
    r.tensor(WEIGHTS, name)
    moved = r.store.counters.payload_read - before - header_read
    wanted = [c for c in f["chunks"]
              if c["offset"] < t.end and c["offset"] + c["length"] > t.start]  # fmt: skip
    assert moved == sum(sizes[c["object"]] for c in wanted)
    assert moved < sum(sizes.values()) / 3


def test_encrypted_bundle_needs_an_identity(tmp_path, lab_key, monkeypatch):
    import pyrage
    from huggingface_hub import hf_hub_download

    from weightvault.custody.unlock import Keys

    ident = pyrage.x25519.Identity.generate()
    src = tmp_path / "model"
    src.mkdir()
    payload = os.urandom(300_000)
    (src / "weights.bin").write_bytes(payload)
    vault = tmp_path / "vault"
    ok(wv("seal", src, "--vault", vault, "--key", lab_key, "--name", "sealed", "--quiet",
          "--encrypt-to", str(ident.to_public())))  # fmt: skip
    idfile = tmp_path / "id.txt"
    idfile.write_text(f"{ident}\n")
    idfile.chmod(0o600)
    trusted = [load_public_key(Path(f"{lab_key}.pub"))]
    store = open_store(str(vault))
    assert Catalog(store, trusted).skipped.keys() == {"sealed"}
    with serve(store, trusted, Keys([idfile])) as s:
        patch_hub_endpoint(monkeypatch, s.url)
        p = hf_hub_download("weightvault/sealed", "weights.bin", cache_dir=tmp_path / "c")
        assert Path(p).read_bytes() == payload
    r = open_bundle(vault, "sealed", trust=[f"{lab_key}.pub"], identities=[idfile])
    assert r.read("weights.bin", 1000, 2000) == payload[1000:2000]


# -- the commands


def test_cat_file_and_tensor(sealed_minilm, lab_key, originals, tmp_path):
    import numpy as np
    from safetensors.numpy import load

    base = ("--vault", sealed_minilm, "--trust", f"{lab_key}.pub")
    r = subprocess.run([sys.executable, "-m", "weightvault.cli", "cat", "minilm", "vocab.txt",
                        *map(str, base)], capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout == originals["vocab.txt"]
    name = "encoder.layer.0.attention.output.LayerNorm.weight"
    ok(wv("cat", "minilm", WEIGHTS, "--tensor", name, "-o", tmp_path / "t.npy", *base))
    assert np.array_equal(np.load(tmp_path / "t.npy"), load(originals[WEIGHTS])[name])
    ok(wv("cat", "minilm", WEIGHTS, "--tensor", name, "-o", tmp_path / "t.raw", *base))
    assert (tmp_path / "t.raw").read_bytes() == load(originals[WEIGHTS])[name].tobytes()
    one_error(wv("cat", "minilm", WEIGHTS, "--tensor", "nope", *base), 2, "nope")
    one_error(wv("cat", "minilm", "nope.bin", *base), 2, "nope.bin")
    one_error(wv("cat", "minilm", "vocab.txt", "-o", tmp_path / "t.npy", *base), 2, "exists")


def test_cat_of_a_damaged_chunk_writes_nothing(vault_copy, lab_key, tmp_path):
    _c, obj = weights_chunk_objects(vault_copy)[1]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[100] ^= 0xFF
    obj.write_bytes(bytes(data))
    out = tmp_path / "w.bin"
    one_error(wv("cat", "minilm", WEIGHTS, "-o", out, "--vault", vault_copy,
                 "--trust", f"{lab_key}.pub"), 1, obj.name)  # fmt: skip
    assert list(tmp_path.iterdir()) == [vault_copy]


def test_restore_hf_cache_is_found_offline(sealed_minilm, lab_key, originals, tmp_path):
    cache = tmp_path / "hf-cache"
    r = ok(wv("restore", "minilm", "--hf-cache", cache, "--vault", sealed_minilm,
              "--trust", f"{lab_key}.pub", "--json")).json()  # fmt: skip
    assert r["repo_id"] == REPO and re.fullmatch(r"[0-9a-f]{40}", r["commit"])
    assert (cache / "CACHEDIR.TAG").is_file()
    code = ("import sys; from huggingface_hub import snapshot_download; "
            "print(snapshot_download(sys.argv[1], revision=sys.argv[2], cache_dir=sys.argv[3]))")
    for rev in (r["commit"], "main"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
        p = subprocess.run([sys.executable, "-c", code, REPO, rev, str(cache)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert model_files(Path(p.stdout.strip())) == originals
    # a second restore into the same cache is refused, the cache untouched
    one_error(wv("restore", "minilm", "--hf-cache", cache, "--vault", sealed_minilm,
                 "--trust", f"{lab_key}.pub"), 5, "exists")  # fmt: skip
    one_error(wv("restore", "minilm", "--vault", sealed_minilm, "--trust", f"{lab_key}.pub"),
              2, "--hf-cache")  # fmt: skip


def test_restore_hf_cache_of_a_damaged_bundle_leaves_no_blob(vault_copy, lab_key, tmp_path):
    _c, obj = weights_chunk_objects(vault_copy)[-1]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0x10
    obj.write_bytes(bytes(data))
    cache = tmp_path / "hf-cache"
    one_error(wv("restore", "minilm", "--hf-cache", cache, "--vault", vault_copy,
                 "--trust", f"{lab_key}.pub"), 1, obj.name)  # fmt: skip
    assert not list(cache.rglob("snapshots/*/*"))
    assert not [b for b in cache.rglob("blobs/*") if b.stat().st_size > 10_000_000]


@pytest.mark.parametrize("path", [WEIGHTS, "vocab.txt"])  # many chunks; one chunk
def test_whole_file_digest_is_proved_before_the_last_piece(sealed_minilm, lab_key, originals,
                                                           path):  # fmt: skip
    """The digest a whole-file read proves, wrong in memory (as a decoder bug would make the
    bytes): every piece but the last goes out, then IntegrityError, never the whole file."""
    from weightvault.errors import IntegrityError

    r = open_bundle(sealed_minilm, "minilm", trust=[f"{lab_key}.pub"])
    entry = r._entry(path)
    entry["sha256"] = "0" * 64
    for c in entry["chunks"]:
        c.pop("sha256", None)
    got = bytearray()
    with pytest.raises(IntegrityError, match="sha256"):
        for piece in r.iter_range(path, ahead=True):
            got += piece
    assert 0 < len(originals[path]) - len(got) <= 4 << 20
    assert originals[path].startswith(bytes(got))
    # a range that is not the whole file is not held to the file's digest
    assert r.read(path, 1, 100) == originals[path][1:100]


def test_hostile_paths_cannot_split_headers_or_escape(hub):
    """Control characters in a path (as %0d%0a) reach neither a header nor the log raw, and a
    path is only ever a key of the signed manifest: ../ finds nothing."""
    status, h, _ = http(f"{hub.url}/{REPO}/resolve/main/x%0d%0aSet-Cookie:%20a=b", "HEAD")
    assert status == 404 and "Set-Cookie" not in h
    assert "\r" not in h["X-Error-Message"] and "\n" not in h["X-Error-Message"]
    for path in ("../../tmp", "%2e%2e/%2e%2e/bagit.txt", "data/weightvault.json"):
        status, h, _ = http(f"{hub.url}/{REPO}/resolve/main/{path}", "HEAD")
        assert status == 404 and h["X-Error-Code"] == "EntryNotFound"


def test_block_reads_fetch_each_object_once(sealed_minilm, lab_key, originals):
    """Reads in blocks (as HfFileSystem makes them) within one chunk fetch and prove its
    object once: the reader keeps the last few verified copies."""
    r = open_bundle(sealed_minilm, "minilm", trust=[f"{lab_key}.pub"])
    f = next(f for f in r.manifest.files if f["path"] == WEIGHTS)
    c = max(f["chunks"], key=lambda c: c["length"])
    size = r.manifest.objects[c["object"]]["size"]
    before = r.store.counters.payload_read
    for k in range(4):
        a = c["offset"] + k * 5_000_000
        assert r.read(WEIGHTS, a, a + 1_000_000) == originals[WEIGHTS][a : a + 1_000_000]
    assert r.store.counters.payload_read - before == size
    r.close()


def test_bf16_tensor_comes_back_exactly(tmp_path, lab_key):
    """numpy has no bfloat16: with ml_dtypes the tensor keeps it, without it comes back as
    float32 holding every value exactly."""
    import numpy as np

    x = (np.arange(-24, 24, dtype=np.float32) / 7).reshape(6, 8)
    bits = (x.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [6, 8],
                               "data_offsets": [0, bits.nbytes]}}).encode()  # fmt: skip
    src = tmp_path / "model"
    src.mkdir()
    (src / WEIGHTS).write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    ok(wv("seal", src, "--vault", tmp_path / "v", "--key", lab_key, "--name", "b", "--quiet"))
    r = open_bundle(tmp_path / "v", "b", trust=[f"{lab_key}.pub"])
    got = r.tensor(WEIGHTS, "w")
    want = (bits.astype("<u4") << 16).view("<f4")
    assert got.shape == (6, 8) and np.array_equal(got.astype(np.float32), want)
