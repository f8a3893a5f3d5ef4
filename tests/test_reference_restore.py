"""docs/reference_restore.py, written from docs/FORMAT.md alone, restores what weightvault seals.

This is the executable proof that the format spec is complete: a restorer that shares no code
with weightvault must reproduce every sealed file bit-exact, and must refuse damaged or forged
bundles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support.model import ensure_minilm

REPO = Path(__file__).resolve().parent.parent
RESTORER = REPO / "docs" / "reference_restore.py"


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def seal(src: Path, vault: Path, key: Path, name: str, *extra: str) -> Path:
    proc = run(
        "weightvault",
        "seal",
        src,
        "--vault",
        vault,
        "--key",
        key,
        "--name",
        name,
        "--quiet",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return vault / "bundles" / name


def reference_restore(bag: Path, dest: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    return run(sys.executable, RESTORER, bag, dest, *extra)


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (permission bits, sha256) for every regular file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        assert not p.is_symlink(), p
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.relative_to(root).as_posix()] = (stat.S_IMODE(p.stat().st_mode), digest)
    return out


def assert_same_files(src: Path, dest: Path) -> None:
    assert tree(dest) == tree(src)
    for rel in tree(src):  # byte-for-byte, not only by digest
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def synthetic_model(root: Path) -> Path:
    """Weight-like tensors of four dtypes, several MiB, plus awkward non-tensor files."""
    rng = np.random.default_rng(20240601)
    weights = lambda n: rng.standard_normal(n, dtype=np.float32) * 0.02  # noqa: E731
    bf16 = (weights(1_500_000).view(np.uint32) >> 16).astype("<u2")  # raw bfloat16 bit patterns
    tensors = {
        "embed.weight": ("BF16", (1500, 1000), bf16.tobytes()),
        "layer.0.attn.weight": ("F16", (1000, 1000), weights(1_000_000).astype("<f2").tobytes()),
        "layer.0.mlp.weight": ("F32", (1000, 750), weights(750_000).astype("<f4").tobytes()),
        "position_ids": ("I64", (1, 4096), np.arange(4096, dtype="<i8").tobytes()),
    }
    root.mkdir()
    write_safetensors(root / "model.safetensors", tensors)
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "dir").mkdir(parents=True)
    (root / "sub" / "dir" / "config.json").write_text('{"hidden_size": 1000}\n')
    blob = rng.integers(0, 256, 1_200_000, dtype=np.uint8).tobytes() + b"tokenizer " * 50_000
    (root / "tokenizer.bin").write_bytes(blob)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return root


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signer"
    proc = run("weightvault", "keygen", path)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, key) -> tuple[Path, Path]:
    """(source dir, bundle dir) for the synthetic model, sealed with 1 MiB chunks."""
    base = tmp_path_factory.mktemp("synthetic")
    src = synthetic_model(base / "model")
    return src, seal(src, base / "vault", key, "synthetic", "--chunk-size", "1")


def test_restores_real_model_bit_exact(tmp_path, key):
    src = ensure_minilm()
    bag = seal(src, tmp_path / "vault", key, "minilm")
    proc = reference_restore(bag, tmp_path / "out", "--trust", f"{key}.pub")
    assert proc.returncode == 0, proc.stderr
    assert_same_files(src, tmp_path / "out")


def test_restores_synthetic_model_with_every_codec(tmp_path, key, synthetic):
    src, bag = synthetic
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    codecs = Counter(c["codec"] for f in manifest["files"] for c in f["chunks"])
    assert {"fsplit-bf16", "fsplit-f16", "fsplit-f32"} <= set(codecs), codecs
    assert sum(codecs.values()) > 10, codecs  # many chunks, not one per file
    proc = reference_restore(bag, tmp_path / "out", "--trust", f"{key}.pub")
    assert proc.returncode == 0, proc.stderr
    assert_same_files(src, tmp_path / "out")
    assert (tmp_path / "out" / "empty.txt").stat().st_size == 0


def test_without_trust_warns_but_restores(tmp_path, synthetic):
    src, bag = synthetic
    proc = reference_restore(bag, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "signature NOT checked" in proc.stderr
    assert_same_files(src, tmp_path / "out")


def copy_bag(bag: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "vault" / "bundles" / bag.name
    shutil.copytree(bag, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return copy


def assert_refused(proc: subprocess.CompletedProcess, dest: Path, *words: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []


def test_flipped_byte_in_object_is_refused(tmp_path, key, synthetic):
    bag = copy_bag(synthetic[1], tmp_path)
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    files = {f["path"]: f for f in manifest["files"]}
    victim = files["model.safetensors"]["chunks"][-1]["object"]  # late: some files already written
    obj = bag / "data" / "objects" / victim
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    dest = tmp_path / "out"
    assert_refused(reference_restore(bag, dest, "--trust", f"{key}.pub"), dest, victim)


def tamper(bag: Path, fix_payload_digest: bool, edit) -> None:
    path = bag / "data" / "weightvault.json"
    manifest = json.loads(path.read_bytes())
    raw = edit(manifest)
    path.write_bytes(raw)
    if fix_payload_digest:  # a forger who also rewrites the envelope's digest
        sig_path = bag / "weightvault.sig"
        envelope = json.loads(sig_path.read_bytes())
        envelope["payload_sha256"] = hashlib.sha256(raw).hexdigest()
        sig_path.write_bytes(json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode())


def canonical(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make_executable(m):
    m["files"][0]["mode"] = 0o777
    return canonical(m)


def escape_path(m):
    m["files"][0]["path"] = "../escape"
    return canonical(m)


@pytest.mark.parametrize(
    ("fix_digest", "trust", "edit", "expected"),
    [
        (False, True, make_executable, "payload_sha256"),
        (True, True, make_executable, "no valid signature"),
        (True, False, lambda m: json.dumps(m, indent=1).encode(), "canonical"),
        (True, False, escape_path, "unsafe path"),
    ],
    ids=["digest", "signature", "not-canonical", "unsafe-path"],
)
def test_tampered_manifest_is_refused(tmp_path, key, synthetic, fix_digest, trust, edit, expected):
    bag = copy_bag(synthetic[1], tmp_path)
    tamper(bag, fix_digest, edit)
    dest = tmp_path / "out"
    extra = ("--trust", f"{key}.pub") if trust else ()
    assert_refused(reference_restore(bag, dest, *extra), dest, expected)
