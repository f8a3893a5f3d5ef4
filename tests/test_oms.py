"""OpenSSF model signing: signatures from weightvault.record.oms, checked by the real `model_signing` CLI.

The independent tool (PyPI model-signing 1.1.1) runs in a subprocess exactly as a researcher
would run it; weightvault never imports it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wv
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from weightvault.errors import InputError
from weightvault.record import oms

try:
    import model_signing  # noqa: F401

    TOOL_ERROR = None
except Exception as e:  # an ImportError, or a missing dependency such as pyopenssl
    TOOL_ERROR = f"model_signing (PyPI model-signing) cannot be imported: {e}"
needs_tool = pytest.mark.skipif(TOOL_ERROR is not None, reason=TOOL_ERROR or "")


def tool(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "model_signing", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def verify(model: Path, sig: Path, pub: Path, *extra) -> subprocess.CompletedProcess:
    """The command docs/MODEL-SIGNING.md gives researchers."""
    return tool("verify", "key", model, "--signature", sig, "--public_key", pub, *extra)


def write_key(d: Path, curve: ec.EllipticCurve | None = None, name: str = "oms") -> Path:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    path = d / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (d / f"{name}.pub").write_bytes(oms.public_pem(key))
    return path


def digests(model: Path) -> list[tuple[str, str, int]]:
    """(path, sha256, size) for each file, as weightvault's manifest records them."""
    out = []
    for p in sorted(model.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out.append((p.relative_to(model).as_posix(), h.hexdigest(), p.stat().st_size))
    return out


def statement(sig: bytes) -> dict:
    bundle = json.loads(sig)
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A small model directory: weights, configs, a subdirectory, names that sort differently
    as strings and as paths (a/… before a-…), an empty file, a non-ASCII name, .gitattributes."""
    m = tmp_path / "tiny-model"
    (m / "1_Pooling").mkdir(parents=True)
    (m / "a").mkdir()
    (m / "model.safetensors").write_bytes(os.urandom(200_000))
    (m / "config.json").write_text('{"hidden_size": 8}\n')
    (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    (m / "a" / "b.txt").write_text("in a directory\n")
    (m / "a-b.txt").write_text("beside it\n")
    (m / "empty").write_bytes(b"")
    (m / "notes-é.md").write_text("non-ASCII name\n")
    (m / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return m


@needs_tool
def test_tool_verifies_signature_inside_the_directory(tiny, tmp_path):
    key_path = write_key(tmp_path)
    key = oms.load_ec_key(key_path)
    sig = oms.sign_files(digests(tiny), key, model_name=tiny.name)
    sig_path = tiny / oms.default_signature_name()
    sig_path.write_bytes(sig)

    r = verify(tiny, sig_path, tmp_path / "oms.pub")
    assert r.returncode == 0, r.stderr
    assert "Verification succeeded" in r.stdout

    # One flipped bit in the weights: the tool names the file.
    data = bytearray((tiny / "model.safetensors").read_bytes())
    data[100_000] ^= 1
    (tiny / "model.safetensors").write_bytes(bytes(data))
    r = verify(tiny, sig_path, tmp_path / "oms.pub")
    assert r.returncode != 0
    # (the tool prints a repr of a list: quoting varies with the digest bytes)
    assert "Hash mismatch for" in r.stderr and "model.safetensors" in r.stderr


@needs_tool
def test_tool_refuses_missing_extra_file_and_other_key(tiny, tmp_path):
    key = oms.load_ec_key(write_key(tmp_path))
    write_key(tmp_path, name="other")
    sig_path = tmp_path / "model.sig"  # outside the directory, as after `record export`
    sig_path.write_bytes(oms.sign_files(digests(tiny), key, model_name=tiny.name))
    assert verify(tiny, sig_path, tmp_path / "oms.pub").returncode == 0

    r = verify(tiny, sig_path, tmp_path / "other.pub")
    assert r.returncode != 0 and "Key mismatch" in r.stderr

    (tiny / "a" / "extra.txt").write_text("not signed\n")
    r = verify(tiny, sig_path, tmp_path / "oms.pub")
    assert r.returncode != 0 and "Extra files" in r.stderr
    (tiny / "a" / "extra.txt").unlink()

    (tiny / "1_Pooling" / "config.json").unlink()
    r = verify(tiny, sig_path, tmp_path / "oms.pub")
    assert r.returncode != 0 and "Missing files" in r.stderr


@needs_tool
def test_same_statement_as_model_signing_sign_key(tiny, tmp_path):
    """Our predicate is the one `model_signing sign key` writes for the same directory. Only
    the order of ignore_paths and of JSON keys differs: the tool takes them from a frozenset
    and a protobuf map, so its own output changes from run to run; ours is fixed."""
    key_path = write_key(tmp_path)
    theirs_path = tiny / "model.sig"
    r = tool("sign", "key", tiny, "--private_key", key_path, "--signature", theirs_path)
    assert r.returncode == 0, r.stderr
    theirs_bytes = theirs_path.read_bytes()
    theirs_path.unlink()
    ours_bytes = oms.sign_files(digests(tiny), oms.load_ec_key(key_path), model_name=tiny.name)

    ours, theirs = statement(ours_bytes), statement(theirs_bytes)
    assert ours["predicate"]["resources"] == theirs["predicate"]["resources"]  # same order too
    names = [r["name"] for r in ours["predicate"]["resources"]]
    assert names.index("a/b.txt") < names.index("a-b.txt")
    assert ".gitattributes" not in names
    assert ours["subject"] == theirs["subject"]
    s_ours, s_theirs = ours["predicate"]["serialization"], theirs["predicate"]["serialization"]
    assert sorted(s_ours.pop("ignore_paths")) == sorted(s_theirs.pop("ignore_paths"))
    assert s_ours == s_theirs
    assert {k: v for k, v in ours.items() if k != "predicate"} == {
        k: v for k, v in theirs.items() if k != "predicate"
    }

    b_ours, b_theirs = json.loads(ours_bytes), json.loads(theirs_bytes)
    assert b_ours["verificationMaterial"] == b_theirs["verificationMaterial"]
    for b in (b_ours, b_theirs):
        del b["dsseEnvelope"]["payload"], b["dsseEnvelope"]["signatures"][0]["sig"]
    assert b_ours == b_theirs
    assert list(json.loads(ours_bytes)) == list(json.loads(theirs_bytes))
    assert b"\n" not in ours_bytes and b" " not in ours_bytes  # compact, like the tool's


@needs_tool
@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()], ids=["p384", "p521"])
def test_other_curves(tiny, tmp_path, curve):
    key = oms.load_ec_key(write_key(tmp_path, curve))
    sig_path = tmp_path / "model.sig"
    sig_path.write_bytes(oms.sign_files(digests(tiny), key, model_name=tiny.name))
    r = verify(tiny, sig_path, tmp_path / "oms.pub")
    assert r.returncode == 0, r.stderr


@needs_tool
def test_real_minilm(minilm_dir, tmp_path):
    """The real model (a shared read-only cache: the signature stays outside it)."""
    key = oms.load_ec_key(write_key(tmp_path))
    files = digests(minilm_dir)
    assert ".gitattributes" in [f[0] for f in files]  # sealed, but not part of the OMS predicate
    sig_path = tmp_path / "model.sig"
    sig_path.write_bytes(oms.sign_files(files, key, model_name=minilm_dir.name))
    r = verify(minilm_dir, sig_path, tmp_path / "oms.pub")
    assert r.returncode == 0, r.stderr
    resources = statement(sig_path.read_bytes())["predicate"]["resources"]
    assert {"name": "model.safetensors", "algorithm": "sha256",
            "digest": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"} in resources  # fmt: skip


@needs_tool
def test_restored_bundle_verifies_from_manifest_digests(sealed_minilm, lab_key, tmp_path):
    """The interop claim end to end: digests taken from the signed weightvault manifest (no
    file read), signature written, bundle restored through the CLI, independent tool says yes."""
    from weightvault.format.keys import load_public_key
    from weightvault.storage.opener import open_store
    from weightvault.storage.vault import Vault

    bundle = Vault(open_store(str(sealed_minilm))).load(
        "minilm", [load_public_key(f"{lab_key}.pub")]
    )
    files = [(f["path"], f["sha256"], f["size"]) for f in bundle.manifest.files]
    key = oms.load_ec_key(write_key(tmp_path))
    sig_path = tmp_path / "record" / "model.sig"
    sig_path.parent.mkdir()
    sig_path.write_bytes(oms.sign_files(files, key, model_name="minilm"))

    dest = tmp_path / "restored"
    r = wv("restore", "minilm", dest, "--vault", sealed_minilm, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    r = verify(dest, sig_path, tmp_path / "oms.pub")
    assert r.returncode == 0, r.stderr


def test_signature_is_deterministic_where_rfc6979_is_available(tiny, tmp_path):
    key = oms.load_ec_key(write_key(tmp_path))
    files = digests(tiny)
    a = oms.sign_files(files, key, model_name="m")
    if not getattr(oms._ecdsa(key.curve.name), "deterministic_signing", False):
        pytest.skip("cryptography/OpenSSL here has no deterministic ECDSA (RFC 6979)")
    assert a == oms.sign_files(list(reversed(files)), key, model_name="m")


def test_signature_format_without_the_tool(tiny, tmp_path):
    """What the tool checks, rechecked with cryptography alone (runs even without the tool)."""
    key = oms.load_ec_key(write_key(tmp_path))
    sig = json.loads(oms.sign_files(digests(tiny), key, model_name="tiny"))
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    pem = (tmp_path / "oms.pub").read_bytes()
    assert sig["verificationMaterial"]["publicKey"]["hint"] == hashlib.sha256(pem).hexdigest()
    env = sig["dsseEnvelope"]
    assert env["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 28 application/vnd.in-toto+json %d %s" % (len(payload), payload)
    key.public_key().verify(
        base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(oms._HASHES["secp256r1"]())
    )
    st = json.loads(payload)
    assert st["predicateType"] == "https://model_signing/signature/v1.0"
    root = hashlib.sha256(
        b"".join(bytes.fromhex(r["digest"]) for r in st["predicate"]["resources"])
    )
    assert st["subject"] == [{"name": "tiny", "digest": {"sha256": root.hexdigest()}}]
    assert st["predicate"]["serialization"] == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore", "model.sig"],
    }


def test_git_paths_are_top_level_only(tmp_path):
    key = oms.load_ec_key(write_key(tmp_path))
    h = "0" * 64
    files = [(".gitattributes", h, 1), (".git/HEAD", h, 1), (".github/x", h, 1),
             (".gitfoo", h, 1), ("sub/.gitattributes", h, 1), ("model.sig.bak", h, 1)]  # fmt: skip
    st = statement(oms.sign_files(files, key, model_name="m"))
    assert [r["name"] for r in st["predicate"]["resources"]] == [
        ".gitfoo",
        "model.sig.bak",
        "sub/.gitattributes",
    ]
    st = statement(oms.sign_files(files, key, model_name="m", ignore_git_paths=False))
    assert len(st["predicate"]["resources"]) == 6
    assert st["predicate"]["serialization"]["ignore_paths"] == ["model.sig"]


@pytest.mark.parametrize(
    "files, message",
    [
        ([("a", "xyz", 1)], "is not 64 hex digits"),
        ([("a", "A" * 64, 1)], "is not 64 hex digits"),
        ([("../a", "0" * 64, 1)], "bad file path"),
        ([("/a", "0" * 64, 1)], "bad file path"),
        ([("a//b", "0" * 64, 1)], "bad file path"),
        ([("a", "0" * 64, 1), ("a", "1" * 64, 1)], "listed twice"),
        ([("model.sig", "0" * 64, 1)], "pick another signature name"),
        ([(".gitattributes", "0" * 64, 1)], "no files to sign"),
        ([], "no files to sign"),
    ],
)
def test_sign_files_refuses_bad_input(tmp_path, files, message):
    key = oms.load_ec_key(write_key(tmp_path))
    with pytest.raises(InputError, match=message):
        oms.sign_files(files, key, model_name="m")


def test_load_ec_key_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        oms.load_ec_key(tmp_path / "nope.key")

    loose = write_key(tmp_path)
    loose.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        oms.load_ec_key(loose)

    def write(name: str, key, password: bytes | None = None) -> Path:
        enc = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        p = tmp_path / name
        p.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
        )
        p.chmod(0o600)
        return p

    with pytest.raises(InputError, match="Ed25519PrivateKey; model signing needs ECDSA"):
        oms.load_ec_key(write("ed.key", ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(InputError, match="secp224r1; model signing needs ECDSA"):
        oms.load_ec_key(write("p224.key", ec.generate_private_key(ec.SECP224R1())))
    enc = write("enc.key", ec.generate_private_key(ec.SECP256R1()), b"pw")
    with pytest.raises(InputError, match="passphrase-protected, and no passphrase was given"):
        oms.load_ec_key(enc)
    with pytest.raises(InputError, match="wrong passphrase"):
        oms.load_ec_key(enc, lambda _p: "not it")
    assert oms.load_ec_key(enc, lambda _p: "pw").curve.name == "secp256r1"
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    garbage.chmod(0o600)
    with pytest.raises(InputError, match="not a PEM EC private key"):
        oms.load_ec_key(garbage)
    with pytest.raises(InputError) as info:
        oms.load_ec_key(loose)
    assert "\n" not in str(info.value)


@needs_tool
def test_openssl_sec1_key_is_accepted(tiny, tmp_path):
    """Keys made the way the docs say (openssl ecparam, SEC1 'EC PRIVATE KEY' PEM) load."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    k, pub = tmp_path / "ec.key", tmp_path / "ec.pub"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                    "-out", k], check=True, capture_output=True)  # fmt: skip
    k.chmod(0o600)
    subprocess.run(["openssl", "ec", "-in", k, "-pubout", "-out", pub], check=True,
                   capture_output=True)  # fmt: skip
    assert b"BEGIN EC PRIVATE KEY" in k.read_bytes()
    sig_path = tmp_path / "model.sig"
    sig_path.write_bytes(oms.sign_files(digests(tiny), oms.load_ec_key(k), model_name="t"))
    assert verify(tiny, sig_path, pub).returncode == 0
