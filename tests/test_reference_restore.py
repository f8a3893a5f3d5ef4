"""docs/reference_restore.py, written from docs/FORMAT.md alone, restores what weightvault seals.

This is the executable proof that the format spec is complete: a restorer that shares no code
with weightvault must reproduce every sealed file bit-exact, and must refuse damaged or forged
bundles.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
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


def test_restores_an_exported_standalone_bag(tmp_path, key, synthetic):
    """A version 4 bundle exported as one bag (objects inside it, no vault around it)
    restores bit-exact, and the vault's copy is not used: the bag stands alone."""
    src, bag = synthetic
    out = tmp_path / "bag"
    r = subprocess.run([sys.executable, "-m", "weightvault.cli", "export", "synthetic", str(out),
                        "--vault", str(bag.parent.parent), "--trust", f"{key}.pub"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not (out.parent / "objects").exists()
    manifest = json.loads((out / "data" / "weightvault.json").read_bytes())
    assert all((out / "data" / "objects" / o["name"]).is_file() for o in manifest["objects"])
    proc = reference_restore(out, tmp_path / "out", "--trust", f"{key}.pub")
    assert proc.returncode == 0, proc.stderr
    assert_same_files(src, tmp_path / "out")


def test_without_trust_warns_but_restores(tmp_path, synthetic):
    src, bag = synthetic
    proc = reference_restore(bag, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "signature NOT checked" in proc.stderr
    assert_same_files(src, tmp_path / "out")


def copy_bag(bag: Path, tmp_path: Path) -> Path:
    """A vault holding a copy of this one bundle (and, from format version 4, the objects it
    names in the vault's pool)."""
    copy = tmp_path / "vault" / "bundles" / bag.name
    shutil.copytree(bag, copy)
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    if manifest["format_version"] >= 4:
        (tmp_path / "vault" / "objects").mkdir()
        for o in manifest["objects"]:
            shutil.copy(object_path(bag, o["name"]), object_path(copy, o["name"]))
    for p in (tmp_path / "vault").rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return copy


def object_path(bag: Path, name: str) -> Path:
    """Where a bundle's object is: inside the bag (format versions 1-3, or a standalone
    bag), else in the pool of the vault holding the bag (version 4, FORMAT.md section 2.2)."""
    inside = bag / "data" / "objects" / name
    return inside if inside.exists() else bag.parent.parent / "objects" / name


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
    obj = object_path(bag, victim)
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


# Version 2: encrypted bundles (FORMAT.md section 10).


@pytest.fixture(scope="module")
def age_identity(tmp_path_factory) -> tuple[Path, str]:
    """(identity file, age1... recipient) of a fresh X25519 age identity."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    path = tmp_path_factory.mktemp("age") / "identity.txt"
    path.write_text(f"{identity}\n")
    return path, str(identity.to_public())


def data_key(bag: Path, identity: Path) -> str:
    """What the recipient's age -d prints from data/keys/recipient-1.age: 64 hex digits, LF."""
    envelope = bag / "data" / "keys" / "recipient-1.age"
    if shutil.which("age"):
        proc = run("age", "-d", "-i", identity, envelope)
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
    else:
        import pyrage

        secret = pyrage.x25519.Identity.from_str(identity.read_text().strip())
        text = pyrage.decrypt(envelope.read_bytes(), [secret]).decode()
    assert len(text) == 65 and text.endswith("\n"), text
    return text.strip()


def assert_encrypted(bag: Path) -> None:
    """The signed manifest shows neither file names nor the source (section 10.2)."""
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    assert manifest["format_version"] == 5 and manifest["encryption"]
    assert manifest["encryption"]["scheme"] == "weightvault-aead-2"
    assert manifest["files"] == [] and manifest["source"] == {"kind": "encrypted"}
    assert (bag / "data" / "private" / "manifest.sealed").is_file()


@pytest.fixture(scope="module")
def encrypted_synthetic(tmp_path_factory, key, age_identity) -> tuple[Path, Path, str]:
    """(source dir, bundle dir, data key) for the synthetic model, encrypted, 1 MiB chunks."""
    base = tmp_path_factory.mktemp("encrypted")
    src = synthetic_model(base / "model")
    bag = seal(
        src, base / "vault", key, "secret", "--chunk-size", "1", "--encrypt-to", age_identity[1]
    )
    return src, bag, data_key(bag, age_identity[0])


def test_restores_encrypted_real_model_bit_exact(tmp_path, key, age_identity):
    src = ensure_minilm()
    bag = seal(src, tmp_path / "vault", key, "minilm", "--encrypt-to", age_identity[1])
    assert_encrypted(bag)
    dk = data_key(bag, age_identity[0])
    proc = reference_restore(bag, tmp_path / "out", "--trust", f"{key}.pub", "--data-key", dk)
    assert proc.returncode == 0, proc.stderr
    assert_same_files(src, tmp_path / "out")


def test_restores_encrypted_synthetic_model_bit_exact(tmp_path, key, encrypted_synthetic):
    src, bag, dk = encrypted_synthetic
    assert_encrypted(bag)
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    assert len(manifest["objects"]) > 10  # many chunks, each its own object
    key_file = tmp_path / "data-key.txt"
    key_file.write_text(f"{dk}\n")  # exactly what age -d prints
    out = tmp_path / "out"
    proc = reference_restore(bag, out, "--trust", f"{key}.pub", "--data-key-file", key_file)
    assert proc.returncode == 0, proc.stderr
    assert_same_files(src, out)
    assert (out / "empty.txt").stat().st_size == 0


def test_encrypted_bundle_refuses_a_wrong_data_key(tmp_path, key, encrypted_synthetic):
    dest = tmp_path / "out"
    proc = reference_restore(
        encrypted_synthetic[1], dest, "--trust", f"{key}.pub", "--data-key", "00" * 32
    )
    assert_refused(proc, dest, "key check")


def test_encrypted_bundle_needs_a_data_key(tmp_path, key, encrypted_synthetic):
    dest = tmp_path / "out"
    proc = reference_restore(encrypted_synthetic[1], dest, "--trust", f"{key}.pub")
    assert_refused(proc, dest, "encrypted", "data key is needed", "--data-key")


def test_encrypted_flipped_byte_in_object_is_refused(tmp_path, key, encrypted_synthetic):
    _, bag, dk = encrypted_synthetic
    bag = copy_bag(bag, tmp_path)
    manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
    victim = max(manifest["objects"], key=lambda o: (o["size"], o["name"]))["name"]
    obj = object_path(bag, victim)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    dest = tmp_path / "out"
    proc = reference_restore(bag, dest, "--trust", f"{key}.pub", "--data-key", dk)
    assert_refused(proc, dest, victim)


def test_encrypted_private_section_is_authenticated(tmp_path, encrypted_synthetic):
    """A changed private section whose digests are also rewritten still fails its tag."""
    _, bag, dk = encrypted_synthetic
    bag = copy_bag(bag, tmp_path)
    private = bag / "data" / "private" / "manifest.sealed"
    data = bytearray(private.read_bytes())
    data[-1] ^= 0x01  # in the last segment's tag
    private.write_bytes(bytes(data))

    def follow(m):
        m["encryption"]["private"]["sha256"] = hashlib.sha256(data).hexdigest()
        return canonical(m)

    tamper(bag, True, follow)  # a forger's bundle: only --trust would catch it earlier
    dest = tmp_path / "out"
    proc = reference_restore(bag, dest, "--data-key", dk)
    assert_refused(proc, dest, "private/manifest.sealed", "authentication")


def test_version_1_with_a_data_key_warns_and_restores(tmp_path, key, synthetic):
    src, bag = synthetic
    proc = reference_restore(bag, tmp_path / "out", "--trust", f"{key}.pub", "--data-key", "0" * 64)
    assert proc.returncode == 0, proc.stderr
    assert "not encrypted" in proc.stderr
    assert_same_files(src, tmp_path / "out")


# Sealed objects (section 10.3), built here from the spec with a small segment size.

SEGMENT = 64


def restorer_module():
    spec = importlib.util.spec_from_file_location("reference_restore", RESTORER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seal_object(dk: bytes, salt: bytes, label: bytes, index: int, plain: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    nonce = os.urandom(16)
    aead = AESGCM(HKDF(hashes.SHA256(), 32, nonce, b"weightvault/2 object key").derive(dk))
    ad = b"weightvault/2 " + label + b"\x00" + salt + struct.pack(">Q", index)
    pieces = [plain[i : i + SEGMENT] for i in range(0, len(plain), SEGMENT)] or [b""]
    out = b"WVE2\x01" + nonce
    for i, piece in enumerate(pieces):
        out += aead.encrypt(struct.pack(">QI", i, i == len(pieces) - 1), piece, ad)
    return out


def seal_lineage_object(dk: bytes, lineage: bytes, plain: bytes) -> bytes:
    """FORMAT.md 10.3, scheme weightvault-aead-2, written from the text: the nonce is the first
    16 bytes of HMAC-SHA256(K_nonce, P), the chunk AD names the lineage salt only."""
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    k_nonce = HKDF(hashes.SHA256(), 32, lineage, b"weightvault/3 chunk nonce").derive(dk)
    nonce = hmac.new(k_nonce, plain, hashlib.sha256).digest()[:16]
    aead = AESGCM(HKDF(hashes.SHA256(), 32, nonce, b"weightvault/2 object key").derive(dk))
    ad = b"weightvault/3 chunk\x00" + lineage
    S = 1048576  # section 10.2: the scheme's segment_size
    pieces = [plain[i : i + S] for i in range(0, len(plain), S)] or [b""]
    out = b"WVE2\x01" + nonce
    for i, piece in enumerate(pieces):
        out += aead.encrypt(struct.pack(">QI", i, i == len(pieces) - 1), piece, ad)
    return out


@pytest.mark.parametrize("length", [0, 1, 1 << 20, (2 << 20) + 5, 9 << 20])
def test_lineage_objects_are_what_the_spec_says(length, monkeypatch):
    """weightvault's sealer of version 5 chunk objects (spooling P to compute its nonce)
    writes exactly the bytes the spec's construction gives, byte for byte; equal plaintexts
    under one lineage give one object, another lineage or key another; the reference
    restorer opens it with the lineage's associated data and refuses it at any position of
    a version 4 bundle."""
    from weightvault.format import crypt

    rr = restorer_module()
    monkeypatch.setattr(crypt.LineageSealer, "SPOOL", 4 << 20)  # 9 MiB waits on disk
    dk, lineage, plain = os.urandom(32), os.urandom(32), os.urandom(length)
    s = crypt.LineageSealer(dk, lineage.hex())
    parts = [s.feed(plain[i : i + 3000000]) for i in range(0, len(plain), 3000000)]
    ours = b"".join(parts) + b"".join(s.finish_parts())
    assert ours == seal_lineage_object(dk, lineage, plain)
    again = crypt.LineageSealer(dk, lineage.hex())
    again.feed(plain)
    assert b"".join(again.finish_parts()) == ours
    other = crypt.LineageSealer(dk, os.urandom(32).hex())
    other.feed(plain)
    assert b"".join(other.finish_parts())[5:21] != ours[5:21]
    enc = {"scheme": "weightvault-aead-2", "salt": os.urandom(32).hex(),
           "lineage_salt": lineage.hex(), "segment_size": 1 << 20}  # fmt: skip
    assert rr.open_sealed(ours, dk, enc, b"chunk", 9, "object") == plain
    v4 = {"scheme": "weightvault-aead-1", "salt": lineage.hex(), "segment_size": 1 << 20}
    with pytest.raises(rr.Refused, match="fails authentication"):
        rr.open_sealed(ours, dk, v4, b"chunk", 0, "object")


@pytest.mark.parametrize("length", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT])
def test_sealed_object_sizes_and_round_trip(length):
    rr = restorer_module()
    dk, salt, plain = os.urandom(32), os.urandom(32), os.urandom(length)
    sealed = seal_object(dk, salt, b"chunk", 7, plain)
    assert len(sealed) == rr.sealed_size(length, SEGMENT)
    assert rr.sealed_length(len(sealed), SEGMENT) == length
    enc = {"salt": salt.hex(), "segment_size": SEGMENT}
    assert rr.open_sealed(sealed, dk, enc, b"chunk", 7, "object") == plain


def test_sealed_object_sizes_that_no_plaintext_has():
    rr = restorer_module()
    step = SEGMENT + 16
    impossible = [0, 20, 21, 21 + 15, 21 + step + 16, 21 + step + 1, 21 + 2 * step + 15]
    assert [rr.sealed_length(size, SEGMENT) for size in impossible] == [None] * len(impossible)
    valid = {21 + 16: 0, 21 + 17: 1, 21 + step: SEGMENT, 21 + step + 17: SEGMENT + 1}
    assert {size: rr.sealed_length(size, SEGMENT) for size in valid} == valid


def test_sealed_object_refusals():
    rr = restorer_module()
    dk, salt, plain = os.urandom(32), os.urandom(32), os.urandom(2 * SEGMENT + 10)
    enc = {"salt": salt.hex(), "segment_size": SEGMENT}
    sealed = seal_object(dk, salt, b"chunk", 3, plain)
    step = SEGMENT + 16
    cases = {
        "truncated after a whole segment": (sealed[: 21 + 2 * step], b"chunk", 3, dk, enc),
        "extended by a byte": (sealed + b"\x00", b"chunk", 3, dk, enc),
        "another position": (sealed, b"chunk", 4, dk, enc),
        "another label": (sealed, b"private", 3, dk, enc),
        "another bundle's salt": (sealed, b"chunk", 3, dk, {**enc, "salt": "00" * 32}),
        "another key": (sealed, b"chunk", 3, bytes(32), enc),
        "a flipped tag bit": (sealed[:-1] + bytes([sealed[-1] ^ 1]), b"chunk", 3, dk, enc),
    }
    for case, (data, label, index, key, e) in cases.items():
        with pytest.raises(rr.Refused, match="fails authentication"):
            rr.open_sealed(data, key, e, label, index, case)
    with pytest.raises(rr.Refused, match="magic or version"):
        rr.open_sealed(b"WVE2\x02" + sealed[5:], dk, enc, b"chunk", 3, "version 2 byte")
    with pytest.raises(rr.Refused, match="not the size of a sealed object"):
        rr.open_sealed(sealed[: 21 + step + 16], dk, enc, b"chunk", 3, "bad size")
