"""End to end on the real model: seal, list, verify, restore, through the CLI."""

from __future__ import annotations

import filecmp
import json
import subprocess

import numpy as np
from conftest import wv
from safetensors import safe_open


def tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_seal_list_verify_restore_bit_exact(sealed_minilm, minilm_dir, lab_key, tmp_path):
    r = wv("list", "--vault", sealed_minilm, "--json", "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    (row,) = r.json()
    assert row["name"] == "minilm" and row["files"] == len(tree(minilm_dir))
    assert row["bytes_stored"] < 0.85 * row["bytes_in"]

    v = wv("verify", "minilm", "--vault", sealed_minilm, "--trust", f"{lab_key}.pub", "--json")
    assert v.code == 0, v.err
    assert v.json()["ok"] and v.json()["signer"]

    d = wv("verify", row["bundle"][:8], "--vault", sealed_minilm, "--trust", f"{lab_key}.pub",
           "--deep")  # fmt: skip
    assert d.code == 0, d.err + d.out

    dest = tmp_path / "restored"
    r = wv("restore", "minilm", dest, "--vault", sealed_minilm, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    assert tree(dest) == tree(minilm_dir)
    for rel in tree(minilm_dir):
        assert filecmp.cmp(minilm_dir / rel, dest / rel, shallow=False), rel
    assert subprocess.run(["diff", "-r", minilm_dir, dest]).returncode == 0
    with safe_open(dest / "model.safetensors", framework="numpy") as f:
        t = f.get_tensor(next(iter(f.keys())))
        assert np.isfinite(t).all()
    assert not list(tmp_path.glob(".restored*")), "temporary restore directory left behind"


def test_seal_json_summary_and_manifest(sealed_minilm, minilm_dir):
    m = json.loads((sealed_minilm / "bundles/minilm/data/weightvault.json").read_bytes())
    assert m["format_version"] == 6 and m["source"]["kind"] == "local"
    st = next(f for f in m["files"] if f["path"] == "model.safetensors")
    assert st["size"] == 90868376
    assert st["sha256"] == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    assert {c["codec"] for c in st["chunks"]} >= {"fsplit-f32"}
    assert all(c.get("dtype") == "F32" for c in st["chunks"] if c["codec"] == "fsplit-f32")


def test_seal_json_fields(minilm_dir, lab_key, tmp_path):
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key, "--json",
           "--chunk-size", "8", "--workers", "3")  # fmt: skip
    assert r.code == 0, r.err
    s = r.json()
    assert set(s) >= {"bundle", "name", "files", "bytes_in", "bytes_stored"}
    assert s["name"] == "all-MiniLM-L6-v2" and len(s["bundle"]) == 64
    assert s["bytes_in"] == sum(p.stat().st_size for p in minilm_dir.rglob("*") if p.is_file())


def test_bag_validates_with_library_of_congress_bagit(sealed_minilm):
    import bagit

    b = bagit.Bag(str(sealed_minilm / "bundles" / "minilm"))
    b.validate()  # full validation: every payload digest
    assert b.info["Payload-Oxum"].endswith(".18") or b.info["Payload-Oxum"]
    assert b.version == "1.0"


def test_export_is_a_standalone_bag_bagit_validates_and_catches_a_flipped_bit(
        sealed_minilm, lab_key, tmp_path):  # fmt: skip
    """The vault's bag holds no objects (they are in the pool); `export` writes one bag with
    all of them, which the Library of Congress validator accepts and checks byte for byte."""
    out = tmp_path / "bag"
    r = wv("export", "minilm", out, "--vault", sealed_minilm, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    m = json.loads((out / "data/weightvault.json").read_bytes())
    assert sorted(p.name for p in (out / "data/objects").iterdir()) == \
        sorted(o["name"] for o in m["objects"])  # fmt: skip
    validate = ["bagit.py", "--validate", str(out)]
    assert subprocess.run(validate, capture_output=True, text=True).returncode == 0
    obj = max((out / "data/objects").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    assert subprocess.run(validate, capture_output=True, text=True).returncode == 1


def test_restore_by_id_prefix_and_name_resolution(vault_copy, lab_key, tmp_path):
    bid = wv("list", "--vault", vault_copy, "--json").json()[0]["bundle"]
    r = wv("restore", bid[:6], tmp_path / "out", "--vault", vault_copy, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err


def test_format_spec_travels_with_every_bundle(sealed_minilm):
    from pathlib import Path

    spec = Path(__file__).parents[1] / "docs" / "FORMAT.md"
    assert (sealed_minilm / "bundles/minilm/data/FORMAT.md").read_bytes() == spec.read_bytes()
