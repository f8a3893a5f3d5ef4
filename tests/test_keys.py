"""Signing keys that outlive their holders (issue 21): passphrase-protected key files (as
`openssl genpkey -algorithm ed25519 -aes256` writes them), several signers under a K-of-N
trust policy. PKCS#11 tokens are in test_pkcs11.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ok, one_error, write_config, wv

from weightvault.errors import InputError, TrustError
from weightvault.format import canon, keys
from weightvault.format.trust import TrustPolicy

PW = "correct horse battery"


def env_with(passphrase: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTVAULT_PASSPHRASE"}
    if passphrase is not None:
        env["WEIGHTVAULT_PASSPHRASE"] = passphrase
    return env


def openssl_key(d, name: str, passphrase: str):
    """A protected Ed25519 key and its public key, written by openssl itself."""
    key = d / name
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-aes256", "-pass",
                    f"pass:{passphrase}", "-out", key], check=True)  # fmt: skip
    key.chmod(0o600)
    subprocess.run(["openssl", "pkey", "-in", key, "-passin", f"pass:{passphrase}", "-pubout",
                    "-out", f"{key}.pub"], check=True)  # fmt: skip
    return key


@pytest.fixture(scope="module")
def protected_key(tmp_path_factory):
    return openssl_key(tmp_path_factory.mktemp("protected"), "lab.key", PW)


@pytest.fixture(scope="module")
def minilm_protected(tmp_path_factory, minilm_dir, protected_key):
    """The real model sealed with an openssl-made, passphrase-protected key."""
    vault = tmp_path_factory.mktemp("sealed-protected") / "vault"
    ok(wv("seal", minilm_dir, "--vault", vault, "--key", protected_key, "--name", "minilm",
          "--quiet", env=env_with(PW)))  # fmt: skip
    return vault


# -- protected key files


def test_openssl_protected_key_seals_the_real_model_and_it_verifies_and_restores(
    minilm_protected, minilm_dir, protected_key, tmp_path
):
    r = ok(wv("verify", "minilm", "--vault", minilm_protected, "--trust", f"{protected_key}.pub",
              "--json", "--quiet"))  # fmt: skip
    want = keys.load_public_key(f"{protected_key}.pub").key_id
    assert r.json()["signers"] == [want]
    ok(wv("restore", "minilm", tmp_path / "out", "--vault", minilm_protected, "--trust",
          f"{protected_key}.pub", "--quiet"))  # fmt: skip
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "out" / f).read_bytes() == (minilm_dir / f).read_bytes()


def test_wrong_passphrase_is_one_line_naming_the_file_and_writes_nothing(
    minilm_dir, protected_key, tmp_path
):
    line = one_error(wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", protected_key,
                        "--quiet", env=env_with("battery staple")), 2, str(protected_key),
                     "wrong passphrase")  # fmt: skip
    assert "battery" not in line and "horse" not in line
    assert not (tmp_path / "v").exists()


def test_missing_passphrase_without_a_terminal_says_how(minilm_dir, protected_key, tmp_path):
    one_error(wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", protected_key,
                 "--quiet", env=env_with(None)), 2, str(protected_key), "passphrase-protected",
              "WEIGHTVAULT_PASSPHRASE")  # fmt: skip
    assert not (tmp_path / "v").exists()


def test_keygen_protect_writes_what_openssl_opens_with_a_strong_kdf(tmp_path):
    key = tmp_path / "k"
    ok(wv("keygen", key, "--protect", env=env_with(PW)))
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    pub = subprocess.run(["openssl", "pkey", "-in", key, "-passin", f"pass:{PW}", "-pubout"],
                         check=True, capture_output=True).stdout  # fmt: skip
    assert pub == (tmp_path / "k.pub").read_bytes()
    # PBES2 / PBKDF2-HMAC-SHA256 with 600,000 rounds / AES-256-CBC, as openssl reads it
    asn = subprocess.run(["openssl", "asn1parse", "-in", key], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    for part in ("PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc", ":0927C0"):
        assert part in asn, asn
    wrong = subprocess.run(["openssl", "pkey", "-in", key, "-passin", "pass:nope", "-noout"],
                           capture_output=True)  # fmt: skip
    assert wrong.returncode != 0
    sk = keys.load_signing_key(key, lambda _p: PW)
    assert sk.public.pem() == pub


def test_keygen_protect_without_a_passphrase_writes_nothing(tmp_path):
    one_error(wv("keygen", tmp_path / "k", "--protect", env=env_with(None)), 2, "passphrase",
              "WEIGHTVAULT_PASSPHRASE")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    one_error(wv("keygen", tmp_path / "k", "--protect", env=env_with("")), 2, "empty passphrase")
    assert list(tmp_path.iterdir()) == []


def test_audit_signs_its_records_with_a_protected_key(minilm_protected, protected_key, tmp_path):
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(minilm_protected, vault)
    audit_key = openssl_key(tmp_path, "audit.key", "other words")
    ok(wv("audit", "--vault", vault, "--level", "full", "--trust", f"{protected_key}.pub",
          "--key", audit_key, "--state-dir", tmp_path / "state", env=env_with("other words")))  # fmt: skip
    rec = json.loads(next((vault / "audits").rglob("*.json")).read_bytes())
    assert rec["signatures"][0]["keyid"] == keys.load_public_key(f"{audit_key}.pub").key_id
    one_error(wv("audit", "--vault", vault, "--trust", f"{protected_key}.pub", "--key", audit_key,
                 "--state-dir", tmp_path / "state", env=env_with("wrong")), 2, str(audit_key),
              "wrong passphrase")  # fmt: skip
    assert len(list((vault / "audits").rglob("*.json"))) == 1


def test_library_refuses_a_protected_key_without_a_passphrase(protected_key):
    with pytest.raises(InputError, match="passphrase-protected"):
        keys.load_signing_key(protected_key)


# -- several signers and a threshold


@pytest.fixture(scope="module")
def two_signers(tmp_path_factory, minilm_dir):
    """The real model sealed by two keys (one of them protected), and a one-signer bundle."""
    d = tmp_path_factory.mktemp("two-signers")
    a = openssl_key(d, "a.key", PW)
    ok(wv("keygen", d / "b.key"))
    b = d / "b.key"
    ok(wv("seal", minilm_dir, "--vault", d / "vault", "--key", a, "--key", b, "--name", "both",
          "--quiet", env=env_with(PW)))  # fmt: skip
    ok(wv("seal", minilm_dir, "--vault", d / "vault", "--key", b, "--name", "onlyb", "--quiet"))
    return d, a, b


def test_two_of_two_accepts_a_bundle_both_signed(two_signers, tmp_path, minilm_dir):
    d, a, b = two_signers
    trust = ("--trust", f"{a}.pub", "--trust", f"{b}.pub", "--threshold", "2")
    r = ok(wv("verify", "both", "--vault", d / "vault", *trust, "--json", "--quiet"))
    ids = [keys.load_public_key(f"{k}.pub").key_id for k in (a, b)]
    assert r.json()["signers"] == ids
    ok(wv("restore", "both", tmp_path / "out", "--vault", d / "vault", *trust, "--quiet"))
    assert (tmp_path / "out/model.safetensors").read_bytes() == (
        minilm_dir / "model.safetensors"
    ).read_bytes()
    shown = ok(wv("show", "both", "--vault", d / "vault", *trust, "--json")).json()
    assert shown["bundle"]["signers"] == ids
    ok(wv("show", "both", "--vault", d / "vault", *trust, "--html", tmp_path / "card.html"))
    card = (tmp_path / "card.html").read_text()
    assert "Signed by keys" in card and all(i in card for i in ids)
    text = ok(wv("show", "both", "--vault", d / "vault", *trust)).out
    assert all(i[:16] in text.replace("\n", "") for i in ids) or all(i in text for i in ids)


def test_a_two_signer_bundle_restores_with_the_reference_restorer_trusting_either(two_signers,
                                                                                 tmp_path):  # fmt: skip
    """The signature file is unchanged (format version 1 allowed 1..16 signatures): a reader
    written from FORMAT.md that trusts one key finds its signature among several."""
    import sys
    from pathlib import Path

    d, a, b = two_signers
    restorer = Path(__file__).resolve().parents[1] / "docs" / "reference_restore.py"
    for k in (a, b):
        p = subprocess.run([sys.executable, restorer, d / "vault/bundles/both", tmp_path / k.name,
                            "--trust", f"{k}.pub"], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.key/model.safetensors").stat().st_size == 90_868_376


def test_k_minus_one_of_k_is_refused_everywhere(two_signers, tmp_path):
    d, a, b = two_signers
    trust = ("--trust", f"{a}.pub", "--trust", f"{b}.pub", "--threshold", "2")
    b_id = keys.load_public_key(f"{b}.pub").key_id
    a_id = keys.load_public_key(f"{a}.pub").key_id
    for cmd in (("verify", "onlyb", "--quiet"), ("restore", "onlyb", tmp_path / "out", "--quiet"),
                ("show", "onlyb")):  # fmt: skip
        line = one_error(wv(*cmd, "--vault", d / "vault", *trust), 4, "signed by 1 of the 2",
                         a_id[:16])  # fmt: skip
        assert b_id[:16] not in line.split("no signature by")[1]
    assert not (tmp_path / "out").exists()
    # one of the two is enough under the default threshold
    ok(wv("verify", "onlyb", "--vault", d / "vault", "--trust", f"{a}.pub", "--trust",
          f"{b}.pub", "--quiet"))  # fmt: skip


def test_serve_applies_the_threshold(two_signers, minilm_dir, tmp_path, monkeypatch):
    """Stock huggingface_hub against `serve` under a 2-of-2 policy: the bundle both keys
    signed is served byte for byte; the one signed by one key is not served at all."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from support.hubserver import patch_hub_endpoint

    from weightvault.access.server import serve
    from weightvault.storage.opener import open_store

    d, a, b = two_signers
    policy = TrustPolicy([keys.load_public_key(f"{k}.pub") for k in (a, b)], 2)
    with serve(open_store(str(d / "vault")), policy) as s:
        assert set(s.catalog.repos) == {"weightvault/both"}
        assert "onlyb" in s.catalog.skipped
        patch_hub_endpoint(monkeypatch, s.url)
        got = hf_hub_download("weightvault/both", "config.json", cache_dir=tmp_path / "c")
        assert Path(got).read_bytes() == (minilm_dir / "config.json").read_bytes()
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("weightvault/onlyb", "config.json", cache_dir=tmp_path / "c")


