"""Every bad input: one clear line naming the thing, a documented exit code, nothing half-written."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import biggest_object, objects_of, wv

INTEGRITY, USAGE, STORAGE, TRUST, CONFLICT = 1, 2, 3, 4, 5


def one_line(r) -> str:
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("weightvault: error: ")
    assert "Traceback" not in r.err
    return lines[0]


def bundles(vault):
    if not Path(vault).exists():  # a seal refused before writing creates no vault at all
        return []
    return wv("list", "--vault", vault, "--json").json()


def test_source_missing(tmp_path, lab_key):
    r = wv("seal", tmp_path / "nope", "--vault", tmp_path / "v", "--key", lab_key)
    assert r.code == USAGE and "nope: source not found" in one_line(r)


def test_source_empty(tmp_path, lab_key):
    (tmp_path / "empty").mkdir()
    r = wv("seal", tmp_path / "empty", "--vault", tmp_path / "v", "--key", lab_key)
    assert r.code == USAGE and "source is empty" in one_line(r)
    assert bundles(tmp_path / "v") == []


def _model(tmp_path, header: bytes, claimed: int | None = None):
    d = tmp_path / "m"
    d.mkdir()
    n = len(header) if claimed is None else claimed
    (d / "model.safetensors").write_bytes(struct.pack("<Q", n) + header + b"\0" * 64)
    (d / "config.json").write_text("{}")
    return d


def test_safetensors_header_length_past_end(tmp_path, lab_key):
    d = _model(tmp_path, b"{}", claimed=1 << 20)
    r = wv("seal", d, "--vault", tmp_path / "v", "--key", lab_key)
    line = one_line(r)
    assert r.code == USAGE and "model.safetensors" in line and "runs past the end" in line
    assert bundles(tmp_path / "v") == []
    assert not list((tmp_path / "v").glob("bundles/*/data/objects/*"))
    assert not list((tmp_path / "v").glob("objects/*"))


def test_safetensors_header_malformed_json(tmp_path, lab_key):
    d = _model(tmp_path, b'{"w": {"dtype": "F32", ')
    r = wv("seal", d, "--vault", tmp_path / "v", "--key", lab_key)
    line = one_line(r)
    assert r.code == USAGE and "model.safetensors" in line and "malformed" in line


def test_safetensors_tensor_offsets_out_of_range(tmp_path, lab_key):
    d = _model(tmp_path, json.dumps({"w": {"dtype": "F32", "shape": [99],
                                           "data_offsets": [0, 396]}}).encode())  # fmt: skip
    r = wv("seal", d, "--vault", tmp_path / "v", "--key", lab_key)
    assert r.code == USAGE and "'w' has invalid dtype or data_offsets" in one_line(r)


def test_vault_not_writable(tmp_path, lab_key, minilm_dir):
    # /proc refuses new directories even to root, which CI runs as
    r = wv("seal", minilm_dir, "--vault", "/proc/weightvault-test", "--key", lab_key)
    assert r.code == STORAGE and "/proc/weightvault-test: cannot create vault" in one_line(r)
    f = tmp_path / "afile"
    f.write_text("x")
    r = wv("seal", minilm_dir, "--vault", f, "--key", lab_key)
    assert r.code == STORAGE and str(f) in one_line(r)


def test_missing_key_file(tmp_path, minilm_dir):
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", tmp_path / "no.key")
    assert r.code == USAGE and "no.key: signing key file not found" in one_line(r)
    assert not (tmp_path / "v").exists()


def test_wrong_key_file(tmp_path, minilm_dir, lab_key):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", bad)
    assert r.code == USAGE and "not a PEM Ed25519 private key" in one_line(r)
    pub = f"{lab_key}.pub"
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", pub)
    assert r.code == USAGE and "lab.key.pub" in one_line(r)


def test_key_readable_by_others_refused(tmp_path, minilm_dir, lab_key):
    k = tmp_path / "loose.key"
    shutil.copy(lab_key, k)
    k.chmod(0o644)
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", k)
    assert r.code == USAGE and "chmod 600" in one_line(r)


def test_keygen_refuses_to_overwrite(lab_key):
    before = lab_key.read_bytes()
    r = wv("keygen", lab_key)
    assert r.code == USAGE and "already exists" in one_line(r)
    assert lab_key.read_bytes() == before
    assert lab_key.stat().st_mode & 0o777 == 0o600


def test_unknown_signer(vault_copy, other_key, tmp_path):
    for cmd in (["verify", "minilm"], ["restore", "minilm", tmp_path / "out"]):
        r = wv(*cmd, "--vault", vault_copy, "--trust", f"{other_key}.pub")
        assert r.code == TRUST and "signed by unknown key" in one_line(r)
    assert not (tmp_path / "out").exists()


def test_no_trust_given_is_refused_unless_insecure(vault_copy, tmp_path):
    r = wv("verify", "minilm", "--vault", vault_copy)
    assert r.code == USAGE and "--trust" in one_line(r)
    assert wv("verify", "minilm", "--vault", vault_copy, "--insecure").code == 0


def test_unsigned_bundle(vault_copy, lab_key, tmp_path):
    (vault_copy / "bundles/minilm/weightvault.sig").unlink()
    r = wv(
        "restore", "minilm", tmp_path / "out", "--vault", vault_copy, "--trust", f"{lab_key}.pub"
    )
    assert r.code == TRUST and "weightvault.sig: missing" in one_line(r)
    assert not (tmp_path / "out").exists()


def test_tampered_manifest(vault_copy, lab_key, tmp_path):
    mp = vault_copy / "bundles/minilm/data/weightvault.json"
    doc = json.loads(mp.read_bytes())
    doc["files"][0]["mode"] = 0o777
    mp.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    for cmd in (["verify", "minilm"], ["restore", "minilm", tmp_path / "out"]):
        r = wv(*cmd, "--vault", vault_copy, "--trust", f"{lab_key}.pub")
        assert r.code == INTEGRITY and "altered after signing" in one_line(r)
    assert not (tmp_path / "out").exists()


def test_signature_over_other_manifest(vault_copy, sealed_minilm, minilm_dir, lab_key, tmp_path):
    """A valid signature, but for a different bundle's manifest."""
    other = tmp_path / "other"
    assert wv("seal", minilm_dir, "--vault", other, "--key", lab_key, "--name", "minilm",
              "--chunk-size", "16").code == 0  # fmt: skip
    shutil.copy(other / "bundles/minilm/weightvault.sig", vault_copy / "bundles/minilm/")
    r = wv("verify", "minilm", "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    assert r.code == INTEGRITY and "altered after signing" in one_line(r)


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_damaged_chunk_caught_by_verify_and_refused_by_restore(vault_copy, lab_key, tmp_path,
                                                               damage):  # fmt: skip
    obj = biggest_object(vault_copy)
    data = obj.read_bytes()
    if damage == "missing":
        obj.unlink()
    elif damage == "truncated":
        obj.write_bytes(data[: len(data) // 2])
    else:
        b = bytearray(data)
        b[12345] ^= 0x40
        obj.write_bytes(bytes(b))
    trust = ("--trust", f"{lab_key}.pub")
    r = wv("verify", "minilm", "--vault", vault_copy, *trust, "--json")
    assert r.code == INTEGRITY
    probs = r.json()["problems"]
    assert [p["where"].rsplit("/", 1)[-1] for p in probs] == [obj.name]
    assert probs[0]["kind"] == ("missing" if damage == "missing" else "damaged")
    r = wv("verify", "minilm", "--vault", vault_copy, *trust, "--deep")
    assert r.code == INTEGRITY and obj.name in r.out
    r = wv("restore", "minilm", tmp_path / "out", "--vault", vault_copy, *trust)
    line = one_line(r)
    assert r.code == INTEGRITY and obj.name in line
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*")), "partial restore left behind"


def test_every_object_flip_is_caught(vault_copy, lab_key):
    """Not just the big one: a flipped byte in any object is found by a plain verify."""
    for obj in objects_of(vault_copy):
        data = obj.read_bytes()
        b = bytearray(data)
        b[len(b) // 3] ^= 0x01
        obj.write_bytes(bytes(b))
        r = wv("verify", "minilm", "--vault", vault_copy, "--trust", f"{lab_key}.pub", "--json")
        assert r.code == INTEGRITY and obj.name in r.out
        obj.write_bytes(data)


def test_restore_refuses_non_empty_destination(vault_copy, lab_key, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    r = wv("restore", "minilm", dest, "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    assert r.code == CONFLICT and "not an empty directory" in one_line(r)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_already_sealed_names_existing_bundle(vault_copy, minilm_dir, lab_key):
    (row,) = bundles(vault_copy)
    r = wv("seal", minilm_dir, "--vault", vault_copy, "--key", lab_key, "--name", "minilm")
    line = one_line(r)
    assert r.code == CONFLICT and "already sealed" in line and row["bundle"][:16] in line
    assert len(bundles(vault_copy)) == 1


def test_ambiguous_bundle_prefix(vault_copy, lab_key):
    # A copied bag has the same bundle id under a second name: any id prefix now matches both.
    shutil.copytree(vault_copy / "bundles/minilm", vault_copy / "bundles/minilm-copy")
    bid = bundles(vault_copy)[0]["bundle"]
    r = wv("verify", bid[:8], "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    line = one_line(r)
    assert r.code == USAGE and "matches 2 bundles (minilm, minilm-copy)" in line
    r = wv("verify", "minilm-copy", "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    assert (
        r.code == INTEGRITY and "names bundle 'minilm' but lives under 'minilm-copy'" in one_line(r)
    )


def test_unknown_bundle(vault_copy, lab_key):
    r = wv("verify", "nosuch", "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    assert r.code == USAGE and "'nosuch': no such bundle" in one_line(r)


def test_not_a_vault(tmp_path, lab_key):
    r = wv("list", "--vault", tmp_path)
    assert r.code == STORAGE and "not a weightvault vault" in one_line(r)


def test_bad_bundle_name(tmp_path, minilm_dir, lab_key):
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key, "--name", "../x")
    assert r.code == USAGE and "bundle name '../x' is not allowed" in one_line(r)


def test_interrupted_seal_is_invisible_and_resealable(vault_copy, minilm_dir, lab_key):
    """A bag whose seal stopped before it was signed (no signature, no commit marker) is not
    a bundle; sealing that name again completes. (Signed but unmarked: test_hardening.)"""
    bag = vault_copy / "bundles" / "minilm"
    for f in ("tagmanifest-sha256.txt", "weightvault.sig"):
        (bag / f).unlink()
    assert bundles(vault_copy) == []
    r = wv("seal", minilm_dir, "--vault", vault_copy, "--key", lab_key, "--name", "minilm")
    assert r.code == 0, r.err
    assert len(bundles(vault_copy)) == 1
    assert wv("verify", "minilm", "--vault", vault_copy, "--trust", f"{lab_key}.pub").code == 0
