"""Signing with a key that never leaves a PKCS#11 token (issue 21): Debian's SoftHSM2 as the
token, the same code that talks to an HSM. The fixture makes its own SOFTHSM2_CONF and token
directory, initialises a token with softhsm2-util and generates Ed25519 key pairs on it
(CKM_EC_EDWARDS_KEY_PAIR_GEN), exporting each public key as an ordinary .pub file."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ok, one_error, wv

from weightvault.errors import InputError
from weightvault.format import keys, pkcs11

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "246810"
ED25519_OID = bytes.fromhex("06032b6570")

pytestmark = pytest.mark.skipif(
    not (Path(MODULE).exists() and shutil.which("softhsm2-util")), reason="softhsm2 not installed"
)
p11 = pytest.importorskip("pkcs11")


@dataclass
class Token:
    dir: Path
    env: dict  # SOFTHSM2_CONF and the module, no PIN
    uri: str  # the signing key, without a PIN
    pub: Path  # its public key, as weightvault writes .pub files
    nosign_uri: str  # a key pair whose private key has CKA_SIGN false

    def run(self, *args, pin: str | None = PIN):
        env = dict(self.env)
        if pin is not None:
            env["WEIGHTVAULT_PKCS11_PIN"] = pin
        return wv(*args, env=env)


def _keypair(session, label: str, key_id: bytes, *, sign: bool = True,
             pub_label: str | None = None, pub_id: bytes | None = None) -> bytes:  # fmt: skip
    from pkcs11 import Attribute, KeyType, Mechanism

    pub, _ = session.generate_keypair(
        KeyType.EC_EDWARDS, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, store=True,
        public_template={Attribute.EC_PARAMS: ED25519_OID, Attribute.LABEL: pub_label or label,
                         Attribute.ID: pub_id or key_id, Attribute.TOKEN: True,
                         Attribute.VERIFY: True},
        private_template={Attribute.LABEL: label, Attribute.ID: key_id, Attribute.TOKEN: True,
                          Attribute.SIGN: sign, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False})  # fmt: skip
    point = bytes(pub[Attribute.EC_POINT])
    return point[2:] if len(point) == 34 else point


@pytest.fixture(scope="session")
def token(tmp_path_factory):
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")  # fmt: skip
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the module when this process loads it
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "WEIGHTVAULT_PKCS11_MODULE": MODULE}
    env.pop("WEIGHTVAULT_PKCS11_PIN", None)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "lab archive",
                    "--so-pin", "13579", "--pin", PIN], check=True, env=env,
                   capture_output=True)  # fmt: skip
    lib = p11.lib(MODULE)
    with lib.get_token(token_label="lab archive").open(user_pin=PIN, rw=True) as s:
        raw = _keypair(s, "seal-2026", b"\x01")
        _keypair(s, "verify-only", b"\x02", sign=False)
        # "mixed": a private key whose public key object (same label and id) is another pair's
        _keypair(s, "mixed", b"\x05", pub_label="unused", pub_id=b"\x07")
        _keypair(s, "other", b"\x06", pub_label="mixed", pub_id=b"\x05")
    pub = d / "seal-2026.pub"
    pub.write_bytes(keys.PublicKey(raw).pem())
    yield Token(d, env, "pkcs11:token=lab%20archive;object=seal-2026", pub,
                "pkcs11:token=lab%20archive;object=verify-only")
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


def test_the_real_model_sealed_on_a_token_verifies_restores_and_audits(token, minilm_dir,
                                                                       tmp_path):  # fmt: skip
    vault = tmp_path / "vault"
    ok(token.run("seal", minilm_dir, "--vault", vault, "--key", token.uri, "--name", "minilm",
                 "--quiet"))  # fmt: skip
    want = keys.load_public_key(token.pub).key_id
    r = ok(wv("verify", "minilm", "--vault", vault, "--trust", token.pub, "--json", "--quiet"))
    assert r.json()["signers"] == [want]
    ok(wv("restore", "minilm", tmp_path / "out", "--vault", vault, "--trust", token.pub, "-q"))
    assert (tmp_path / "out/model.safetensors").read_bytes() == (
        minilm_dir / "model.safetensors"
    ).read_bytes()
    # audit records signed on the token too, the module from the URI instead of the env
    uri = f"{token.uri}?module-path={MODULE}"
    ok(token.run("audit", "--vault", vault, "--trust", token.pub, "--key", uri, "--state-dir",
                 tmp_path / "state", "--level", "metadata"))  # fmt: skip
    ok(wv("audit-log", "verify", "--vault", vault, "--trust", token.pub, "--state-dir",
          tmp_path / "state"))  # fmt: skip


def test_a_token_key_and_a_key_file_sign_one_bundle_two_of_two(token, lab_key, tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(4096))
    ok(token.run("seal", src, "--vault", tmp_path / "v", "--key", token.uri, "--key", lab_key,
                 "-q"))  # fmt: skip
    r = ok(wv("verify", "m", "--vault", tmp_path / "v", "--trust", token.pub, "--trust",
              f"{lab_key}.pub", "--threshold", "2", "--json", "-q"))  # fmt: skip
    assert len(r.json()["signers"]) == 2


@pytest.mark.parametrize("case", ["missing token", "missing object", "wrong pin", "no pin",
                                  "cannot sign", "no module", "mismatched pair"])  # fmt: skip
def test_bad_token_input_is_one_line_exit_2_and_writes_nothing(token, tmp_path, case):
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x" * 100)
    uri, pin, needles = token.uri, PIN, ()
    env = dict(token.env)
    if case == "missing token":
        uri, needles = "pkcs11:token=nope;object=seal-2026", ("no such token", "'lab archive'")
    elif case == "missing object":
        uri, needles = "pkcs11:token=lab%20archive;object=nope", ("no Ed25519 private key",)
    elif case == "wrong pin":
        pin, needles = "000000", ("refused the PIN",)
    elif case == "no pin":
        pin, needles = None, ("needs a PIN", "WEIGHTVAULT_PKCS11_PIN")
    elif case == "cannot sign":
        uri, needles = token.nosign_uri, ("refused to sign",)
    elif case == "mismatched pair":
        uri, needles = "pkcs11:token=lab%20archive;object=mixed", ("a mismatched pair",)
    else:
        env.pop("WEIGHTVAULT_PKCS11_MODULE")
        needles = ("no PKCS#11 module", "module-path")
    if pin is not None:
        env["WEIGHTVAULT_PKCS11_PIN"] = pin
    r = wv("seal", src, "--vault", tmp_path / "v", "--key", uri, "-q", env=env)
    line = one_error(r, 2, uri.split("?")[0], *needles)
    assert PIN not in line
    assert not (tmp_path / "v").exists()


def test_a_pin_in_the_uri_is_never_shown(token, tmp_path):
    uri = f"pkcs11:token=lab%20archive;object=nope?pin-value={PIN}&module-path={MODULE}"
    line = one_error(token.run("seal", tmp_path, "--vault", tmp_path / "v", "--key", uri,
                               pin=None), 2, "no Ed25519 private key")  # fmt: skip
    assert PIN not in line and "pin-value" not in line


def test_pin_source_file(token, tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    sk = keys.load_signing_key(f"{token.uri}?pin-source=file://{pin_file}&module-path={MODULE}")
    assert sk.public.key_id == keys.load_public_key(token.pub).key_id
    sig = sk.sign("t", b"body")
    assert keys.verify_signatures("t", b"body", [sig], [sk.public], "doc") == sk.public
    assert PIN not in repr(sk)
    # raw Ed25519 (for C2SP signed notes: log checkpoints) from the same token key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(sk.public.raw).verify(sk.sign_raw(b"note"), b"note")


def test_token_key_in_the_config(token, tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(b"y" * 100)
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'signing_key = "{token.uri}"\ntrusted_keys = ["{token.pub}"]\n'
                   f'[replicas.v]\nurl = "{tmp_path / "v"}"\n')  # fmt: skip
    ok(token.run("-c", cfg, "seal", src, "-q"))
    ok(wv("-c", cfg, "verify", "m", "-q"))


def test_uri_parsing():
    u = pkcs11.parse("pkcs11:token=a%20b;id=%01%ff;x-vendor=1?module-path=/m.so&pin-value=9")
    assert u.path["token"] == b"a b" and u.path["id"] == b"\x01\xff"
    assert u.query["module-path"] == b"/m.so" and "pin-value" not in u.shown
    for bad, why in (("pkcs11:token=a", "names no key"),
                     ("pkcs11:object=a;module-path=/x", "after '?'"),
                     ("pkcs11:object=a;colour=red", "unknown path attribute"),
                     ("pkcs11:object=a;object=b", "given twice"),
                     ("pkcs11:object=a;type=public", "type must be 'private'"),
                     ("pkcs11:object", "has no value")):  # fmt: skip
        with pytest.raises(InputError, match=why):
            pkcs11.parse(bad)


def test_key_export_writes_the_tokens_public_key(token, tmp_path):
    out = tmp_path / "exported.pub"
    ok(token.run("key", "export", token.uri, out))
    assert out.read_bytes() == token.pub.read_bytes()
    assert ok(token.run("key", "id", token.uri)).out.strip() == keys.load_public_key(
        token.pub).key_id  # fmt: skip
