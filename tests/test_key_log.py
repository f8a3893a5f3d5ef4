"""Rotation and revocation recorded in the preservation log change what verify accepts
(issue 21): the lab's key A keeps the log; A hands over to B; B is later revoked."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

from conftest import ok, one_error, write_config, wv

from weightvault.format import keys, keystatement


def _model(d, name: str):
    src = d / f"src-{name}"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(50_000))
    return src


def test_rotation_and_revocation_in_the_log_change_what_verify_accepts(tmp_path):
    d = tmp_path
    for n in ("A", "B", "T"):
        ok(wv("keygen", d / f"{n}.key"))
    cfg = write_config(d / "lab.toml", d / "A.key", {"local": {"url": str(d / "vault")}})
    lab = ("-c", cfg)

    def seal(name: str, *key):
        ok(wv(*lab, "seal", _model(d, name), "--name", name, "-q", *key))

    def verify(name: str):
        return wv(*lab, "verify", name, "-q")

    seal("m1")
    ok(wv(*lab, "key", "rotate", "--old", d / "A.key", "--new", d / "B.key", "--reason", "yearly"))
    seal("m2", "--key", d / "B.key")
    seal("m3", "--key", d / "A.key")  # A after its rotation
    ok(verify("m1"))
    r = ok(wv(*lab, "verify", "m2", "-q", "--json"))  # the reader trusts A only
    assert r.json()["signers"] == [keys.load_public_key(d / "B.key.pub").key_id]
    one_error(verify("m3"), 4, "succeeded by", "weightvault.sig")

    time.sleep(1.1)  # entry times have one-second resolution
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # a revocation by a key nobody trusts is refused and leaves the log as it was
    log_before = sorted(p.name for p in (d / "vault" / "log").rglob("*"))
    one_error(wv(*lab, "key", "revoke", d / "B.key.pub", "--since", since, "--key",
                 d / "T.key"), 4, "not a trusted key")  # fmt: skip
    assert sorted(p.name for p in (d / "vault" / "log").rglob("*")) == log_before
    ok(wv(*lab, "key", "revoke", d / "B.key.pub", "--since", since, "--key", d / "A.key",
          "--reason", "token lost"))  # fmt: skip
    seal("m4", "--key", d / "B.key")
    line = one_error(verify("m4"), 4, "revoked since " + since, "preservation log entry")
    assert keys.load_public_key(d / "B.key.pub").key_id[:16] in line
    ok(verify("m2"))  # sealed before the revocation: still trusted
    ok(verify("m1"))
    # restore and show apply the same policy
    one_error(wv(*lab, "restore", "m4", d / "out", "-q"), 4, "revoked since")
    assert not (d / "out").exists()
    one_error(wv(*lab, "show", "m4"), 4, "revoked since")
    # what a reader's policy makes of the log, key by key
    h = ok(wv(*lab, "key", "history", "--json")).json()
    by = {r["key"]: r for r in h["keys"]}
    a_id, b_id = (keys.load_public_key(d / f"{n}.key.pub").key_id for n in "AB")
    assert by[a_id]["successor"] == b_id and by[a_id]["until_entry"] is not None
    assert by[b_id]["slot"] == a_id and by[b_id]["revoked_since"] == since
    # the whole log still verifies, with the two statements in it
    ok(wv(*lab, "log", "verify", "local", "--key", d / "A.key.pub"))
    from weightvault.config import load
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.replicas import ReplicaSet

    entries = PreservationLog(ReplicaSet(load(cfg)), keys.load_public_key(d / "A.key.pub").raw)
    kinds = [e["statement"]["kind"] for _, e in entries.statements() if e["kind"] == "key"]
    assert kinds == ["rotate", "revoke"]


def test_a_rotation_in_the_log_signed_by_one_key_only_is_refused(tmp_path):
    from weightvault.cli.log import record  # noqa: F401 - the log is on this build
    from weightvault.config import load
    from weightvault.log import statements
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.replicas import ReplicaSet

    d = tmp_path
    for n in ("A", "T"):
        ok(wv("keygen", d / f"{n}.key"))
    cfg = write_config(d / "lab.toml", d / "A.key", {"local": {"url": str(d / "vault")}})
    ok(wv("-c", cfg, "seal", _model(d, "m0"), "--name", "m0", "-q"))  # the log exists
    a, t = keys.load_signing_key(d / "A.key"), keys.load_signing_key(d / "T.key")
    env = json.loads(keystatement.rotation(a, t))
    env["signatures"] = [s for s in env["signatures"] if s["keyid"] == t.public.key_id]
    plog = PreservationLog(ReplicaSet(load(cfg)), a.public.raw, key=a)
    plog.append(statements.make("key", statement=env["statement"],
                                signatures=env["signatures"]))  # fmt: skip
    ok(wv("-c", cfg, "seal", _model(d, "mt"), "--name", "mt", "-q", "--key", d / "T.key"))
    one_error(wv("-c", cfg, "verify", "mt", "-q"), 4, "not signed by the old key",
              t.public.key_id[:16])  # fmt: skip
    r = ok(wv("-c", cfg, "verify", "m0", "-q"))
    assert "note:" in r.err and "not signed by the old key" in r.err  # said, not applied
