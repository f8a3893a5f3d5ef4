"""Versions that share storage (issue 17) and every file proven by the signature (issue 15
item 5, format version 4): the object pool, `seal --supersedes`, `amend`, `diff`, `export`,
lineage in list/show, gc's reference counting, and the bad input of each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, one_error, write_config, wv

from weightvault.format import bag, canon
from weightvault.format.keys import load_public_key, load_signing_key
from weightvault.format.manifest import PAYLOAD_TYPE

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def shards(d: Path, seed: int = 0, n: int = 4, tensors: int = 4, elems: int = 256 << 10,
           change: tuple[int, int] | None = None) -> Path:  # fmt: skip
    """A model of `n` bf16 safetensors shards of `tensors` tensors each (512 KiB a tensor);
    `change` = (shard, tensor) flips that one tensor's values."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for s in range(n):
        header, blobs, off = {}, [], 0
        for t in range(tensors):
            w = (rng.normal(0, 0.02, elems).astype(np.float32).view(np.uint32) >> 16)
            if change == (s, t):
                w = w ^ 1
            b = w.astype("<u2").tobytes()
            header[f"layer{s}.t{t}"] = {"dtype": "BF16", "shape": [elems],
                                        "data_offsets": [off, off + len(b)]}  # fmt: skip
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        (d / f"model-{s:05d}-of-{n:05d}.safetensors").write_bytes(
            struct.pack("<Q", len(h)) + h + b"".join(blobs))
    (d / "config.json").write_text('{"model_type": "tiny"}')
    return d


def pool_bytes(vault: Path) -> int:
    return sum(p.stat().st_size for p in (vault / "objects").iterdir())


def manifest(vault: Path, name: str) -> dict:
    return json.loads((vault / "bundles" / name / "data/weightvault.json").read_bytes())


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all((a / p).read_bytes() == (b / p).read_bytes() for p in fa)


