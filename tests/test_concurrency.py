"""Concurrent writers and readers of one vault: the real CLI, several processes at once.

Races are staged, not hoped for: each process runs in short slices (support/stepper.py) until
it is where the race needs it (past its "already sealed?" check, writing objects; or in the
middle of its commit), and only then are the processes let go. So the outcome does not depend
on the speed of the machine.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from conftest import ok, s3_env, write_config, wv
from support.stepper import Stepper, cli, tree


def writing_object(pid: int, where: str) -> bool:
    """Has the process a scratch object open (so it is past its up-front checks)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(where) and target.endswith(".part"):
            return True
    return False


def both_writing(a: Stepper, b: Stepper, where: str) -> None:
    """Step a and b until each has an object open for writing."""
    for s in (a, b):
        assert s.run_until(lambda s=s: writing_object(s.pid, where)), s.finish().err


def assert_one_winner(a, b) -> None:
    codes = sorted([a.code, b.code])
    assert codes == [0, 5], (a.code, a.err, b.code, b.err)
    loser = a if a.code == 5 else b
    lines = [ln for ln in loser.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("weightvault: error: "), loser.err
    assert "'m'" in lines[0] and ("already sealed" in lines[0] or "committing" in lines[0])


# -- local vault


def test_same_model_same_name_same_vault_one_wins(tmp_path, minilm_dir, lab_key):
    v = tmp_path / "v"
    seal = cli("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m",
               "--chunk-size", "1", "--workers", "2", "--quiet")  # fmt: skip
    ok(wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "other", "--quiet"))
    with Stepper(seal) as a, Stepper(seal) as b:
        both_writing(a, b, str(v / "tmp"))
        b.p.send_signal(18)  # SIGCONT: both run freely from here
        ra, rb = a.finish(), b.finish()
    assert_one_winner(ra, rb)
    trust = ("--trust", f"{lab_key}.pub")
    ok(wv("verify", "m", "--vault", v, *trust, "--deep"))
    assert sorted(r["name"] for r in ok(wv("list", "--vault", v, "--json")).json()) == [
        "m", "other"]  # fmt: skip
    s = ok(wv("status", "--vault", v, "--json", *trust)).json()
    assert {n: row["vault"]["state"] for n, row in s.items()} == {"m": "complete",
                                                                   "other": "complete"}  # fmt: skip
    g = ok(wv("gc", "--vault", v, *trust, "--dry-run", "--grace", "0", "--json")).json()
    assert not g["replicas"][0]["removed"], "the loser left orphans behind"


def test_two_names_at_once(tmp_path, minilm_dir, lab_key):
    v = tmp_path / "v"

    def seal(name):
        return cli("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", name,
                   "--chunk-size", "2", "--workers", "2", "--quiet")  # fmt: skip

    with Stepper(seal("a")) as a, Stepper(seal("b")) as b:
        both_writing(a, b, str(v / "tmp"))
        b.p.send_signal(18)
        ra, rb = a.finish(), b.finish()
    assert ra.code == 0 and rb.code == 0, ra.err + rb.err
    for n in ("a", "b"):
        ok(wv("verify", n, "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))
    g = ok(wv("gc", "--vault", v, "--trust", f"{lab_key}.pub", "--dry-run", "--grace", "0",
              "--json")).json()  # fmt: skip
    assert not g["replicas"][0]["removed"]


def _audit(cfg: Path) -> dict:
    r = wv("-c", cfg, "audit", "--level", "full", "--json")
    assert r.code == 0, r.out + r.err  # never damage: only complete bundles are audited
    (rep,) = r.json()["replicas"]
    assert rep["outcome"] == "pass" and not rep["record"]["failures"], rep
    return {b["name"]: b["state"] for b in rep["record"]["bundles"]}


def test_seal_racing_a_full_audit(tmp_path, minilm_dir, lab_key):
    v = tmp_path / "v"
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"primary": {"url": str(v)}},
                       audit={"state_dir": str(tmp_path / "state")})  # fmt: skip
    ok(wv("-c", cfg, "seal", minilm_dir, "--name", "old", "--quiet"))
    old_objects = sum(1 for k in tree(v) if k.startswith("objects/"))  # the pool (FORMAT.md 2.2)
    seal = cli("-c", cfg, "seal", minilm_dir, "--name", "m", "--chunk-size", "1", "--quiet")
    seen = []
    # audits taken at fixed points of a seal: never "m" half-way, never damage
    with Stepper(seal) as s:
        points = [
            lambda: sum(1 for k in tree(v) if k.startswith("objects/")) >= 30 + old_objects,
            lambda: "bundles/m/data/weightvault.json" in tree(v),
        ]
        for reached in points:
            if s.run_until(reached):  # the seal is stopped here while the audit runs
                done = (v / "bundles/m/weightvault.sig").exists()  # the signature commits (2.1)
                seen.append((_audit(cfg), "intact" if done else "uncommitted"))
        assert s.finish().code == 0
    assert len(seen) == len(points)
    for states, m in seen:
        # among the objects (written to the pool first) m may have no file of its own yet
        assert {k: v for k, v in states.items() if k != "m"} == {"old": "intact"}, states
        assert states.get("m", "uncommitted") == m, (states, m)
    # and truly at the same time: the audit sees m2 whole or not at all
    p = Stepper(cli("-c", cfg, "seal", minilm_dir, "--name", "m2", "--chunk-size", "1",
                    "--quiet"))  # fmt: skip
    with p:
        p.p.send_signal(18)
        states = _audit(cfg)
        assert p.finish().code == 0
    assert states.get("m2", "uncommitted") in ("uncommitted", "intact"), states
    assert _audit(cfg) == {"old": "intact", "m": "intact", "m2": "intact"}


