"""`weightvault retire`: the one deletion an audit accepts, because a trusted key signed it
(docs/FORMAT.md section 2.4, docs/THREAT-MODEL.md "Retiring a bundle")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ok, one_error, write_config, wv


def _model(d: Path, seed: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "shared.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB, the same in both
    (d / "own.bin").write_bytes(os.urandom(3 << 20) if seed else b"\0" * (3 << 20))
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    return d


@pytest.fixture
def lab(tmp_path, lab_key):
    cfg = write_config(tmp_path / "lab.toml", lab_key, {
        "primary": {"url": str(tmp_path / "vault")},
        "mirror": {"url": str(tmp_path / "mirror")},
    }, audit={"state_dir": str(tmp_path / "state")})  # fmt: skip
    ok(wv("-c", cfg, "seal", _model(tmp_path / "v1", 0), "--name", "m1", "--quiet"))
    ok(wv("-c", cfg, "seal", _model(tmp_path / "v2", 1), "--name", "m2", "--supersedes", "m1",
          "--quiet"))  # fmt: skip
    ok(wv("-c", cfg, "audit", "--level", "metadata"))  # the local state now knows both
    # and so does another machine's auditor, which retire cannot reach: only the signed
    # notices on the replicas tell it the absence is deliberate
    ok(wv("-c", cfg, "audit", "--level", "metadata", "--state-dir", tmp_path / "cron"))
    return cfg, tmp_path


def _pool(vault: Path) -> set[str]:
    return {p.name for p in (vault / "objects").iterdir()}


def _named(vault: Path, name: str) -> set[str]:
    doc = json.loads((vault / "bundles" / name / "data" / "weightvault.json").read_text())
    return {o["name"] for o in doc["objects"]}


def test_retire_removes_the_bundle_keeps_shared_objects_and_audits_stay_clean(lab, lab_key):
    cfg, d = lab
    v2_objects = _named(d / "vault", "m2")
    only_v1 = _named(d / "vault", "m1") - v2_objects
    assert only_v1 and _named(d / "vault", "m1") & v2_objects  # the versions share an object
    r = ok(wv("-c", cfg, "retire", "m1", "--reason", "superseded by m2", "--yes", "--grace", "0",
              "--json"))  # fmt: skip
    out = r.json()
    assert sorted(x["replica"] for x in out["replicas"]) == ["mirror", "primary"]
    for v in ("vault", "mirror"):
        assert not (d / v / "bundles" / "m1").exists()
        assert v2_objects <= _pool(d / v)  # what m2 names is never collected
        assert not only_v1 & _pool(d / v)  # what only m1 named is
        assert (d / v / "retired" / f"{out['bundle']}.json").is_file()
    # audits on this machine, on the other auditor's and on a fresh one accept the absence
    ok(wv("-c", cfg, "audit", "--level", "full"))
    ok(wv("-c", cfg, "audit", "--level", "metadata", "--state-dir", d / "cron"))
    ok(wv("-c", cfg, "gc", "--grace", "0", "--state-dir", d / "cron"))
    shutil.rmtree(d / "state")
    ok(wv("-c", cfg, "audit", "--level", "full"))
    ok(wv("-c", cfg, "restore", "m2", d / "out"))
    assert (d / "out" / "own.bin").read_bytes() == (d / "v2" / "own.bin").read_bytes()
    shown = ok(wv("-c", cfg, "log", "show", out["bundle"], "--json")).json()
    assert "superseded by m2" in json.dumps(shown)


def test_retire_without_yes_changes_nothing(lab):
    cfg, d = lab
    before = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()
                    and "state" not in p.parts)  # fmt: skip
    one_error(wv("-c", cfg, "retire", "m1", "--reason", "x"), 2, "m1", "--yes")
    after = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()
                   and "state" not in p.parts)  # fmt: skip
    assert before == after


def test_retire_unknown_or_untrusted_bundle(lab, other_key):
    cfg, _ = lab
    one_error(wv("-c", cfg, "retire", "nope", "--reason", "x", "--yes"), 2, "nope")
    one_error(wv("-c", cfg, "retire", "m1", "--reason", "x", "--yes", "--trust",
                 f"{other_key}.pub", "--key", other_key), 4, "m1")  # fmt: skip


def test_key_outside_the_trusted_set_cannot_retire(lab, other_key, lab_key):
    cfg, _ = lab
    one_error(wv("-c", cfg, "retire", "m1", "--reason", "x", "--yes", "--key", other_key,
                 "--trust", f"{lab_key}.pub"), 2, "--key is not among the trusted keys")  # fmt: skip


def test_deletion_with_a_forged_or_copied_notice_is_still_loss(lab, other_key):
    """Storage cannot make a deletion look like a retirement: a notice signed by an untrusted
    key, one naming another bundle, and one copied from a replica where the bundle was retired
    all retire nothing."""
    cfg, d = lab
    r = ok(wv("-c", cfg, "retire", "m1", "--replica", "primary", "--reason", "x", "--yes",
              "--json"))  # fmt: skip
    bid = r.json()["bundle"]
    notice = (d / "vault" / "retired" / f"{bid}.json").read_bytes()
    # the mirror's holder deletes m1 and copies the primary's notice over
    shutil.rmtree(d / "mirror" / "bundles" / "m1")
    (d / "mirror" / "retired").mkdir()
    (d / "mirror" / "retired" / f"{bid}.json").write_bytes(notice)
    a = wv("-c", cfg, "audit", "--level", "metadata", "--replica", "mirror", "--json")
    assert a.code == 1, a.out + a.err
    fails = a.json()["replicas"][0]["record"]["failures"]
    assert ("lost", "m1") in [(f["kind"], f["bundle"]) for f in fails]
    # a notice of the same shape signed by a key nobody trusts
    (d / "mirror" / "retired" / f"{bid}.json").unlink()
    from weightvault.archive.retire import make_notice
    from weightvault.format.keys import load_signing_key
    from weightvault.log import statements as st

    forged = make_notice(st.retired(bid, "m1", "mirror", "x"), load_signing_key(other_key))
    (d / "mirror" / "retired" / f"{bid}.json").write_bytes(forged)
    a = wv("-c", cfg, "audit", "--level", "metadata", "--replica", "mirror", "--json")
    assert a.code == 1 and "lost" in a.out, a.out + a.err


def test_object_lock_refuses_before_anything_is_written(tmp_path, lab_key):
    from weightvault.archive.retire import retire
    from weightvault.errors import Conflict
    from weightvault.format.keys import load_signing_key
    from weightvault.log import statements as st
    from weightvault.storage.opener import open_store

    cfg = write_config(tmp_path / "lab.toml", lab_key, {"primary": {"url": str(tmp_path / "v")}})
    ok(wv("-c", cfg, "seal", _model(tmp_path / "src", 1), "--name", "m", "--quiet"))
    store = open_store(str(tmp_path / "v"))
    key = load_signing_key(lab_key)
    before = {p for p in (tmp_path / "v").rglob("*") if p.is_file()}
    with pytest.raises(Conflict, match="Object Lock"):
        retire("primary", store, "m", statement=st.retired("0" * 64, "m", "primary", "x"),
               signers=key, trusted=[key.public], object_lock=object())  # fmt: skip
    assert {p for p in (tmp_path / "v").rglob("*") if p.is_file()} == before


def test_a_retirement_killed_after_the_signature_went_is_finished_by_running_it_again(lab):
    """The state a SIGKILL leaves between the signature's deletion and the rest: the log
    statement and the notice are there, the signature is not, other files are. Audits already
    accept the absence; running the same command again removes what is left (and without
    --yes, nothing)."""
    cfg, d = lab
    b = d / "vault" / "bundles" / "m1"
    ok(wv("-c", cfg, "retire", "m1", "--replica", "primary", "--reason", "x", "--yes"))
    shutil.copytree(d / "mirror" / "bundles" / "m1", b)  # put back all but the signature
    (b / "weightvault.sig").unlink()
    ok(wv("-c", cfg, "audit", "--level", "metadata", "--replica", "primary"))
    one_error(wv("-c", cfg, "retire", "m1", "--replica", "primary", "--reason", "x"), 2, "--yes")
    assert (b / "data" / "weightvault.json").exists()
    r = ok(wv("-c", cfg, "retire", "m1", "--replica", "primary", "--reason", "x", "--yes"))
    assert "interrupted" in r.out and not b.exists()
    ok(wv("-c", cfg, "audit", "--level", "full"))


def test_replicate_does_not_copy_a_retired_bundle_back_unless_asked(lab):
    cfg, d = lab
    ok(wv("-c", cfg, "retire", "m1", "--replica", "mirror", "--reason", "no\x1b[2J", "--yes"))
    st = ok(wv("-c", cfg, "status", "--json")).json()  # nothing to act on: exit 0
    assert st["m1"]["mirror"]["state"] == "retired" and st["m1"]["primary"]["state"] == "complete"
    line = one_error(wv("-c", cfg, "replicate", "m1", "--to", "mirror"), 5, "retired from mirror",
                     "--unretire")  # fmt: skip
    assert "\x1b" not in line  # the signed reason is still text from storage
    assert not (d / "mirror" / "bundles" / "m1").exists()
    ok(wv("-c", cfg, "replicate", "m1", "--to", "mirror", "--unretire"))
    # the log's later replicated statement supersedes the retirement: losing it again is loss
    shutil.rmtree(d / "mirror" / "bundles" / "m1")
    a = wv("-c", cfg, "audit", "--level", "metadata", "--replica", "mirror")
    assert a.code == 1 and "lost" in a.out, a.out + a.err


def test_retire_on_s3_and_sftp_leaves_the_stewards_copy(tmp_path, s3_server, ssh_server, lab_key):
    """Real backends: the S3 replica loses the bundle and the objects only it named, keeps the
    rest; the steward's (escrow, SFTP) copy is untouched unless named."""
    from conftest import Lab

    lab = Lab(tmp_path, s3_server, ssh_server, lab_key,
              audit={"state_dir": str(tmp_path / "state")})  # fmt: skip
    ok(lab.run("seal", _model(tmp_path / "v1", 0), "--name", "m1", "--quiet"))
    ok(lab.run("replicate", "m1", "--to", "steward"))
    ok(lab.run("seal", _model(tmp_path / "v2", 1), "--name", "m2", "--supersedes", "m1",
               "--quiet"))  # fmt: skip
    ok(lab.run("audit", "--level", "metadata"))
    s3 = lab.s3.client()

    def keys(prefix: str) -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=lab.bucket, Prefix=prefix)
        return {o["Key"] for p in pages for o in p.get("Contents", [])}

    pool = {k.rsplit("/", 1)[-1] for k in keys("vault/objects/")}
    m2 = _named(tmp_path / "primary", "m2")
    only_m1 = _named(tmp_path / "primary", "m1") - m2
    assert only_m1 <= pool and keys("vault/bundles/m1/")
    bid = ok(lab.run("show", "m1", "--json")).json()["bundle"]["id"]
    r = ok(lab.run("retire", "m1", "--reason", "superseded", "--yes", "--grace", "0"))
    assert "primary: retired m1" in r.out and "cloud: retired m1" in r.out, r.out
    assert "escrow replica steward is not touched" in r.out
    assert not keys("vault/bundles/m1/")
    assert keys("vault/retired/") == {f"vault/retired/{bid}.json"}
    left = {k.rsplit("/", 1)[-1] for k in keys("vault/objects/")}
    assert m2 <= left and not only_m1 & left
    assert (lab.sftp_root / "bundles" / "m1" / "weightvault.sig").is_file()
    ok(lab.run("audit", "--level", "full"))
