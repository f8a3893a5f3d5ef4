"""Hostile encrypted bundles (format version 5, scheme weightvault-aead-2): each is re-signed
by the trusted key after the attack (and its private section re-sealed with the data key), so
only the checks below the signature stand between it and the disk. Restore must refuse each
with one error line and the documented exit code, and write nothing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import wv
from pyrage import x25519

from weightvault.format import canon, crypt, keys
from weightvault.format.manifest import PAYLOAD_TYPE, Manifest
from weightvault.storage.vault import commit_files, commit_order


@pytest.fixture(scope="module")
def base(tmp_path_factory, lab_key):
    d = tmp_path_factory.mktemp("hostile-enc")
    src = d / "model"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * (10 * 1024 + 7))  # 2.5 MiB, 3 chunks
    (src / "b.txt").write_text("hello\n" * 100)
    ident = x25519.Identity.generate()
    (d / "id.agekey").write_text(f"{ident}\n")
    (d / "id.agekey").chmod(0o600)
    r = wv("seal", src, "--vault", d / "vault", "--key", lab_key, "--name", "m", "--quiet",
           "--chunk-size", "1", "--encrypt-to", str(ident.to_public()))  # fmt: skip
    assert r.code == 0, r.err
    return d, ident


class Bundle:
    def __init__(self, root: Path, ident, lab_key: Path):
        self.root, self.key = root, keys.load_signing_key(lab_key)
        self.doc = json.loads((root / "data/weightvault.json").read_bytes())
        import pyrage

        env = (root / "data/keys/recipient-1.age").read_bytes()
        self.dk = bytes.fromhex(pyrage.decrypt(env, [ident]).decode().strip())
        self.salt = self.doc["encryption"]["salt"]
        self.lineage = self.doc["encryption"]["lineage_salt"]
        sealed = (root / "data/private/manifest.sealed").read_bytes()
        self.private = json.loads(crypt.open_bytes(self.dk, self.salt, "private", 0, sealed,
                                                   1 << 26))  # fmt: skip

    def seal_chunk(self, plain: bytes) -> bytes:
        s = crypt.LineageSealer(self.dk, self.lineage)
        s.feed(plain)
        return b"".join(s.finish_parts())

    def open_chunk(self, name: str) -> bytes:
        data = self.obj(name).read_bytes()
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            pos += n
            return data[pos - n : pos]

        d = crypt.chunk_opener(self.dk, self.doc["encryption"], 0)(read, len(data))
        out = b"".join(iter(lambda: d.read(1 << 20), b""))
        d.finish()
        return out

    def obj(self, name: str) -> Path:
        # format version 4: the vault's pool (FORMAT.md section 2.2)
        return self.root.parent.parent / "objects" / name

    def replace_object(self, old: str, data: bytes) -> str:
        """Store new bytes for an object, keeping every digest consistent (an attacker with
        the signing key could); returns the new name."""
        new = hashlib.sha256(data).hexdigest()
        self.obj(old).unlink()
        self.obj(new).write_bytes(data)
        for o in self.doc["objects"]:
            if o["name"] == old:
                o.update(name=new, size=len(data))
        for f in self.private["files"]:
            for c in f["chunks"]:
                if c["object"] == old:
                    c["object"] = new
        self.doc["objects"].sort(key=lambda o: o["name"])
        return new

    def write(self) -> None:
        sealed = crypt.seal_bytes(self.dk, self.salt, "private", 0, canon.canonical(self.private))
        (self.root / "data/private/manifest.sealed").write_bytes(sealed)
        self.doc["encryption"]["private"].update(
            size=len(sealed), sha256=hashlib.sha256(sealed).hexdigest()
        )
        raw = canon.canonical(self.doc)
        m = Manifest(self.doc, raw)
        sig = {"format": "weightvault-signature", "format_version": 1,
               "payload_type": PAYLOAD_TYPE, "payload_sha256": m.bundle_id,
               "signatures": [self.key.sign(PAYLOAD_TYPE, raw)]}  # fmt: skip
        for key, data in commit_files(m, sig, bagging_date="2026-11-22"):
            (self.root / key).write_bytes(data)
        assert [k for k, _ in commit_files(m, sig, bagging_date="x")] == list(
            commit_order(m.doc["format_version"])
        )


def chunks(b: Bundle) -> list[dict]:
    return [c for f in b.private["files"] for c in f["chunks"]]


def private_name(b):
    b.private["bundle"]["name"] = "other"


def private_salt(b):
    b.private["bundle"]["salt"] = crypt.new_salt()


def private_dotdot(b):
    b.private["files"][0]["path"] = "../escape.bin"


def shared_object(b):
    """Chunk 2 (a.bin's short last chunk) names chunk 0's object: version 5 lets identical
    chunks share an object, so this one is caught by the codec (the object decodes to
    another length), as any substitution is by the file's digest."""
    cs = chunks(b)
    gone = cs[2]["object"]
    cs[2]["object"] = cs[0]["object"]
    b.obj(gone).unlink()
    b.doc["objects"] = [o for o in b.doc["objects"] if o["name"] != gone]


def files_in_the_clear(b):
    b.doc["files"] = b.private["files"]


def swapped_chunks(b):
    """a.bin's first and b.txt's chunks trade objects (version 5 binds an object to its
    lineage, not its position: the sealed, signed file table binds the position)."""
    cs = chunks(b)
    cs[0]["object"], cs[3]["object"] = cs[3]["object"], cs[0]["object"]


def impossible_size(b):
    c = chunks(b)[0]
    b.replace_object(c["object"], b.obj(c["object"]).read_bytes()[: crypt.HEADER + 10])


def trailing_plaintext(b):
    """The codec's frame plus extra bytes, sealed properly at the chunk's own position."""
    cs = chunks(b)
    i = 3  # b.txt's one chunk (files sorted: a.bin has chunks 0..2)
    c = cs[i]
    b.replace_object(c["object"], b.seal_chunk(b.open_chunk(c["object"]) + b"tail"))


def version_4_scheme(b):
    b.doc["encryption"]["scheme"] = crypt.SCHEME
    del b.doc["encryption"]["lineage_salt"]


def another_lineage(b):
    """Objects sealed under another lineage salt fail their tags."""
    b.doc["encryption"]["lineage_salt"] = crypt.new_salt()


def sealed_at_a_position(b):
    """An object sealed the version 4 way (random nonce, bundle salt and position in its
    associated data) in a version 5 bundle."""
    c = chunks(b)[3]
    plain = b.open_chunk(c["object"])
    b.replace_object(c["object"], crypt.seal_bytes(b.dk, b.salt, "chunk", 3, plain))


def bad_key_check(b):
    b.doc["encryption"]["key_check"] = crypt.key_check(crypt.new_data_key(), b.salt)


def wrong_magic(b):
    c = chunks(b)[0]
    data = bytearray(b.obj(c["object"]).read_bytes())
    data[0:4] = b"WVE9"
    b.replace_object(c["object"], bytes(data))


def unknown_scheme(b):
    b.doc["encryption"]["scheme"] = "weightvault-aead-9"


def version_1_with_encryption(b):
    b.doc["format_version"] = 1


CASES = [
    (private_name, 1, "belongs to another bundle"),
    (private_salt, 1, "belongs to another bundle"),
    (private_dotdot, 1, ".."),
    (shared_object, 1, "cannot be decoded"),
    (files_in_the_clear, 1, "in the clear"),
    (swapped_chunks, 1, "cannot be decoded"),
    (impossible_size, 1, "sealed object"),
    (trailing_plaintext, 1, "cannot be decoded"),
    (bad_key_check, 1, "key check"),
    (wrong_magic, 1, "bad magic"),
    (unknown_scheme, 1, "schema"),
    (version_1_with_encryption, 1, "encryption"),
    (version_4_scheme, 1, "not one of format version 5"),
    (another_lineage, 1, "fails authentication"),
    (sealed_at_a_position, 1, "fails authentication"),
]


@pytest.mark.parametrize("attack,code,needle", CASES, ids=[c[0].__name__ for c in CASES])
def test_hostile_encrypted_bundle_is_refused(base, lab_key, tmp_path, attack, code, needle):
    import shutil

    d, ident = base
    vault = tmp_path / "vault"
    shutil.copytree(d / "vault", vault)
    b = Bundle(vault / "bundles/m", ident, lab_key)
    attack(b)
    b.write()
    dest = tmp_path / "out"
    r = wv("restore", "m", dest, "--vault", vault, "--trust", f"{lab_key}.pub",
           "--identity", d / "id.agekey", "--quiet")  # fmt: skip
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert r.code == code, (r.code, r.err)
    assert len(lines) == 1 and lines[0].startswith("weightvault: error: "), r.err
    assert needle in lines[0], lines[0]
    assert not dest.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []


def test_untouched_rebuild_still_restores(base, lab_key, tmp_path):
    """The builder itself is faithful: rewriting without an attack changes nothing."""
    import shutil

    d, ident = base
    vault = tmp_path / "vault"
    shutil.copytree(d / "vault", vault)
    Bundle(vault / "bundles/m", ident, lab_key).write()
    r = wv("restore", "m", tmp_path / "out", "--vault", vault, "--trust", f"{lab_key}.pub",
           "--identity", d / "id.agekey", "--quiet")  # fmt: skip
    assert r.code == 0, r.err
    assert (tmp_path / "out/a.bin").read_bytes() == bytes(range(256)) * (10 * 1024 + 7)


def test_identical_chunks_share_one_object(base, lab_key, tmp_path):
    """Version 5 (FORMAT.md 10.3): a.bin's first two 1 MiB chunks hold the same bytes, so they
    are sealed to one object, listed once; the bundle restores."""
    d, ident = base
    b = Bundle(d / "vault/bundles/m", ident, lab_key)
    cs = chunks(b)
    assert cs[0]["object"] == cs[1]["object"] != cs[2]["object"]
    assert len(b.doc["objects"]) == 3  # four chunks, three objects
    r = wv("restore", "m", tmp_path / "out", "--vault", d / "vault", "--trust", f"{lab_key}.pub",
           "--identity", d / "id.agekey", "--quiet")  # fmt: skip
    assert r.code == 0, r.err
    assert (tmp_path / "out/a.bin").read_bytes() == (d / "model/a.bin").read_bytes()
