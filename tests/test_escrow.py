"""Escrow end to end: the real model sealed encrypted for two recipients and a 2-of-3 quorum,
handed over to a steward replica on SeaweedFS, accepted with a verified receipt, audited by
the steward with no key, challenged, released with two shares bit-exact, and its data key
unwrapped with the stock `age` tool. Then every bad input the issue lists, each on its own."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ok, one_error, s3_env, write_config, wv
from pyrage import x25519

REPO = Path(__file__).resolve().parent.parent


def tree_equal(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def identity(d: Path, name: str) -> tuple[Path, str]:
    ident = x25519.Identity.generate()
    p = d / f"{name}.agekey"
    p.write_text(f"# {name}\n{ident}\n")
    p.chmod(0o600)
    return p, str(ident.to_public())


class World:
    """A depositor (lab) and a steward, each with its own config, keys and replicas."""

    def __init__(self, d: Path, lab_key: Path, steward_url: str, steward_opts: dict | None,
                 env: dict | None) -> None:  # fmt: skip
        self.d, self.env = d, env
        assert wv("keygen", d / "steward.key").code == 0
        self.steward_key = d / "steward.key"
        self.ids = {n: identity(d, n) for n in ("lab", "lab-backup", "alice", "bob", "steward")}
        self.custodians = d / "custodians.toml"
        self.custodians.write_text("".join(
            f'[[custodian]]\nname = "{n}"\nrecipient = "{self.ids[n][1]}"\n'
            for n in ("alice", "bob", "steward")))  # fmt: skip
        self.conditions = d / "conditions.md"
        self.conditions.write_text("# Release conditions\n\nRelease when Example Lab dissolves, "
                                   "or when its board decides the weights are safe to publish.\n")  # fmt: skip
        steward_rep = {"url": steward_url, "role": "escrow"}
        if steward_opts:
            steward_rep["storage_options"] = steward_opts
        self.lab_cfg = write_config(d / "lab.toml", lab_key, {
            "primary": {"url": str(d / "lab-vault")}, "steward": steward_rep},
            organization="Example Lab")  # fmt: skip
        with open(self.lab_cfg, "a") as f:
            f.write(f'\n[stewards.steward]\npublic_key = "{self.steward_key}.pub"\n'
                    f'name = "Example Archive"\nrecipient = "{self.ids["steward"][1]}"\n')  # fmt: skip
        self.steward_cfg = write_config(d / "steward.toml", self.steward_key,
                                        {"steward": steward_rep})  # fmt: skip
        # the steward trusts the depositor's key, not its own, for bundles and handovers
        text = self.steward_cfg.read_text().replace(f"{self.steward_key}.pub", f"{lab_key}.pub")
        self.steward_cfg.write_text(text)

    def lab(self, *args):
        return wv("-c", self.lab_cfg, *args, env=self.env)

    def steward(self, *args):
        return wv("-c", self.steward_cfg, *args, env=self.env)

    def seal(self, src: Path, name: str = "minilm"):
        return self.lab("seal", src, "--name", name, "--vault", self.d / "lab-vault",
                        "--encrypt-to", self.ids["lab"][1], "--encrypt-to",
                        self.ids["lab-backup"][1], "--custodians", self.custodians,
                        "--threshold", "2", "--quiet", "--json")  # fmt: skip

    def share(self, who: str, vault: Path | None = None, name: str = "minilm") -> Path:
        """The custodian decrypts its share envelope (with the library; the stock age tool
        is tested separately) and keeps the words on paper."""
        import pyrage

        vault = vault or self.d / "lab-vault"
        env = vault / "bundles" / name / "data" / "keys" / f"share-{who}.age"
        ident = x25519.Identity.from_str(self.ids[who][0].read_text().split("\n")[1])
        out = self.d / f"share-{who}-{name}.txt"
        out.write_bytes(pyrage.decrypt(env.read_bytes(), [ident]))
        return out


@pytest.fixture
def world(tmp_path, lab_key, minilm_dir):
    """Local replicas only: fast, for the bad-input cases."""
    w = World(tmp_path, lab_key, str(tmp_path / "steward-vault"), None, None)
    ok(w.seal(minilm_dir))
    return w


def test_escrow_done_when_on_seaweedfs(tmp_path, lab_key, minilm_dir, s3_server):
    bucket = s3_server.make_bucket("escrow-steward")
    w = World(tmp_path, lab_key, f"s3://{bucket}/vault", {"endpoint_url": s3_server.endpoint_url},
              s3_env(s3_server))  # fmt: skip
    sealed = ok(w.seal(minilm_dir)).json()
    manifest = json.loads((tmp_path / "lab-vault/bundles/minilm/data/weightvault.json").read_text())
    assert manifest["format_version"] == 5 and manifest["files"] == []
    enc = manifest["encryption"]
    assert [e["kind"] for e in enc["envelopes"]] == ["recipient"] * 2 + ["share"] * 3
    assert enc["shares"]["threshold"] == 2 and enc["shares"]["count"] == 3
    # nothing in the clear names a file of the model
    raw = (tmp_path / "lab-vault/bundles/minilm/data/weightvault.json").read_text()
    assert "model.safetensors" not in raw and "tokenizer" not in raw

    r = ok(w.lab("escrow", "handover", "minilm", "--steward", "steward",
                 "--conditions", w.conditions, "--json", "--quiet"))  # fmt: skip
    assert r.json()["record"] == 1 and r.json()["stores"] == ["steward", "primary"]
    log = ok(w.steward("escrow", "log", "minilm", "--json")).json()
    assert [(x["event"], x["status"]) for x in log["records"]] == [("handover", "pending")]

    r = ok(w.steward("escrow", "accept", "minilm", "--identity", w.ids["steward"][0],
                     "--json", "--quiet"))  # fmt: skip
    kc = r.json()["detail"]["key_check"]
    assert kc["method"] == "shares" and "1 share verified" in kc["result"]
    assert r.json()["detail"]["audit"]["objects"] == len(manifest["objects"])
    log = ok(w.lab("escrow", "log", "minilm", "--json")).json()
    assert [(x["event"], x["status"]) for x in log["records"]] == [
        ("handover", "accepted"), ("receipt", "ok")]  # fmt: skip

    # the steward audits its copy without any key: every stored byte
    audit = w.steward("audit", "--level", "full", "--json")
    assert audit.code == 0, audit.out + audit.err
    # and cannot read it with its own identity alone (one share of two)
    one_error(w.steward("restore", "minilm", tmp_path / "peek", "--identity", w.ids["steward"][0]),
              2, "1 more share needed")  # fmt: skip
    assert not (tmp_path / "peek").exists()

    ok(w.lab("escrow", "challenge", "minilm", "--steward", "steward", "-n", "4"))
    ok(w.steward("escrow", "respond", "minilm"))
    r = ok(w.lab("escrow", "check", "minilm", "--steward", "steward", "--json"))
    assert r.json()["detail"]["result"] == "pass"

    out = tmp_path / "released"
    r = ok(w.steward("escrow", "release", "minilm", out, "--share", w.share("alice"),
                     "--share", w.share("bob"), "--note", "board decision 2026-11-22",
                     "--quiet", "--json"))  # fmt: skip
    assert tree_equal(minilm_dir, out)
    log = ok(w.lab("escrow", "log", "minilm", "--json")).json()
    assert [x["event"] for x in log["records"]] == [
        "handover",
        "receipt",
        "challenge",
        "response",
        "challenge-result",
        "release",
    ]
    assert sealed["bundle"] == log["bundle"]


@pytest.mark.skipif(shutil.which("age") is None, reason="the stock age tool (Debian age) is absent")
def test_stock_age_unwraps_the_data_key(world, tmp_path):
    keys_dir = tmp_path / "lab-vault/bundles/minilm/data/keys"
    p = subprocess.run(["age", "-d", "-i", world.ids["lab"][0], keys_dir / "recipient-1.age"],
                       capture_output=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    dk_hex = p.stdout.decode().strip()
    assert len(dk_hex) == 64
    # the same key the second recipient gets, and it passes the bundle's key check
    p2 = subprocess.run(["age", "-d", "-i", world.ids["lab-backup"][0],
                         keys_dir / "recipient-2.age"], capture_output=True, timeout=60)  # fmt: skip
    assert p2.stdout.decode().strip() == dk_hex
    from weightvault.format.crypt import key_opens

    enc = json.loads((tmp_path / "lab-vault/bundles/minilm/data/weightvault.json").read_text())
    assert key_opens(bytes.fromhex(dk_hex), enc["encryption"])
    assert not key_opens(bytes(32), enc["encryption"])
    # a custodian's share too: stock age prints the SLIP-39 words
    p3 = subprocess.run(["age", "-d", "-i", world.ids["alice"][0], keys_dir / "share-alice.age"],
                        capture_output=True, timeout=60)  # fmt: skip
    assert len(p3.stdout.decode().split()) == 33


def test_recipient_identity_restores(world, tmp_path, minilm_dir):
    out = tmp_path / "out"
    ok(world.lab("restore", "minilm", out, "--vault", tmp_path / "lab-vault",
                 "--identity", world.ids["lab-backup"][0], "--quiet"))  # fmt: skip
    assert tree_equal(minilm_dir, out)
    ok(world.lab("verify", "minilm", "--vault", tmp_path / "lab-vault", "--deep",
                 "--identity", world.ids["lab"][0], "--quiet"))  # fmt: skip


def test_wrong_identity(world, tmp_path):
    other, _ = identity(tmp_path, "stranger")
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--identity", other), 2, "stranger.agekey", "not a recipient")  # fmt: skip
    assert not (tmp_path / "out").exists()
    one_error(world.lab("verify", "minilm", "--vault", tmp_path / "lab-vault", "--deep"), 2,
              "is encrypted", "--identity")  # fmt: skip


def test_fewer_shares_than_the_threshold(world, tmp_path):
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--share", world.share("alice")), 2, "1 of the 2 shares",
              "1 more share needed")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_share_with_a_typo(world, tmp_path):
    good = world.share("alice")
    words = good.read_text().split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    bad = tmp_path / "typo.txt"
    bad.write_text(" ".join(words) + "\n")
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--share", bad, "--share", world.share("bob")), 2, "typo.txt",
              "checksum")  # fmt: skip


def test_share_from_another_bundle(world, tmp_path, minilm_dir):
    ok(world.seal(minilm_dir, name="minilm-again"))
    stray = world.share("bob", name="minilm-again")
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--share", world.share("alice"), "--share", stray), 2, stray.name,
              "another bundle")  # fmt: skip
    # a full quorum from the other bundle is refused just as clearly
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--share", world.share("alice", name="minilm-again"), "--share", stray),
              2, "another bundle")  # fmt: skip


def handed_over(world: World) -> None:
    ok(world.lab("escrow", "handover", "minilm", "--steward", "steward",
                 "--conditions", world.conditions, "--quiet"))  # fmt: skip
    ok(world.steward("escrow", "accept", "minilm", "--identity", world.ids["steward"][0],
                     "--quiet"))  # fmt: skip


def test_tampered_custody_record(world, tmp_path):
    handed_over(world)
    rec = tmp_path / "steward-vault/custody/minilm/00000001.json"
    data = rec.read_bytes()
    rec.write_bytes(data.replace(b"dissolves", b"dissolvez"))
    r = world.steward("escrow", "log", "minilm")
    line = one_error(r, 1, "00000001.json")
    assert "differs" in line or "signature" in line or "does not" in line


def test_receipt_signed_by_another_key(world, tmp_path, other_key):
    ok(world.lab("escrow", "handover", "minilm", "--steward", "steward",
                 "--conditions", world.conditions, "--quiet"))  # fmt: skip
    one_error(world.steward("escrow", "accept", "minilm", "--key", other_key, "--quiet"), 4,
              "not the steward")  # fmt: skip
    # a receipt forged into the log directly is refused by everyone reading it
    from weightvault.custody import chain as custody
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    st = LocalStore(tmp_path / "steward-vault")
    log = custody.CustodyLog([("steward", st)], "minilm")
    state = log.verify([keys.load_public_key(Path(f"{world.lab_cfg.parent}/steward.key.pub")),
                        *map(keys.load_public_key, _lab_pub(world))])  # fmt: skip
    forged = custody.receipt_event(handover=state.latest_handover.digest, level="full", objects=1,
                                   nbytes=1, problems=[], key_check_method="none",
                                   key_check_result="none")  # fmt: skip
    env_record = _sign_raw(log, state, forged, keys.load_signing_key(other_key))
    (tmp_path / "steward-vault/custody/minilm/00000002.json").write_bytes(env_record)
    one_error(world.steward("escrow", "log", "minilm"), 4, "00000002.json")


def _lab_pub(world: World) -> list[Path]:
    text = world.lab_cfg.read_text()
    return [Path(json.loads(text.split("trusted_keys = [")[1].split("]")[0]))]


def _sign_raw(log, state, body: dict, key) -> bytes:
    from weightvault.archive.auditlog import now, tool
    from weightvault.format import canon

    ev = body["event"]
    record = {"format": "weightvault-custody", "format_version": 1, "sequence": state.next_seq,
              "previous": state.head.digest, "event": ev, "time": now(),
              "bundle": {"name": "minilm", "id": state.bundle_id},
              "actor": {"role": "steward", "name": "Example Archive",
                        "key_id": key.public.key_id}, "tool": tool(), ev: body[ev]}  # fmt: skip
    sig = key.sign("application/vnd.weightvault.custody+json; version=1", canon.canonical(record))
    return canon.canonical({"record": record, "signatures": [sig]})


def test_handover_to_an_unreachable_steward(world, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    text = world.lab_cfg.read_text().replace(
        f'url = "{tmp_path / "steward-vault"}"',
        f'url = "s3://nowhere/vault"\nstorage_options = {{ endpoint_url = "http://127.0.0.1:{port}" }}',
    )  # fmt: skip
    world.lab_cfg.write_text(text)
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "WEIGHTVAULT_RETRIES": "1"}
    import os

    r = wv("-c", world.lab_cfg, "escrow", "handover", "minilm", "--steward", "steward",
           "--conditions", world.conditions, "--quiet", env={**os.environ, **env})  # fmt: skip
    one_error(r, 3, "steward", "unreachable")
    assert not (tmp_path / "lab-vault/custody").exists()


def test_flipped_byte_in_an_encrypted_chunk(world, tmp_path):
    handed_over(world)
    objs = sorted((tmp_path / "steward-vault/objects").iterdir(),  # the pool (FORMAT.md 2.2)
                  key=lambda p: p.stat().st_size)  # fmt: skip
    victim = objs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    # the steward's audit catches it from the ciphertext digest, with no key
    a = world.steward("audit", "--level", "full", "--json")
    assert a.code == 1, a.out + a.err
    assert victim.name in a.out
    # release refuses it: nothing is written, no release record
    out = tmp_path / "released"
    r = world.steward("escrow", "release", "minilm", out, "--share", world.share("alice"),
                      "--share", world.share("bob"), "--quiet")  # fmt: skip
    one_error(r, 1, victim.name[:16])
    assert not out.exists()
    log = ok(world.steward("escrow", "log", "minilm", "--json")).json()
    assert "release" not in [x["event"] for x in log["records"]]


def test_chunks_cannot_be_swapped(world, tmp_path):
    """Two objects of the same size exchanged: each is intact ciphertext, but bound to its
    position, so opening fails (the tag does not verify) and nothing is restored."""
    from weightvault.format import crypt

    dk, salt = crypt.new_data_key(), crypt.new_salt()
    a = crypt.seal_bytes(dk, salt, "chunk", 0, b"x" * 1000)
    b = crypt.seal_bytes(dk, salt, "chunk", 1, b"y" * 1000)
    assert crypt.open_bytes(dk, salt, "chunk", 0, a, 10**6) == b"x" * 1000
    with pytest.raises(crypt.CorruptData):
        crypt.open_bytes(dk, salt, "chunk", 0, b, 10**6)
    with pytest.raises(crypt.CorruptData):  # another bundle (salt)
        crypt.open_bytes(dk, crypt.new_salt(), "chunk", 0, a, 10**6)


def test_version_1_reader_refuses_an_encrypted_bundle(world, tmp_path):
    p = subprocess.run([sys.executable, REPO / "docs" / "reference_restore.py",
                        tmp_path / "lab-vault/bundles/minilm", tmp_path / "out"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode != 0
    assert "version" in p.stderr or "encrypt" in p.stderr
    assert not (tmp_path / "out").exists()


def test_steward_transfer_continues_the_chain(world, tmp_path, minilm_dir):
    handed_over(world)
    # the first steward ends its service: it hands over to a successor, from its own config
    assert wv("keygen", tmp_path / "next.key").code == 0
    nxt = tmp_path / "next-vault"
    text = world.steward_cfg.read_text()
    text += (f'\n[replicas.next]\nurl = "{nxt}"\n\n[stewards.next]\n'
             f'public_key = "{tmp_path}/next.key.pub"\nname = "Next Archive"\n')  # fmt: skip
    world.steward_cfg.write_text(text)
    r = ok(world.steward("escrow", "handover", "minilm", "--steward", "next",
                         "--conditions", world.conditions, "--json", "--quiet"))  # fmt: skip
    assert r.json()["detail"]["transfer"] is True
    next_cfg = write_config(
        tmp_path / "next.toml", tmp_path / "next.key", {"next": {"url": str(nxt)}}
    )
    next_cfg.write_text(next_cfg.read_text().replace(f"{tmp_path}/next.key.pub",
                                                     str(_lab_pub(world)[0])))  # fmt: skip
    ok(wv("-c", next_cfg, "escrow", "accept", "minilm", "--quiet"))
    log = ok(wv("-c", next_cfg, "escrow", "log", "minilm", "--json")).json()
    assert [(x["event"], x["status"]) for x in log["records"]] == [
        ("handover", "accepted"), ("receipt", "ok"), ("handover", "accepted"),
        ("receipt", "ok")]  # fmt: skip


def test_identity_readable_by_others_is_refused(world, tmp_path):
    ident = world.ids["lab"][0]
    ident.chmod(0o644)
    one_error(world.lab("restore", "minilm", tmp_path / "out", "--vault", tmp_path / "lab-vault",
                        "--identity", ident), 2, "lab.agekey", "readable by others")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_handover_rerun_is_idempotent_and_other_conditions_conflict(world, tmp_path):
    args = ("escrow", "handover", "minilm", "--steward", "steward", "--quiet", "--json")
    first = ok(world.lab(*args, "--conditions", world.conditions)).json()
    # a crash after the steward's copy of the record was written but before ours was
    (tmp_path / "lab-vault/custody/minilm/00000001.json").unlink()
    again = ok(world.lab(*args, "--conditions", world.conditions)).json()
    assert again["record"] == first["record"] == 1 and again["detail"]["already"]
    assert (tmp_path / "lab-vault/custody/minilm/00000001.json").exists()
    other = tmp_path / "other.md"
    other.write_text("Release on any request.\n")
    one_error(world.lab(*args, "--conditions", other), 5, "other conditions")


def test_accept_rerun_reports_the_existing_receipt(world):
    handed_over(world)
    r = ok(world.steward("escrow", "accept", "minilm", "--quiet", "--json")).json()
    assert r["record"] == 2 and r["detail"]["already"]
    log = ok(world.steward("escrow", "log", "minilm", "--json")).json()
    assert [x["event"] for x in log["records"]] == ["handover", "receipt"]