def test_threshold_from_the_config_applies_to_audit(two_signers, tmp_path):
    import shutil

    d, a, b = two_signers
    vault = tmp_path / "vault"
    shutil.copytree(d / "vault", vault)
    cfg = write_config(tmp_path / "weightvault.toml", b, {"v": {"url": str(vault)}})
    text = cfg.read_text().replace(
        "trusted_keys = [", f"threshold = 2\ntrusted_keys = [{json.dumps(str(a) + '.pub')}, "
    )
    cfg.write_text(text)
    r = wv("-c", cfg, "audit", "--level", "metadata", "--state-dir", tmp_path / "s", "--json")
    assert r.code == 1, r.err
    fails = {f["object"]: f for f in r.json()["replicas"][0]["record"]["failures"]}
    assert any("onlyb" in o for o in fails) and not any("both" in o for o in fails), fails
    assert "signed by 1 of the 2" in json.dumps(fails)
    ok(wv("-c", cfg, "verify", "both", "--quiet"))
    one_error(wv("-c", cfg, "verify", "onlyb", "--quiet"), 4, "signed by 1 of the 2")
    # --trust is a whole policy: the config's threshold belongs to its own trusted_keys
    ok(wv("-c", cfg, "verify", "onlyb", "--trust", f"{b}.pub", "--quiet"))
    one_error(wv("-c", cfg, "verify", "onlyb", "--trust", f"{b}.pub", "--trust", f"{a}.pub",
                 "--threshold", "2", "--quiet"), 4, "signed by 1 of the 2")  # fmt: skip


