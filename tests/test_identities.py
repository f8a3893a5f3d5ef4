"""Passphrase-protected age identities (`age-keygen | age -p -a > key.age`, which stock age
reads with -i): restore opens them with $WEIGHTVAULT_PASSPHRASE or a terminal prompt, and a
wrong or missing passphrase is one clear line, exit 2, nothing written."""

from __future__ import annotations

import os

import pyrage
import pytest
from conftest import ok, one_error, wv
from pyrage import x25519


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, lab_key):
    d = tmp_path_factory.mktemp("protected-identity")
    ident = x25519.Identity.generate()
    seal_to(d, lab_key, str(ident.to_public()))
    return d, ident


def seal_to(d, lab_key, recipient: str) -> None:
    """A small model in d/model, sealed into d/vault as m, encrypted to `recipient`."""
    src = d / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "config.json").write_text('{"hidden_size": 384}\n')
    ok(wv("seal", src, "--vault", d / "vault", "--key", lab_key, "--name", "m", "--quiet",
          "--encrypt-to", recipient))  # fmt: skip


def protected(d, ident, passphrase: str, armored: bool):
    p = d / f"id-{'armored' if armored else 'binary'}.age"
    p.write_bytes(pyrage.passphrase.encrypt(f"# an identity\n{ident}\n".encode(), passphrase,
                                            armored=armored))  # fmt: skip
    p.chmod(0o600)
    return p


def restore(d, lab_key, ident_file, dest, passphrase: str | None):
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTVAULT_PASSPHRASE"}
    if passphrase is not None:
        env["WEIGHTVAULT_PASSPHRASE"] = passphrase
    return wv("restore", "m", dest, "--vault", d / "vault", "--trust", f"{lab_key}.pub",
              "--identity", ident_file, "--quiet", env=env)  # fmt: skip


@pytest.mark.parametrize("armored", [True, False])
def test_protected_identity_restores_bit_exact(sealed, lab_key, tmp_path, armored):
    d, ident = sealed
    key = protected(tmp_path, ident, "correct horse", armored)
    ok(restore(d, lab_key, key, tmp_path / "out", "correct horse"))
    for f in ("weights.bin", "config.json"):
        assert (tmp_path / "out" / f).read_bytes() == (d / "model" / f).read_bytes()


def test_wrong_passphrase_is_one_line_and_writes_nothing(sealed, lab_key, tmp_path):
    d, ident = sealed
    key = protected(tmp_path, ident, "correct horse", armored=True)
    line = one_error(restore(d, lab_key, key, tmp_path / "out", "battery staple"), 2,
                     str(key), "wrong passphrase")  # fmt: skip
    assert "battery" not in line and "correct" not in line
    assert not (tmp_path / "out").exists()


def test_no_passphrase_and_no_terminal_says_how(sealed, lab_key, tmp_path):
    d, ident = sealed
    key = protected(tmp_path, ident, "correct horse", armored=True)
    one_error(restore(d, lab_key, key, tmp_path / "out", None), 2, str(key),
              "passphrase-protected", "WEIGHTVAULT_PASSPHRASE")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_library_without_a_passphrase_callback_refuses(sealed, tmp_path):
    from weightvault.errors import InputError
    from weightvault.format import crypt

    _, ident = sealed
    key = protected(tmp_path, ident, "pw", armored=False)
    with pytest.raises(InputError, match="passphrase-protected, and no passphrase was given"):
        crypt.load_identities(key)
    assert [str(i.to_public()) for i in crypt.load_identities(key, lambda p: "pw")] == [
        str(ident.to_public())]  # fmt: skip


@pytest.fixture(scope="module")
def sealed_to_ssh(tmp_path_factory, lab_key):
    """Sealed to an ssh-ed25519 recipient whose private key has a passphrase."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    d = tmp_path_factory.mktemp("protected-ssh")
    k = ed25519.Ed25519PrivateKey.generate()
    pub = k.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    key = d / "id_ed25519"
    key.write_bytes(k.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                    ser.BestAvailableEncryption(b"open sesame")))  # fmt: skip
    key.chmod(0o600)
    seal_to(d, lab_key, pub)
    return d, key


def test_protected_ssh_key_restores(sealed_to_ssh, lab_key, tmp_path):
    d, key = sealed_to_ssh
    ok(restore(d, lab_key, key, tmp_path / "out", "open sesame"))
    assert (tmp_path / "out/weights.bin").read_bytes() == (d / "model/weights.bin").read_bytes()


def test_protected_ssh_key_wrong_or_missing_passphrase(sealed_to_ssh, lab_key, tmp_path):
    d, key = sealed_to_ssh
    line = one_error(restore(d, lab_key, key, tmp_path / "out", "close sesame"), 2, str(key),
                     "wrong passphrase")  # fmt: skip
    assert "sesame" not in line
    one_error(restore(d, lab_key, key, tmp_path / "out", None), 2, str(key),
              "WEIGHTVAULT_PASSPHRASE")  # fmt: skip
    assert not (tmp_path / "out").exists()
