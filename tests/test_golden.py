"""Bundles sealed by earlier weightvault versions still read, audit, replicate and restore.

tests/golden/ holds vaults exactly as an older weightvault wrote them, committed byte for byte
(see tests/golden/README.md): `v1/` a clear bundle of format version 1, `v2/` an encrypted one
of format version 2, both with SHA-512 digests and per-chunk plaintext digests. The format is a
promise to the future: every later weightvault must read them, and so must the reference
restorer written from docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ok, one_error, wv

GOLDEN = Path(__file__).resolve().parent / "golden"
KEYS = GOLDEN / "keys"
RESTORER = GOLDEN.parent.parent / "docs" / "reference_restore.py"
BUNDLES = {"v1": "golden", "v2": "golden-enc"}


def expected_files() -> dict[str, str]:
    out = {}
    for line in (GOLDEN / "model.sha256").read_text().splitlines():
        digest, _, path = line.partition("  ")
        out[path] = digest
    return out


def restored(dest: Path) -> dict[str, str]:
    return {
        p.relative_to(dest).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def golden(tmp_path) -> callable:
    """A private copy of a golden vault (tests may damage it) and the golden key files, 0600."""

    def copy(version: str) -> Path:
        dest = tmp_path / version
        shutil.copytree(GOLDEN / version, dest)
        (dest / "tmp").mkdir(exist_ok=True)  # a vault's scratch directory: git keeps no empty dirs
        return dest

    keys = tmp_path / "keys"
    shutil.copytree(KEYS, keys)
    for p in keys.glob("*.age"):
        p.chmod(0o600)
    copy.keys = keys  # type: ignore[attr-defined]
    return copy


def trust() -> list[str]:
    return ["--trust", str(KEYS / "golden.key.pub")]


def test_golden_vaults_are_the_old_versions():
    for version, name in BUNDLES.items():
        bag = GOLDEN / version / "bundles" / name
        manifest = json.loads((bag / "data" / "weightvault.json").read_bytes())
        assert manifest["format_version"] == int(version[1])
        assert (bag / "manifest-sha512.txt").is_file()
        assert all("sha512" in o for o in manifest["objects"])
        assert b"versions 1 and 2\n" in (bag / "data" / "FORMAT.md").read_bytes()[:200]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_verify_deep_and_full_audit(golden, version, tmp_path, lab_key):
    vault = golden(version)
    name = BUNDLES[version]
    extra = ["--identity", golden.keys / "reader.age"] if version == "v2" else []
    ok(wv("verify", name, "--vault", vault, *trust(), "--deep", *extra))
    r = ok(wv("audit", "--vault", vault, "--level", "full", *trust(), "--key", lab_key,
              "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    rec = r.json()["replicas"][0]["record"]
    assert rec["failures"] == [] and rec["objects_checked"] >= 8


def test_v1_restores_bit_exact(golden, tmp_path):
    vault = golden("v1")
    ok(wv("restore", "golden", tmp_path / "out", "--vault", vault, *trust(), "--quiet"))
    assert restored(tmp_path / "out") == expected_files()


@pytest.mark.parametrize("how", ["identity", "shares"])
def test_v2_restores_bit_exact(golden, tmp_path, how):
    vault = golden("v2")
    if how == "identity":
        extra = ["--identity", golden.keys / "reader.age"]
    else:
        extra = ["--identity", golden.keys / "alice.age", "--identity", golden.keys / "carol.age"]
    ok(wv("restore", "golden-enc", tmp_path / "out", "--vault", vault, *trust(), "--quiet",
          *extra))  # fmt: skip
    assert restored(tmp_path / "out") == expected_files()


def test_v1_replicates_and_the_copy_restores(golden, tmp_path):
    vault = golden("v1")
    mirror = tmp_path / "mirror"
    ok(wv("replicate", "golden", "--from", vault, "--to", mirror, *trust()))
    ok(wv("restore", "golden", tmp_path / "out", "--vault", mirror, *trust(), "--quiet"))
    assert restored(tmp_path / "out") == expected_files()
    # the copy is still a version 1 bundle, byte for byte
    for rel in ("data/weightvault.json", "weightvault.sig", "manifest-sha512.txt"):
        a = vault / "bundles" / "golden" / rel
        assert (mirror / "bundles" / "golden" / rel).read_bytes() == a.read_bytes()


def test_v1_damage_is_found_and_named(golden, tmp_path, lab_key):
    vault = golden("v1")
    victim = max((vault / "bundles" / "golden" / "data" / "objects").iterdir(),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    r = wv("audit", "--vault", vault, "--level", "full", *trust(), "--key", lab_key,
           "--state-dir", tmp_path / "state")  # fmt: skip
    assert r.code == 1 and victim.name in r.out + r.err
    one_error(wv("restore", "golden", tmp_path / "out", "--vault", vault, *trust(), "--quiet"),
              1, victim.name)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_reference_restorer_reads_the_golden_bundles(golden, tmp_path):
    vault = golden("v1")
    bag = vault / "bundles" / "golden"
    proc = subprocess.run([sys.executable, RESTORER, bag, tmp_path / "out", *trust()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert restored(tmp_path / "out") == expected_files()
    # version 2, with the data key stock age prints for the reader's identity
    from pyrage import decrypt, x25519

    bag2 = golden("v2") / "bundles" / "golden-enc"
    secret = (golden.keys / "reader.age").read_text().strip().splitlines()[-1]
    envelope = bag2 / "data" / "keys" / "recipient-1.age"
    dk = decrypt(envelope.read_bytes(), [x25519.Identity.from_str(secret)]).decode().strip()
    proc = subprocess.run([sys.executable, RESTORER, bag2, tmp_path / "out2", *trust(),
                           "--data-key", dk], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert restored(tmp_path / "out2") == expected_files()


# -- format version 3 (sealed by weightvault at commit 0cf0683, the last to write version 3)


def test_v3_golden_reads_verifies_replicates_and_restores(golden, tmp_path, lab_key):
    """Version 3 keeps its objects inside the bag and a FORMAT.md the manifest does not name
    (FORMAT.md 9.2): it verifies deep, audits full, replicates as version 3 byte for byte, and
    both restorers give back the model."""
    vault = golden("v3")
    t3 = ["--trust", str(KEYS / "golden-v3.key.pub")]
    bag = vault / "bundles" / "golden-v3"
    assert json.loads((bag / "data/weightvault.json").read_bytes())["format_version"] == 3
    ok(wv("verify", "golden-v3", "--vault", vault, *t3, "--deep"))
    r = ok(wv("audit", "--vault", vault, "--level", "full", *t3, "--key", lab_key,
              "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    assert r.json()["replicas"][0]["record"]["failures"] == []
    mirror = tmp_path / "mirror"
    ok(wv("replicate", "golden-v3", "--from", vault, "--to", mirror, *t3))
    for rel in ("data/weightvault.json", "data/FORMAT.md", "weightvault.sig", "bag-info.txt"):
        assert (mirror / "bundles/golden-v3" / rel).read_bytes() == (bag / rel).read_bytes()
    assert not (mirror / "objects").exists()  # a version 3 bundle's objects stay in its bag
    ok(wv("restore", "golden-v3", tmp_path / "out", "--vault", mirror, *t3, "--quiet"))
    assert restored(tmp_path / "out") == expected_files()
    proc = subprocess.run([sys.executable, RESTORER, bag, tmp_path / "ref", *t3],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert restored(tmp_path / "ref") == expected_files()
    p = subprocess.run(["bagit.py", "--validate", str(bag)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# -- format version 4, encrypted (weightvault-aead-1), sealed by weightvault at commit b07382c,
# the last to write encrypted bundles as version 4


def test_v4_encrypted_golden_still_reads_audits_and_restores(golden, tmp_path, lab_key):
    """An encrypted version 4 bundle (random nonces, objects bound to the bundle's salt and
    their position: FORMAT.md 10.3) keeps reading after version 5 changed how encrypted
    chunks are sealed: the steward's checks need no key, both restorers give the model back
    with the reader's identity or two of three shares, and a new version cannot share it."""
    vault = golden("v4")
    t4 = ["--trust", str(KEYS / "golden-v4.key.pub")]
    bag = vault / "bundles" / "golden-v4-enc"
    m = json.loads((bag / "data/weightvault.json").read_bytes())
    assert (m["format_version"], m["encryption"]["scheme"]) == (4, "weightvault-aead-1")
    ok(wv("verify", "golden-v4-enc", "--vault", vault, *t4))  # no key: the steward's check
    r = ok(wv("audit", "--vault", vault, "--level", "full", *t4, "--key", lab_key,
              "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    assert r.json()["replicas"][0]["record"]["failures"] == []
    reader = ["--identity", golden.keys / "reader.age"]
    ok(wv("verify", "golden-v4-enc", "--vault", vault, *t4, "--deep", *reader))
    ok(wv("restore", "golden-v4-enc", tmp_path / "out", "--vault", vault, *t4, "--quiet",
          *reader))  # fmt: skip
    assert restored(tmp_path / "out") == expected_files()
    two = ["--identity", golden.keys / "alice.age", "--identity", golden.keys / "carol.age"]
    ok(wv("restore", "golden-v4-enc", tmp_path / "out2", "--vault", vault, *t4, "--quiet", *two))
    assert restored(tmp_path / "out2") == expected_files()
    from pyrage import decrypt, x25519

    secret = (golden.keys / "reader.age").read_text().strip().splitlines()[-1]
    envelope = bag / "data" / "keys" / "recipient-1.age"
    dk = decrypt(envelope.read_bytes(), [x25519.Identity.from_str(secret)]).decode().strip()
    proc = subprocess.run([sys.executable, RESTORER, bag, tmp_path / "ref", *t4, "--data-key",
                           dk], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert restored(tmp_path / "ref") == expected_files()
    # a new version of it: the same data key (it opens with the same identity), a lineage salt
    # of its own, format version 5; no object is shared with the version 4 bundle
    recipient = str(x25519.Identity.from_str(secret).to_public())
    r = ok(wv("seal", tmp_path / "out", "--vault", vault, "--key", lab_key, "--name", "next",
              "--chunk-size", "1", "--supersedes", "golden-v4-enc", *t4, "--encrypt-to",
              recipient, *reader, "--json"))  # fmt: skip
    assert r.json()["format_version"] == 5 and r.json()["chunks_reused"] == 0
    m5 = json.loads((vault / "bundles/next/data/weightvault.json").read_bytes())
    assert not {o["name"] for o in m5["objects"]} & {o["name"] for o in m["objects"]}
    ok(wv("restore", "next", tmp_path / "out5", "--vault", vault, "--trust",
          f"{lab_key}.pub", "--quiet", *reader))  # fmt: skip
    assert restored(tmp_path / "out5") == expected_files()