# -- S3: no cross-process lock, so the commit itself must decide


def test_same_name_on_s3_loser_never_removes_the_winners_objects(tmp_path, s3_server, lab_key,
                                                                 minilm_dir):  # fmt: skip
    """A wins the race to commit; B finds A's manifest there and gives up. B must not delete
    the objects it wrote: they are A's objects too (same content, same names)."""
    bucket = s3_server.make_bucket("wv-race-" + uuid.uuid4().hex[:8])
    cfg = write_config(tmp_path / "s3.toml", lab_key, {"cloud": {
        "url": f"s3://{bucket}/vault", "storage_options": {"endpoint_url": s3_server.endpoint_url}}})  # fmt: skip
    env = s3_env(s3_server)
    spool = tmp_path / "spool"
    spool.mkdir()
    env["TMPDIR"] = str(spool)  # where each seal spools an object before its PUT
    model = tmp_path / "model"
    model.mkdir()
    for f in ("tokenizer.json", "vocab.txt", "config.json"):
        (model / f).write_bytes((minilm_dir / f).read_bytes())
    c = s3_server.client()

    def keys() -> set[str]:
        return {o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="vault/").get(
            "Contents", [])}  # fmt: skip

    seal = cli("-c", cfg, "seal", model, "--name", "m", "--chunk-size", "1", "--quiet")
    with Stepper(seal, env=env) as a, Stepper(seal, env=env) as b:
        both_writing(a, b, str(spool))
        # A into the middle of its commit: manifest stored, signature (the commit) not yet
        assert a.run_until(lambda: "vault/bundles/m/data/weightvault.json" in keys())
        assert "vault/bundles/m/weightvault.sig" not in keys()
        time.sleep(1.1)  # B's manifest gets a later "created" than A's
        rb = b.finish()
        ra = a.finish()
    assert_one_winner(ra, rb)
    assert ra.code == 0, "A had stored its manifest first"
    r = wv("-c", cfg, "verify", "m", "--deep", "--json", env=env)
    assert r.code == 0, r.out + r.err
    g = ok(wv("-c", cfg, "gc", "--dry-run", "--grace", "0", "--json", env=env)).json()
    assert not g["replicas"][0]["removed"]


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5])
def test_many_seals_of_one_name_one_commit(tmp_path, minilm_dir, lab_key, n):
    """Free-running: whatever the interleaving, one bundle, complete, and n-1 conflicts."""
    v = tmp_path / "v"
    seal = cli("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m",
               "--chunk-size", "4", "--quiet")  # fmt: skip
    procs = [Stepper(seal) for _ in range(n)]
    for p in procs:
        p.p.send_signal(18)
    results = [p.finish() for p in procs]
    assert sorted(r.code for r in results) == [0] + [5] * (n - 1), [r.err for r in results]
    ok(wv("verify", "m", "--vault", v, "--trust", f"{lab_key}.pub", "--deep"))
    m = json.loads((v / "bundles/m/data/weightvault.json").read_bytes())
    assert sorted(p.name for p in (v / "objects").iterdir()) == sorted(
        o["name"] for o in m["objects"])  # fmt: skip