def reference_restore(bag_dir: Path, dest: Path, key: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "docs/reference_restore.py"), str(bag_dir),
                           str(dest), "--trust", f"{key}.pub"], capture_output=True, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, lab_key) -> tuple[Path, Path, Path, dict]:
    """A vault with v1 of a 4-shard model and v2 (one tensor changed) sealed --supersedes v1;
    (vault, v1 source, v2 source, v2's seal summary)."""
    base = tmp_path_factory.mktemp("lineage")
    v1, v2 = shards(base / "v1"), shards(base / "v2", change=(2, 1))
    vault = base / "vault"
    ok(wv("seal", v1, "--vault", vault, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    before = pool_bytes(vault)
    r = ok(wv("seal", v2, "--vault", vault, "--key", lab_key, "--name", "m.2", "--chunk-size",
              "1", "--supersedes", "m", "--json"))  # fmt: skip
    s = r.json()
    s["pool_growth"] = pool_bytes(vault) - before
    return vault, v1, v2, s


def test_a_new_version_stores_only_the_changed_chunks(lineage, lab_key):
    vault, _v1, _v2, s = lineage
    m1, m2 = manifest(vault, "m"), manifest(vault, "m.2")
    assert m2["format_version"] == 6
    assert m2["supersedes"] == {"bundle": hashlib.sha256(
        (vault / "bundles/m/data/weightvault.json").read_bytes()).hexdigest(), "name": "m"}  # fmt: skip
    new = {o["name"]: o["size"] for o in m2["objects"]} .items() - \
        {o["name"]: o["size"] for o in m1["objects"]}.items()  # fmt: skip
    assert len(new) == 1, new  # one tensor, tensor-aligned 1 MiB chunks: one new object
    assert s["pool_growth"] == sum(size for _n, size in new) == s["bytes_new"]
    assert s["files_reused"] == 4  # three unchanged shards and config.json, not re-encoded
    # the changed shard: every chunk but the changed tensor's named again after a trial decode
    (shard,) = [f for f in m2["files"] if f["path"] == "model-00002-of-00004.safetensors"]
    assert s["chunks_reused"] == len(shard["chunks"]) - 1 > 0
    assert not (vault / "bundles/m.2/data/objects").exists()
    # the pool holds each object once, and nothing any bundle does not name
    names = {o["name"] for o in m1["objects"]} | {o["name"] for o in m2["objects"]}
    assert {p.name for p in (vault / "objects").iterdir()} == names


def test_every_version_restores_bit_exact_with_weightvault_and_the_reference(lineage, lab_key,
                                                                             tmp_path):  # fmt: skip
    vault, v1, v2, _ = lineage
    for name, src in (("m", v1), ("m.2", v2)):
        ok(wv("verify", name, "--vault", vault, "--trust", f"{lab_key}.pub", "--deep"))
        ok(wv("restore", name, tmp_path / name, "--vault", vault, "--trust", f"{lab_key}.pub"))
        assert same_tree(src, tmp_path / name)
        p = reference_restore(vault / "bundles" / name, tmp_path / f"ref-{name}", lab_key)
        assert p.returncode == 0, p.stderr
        assert same_tree(src, tmp_path / f"ref-{name}")


def _counting_encoder(monkeypatch) -> list[int]:
    """Counts the chunks seal encodes (in this process)."""
    from weightvault.format import codec

    made: list[int] = []
    real = codec.ChunkEncoder

    def counted(length, *a, **kw):
        made.append(length)
        return real(length, *a, **kw)

    monkeypatch.setattr(codec, "ChunkEncoder", counted)
    return made


@pytest.mark.parametrize("version", [4, 6])
def test_a_changed_tensor_in_a_multi_chunk_file_re_encodes_only_its_chunk(tmp_path, lab_key,
                                                                           monkeypatch, version):  # fmt: skip
    """The changed file's other chunks are proven equal to the previous version's and named
    again; one chunk is encoded and one object written. Against version 6 by the chunks'
    signed BLAKE3 digests, reading no object; against version 4 by a trial decode of the
    previous objects, as restore decodes them."""
    import blake3

    import weightvault.archive.seal as sealmod
    from weightvault.archive.seal import SealOptions, seal
    from weightvault.storage.store import LocalStore

    v1 = shards(tmp_path / "v1", n=2, tensors=6)
    v2 = shards(tmp_path / "v2", n=2, tensors=6, change=(1, 3))
    v = tmp_path / "v"
    ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--format-version", str(version), "--quiet"))  # fmt: skip
    before = {p.name for p in (v / "objects").iterdir()}
    encoded = _counting_encoder(monkeypatch)
    trials: list = []
    real_trial = sealmod.trial_decode
    monkeypatch.setattr(sealmod, "trial_decode", lambda *a, **k: trials.append(a[1]) or
                        real_trial(*a, **k))  # fmt: skip
    read: list[str] = []
    real_open = LocalStore.open_read
    monkeypatch.setattr(LocalStore, "open_read", lambda self, key, *a, **k: read.append(key) or
                        real_open(self, key, *a, **k))  # fmt: skip
    key, pub = load_signing_key(lab_key), load_public_key(Path(f"{lab_key}.pub"))
    store = LocalStore(v)
    r = seal(str(v2), store, key, SealOptions(name="m.2", chunk_size=MiB, supersedes="m",
                                              trusted=[pub]))  # fmt: skip
    m2 = manifest(v, "m.2")
    assert m2["format_version"] == 6  # a version 4 lineage goes on as version 6
    pool_reads = [k for k in read if k.startswith("objects/")]
    if version == 6:
        assert not trials and not pool_reads, (trials, pool_reads)
    else:
        assert len(trials) == 4 and len(pool_reads) == 4  # the changed chunk's as well
    for f in m2["files"]:  # every chunk has the digest of its plaintext, reused ones too
        data = (v2 / f["path"]).read_bytes()
        assert f["chunks_blake3"] == "".join(
            blake3.blake3(data[c["offset"]:c["offset"] + c["length"]]).hexdigest()
            for c in f["chunks"]), f["path"]  # fmt: skip
    (changed,) = [f for f in m2["files"] if f["path"] == "model-00001-of-00002.safetensors"]
    assert len(changed["chunks"]) == 4  # the header, and six tensors two by two
    assert encoded == [MiB], encoded  # one chunk encoded: the changed tensor's
    added = {p.name for p in (v / "objects").iterdir()} - before
    assert len(added) == 1 and r.bytes_new == (v / "objects" / added.pop()).stat().st_size
    assert r.files_reused == 2 and r.chunks_reused == 3
    # written to the store: the one object, then the bag's plain files (no other object)
    plain = sum(p.stat().st_size for p in (v / "bundles/m.2").rglob("*") if p.is_file())
    assert store.counters.bytes_written == r.bytes_new + plain
    if version == 6:  # config and shard 0, as they were
        assert m2["files"][:2] == manifest(v, "m")["files"][:2]
    ok(wv("verify", "m.2", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))
    ok(wv("restore", "m.2", tmp_path / "out", "--vault", v, "--trust", f"{lab_key}.pub"))
    assert same_tree(v2, tmp_path / "out")
    p = reference_restore(v / "bundles/m.2", tmp_path / "ref", lab_key)
    assert p.returncode == 0, p.stderr
    assert same_tree(v2, tmp_path / "ref")


def test_a_changed_file_written_to_between_its_two_reads_is_refused(tmp_path, lab_key,
                                                                     monkeypatch):  # fmt: skip
    """A changed file is hashed once, in order, then its chunks are compared and encoded in a
    second read without hashing them again: if the file is written to in between, the seal's
    end check (size and mtime, as for every file) refuses it and nothing is committed."""
    import weightvault.archive.seal as sealmod
    from weightvault.errors import InputError
    from weightvault.storage.store import LocalStore

    v1 = shards(tmp_path / "v1", n=2, tensors=6)
    v2 = shards(tmp_path / "v2", n=2, tensors=6, change=(1, 3))
    v = tmp_path / "v"
    ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    real = sealmod._Versions.whole
    target = v2 / "model-00001-of-00002.safetensors"

    def then_written(self, job, files_io, on_bytes):
        out = real(self, job, files_io, on_bytes)
        if job.src.path == target.name:  # after its digest, before its chunks are read
            with open(target, "r+b") as fh:  # in place: same size, new bytes
                fh.seek(-1, os.SEEK_END)
                last = fh.read(1)
                fh.seek(-1, os.SEEK_END)
                fh.write(bytes([last[0] ^ 0xFF]))
        return out

    monkeypatch.setattr(sealmod._Versions, "whole", then_written)
    key, pub = load_signing_key(lab_key), load_public_key(Path(f"{lab_key}.pub"))
    with pytest.raises(InputError, match="changed while it was being sealed"):
        sealmod.seal(str(v2), LocalStore(v), key, sealmod.SealOptions(
            name="m.2", chunk_size=MiB, supersedes="m", trusted=[pub]))  # fmt: skip
    assert not (v / "bundles/m.2").exists()


def test_a_damaged_previous_object_is_never_named_again(tmp_path, lab_key):
    """A previous-version object with its right name and size but other bytes: the trial
    decode finds it, the chunk is encoded anew, and since the fresh bytes have that very name
    (the pool's copy cannot be rewritten) the seal refuses with one line and commits nothing.
    A damaged object of a chunk that changed anyway is not in the way."""
    v1 = shards(tmp_path / "v1", n=1, tensors=4)
    v2 = shards(tmp_path / "v2", n=1, tensors=4, change=(0, 2))
    v = tmp_path / "v"
    # version 4: no chunk digests, so a changed file's chunks are compared by decoding
    ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--format-version", "4", "--quiet"))  # fmt: skip
    (f,) = [f for f in manifest(v, "m")["files"] if f["path"].endswith(".safetensors")]
    kept, changed = f["chunks"][1], f["chunks"][2]  # tensor 0's chunk; tensor 2's (changes)
    for c in (kept, changed):
        p = v / "objects" / c["object"]
        p.chmod(0o644)
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x40
        p.write_bytes(bytes(data))
    r = wv("seal", v2, "--vault", v, "--key", lab_key, "--name", "m.2", "--chunk-size", "1",
           "--supersedes", "m")  # fmt: skip
    one_error(r, 1, f"objects/{kept['object']}", "repair")
    assert not (v / "bundles/m.2").exists()
    # repaired (the healthy bytes back under the name): the seal names it again, and the
    # damaged object of the changed tensor is simply not used
    fresh = tmp_path / "fresh"
    ok(wv("seal", v1, "--vault", fresh, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--format-version", "4", "--quiet"))  # fmt: skip
    shutil.copy(fresh / "objects" / kept["object"], v / "objects" / kept["object"])
    s = ok(wv("seal", v2, "--vault", v, "--key", lab_key, "--name", "m.2", "--chunk-size", "1",
              "--supersedes", "m", "--json")).json()  # fmt: skip
    assert s["chunks_reused"] == len(f["chunks"]) - 1
    names = {c["object"] for g in manifest(v, "m.2")["files"] for c in g["chunks"]}
    assert kept["object"] in names and changed["object"] not in names
    ok(wv("restore", "m.2", tmp_path / "out", "--vault", v, "--trust", f"{lab_key}.pub"))
    assert same_tree(v2, tmp_path / "out")


def test_a_failure_while_judging_unchanged_files_ends_the_seal(tmp_path, lab_key, monkeypatch):
    """The changed files' chunk jobs follow the verdicts on the unchanged ones into one worker
    pool: a failure there (a source file shrinking) is reported, nothing is committed, and
    the seal does not wait for verdicts that will never come."""
    import weightvault.archive.seal as sealmod
    from weightvault.errors import InputError
    from weightvault.storage.store import LocalStore

    v1 = shards(tmp_path / "v1", n=3, tensors=2)
    v = tmp_path / "v"
    ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    real = sealmod.hash_file

    def shrinking(files_io, f, *args, **kw):
        if f.path.startswith("model-00001"):
            raise InputError(f"{f.abspath}: file shrank while sealing")
        return real(files_io, f, *args, **kw)

    monkeypatch.setattr(sealmod, "hash_file", shrinking)
    key, pub = load_signing_key(lab_key), load_public_key(Path(f"{lab_key}.pub"))
    got: list = []
    t = threading.Thread(target=lambda: got.append(_raises(lambda: sealmod.seal(
        str(v1), LocalStore(v), key, sealmod.SealOptions(name="m.2", chunk_size=MiB,
                                                          supersedes="m", trusted=[pub])))))  # fmt: skip
    t.start()
    t.join(120)
    assert not t.is_alive(), "the seal hung"
    assert isinstance(got[0], InputError) and "shrank" in str(got[0])
    assert not (v / "bundles/m.2").exists()


def _raises(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned for the test to judge
        return e
    return None


def test_list_show_and_diff_show_the_lineage(lineage, lab_key):
    vault, *_ = lineage
    rows = {r["name"]: r for r in ok(wv("list", "--vault", vault, "--trust", f"{lab_key}.pub",
                                         "--json")).json()}
    assert rows["m.2"]["supersedes"] == rows["m"]["bundle"] and rows["m"]["supersedes"] is None
    show = ok(wv("show", "m.2", "--vault", vault, "--trust", f"{lab_key}.pub", "--json")).json()
    assert show["lineage"]["supersedes"] == [{"name": "m", "bundle": rows["m"]["bundle"],
                                              "state": "ok"}]  # fmt: skip
    back = ok(wv("show", "m", "--vault", vault, "--trust", f"{lab_key}.pub", "--json")).json()
    assert back["lineage"]["superseded_by"] == [{"name": "m.2", "bundle": rows["m.2"]["bundle"]}]
    d = ok(wv("diff", "m", "m.2", "--vault", vault, "--trust", f"{lab_key}.pub", "--json")).json()
    assert not d["added"] and not d["removed"] and d["same"] == 4
    (changed,) = d["changed"]
    assert changed["path"] == "model-00002-of-00004.safetensors"
    assert changed["tensors"]["changed"] == [{"name": "layer2.t1", "dtype": "BF16",
                                              "shape": [256 << 10], "bytes": 512 << 10}]  # fmt: skip
    human = ok(wv("diff", "m", "m.2", "--vault", vault, "--trust", f"{lab_key}.pub")).out
    assert "~ layer2.t1 BF16" in human


def test_export_is_standalone_and_validates(lineage, lab_key, tmp_path):
    vault, _v1, v2, _ = lineage
    out = tmp_path / "export"
    ok(wv("export", "m.2", out, "--vault", vault, "--trust", f"{lab_key}.pub"))
    p = subprocess.run(["bagit.py", "--validate", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "objects").exists()
    r = reference_restore(out, tmp_path / "restored", lab_key)
    assert r.returncode == 0, r.stderr
    assert same_tree(v2, tmp_path / "restored")
    # the vault's own bag (pooled form) is a valid bag as well: of its metadata
    p = subprocess.run(["bagit.py", "--validate", str(vault / "bundles/m.2")],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_superseding_a_missing_or_untrusted_bundle_is_refused(lineage, lab_key, other_key,
                                                              tmp_path):  # fmt: skip
    vault, v1, _v2, _ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "x", "--supersedes", "nope")
    one_error(r, 2, "--supersedes nope", "no such bundle")
    # sealed by a key the sealer does not trust: the lineage link would vouch for it
    ok(wv("seal", v1, "--vault", v, "--key", other_key, "--name", "theirs", "--quiet"))
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "x", "--supersedes", "theirs")
    one_error(r, 4, "--supersedes theirs", "not trusted")
    assert not (v / "bundles/x").exists()


def test_amend_adds_record_files_without_reading_the_weights(lineage, lab_key, tmp_path):
    from weightvault.archive.versions import amend
    from weightvault.storage.store import LocalStore

    vault, _v1, v2, _ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    later = tmp_path / "later.jsonl"
    later.write_text('{"role": "interviewer", "content": "Anything else?", '
                     '"time": "2026-01-05T10:00:00Z"}\n'
                     '{"role": "model", "content": "No.", "time": "2026-01-05T10:01:00Z"}\n')  # fmt: skip
    store = LocalStore(v)
    pool_before = pool_bytes(v)
    r = amend(store, "m.2", load_signing_key(lab_key), [load_public_key(Path(f"{lab_key}.pub"))],
              [("interview", later, "record/interviews/later.jsonl")])  # fmt: skip
    assert store.counters.payload_read == 0, "amend read stored objects"
    assert r.name == "m.3" and pool_bytes(v) == pool_before
    m2, m3 = manifest(v, "m.2"), manifest(v, "m.3")
    assert m3["files"] == m2["files"] and m3["objects"] == m2["objects"]
    assert [e["path"] for e in m3["record"]] == ["record/interviews/later.jsonl"]
    assert m3["supersedes"]["name"] == "m.2"
    # growth: the record file plus metadata (manifest, spec copies, tag files) only
    added = sum(p.stat().st_size for p in (v / "bundles/m.3").rglob("*") if p.is_file())
    assert r.bytes_added == added and added < later.stat().st_size + 256 * 1024
    ok(wv("verify", "m.3", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))
    ok(wv("restore", "m.3", tmp_path / "out", "--vault", v, "--trust", f"{lab_key}.pub"))
    assert same_tree(v2, tmp_path / "out")
    # the CLI, with a report, named explicitly
    report = tmp_path / "report.md"
    report.write_text("# Report\n")
    ok(wv("amend", "m.3", "--vault", v, "--key", lab_key, "--report", report, "--name", "final"))
    assert {e["path"] for e in manifest(v, "final")["record"]} == {
        "record/interviews/later.jsonl", "record/report.md"}  # fmt: skip


def test_amend_with_a_record_failing_its_schema_is_refused(lineage, lab_key, tmp_path):
    vault, *_ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"role": "model", "time": "2026-01-05T10:01:00Z"}\n')
    before = sorted(p.relative_to(v) for p in v.rglob("*"))
    r = wv("amend", "m.2", "--vault", v, "--key", lab_key, "--interview", bad)
    one_error(r, 2, "bad.jsonl", "line 1", "content")
    assert sorted(p.relative_to(v) for p in v.rglob("*")) == before, "amend left files behind"


def forge(v: Path, doc: dict, key: Path, name: str) -> None:
    """Commit `doc` (a manifest of bundle m of vault `v`, edited) as bundle `name`, validly
    signed by `key`: what a signer's bug, or a stolen key, would write."""
    from weightvault.format.manifest import Manifest
    from weightvault.storage.vault import commit_files

    doc = {**doc, "name": name, "supersedes": None}
    raw = canon.canonical(doc)
    sk = load_signing_key(key)
    sig = {"format": "weightvault-signature", "format_version": 1, "payload_type": PAYLOAD_TYPE,
           "payload_sha256": hashlib.sha256(raw).hexdigest(),
           "signatures": [sk.sign(PAYLOAD_TYPE, raw)]}  # fmt: skip
    b = v / "bundles" / name
    for e in doc["spec"]:
        (b / "data" / e["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(v / "bundles/m/data" / e["path"], b / "data" / e["path"])
    for k, data in commit_files(Manifest.parse(raw, name), canon.canonical(sig)):
        (b / k).write_bytes(data)


def test_a_wrong_chunk_digest_is_found_by_a_deep_verify_and_never_reused(lineage, lab_key,
                                                                         tmp_path):  # fmt: skip
    """A signed manifest whose `chunks_blake3` does not match what an object decodes to (a
    signer's bug): the stored bytes are right, so a plain verify passes; `verify --deep` finds
    it, naming the object and the file range; and a new version superseding it does not name
    the object on the strength of that digest: the source's bytes do not match it, so the
    chunk is encoded anew (and, the encoding being deterministic, lands on the same object,
    now with the right digest)."""
    import blake3

    vault, v1, *_ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    trust = ("--trust", f"{lab_key}.pub")
    doc = manifest(v, "m")
    f = next(f for f in doc["files"] if len(f["chunks"]) > 2)
    c = f["chunks"][1]
    right = f["chunks_blake3"]
    f["chunks_blake3"] = right[:64] + blake3.blake3(b"not these").hexdigest() + right[128:]
    forge(v, doc, lab_key, "liar")
    ok(wv("verify", "liar", "--vault", v, *trust))
    r = wv("verify", "liar", "--vault", v, *trust, "--deep")
    assert r.code == 1 and f"objects/{c['object']}" in r.out and "blake3" in r.out, r.out
    assert f"{f['path']} bytes {c['offset']}..{c['offset'] + c['length']}" in r.out, r.out
    s = ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "fixed", "--supersedes",
              "liar", "--chunk-size", "1", "--json")).json()  # fmt: skip
    assert s["files_reused"] == len(doc["files"]) - 1 and s["bytes_new"] == 0
    g = next(g for g in manifest(v, "fixed")["files"] if g["path"] == f["path"])
    assert g["chunks"][1] == c and g["chunks_blake3"] == right
    ok(wv("verify", "fixed", "--vault", v, *trust, "--deep"))


def test_a_version_6_manifest_without_chunk_digests_or_a_4_with_them_is_refused(lineage, lab_key,
                                                                                tmp_path):  # fmt: skip
    """The member set is the version's: a reader refuses a version 6 file without
    `chunks_blake3` or with one that has a digest too few, a version 4 file with one, and a
    version 6 bundle that is encrypted; one line each, exit 1 (the bundle is damaged)."""
    vault, *_ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    trust = ("--trust", f"{lab_key}.pub")
    doc = manifest(v, "m")
    del doc["files"][1]["chunks_blake3"]
    with pytest.raises(Exception, match="no chunks_blake3, which format version 6 requires"):
        forge(v, doc, lab_key, "nodigest")
    from weightvault.format.manifest import Manifest

    doc = manifest(v, "m")
    doc["files"][1]["chunks_blake3"] = doc["files"][1]["chunks_blake3"][64:]
    with pytest.raises(Exception, match="chunks_blake3 holds 2 digests for 3 chunks"):
        Manifest.parse(canon.canonical(doc), "short")
    doc4 = {**manifest(v, "m"), "format_version": 4}
    with pytest.raises(Exception, match="a chunks_blake3, which format version 4 does not"):
        Manifest.parse(canon.canonical(doc4), "doc4")
    with pytest.raises(Exception, match="format version 6 does not allow encryption"):
        Manifest.parse(canon.canonical({**manifest(v, "m"), "encryption": {}}), "enc6")
    # as stored, signed: the reader's one line
    doc = manifest(v, "m")
    del doc["files"][1]["chunks_blake3"]
    raw = canon.canonical({**doc, "name": "bare"})
    b = v / "bundles/bare"
    shutil.copytree(v / "bundles/m", b)
    (b / "data/weightvault.json").write_bytes(raw)
    sk = load_signing_key(lab_key)
    (b / "weightvault.sig").write_bytes(canon.canonical({
        "format": "weightvault-signature", "format_version": 1, "payload_type": PAYLOAD_TYPE,
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "signatures": [sk.sign(PAYLOAD_TYPE, raw)]}))  # fmt: skip
    r = wv("verify", "bare", "--vault", v, *trust)
    assert r.code == 1 and "no chunks_blake3" in r.err and len(r.err.splitlines()) == 1, r


def test_a_manifest_claiming_another_size_for_a_shared_object(lineage, lab_key, tmp_path):
    """Bundle `liar` (validly signed) names one of m's pool objects with another size: it is
    damaged and cannot be copied, and nothing of m is touched or lost."""
    vault, *_ = lineage
    v, mirror = tmp_path / "v", tmp_path / "mirror"
    shutil.copytree(vault, v)
    trust = ("--trust", f"{lab_key}.pub")
    ok(wv("replicate", "m", "--from", v, "--to", mirror, *trust, "--quiet"))
    doc = manifest(v, "m")
    victim = max(doc["objects"], key=lambda o: o["size"])
    victim["size"] += 1
    forge(v, doc, lab_key, "liar")
    r = wv("verify", "liar", "--vault", v, *trust)
    assert r.code == 1 and f"objects/{victim['name']}" in r.out and "expected" in r.out, r.out
    r = wv("replicate", "liar", "--from", v, "--to", mirror, *trust, "--quiet")
    assert r.code == 1 and victim["name"] in r.err, r.err
    for where in (v, mirror):
        ok(wv("verify", "m", "--vault", where, *trust, "--deep"))
    r = ok(wv("gc", "--vault", v, *trust, "--grace", "0", "--json"))
    assert not r.json()["replicas"][0]["removed"]
    assert (v / "objects" / victim["name"]).stat().st_size == victim["size"] - 1


def test_gc_never_removes_a_pool_object_any_signed_manifest_names(lineage, lab_key, other_key,
                                                                  tmp_path):  # fmt: skip
    vault, *_ = lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    trust = ("--trust", f"{lab_key}.pub")
    stray = v / "objects" / hashlib.sha256(b"stray").hexdigest()
    stray.write_bytes(b"stray")
    old = time.time() - 3 * 86400
    for p in (v / "objects").iterdir():
        os.utime(p, (old, old))
    # a bundle whose manifest cannot be verified: no pool object goes, the stray neither
    shutil.copytree(v / "bundles/m", v / "bundles/odd")
    (v / "bundles/odd/data/weightvault.json").write_text("{}")
    rep = ok(wv("gc", "--vault", v, *trust, "--grace", "0", "--json")).json()["replicas"][0]
    assert stray.exists() and not any(o["key"].startswith("objects/") for o in rep["removed"])
    assert any("no pool object removed" in n for n in rep["notes"]), rep["notes"]
    shutil.rmtree(v / "bundles/odd")
    # untrusted signer: the same
    rep = ok(wv("gc", "--vault", v, "--trust", f"{other_key}.pub", "--grace", "0",
                "--json")).json()["replicas"][0]  # fmt: skip
    assert stray.exists() and not rep["removed"]
    # everything readable: only the stray goes; v1 and v2 verify deep
    rep = ok(wv("gc", "--vault", v, *trust, "--grace", "0", "--json")).json()["replicas"][0]
    assert [o["key"] for o in rep["removed"]] == [f"objects/{stray.name}"]
    for name in ("m", "m.2"):
        ok(wv("verify", name, "--vault", v, *trust, "--deep"))
    # retiring v1 (its bundle gone) frees only what v2 does not share
    m1 = {o["name"] for o in manifest(v, "m")["objects"]}
    m2 = {o["name"] for o in manifest(v, "m.2")["objects"]}
    shutil.rmtree(v / "bundles/m")
    rep = ok(wv("gc", "--vault", v, *trust, "--grace", "0", "--json")).json()["replicas"][0]
    assert {o["key"] for o in rep["removed"]} == {f"objects/{n}" for n in m1 - m2}
    ok(wv("verify", "m.2", "--vault", v, *trust, "--deep"))


def test_gc_racing_a_seal_that_reuses_an_object(tmp_path, lab_key):
    """An orphaned pool object (its bundle retired) is reused by a seal in progress: gc waits
    for the seal's commit (the pool lock), then counts the object as named and keeps it."""
    import weightvault.archive.seal as sealmod
    from weightvault.archive.gc import gc
    from weightvault.archive.seal import SealOptions, seal
    from weightvault.storage.store import LocalStore

    src = shards(tmp_path / "src", n=1, tensors=2)
    v = tmp_path / "v"
    ok(wv("seal", src, "--vault", v, "--key", lab_key, "--name", "old", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    shutil.rmtree(v / "bundles/old")  # retired: its objects are orphans now
    old = time.time() - 3 * 86400
    for p in (v / "objects").iterdir():
        os.utime(p, (old, old))
    reused = {p.name for p in (v / "objects").iterdir()}
    key, pub = load_signing_key(lab_key), load_public_key(Path(f"{lab_key}.pub"))
    at_commit, go_on = threading.Event(), threading.Event()
    real = sealmod.sign_and_commit

    def slow_commit(*a, **kw):
        at_commit.set()
        go_on.wait(30)
        return real(*a, **kw)

    results: dict = {}
    sealmod.sign_and_commit = slow_commit
    try:
        t = threading.Thread(target=lambda: results.update(seal=seal(
            str(src), LocalStore(v), key, SealOptions(name="new", chunk_size=MiB))))  # fmt: skip
        t.start()
        assert at_commit.wait(60)
        g = threading.Thread(target=lambda: results.update(gc=gc("v", LocalStore(v),
                                                                 trusted=[pub], grace=0)))
        g.start()
        g.join(1.0)
        assert g.is_alive(), "gc did not wait for the seal holding the pool"
        go_on.set()
        t.join(60)
        g.join(60)
    finally:
        sealmod.sign_and_commit = real
        go_on.set()
    assert results["seal"].bytes_new == 0  # every object was reused
    assert not results["gc"].removed
    assert {p.name for p in (v / "objects").iterdir()} == reused
    ok(wv("verify", "new", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))


# -- issue 15 item 5: every file proven by the signed manifest


def _forge_format_md(bundle: Path) -> None:
    """Rewrite data/FORMAT.md and update every bag digest, as someone with write access to
    the replica could: BagIt tools see a consistent bag."""
    fmt = bundle / "data/FORMAT.md"
    fmt.write_bytes(fmt.read_bytes().replace(b"MUST", b"MAY "))  # same length: Oxum holds
    algs = ("sha256", "sha512") if (bundle / "manifest-sha512.txt").exists() else ("sha256",)
    for alg in algs:
        p = bundle / f"manifest-{alg}.txt"
        lines = bag.parse_manifest(p.read_bytes(), "m")
        lines["data/FORMAT.md"] = hashlib.new(alg, fmt.read_bytes()).hexdigest()
        p.write_bytes("".join(f"{d}  {k}\n" for k, d in sorted(lines.items())).encode())
    for alg in algs:
        p = bundle / f"tagmanifest-{alg}.txt"
        lines = bag.parse_manifest(p.read_bytes(), "t")
        for k in lines:
            lines[k] = hashlib.new(alg, (bundle / k).read_bytes()).hexdigest()
        p.write_bytes("".join(f"{d}  {k}\n" for k, d in sorted(lines.items())).encode())


@pytest.mark.parametrize("which", ["v4", "golden-v1"])
def test_a_rewritten_format_md_is_damage_and_never_copied(which, lineage, lab_key, tmp_path):
    if which == "v4":
        vault, name, trust = lineage[0], "m", f"{lab_key}.pub"
    else:
        vault, name = ROOT / "tests/golden/v1", "golden"
        trust = ROOT / "tests/golden/keys/golden.key.pub"
    v, mirror = tmp_path / "v", tmp_path / "mirror"
    shutil.copytree(vault, v)
    (v / "tmp").mkdir(exist_ok=True)
    for p in v.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)
    ok(wv("replicate", name, "--from", v, "--to", mirror, "--trust", trust, "--quiet"))
    healthy = (mirror / "bundles" / name / "data/FORMAT.md").read_bytes()
    _forge_format_md(v / "bundles" / name)
    p = subprocess.run(["bagit.py", "--validate", str(v / "bundles" / name)],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, "the forgery is not a consistent bag: the test proves nothing"
    for deep in ((), ("--deep",)):
        r = wv("verify", name, "--vault", v, "--trust", trust, *deep)
        assert r.code == 1 and "FORMAT.md" in r.out, r.out + r.err
    state = tmp_path / "state"
    akey = tmp_path / "audit.key"
    ok(wv("keygen", akey))
    cfg = write_config(tmp_path / "wv.toml", lab_key,
                       {"main": {"url": str(v)}, "mirror": {"url": str(mirror)}})  # fmt: skip
    r = wv("-c", cfg, "audit", "--level", "full", "--replica", "main", "--trust", trust,
           "--key", akey, "--state-dir", state)  # fmt: skip
    assert r.code == 1 and "FORMAT.md" in r.out + r.err, r.out + r.err
    # the mirror is never overwritten with the forgery, by replicate or repair
    wv("replicate", name, "--from", v, "--to", mirror, "--trust", trust, "--quiet")
    wv("-c", cfg, "repair", "--trust", trust, "--key", akey, "--state-dir", state)
    assert (mirror / "bundles" / name / "data/FORMAT.md").read_bytes() == healthy


def test_full_audit_of_ten_versions_reads_each_shared_object_once(tmp_path, lab_key):
    src = shards(tmp_path / "src", n=2, tensors=2)
    v = tmp_path / "v"
    ok(wv("seal", src, "--vault", v, "--key", lab_key, "--name", "r", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    report = tmp_path / "report.md"
    prev = "r"
    for i in range(2, 11):
        report.write_text(f"# Report, revision {i}\n")
        ok(wv("amend", prev, "--vault", v, "--key", lab_key, "--report", report, "--name",
              f"r.{i}"))  # fmt: skip
        prev = f"r.{i}"
    assert len(list((v / "bundles").iterdir())) == 10
    akey = tmp_path / "audit.key"
    ok(wv("keygen", akey))
    r = ok(wv("audit", "--vault", v, "--level", "full", "--trust", f"{lab_key}.pub", "--key",
              akey, "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    (rec,) = [x["record"] for x in r.json()["replicas"]]
    plain = sum(p.stat().st_size for p in (v / "bundles").rglob("data/*") if p.is_file()) + \
        sum(p.stat().st_size for p in (v / "bundles").rglob("data/*/*") if p.is_file())  # fmt: skip
    assert pool_bytes(v) <= rec["bytes_read"] <= pool_bytes(v) + plain
    assert rec["objects_checked"] < 2 * len(list((v / "objects").iterdir())) + 10 * 12


def test_hf_cache_blob_without_suffix_gets_tensor_chunks_and_the_weight_codec(tmp_path, lab_key,
                                                                               minilm_dir):  # fmt: skip
    """A Hub cache snapshot links model.safetensors to a blob named by its digest: the plan
    and codec are decided by the snapshot's file name, not the blob's (issue 17)."""
    repo = tmp_path / "hub/models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("c" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("c" * 40)
    for f in ("model.safetensors", "config.json"):
        data = (minilm_dir / f).read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f).symlink_to(os.path.relpath(blob, snap))
    v = tmp_path / "v"
    ok(wv("seal", snap, "--vault", v, "--key", lab_key, "--name", "tiny", "--quiet"))
    m = manifest(v, "tiny")
    assert m["source"]["kind"] == "hf-cache"
    st = next(f for f in m["files"] if f["path"] == "model.safetensors")
    assert {c["codec"] for c in st["chunks"]} >= {"fsplit-f32"}
    assert len(st["chunks"]) > 1 and st["chunks"][0]["length"] < 64 * 1024  # the header alone


# -- encrypted versions (format version 5: chunk objects shared within a lineage)


def _age_identity(path: Path) -> str:
    from pyrage import x25519

    ident = x25519.Identity.generate()
    path.write_text(f"{ident}\n")
    path.chmod(0o600)
    return str(ident.to_public())


def _data_key(bag: Path, identity: Path, envelope: str = "recipient-1") -> str:
    from pyrage import decrypt, x25519

    ident = x25519.Identity.from_str(identity.read_text().strip())
    return decrypt((bag / f"data/keys/{envelope}.age").read_bytes(), [ident]).decode().strip()


@pytest.fixture(scope="module")
def enc_lineage(tmp_path_factory, lab_key):
    """v1 of a 4-shard model encrypted to a reader and split 2-of-2 between two custodians;
    v2 (one tensor changed) sealed --supersedes v1 with the reader's identity, encrypted to a
    second reader only. (base, vault, v1, v2, v2's seal summary)"""
    base = tmp_path_factory.mktemp("enc-lineage")
    v1, v2 = shards(base / "v1"), shards(base / "v2", change=(2, 1))
    reader, other = _age_identity(base / "reader.key"), _age_identity(base / "other.key")
    custodians = base / "custodians.toml"
    custodians.write_text("".join(f'[[custodian]]\nname = "{n}"\nrecipient = "{r}"\n\n' for n, r in
                                  (("alice", _age_identity(base / "alice.key")),
                                   ("bob", _age_identity(base / "bob.key")))))  # fmt: skip
    vault = base / "vault"
    ok(wv("seal", v1, "--vault", vault, "--key", lab_key, "--name", "m", "--chunk-size", "1",
          "--encrypt-to", reader, "--custodians", custodians, "--threshold", "2", "--quiet"))  # fmt: skip
    before = pool_bytes(vault)
    s = ok(wv("seal", v2, "--vault", vault, "--key", lab_key, "--name", "m.2", "--chunk-size",
              "1", "--supersedes", "m", "--identity", base / "reader.key", "--encrypt-to",
              other, "--json")).json()  # fmt: skip
    s["pool_growth"] = pool_bytes(vault) - before
    return base, vault, v1, v2, s


def test_encrypted_versions_share_the_unchanged_chunks(enc_lineage, lab_key, tmp_path):
    base, vault, v1, v2, s = enc_lineage
    m1, m2 = manifest(vault, "m"), manifest(vault, "m.2")
    e1, e2 = m1["encryption"], m2["encryption"]
    assert (m2["format_version"], e2["scheme"]) == (5, "weightvault-aead-2")
    assert e2["lineage_salt"] == e1["lineage_salt"] and e2["salt"] != e1["salt"]
    assert m2["files"] == [] and m2["source"] == {"kind": "encrypted"}
    # the pool grew by the one chunk holding the changed tensor, as for a clear lineage
    new = {o["name"]: o["size"] for o in m2["objects"]}.items() - \
        {o["name"]: o["size"] for o in m1["objects"]}.items()  # fmt: skip
    assert len(new) == 1 and s["pool_growth"] == sum(n for _o, n in new) == s["bytes_new"]
    assert s["files_reused"] == 4 and s["chunks_reused"] > 0
    # one data key for the lineage: the second reader's envelope holds v1's key
    dk = _data_key(vault / "bundles/m", base / "reader.key")
    assert _data_key(vault / "bundles/m.2", base / "other.key") == dk
    # the steward (no key) verifies and audits both versions
    trust = ("--trust", f"{lab_key}.pub")
    for name in ("m", "m.2"):
        ok(wv("verify", name, "--vault", vault, *trust))
    akey = tmp_path / "audit.key"
    ok(wv("keygen", akey))
    r = ok(wv("audit", "--vault", vault, "--level", "full", *trust, "--key", akey,
              "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    assert r.json()["replicas"][0]["record"]["failures"] == []
    ok(wv("verify", "m.2", "--vault", vault, *trust, "--deep", "--identity", base / "other.key"))
    # both versions restore bit-exact, with weightvault and with the reference restorer
    ok(wv("restore", "m.2", tmp_path / "out2", "--vault", vault, *trust, "--identity",
          base / "other.key", "--quiet"))  # fmt: skip
    assert same_tree(v2, tmp_path / "out2")
    ok(wv("restore", "m", tmp_path / "out1", "--vault", vault, *trust, "--identity",
          base / "alice.key", "--identity", base / "bob.key", "--quiet"))  # fmt: skip
    assert same_tree(v1, tmp_path / "out1")
    for name, src in (("m", v1), ("m.2", v2)):
        p = subprocess.run([sys.executable, str(ROOT / "docs/reference_restore.py"),
                            str(vault / "bundles" / name), str(tmp_path / f"ref-{name}"),
                            "--trust", f"{lab_key}.pub", "--data-key", dk],
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert same_tree(src, tmp_path / f"ref-{name}")


def test_a_format_version_this_weightvault_does_not_write_is_refused(tmp_path, lab_key):
    """`--format-version` is 6 or 4 for a clear bundle: 4 with encryption is refused with one
    line (an encrypted bundle is version 5), any other number by the option itself; exit 2,
    no vault written."""
    v1 = shards(tmp_path / "v1", n=1, tensors=2)
    v = tmp_path / "v"
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--format-version", "4",
           "--encrypt-to", _age_identity(tmp_path / "r.key"))  # fmt: skip
    one_error(r, 2, "--format-version 4", "encrypted ones as 5")
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--format-version", "5")
    assert r.code == 2 and "'5' is not one of '4', '6'" in r.err, r.err
    assert not (v / "bundles").exists() or not any((v / "bundles").iterdir())


def test_an_encrypted_lineage_needs_its_key_and_stays_one_kind(enc_lineage, lab_key, tmp_path):
    base, vault, v1, _v2, _s = enc_lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    before = sorted(p.relative_to(v) for p in v.rglob("*"))
    seal = ("seal", v1, "--vault", v, "--key", lab_key, "--name", "x", "--chunk-size", "1",
            "--supersedes", "m.2")
    recipient = ("--encrypt-to", _age_identity(tmp_path / "new.key"))
    r = wv(*seal, *recipient)
    one_error(r, 2, "--supersedes m.2", "--identity")
    r = wv(*seal, *recipient, "--identity", tmp_path / "new.key")  # not one of m.2's
    one_error(r, 2, "--supersedes m.2", "not a recipient")
    r = wv(*seal)  # a clear version of an encrypted lineage
    one_error(r, 2, "--supersedes m.2", "one kind")
    ok(wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "clear", "--chunk-size", "1",
          "--quiet"))  # fmt: skip
    after_clear = sorted(p.relative_to(v) for p in v.rglob("*"))
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "x", "--chunk-size", "1",
           "--supersedes", "clear", *recipient)  # an encrypted version of a clear one
    one_error(r, 2, "--supersedes clear", "one kind")
    assert sorted(p.relative_to(v) for p in v.rglob("*")) == after_clear
    assert not (v / "bundles/x").exists() and set(before) <= set(after_clear)


def test_version_4_encrypted_chunks_may_not_share_an_object(tmp_path):
    """The relaxed rule is version 5's only: in a scheme weightvault-aead-1 bundle two chunks
    naming one object are refused (FORMAT.md 10.3)."""
    from pyrage import decrypt, x25519

    from weightvault.errors import CorruptData
    from weightvault.format import crypt
    from weightvault.format.manifest import Manifest

    bag = ROOT / "tests/golden/v4/bundles/golden-v4-enc"
    m = Manifest.parse((bag / "data/weightvault.json").read_bytes(), "golden-v4-enc")
    secret = (ROOT / "tests/golden/keys/reader.age").read_text().strip().splitlines()[-1]
    dk = bytes.fromhex(decrypt((bag / "data/keys/recipient-1.age").read_bytes(),
                               [x25519.Identity.from_str(secret)]).decode().strip())  # fmt: skip
    private = json.loads(crypt.open_bytes(dk, m.encryption["salt"], "private", 0,
                                          (bag / "data/private/manifest.sealed").read_bytes(),
                                          1 << 26))  # fmt: skip
    m.opened(private, "untouched")  # the golden opens as it is
    cs = [c for f in private["files"] for c in f["chunks"]]
    cs[1]["object"] = cs[0]["object"]
    with pytest.raises(CorruptData, match="used by two chunks"):
        m.opened(private, "shared")


def test_a_damaged_encrypted_object_is_never_named_again(enc_lineage, lab_key, tmp_path):
    """The trial decode of an encrypted lineage opens the previous object as restore does
    (tags first): one with its right name and size but a flipped byte is damage, and the
    seal refuses with one line instead of naming it."""
    from weightvault.format import crypt

    base, vault, v1, _v2, _s = enc_lineage
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    m2 = manifest(v, "m.2")
    dk = bytes.fromhex(_data_key(v / "bundles/m.2", base / "other.key"))
    private = json.loads(crypt.open_bytes(dk, m2["encryption"]["salt"], "private", 0,
                                          (v / "bundles/m.2/data/private/manifest.sealed")
                                          .read_bytes(), 1 << 26))  # fmt: skip
    (shard,) = [f for f in private["files"] if f["path"] == "model-00002-of-00004.safetensors"]
    victim = v / "objects" / shard["chunks"][-1]["object"]  # a tensor v1 and v2 share
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    r = wv("seal", v1, "--vault", v, "--key", lab_key, "--name", "m.3", "--chunk-size", "1",
           "--supersedes", "m.2", "--identity", base / "other.key", "--encrypt-to",
           _age_identity(tmp_path / "third.key"))  # fmt: skip
    one_error(r, 1, f"objects/{victim.name}", "repair")
    assert not (v / "bundles/m.3").exists()


# -- amending an encrypted version; shares of another version of the lineage


def _share_file(bag: Path, identity: Path, custodian: str, out: Path) -> Path:
    """The custodian's share words, as it would recover them with `age -d` from its envelope
    of bundle `bag`, written to `out`."""
    from pyrage import decrypt, x25519

    ident = x25519.Identity.from_str(identity.read_text().strip())
    text = decrypt((bag / f"data/keys/share-{custodian}.age").read_bytes(), [ident])
    out.write_text(text.decode().split("\n")[0] + "\n")
    return out


def _reads_logged(store) -> list[str]:
    """Every key this store instance is asked to read (whole or streamed)."""
    keys: list[str] = []
    for meth in ("read_bytes", "open_read"):
        real = getattr(store, meth)

        def logged(key, *a, _real=real, **kw):
            keys.append(key)
            return _real(key, *a, **kw)

        setattr(store, meth, logged)
    return keys


@pytest.fixture(scope="module")
def enc_amended(tmp_path_factory, lab_key):
    """An encrypted bundle `e` (a report in its record; encrypted to a reader and split 2-of-3
    among alice, bob and carol) amended through the library with the reader's identity and a
    later interview, as `e.2`; every key the amendment read is logged.
    (base, vault, model source, AmendResult, keys read, pool before, pool after)"""
    from weightvault.archive.versions import amend
    from weightvault.custody.unlock import Keys
    from weightvault.storage.store import LocalStore

    base = tmp_path_factory.mktemp("enc-amend")
    src = shards(base / "src", n=2, tensors=3)
    reader = _age_identity(base / "reader.key")
    custodians = base / "custodians.toml"
    custodians.write_text("".join(
        f'[[custodian]]\nname = "{n}"\nrecipient = "{_age_identity(base / f"{n}.key")}"\n\n'
        for n in ("alice", "bob", "carol")))  # fmt: skip
    report = base / "report.md"
    report.write_text("# Post-deployment report\n\nRetired after two years.\n")
    vault = base / "vault"
    ok(wv("seal", src, "--vault", vault, "--key", lab_key, "--name", "e", "--chunk-size", "1",
          "--encrypt-to", reader, "--custodians", custodians, "--threshold", "2", "--report",
          report, "--quiet"))  # fmt: skip
    later = base / "later.jsonl"
    later.write_text('{"role": "interviewer", "content": "Anything else?", '
                     '"time": "2026-01-05T10:00:00Z"}\n'
                     '{"role": "model", "content": "No.", "time": "2026-01-05T10:01:00Z"}\n')  # fmt: skip
    pool_before = sorted((p.name, p.stat().st_size) for p in (vault / "objects").iterdir())
    store = LocalStore(vault)
    read = _reads_logged(store)
    r = amend(store, "e", load_signing_key(lab_key), [load_public_key(Path(f"{lab_key}.pub"))],
              [("interview", later, "record/interviews/later.jsonl")],
              unlock=Keys([base / "reader.key"]))  # fmt: skip
    pool_after = sorted((p.name, p.stat().st_size) for p in (vault / "objects").iterdir())
    return base, vault, src, r, read, pool_before, pool_after


def test_amend_an_encrypted_version(enc_amended, lab_key, tmp_path):
    """Issue 17: `amend` of a format version 5 bundle, opened with an identity, names the same
    chunk objects without reading one, adds only record files and metadata, keeps the data key
    and lineage salt, binds a new private section to the new bundle, and never writes the data
    key or the identity in the clear; the steward verifies and audits it with no key, and it
    restores bit-exact with an identity and with 2 of 3 shares, with weightvault and with the
    reference restorer."""
    import shamir_mnemonic

    from weightvault.format import crypt

    base, vault, src, r, read, pool_before, pool_after = enc_amended
    assert (r.name, r.format_version, r.record_files) == ("e.2", 5, 2)
    # no weight object read, none written: the pool is as it was
    assert not [k for k in read if k.startswith("objects/")], read
    assert pool_after == pool_before
    m1, m2 = manifest(vault, "e"), manifest(vault, "e.2")
    e1, e2 = m1["encryption"], m2["encryption"]
    assert m2["format_version"] == 5 and e2["scheme"] == "weightvault-aead-2"
    assert m2["objects"] == m1["objects"] and m2["files"] == [] and m2["source"] == {
        "kind": "encrypted"}  # fmt: skip
    assert e2["lineage_salt"] == e1["lineage_salt"] and e2["salt"] != e1["salt"]
    assert m2["supersedes"] == {"name": "e", "bundle": hashlib.sha256(
        (vault / "bundles/e/data/weightvault.json").read_bytes()).hexdigest()}  # fmt: skip
    # the same recipients and custodians, the same threshold; a new split under the new salt
    def custody(e: dict) -> list:
        return sorted((x["kind"], x["label"], x["recipient"]) for x in e["envelopes"])

    assert custody(e2) == custody(e1) and e2["shares"]["threshold"] == 2
    # record files: stored as any encrypted seal stores them (plain, named by the manifest)
    bag = vault / "bundles/e.2"
    assert [x["path"] for x in m2["record"]] == ["record/interviews/later.jsonl",
                                                 "record/report.md"]  # fmt: skip
    assert (bag / "data/record/interviews/later.jsonl").read_bytes() == \
        (base / "later.jsonl").read_bytes()  # fmt: skip
    assert (bag / "data/record/report.md").read_bytes() == (base / "report.md").read_bytes()
    # growth: the record files and metadata (manifest, spec copies, private section,
    # envelopes, tag files) only
    files = [p for p in bag.rglob("*") if p.is_file()]
    added = sum(p.stat().st_size for p in files)
    record = sum(x["size"] for x in m2["record"])
    assert r.bytes_added == added < record + 256 * 1024
    # one data key for the lineage; it is nowhere in the new bag in the clear, nor the identity
    dk = _data_key(bag, base / "reader.key")
    assert dk == _data_key(vault / "bundles/e", base / "reader.key")
    secret = (base / "reader.key").read_text().strip().encode()
    for p in files:
        data = p.read_bytes()
        assert dk.encode() not in data and bytes.fromhex(dk) not in data and secret not in data
    # the private section: the previous file table, bound to the new bundle's name and salt
    private = json.loads(crypt.open_bytes(bytes.fromhex(dk), e2["salt"], "private", 0,
                                          (bag / "data/private/manifest.sealed").read_bytes(),
                                          1 << 26))  # fmt: skip
    old = json.loads(crypt.open_bytes(bytes.fromhex(dk), e1["salt"], "private", 0,
                                      (vault / "bundles/e/data/private/manifest.sealed")
                                      .read_bytes(), 1 << 26))  # fmt: skip
    assert private["bundle"] == {"name": "e.2", "salt": e2["salt"]}
    assert private["files"] == old["files"] and private["source"] == old["source"]
    # the steward: verify and a full audit, no key
    trust = ("--trust", f"{lab_key}.pub")
    ok(wv("verify", "e.2", "--vault", vault, *trust))
    akey = tmp_path / "audit.key"
    ok(wv("keygen", akey))
    a = ok(wv("audit", "--vault", vault, "--level", "full", *trust, "--key", akey,
              "--state-dir", tmp_path / "state", "--json"))  # fmt: skip
    assert a.json()["replicas"][0]["record"]["failures"] == []
    # restores: the identity; two of the three new shares (alice's and carol's words)
    ok(wv("restore", "e.2", tmp_path / "id", "--vault", vault, *trust, "--identity",
          base / "reader.key", "--quiet"))  # fmt: skip
    assert same_tree(src, tmp_path / "id")
    shares = [_share_file(bag, base / f"{c}.key", c, tmp_path / f"{c}.txt")
              for c in ("alice", "carol")]  # fmt: skip
    ok(wv("restore", "e.2", tmp_path / "sh", "--vault", vault, *trust, "--share", shares[0],
          "--share", shares[1], "--quiet"))  # fmt: skip
    assert same_tree(src, tmp_path / "sh")
    # the reference restorer, with the key the stock tools recover: age (the identity) and
    # SLIP-39's reference implementation (the two shares)
    from_shares = shamir_mnemonic.combine_mnemonics([p.read_text().strip() for p in shares])
    for how, key in (("id", dk), ("sh", from_shares.hex())):
        assert key == dk
        p = subprocess.run([sys.executable, str(ROOT / "docs/reference_restore.py"), str(bag),
                            str(tmp_path / f"ref-{how}"), "--trust", f"{lab_key}.pub",
                            "--data-key", key], capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert same_tree(src, tmp_path / f"ref-{how}")
    # the CLI, opened with two of e.2's own shares this time, and a report replaced
    v = tmp_path / "v"
    shutil.copytree(vault, v)
    report = tmp_path / "report.md"
    report.write_text("# Report, revised\n")
    s = ok(wv("amend", "e.2", "--vault", v, "--key", lab_key, "--report", report, "--share",
              shares[0], "--share", shares[1], "--json")).json()  # fmt: skip
    assert (s["name"], s["format_version"]) == ("e.3", 5)
    m3 = manifest(v, "e.3")
    assert m3["objects"] == m1["objects"] and m3["encryption"]["lineage_salt"] == e1[
        "lineage_salt"]  # fmt: skip
    assert (v / "bundles/e.3/data/record/report.md").read_text() == "# Report, revised\n"
    ok(wv("restore", "e.3", tmp_path / "e3", "--vault", v, *trust, "--identity",
          base / "reader.key", "--quiet"))  # fmt: skip
    assert same_tree(src, tmp_path / "e3")


@pytest.mark.parametrize("case", ["no-key", "not-a-recipient", "another-lineages-shares",
                                  "record-failing-its-schema", "version-4-encrypted"])
def test_amend_of_an_encrypted_bundle_needs_a_key_that_opens_it(case, enc_amended, enc_lineage,
                                                                lab_key, tmp_path):  # fmt: skip
    """Refused with one line and exit 2, nothing written: no key for an encrypted bundle; an
    identity that is not its recipient; a quorum of another lineage's shares (the key check
    refuses their key); a record failing its schema (checked before the key is even asked
    for). An encrypted version 4 bundle (scheme weightvault-aead-1: its objects are bound to
    it) cannot be amended."""
    base, vault, *_ = enc_amended
    later = base / "later.jsonl"
    v = tmp_path / "v"
    if case == "version-4-encrypted":
        shutil.copytree(ROOT / "tests/golden/v4", v)
        (v / "tmp").mkdir(exist_ok=True)
        shutil.copy(ROOT / "tests/golden/keys/reader.age", tmp_path / "reader.age")
        (tmp_path / "reader.age").chmod(0o600)
        args = ("golden-v4-enc", "--interview", later, "--trust",
                ROOT / "tests/golden/keys/golden-v4.key.pub", "--identity", tmp_path / "reader.age")
        needles = ("golden-v4-enc", "weightvault-aead-1")
    else:
        shutil.copytree(vault, v)
        args, needles = ("e.2", "--interview", later), ("amend e.2",)
    if case == "no-key":
        needles += ("encrypted", "--identity")
    elif case == "not-a-recipient":
        _age_identity(tmp_path / "stranger.key")
        args += ("--identity", tmp_path / "stranger.key")
        needles += ("not a recipient",)
    elif case == "another-lineages-shares":
        lbase, lvault = enc_lineage[0], enc_lineage[1]
        for c in ("alice", "bob"):
            args += ("--share", _share_file(lvault / "bundles/m", lbase / f"{c}.key", c,
                                            tmp_path / f"{c}.txt"))  # fmt: skip
        needles += ("another bundle", "key check")
    elif case == "record-failing-its-schema":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"role": "model", "time": "2026-01-05T10:01:00Z"}\n')
        args = ("e.2", "--interview", bad, "--identity", base / "reader.key")
        needles = ("bad.jsonl", "line 1", "content")
    before = sorted((p.relative_to(v), p.stat().st_size) for p in v.rglob("*"))
    one_error(wv("amend", *args, "--vault", v, "--key", lab_key), 2, *needles)
    assert sorted((p.relative_to(v), p.stat().st_size) for p in v.rglob("*")) == before


def test_an_earlier_versions_shares_open_a_later_version(enc_lineage, enc_amended, lab_key,
                                                         tmp_path):  # fmt: skip
    """FORMAT.md 10.8: a quorum of an earlier version's shares combines to the lineage's data
    key; restore takes it for a later version because the key passes THAT bundle's key check
    (m.2 has no shares of its own at all; e.2 has a new split). A mix of one old and one new
    share is a quorum of neither split, and is refused with one line."""
    from weightvault.custody.unlock import Keys, check_keys
    from weightvault.storage.store import LocalStore
    from weightvault.storage.vault import Vault

    trust = ("--trust", f"{lab_key}.pub")
    lbase, lvault, _v1, v2, _s = enc_lineage
    old = [_share_file(lvault / "bundles/m", lbase / f"{c}.key", c, tmp_path / f"m-{c}.txt")
           for c in ("alice", "bob")]  # fmt: skip
    assert manifest(lvault, "m.2")["encryption"]["shares"] is None
    r = ok(wv("restore", "m.2", tmp_path / "out", "--vault", lvault, *trust, "--share", old[0],
              "--share", old[1], "--quiet"))  # fmt: skip
    assert same_tree(v2, tmp_path / "out"), r.err
    # the steward's key check at acceptance says which shares opened it
    st = LocalStore(lvault)
    b = Vault(st).load("m.2", [load_public_key(Path(f"{lab_key}.pub"))])
    method, result = check_keys(st, b, Keys(shares=old))
    assert method == "shares" and "2 shares of another version" in result
    # the amended lineage: e's shares open e.2, whose own split is another one
    base, vault, src, *_ = enc_amended
    e_old = [_share_file(vault / "bundles/e", base / f"{c}.key", c, tmp_path / f"e-{c}.txt")
             for c in ("bob", "carol")]  # fmt: skip
    ok(wv("restore", "e.2", tmp_path / "e2", "--vault", vault, *trust, "--share", e_old[0],
          "--share", e_old[1], "--quiet"))  # fmt: skip
    assert same_tree(src, tmp_path / "e2")
    # one share of e and one of e.2: two shares, but of two splits, each one short
    e2_alice = _share_file(vault / "bundles/e.2", base / "alice.key", "alice",
                           tmp_path / "e2-alice.txt")  # fmt: skip
    one_error(wv("restore", "e.2", tmp_path / "mix", "--vault", vault, *trust, "--share",
                 e_old[0], "--share", e2_alice), 2, e_old[0].name, "another bundle",
              "1 of the 2 shares")  # fmt: skip
    assert not (tmp_path / "mix").exists()
    # a quorum of another lineage's shares: its key fails this bundle's key check
    one_error(wv("restore", "e.2", tmp_path / "theirs", "--vault", vault, *trust, "--share",
                 old[0], "--share", old[1]), 2, "another bundle", "key check")  # fmt: skip
    assert not (tmp_path / "theirs").exists()