def test_a_threshold_the_keys_cannot_meet_is_refused(two_signers, tmp_path):
    d, a, b = two_signers
    one_error(wv("verify", "both", "--vault", d / "vault", "--trust", f"{a}.pub", "--threshold",
                 "2"), 2, "threshold 2 cannot be met by 1 trusted key")  # fmt: skip
    cfg = write_config(tmp_path / "w.toml", b, {"v": {"url": str(d / "vault")}}, threshold=3)
    one_error(wv("-c", cfg, "verify", "both"), 2, "threshold", str(cfg))


def test_seal_refuses_the_same_key_twice(two_signers, minilm_dir, tmp_path):
    d, _, b = two_signers
    one_error(wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", b, "--key", b),
              2, "the same signing key is given twice")  # fmt: skip
    assert not (tmp_path / "v").exists()


# -- the verification rule itself, on hand-made signature lists


def _sigs(doc: bytes, *ks: keys.SigningKey) -> list:
    return [k.sign("t", doc) for k in ks]


def test_a_bad_signature_by_a_trusted_key_spoils_a_good_one(tmp_path):
    a, b = keys.generate(tmp_path / "a"), keys.generate(tmp_path / "b")
    doc = canon.canonical({"x": 1})
    sigs = _sigs(doc, a, b)
    sigs[1]["sig"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(TrustError, match=f"signature by key {b.public.key_id[:16]} does not"):
        TrustPolicy([a.public, b.public]).verify("t", doc, sigs, "doc")
    # a stranger's bad signature is not evidence of anything and is ignored
    assert TrustPolicy([a.public]).verify("t", doc, sigs, "doc") == [a.public]


def test_one_key_signing_twice_counts_once(tmp_path):
    a, b = keys.generate(tmp_path / "a"), keys.generate(tmp_path / "b")
    doc = b"body"
    with pytest.raises(TrustError, match="signed by 1 of the 2"):
        TrustPolicy([a.public, b.public], 2).verify("t", doc, _sigs(doc, a, a), "doc")
    assert len(TrustPolicy([a.public, b.public], 2).verify("t", doc, _sigs(doc, b, a), "d")) == 2


def test_a_policy_plus_a_key_keeps_its_threshold(tmp_path):
    a, b, c = (keys.generate(tmp_path / n).public for n in "abc")
    p = TrustPolicy([a, b], 2) + [c]
    assert isinstance(p, TrustPolicy) and p.threshold == 2 and len(p) == 3
    with pytest.raises(InputError, match="same trusted key"):
        TrustPolicy([a, a])


# -- key statements from the command line


@pytest.fixture
def three(tmp_path):
    for n in ("a", "b", "t"):
        ok(wv("keygen", tmp_path / f"{n}.key"))
    return tmp_path


def test_key_rotate_writes_a_statement_signed_by_both(three):
    d = three
    r = ok(wv("key", "rotate", "--old", d / "a.key", "--new", d / "b.key", "--trust",
              d / "a.key.pub", "--reason", "yearly", "--out", d / "rot.json", "--json"))  # fmt: skip
    from weightvault.format import keystatement

    st = keystatement.parse((d / "rot.json").read_bytes(), "rot.json")
    assert st.kind == "rotate" and st.reason == "yearly"
    assert st.key.key_id == ok(wv("key", "id", d / "a.key.pub")).out.strip()
    assert st.successor.key_id == ok(wv("key", "id", d / "b.key")).out.strip()
    assert r.json()["recorded"] == [str(d / "rot.json")]


def test_key_rotate_by_an_untrusted_key_or_without_the_new_private_key_writes_nothing(three):
    d = three
    one_error(wv("key", "rotate", "--old", d / "t.key", "--new", d / "b.key", "--trust",
                 d / "a.key.pub", "--out", d / "rot.json"), 4, "t.key", "not trusted now")  # fmt: skip
    # the successor must sign too: its public key alone cannot
    one_error(wv("key", "rotate", "--old", d / "a.key", "--new", d / "b.key.pub", "--trust",
                 d / "a.key.pub", "--out", d / "rot.json"), 2, "b.key.pub")  # fmt: skip
    assert not (d / "rot.json").exists()


def test_key_revoke_by_an_untrusted_key_is_refused(three):
    d = three
    one_error(wv("key", "revoke", d / "a.key.pub", "--since", "2026-01-01", "--key", d / "t.key",
                 "--trust", d / "a.key.pub", "--out", d / "rev.json"), 4,
              "not a trusted key", "t.key")  # fmt: skip
    assert not (d / "rev.json").exists()
    one_error(wv("key", "revoke", d / "a.key.pub", "--since", "yesterday", "--key", d / "a.key",
                 "--trust", d / "a.key.pub", "--out", d / "rev.json"), 2, "not an ISO 8601 time")  # fmt: skip
    ok(wv("key", "revoke", d / "a.key.pub", "--since", "2026-01-01", "--key", d / "a.key",
          "--trust", d / "a.key.pub", "--out", d / "rev.json"))  # fmt: skip
    from weightvault.format import keystatement

    st = keystatement.parse((d / "rev.json").read_bytes(), "rev.json")
    assert st.kind == "revoke" and st.since == "2026-01-01T00:00:00Z"


def test_signing_in_place_equals_signing_a_copy(tmp_path):
    """sign_framed (the manifest signed in its own buffer, no copy) gives exactly sign_all's
    signatures (Ed25519 is deterministic) and leaves the buffer holding the body alone."""
    from weightvault.format.manifest import PAYLOAD_TYPE

    a, b = keys.generate(tmp_path / "a"), keys.generate(tmp_path / "b")
    doc = {"files": [{"path": "é", "n": i} for i in range(3000)], "x": "\u2028"}
    body = canon.canonical(doc)
    buf = canon.encode(doc, keys.PAE_ROOM)
    sigs = keys.sign_framed([a, b], PAYLOAD_TYPE, buf)
    assert buf == body and type(buf) is bytearray
    assert sigs == keys.sign_all([a, b], PAYLOAD_TYPE, body)
    assert TrustPolicy([a.public, b.public], 2).verify(PAYLOAD_TYPE, body, sigs, "m")
    with pytest.raises(InputError, match="given twice"):
        keys.sign_framed([a, a], PAYLOAD_TYPE, canon.encode(doc, keys.PAE_ROOM))
