"""The preservation log: C2SP vectors byte for byte, proofs, crash and race safety, bad input,
and an independent verifier (tests/support/tlog_verify.py) accepting what the code writes."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ok, one_error, wv
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import tlog_verify

from weightvault.errors import Conflict, CorruptData, IntegrityError, TrustError
from weightvault.format import keys
from weightvault.log import check, note, tlog
from weightvault.log import statements as st
from weightvault.log.archive import inventory_of
from weightvault.log.store import (
    CHECKPOINT,
    LogStore,
    State,
    append,
    log_verifier,
    origin_for,  # fmt: skip
    witness_name,
    witness_verifier,
)
from weightvault.storage.store import LocalStore

# -- Known answers from transparency-dev/tessera's testdata/ (a 15-entry log it built with
# build_log.sh: entries "one".."fivten", key below) and from c2sp.org/signed-note's example.
TESSERA_ORIGIN = "example.com/log/testdata"
TESSERA_SEED = "AeymY/SZAX0jZcJ8enZ5FY1Dz+wTML2yWSkK+9DSF3eg"  # PRIVATE+KEY+...+33d7b496+
TESSERA_VKEY = "example.com/log/testdata+33d7b496+AeHTu4Q3hEIMHNqc6fASMsq3rKNx280NI+oO5xCFkkSx"
TESSERA_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eit", "nain", "ten", "ileven", "twelf", "threeten", "fourten", "fivten"]  # fmt: skip
TESSERA_CHECKPOINTS = {
    0: ("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "M9e0lhxJACzE1KoUdqKuPa+9p6R7dSW8BlEvrg/noo8FkGg6PbJoRNOcdjqjOq89wVvTA60eubCc4oufo5BvIVEgtQc="),
    1: ("0Nc2CrefWKseHj/mStd+LqC8B+NrX0btIiPt2SmN+ek=",
        "M9e0lhr9kuLxGdAtaUrhm84TQffVsLdcy808sN0a3WyniNlfcr9+bywoiIke1YYciCNjJGkCgIlQ8b16jhsmg/SChAM="),
    2: ("T1X2GdkhUjV3iyufF9b0kVsWFxIU0VI4EpNml2Teci4=",
        "M9e0llH4NKmlf0u7C8tkJioQOmi7l5ELqljXgKRg6R3G5JJ7vx7emDWo5fpqKuA/Dk/jRrI6il+7QCVirNhyUAWGoAk="),
    7: ("IrSXADBqJ7EQoUODSDKROySgNveeL6CFhik2w/+fS7U=",
        "M9e0luA5JhTRUki/BBQD0QNiH6AEJ2pdtsA5CQjqJErViuuKrN6513RCTL2640wXJv0dCed3neRGI6dMzBq9uANf2Qc="),
    15: ("rKbDipCvhuX1GZ7g5BBe8sA6BbJ7ja/1nk427v383cs=",
         "M9e0luh4jTG+UMBqOUo9/q+yAEvx1ilBEniMvjf1zfcBOhg+CKubMt53MvIt/uEWP6zdkdIQzd/fmwlM/dlPWF74ewI="),
}  # fmt: skip
TESSERA_SHA256 = {  # of tessera's files at size 15
    "tile/0/000.p/15": "93593af14d2cce39867d2e73fe4ca400a38581605c5c4501a03e752d9b51a130",
    "tile/entries/000.p/15": "9ac6a9fc9012f2b4d67ac26041933c119e1505defc5c808ed614c5778c9f1716",
    "tile/0/000.p/3": "6168c234ffb69c4c34476551c18dfc6041752648b15012695bff139659d59c8a",
}
C2SP_NOTE_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1"
             "YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n").encode()  # fmt: skip


class RawKey:
    """A signing key outside weightvault's key files (tessera's), with the same interface."""

    def __init__(self, priv: Ed25519PrivateKey):
        self._priv = priv
        raw = priv.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)  # fmt: skip
        self.public = keys.PublicKey(raw)

    def sign_raw(self, msg: bytes) -> bytes:
        return self._priv.sign(msg)


def tessera_key() -> RawKey:
    return RawKey(Ed25519PrivateKey.from_private_bytes(base64.b64decode(TESSERA_SEED)[1:]))


def mem_tree(entries: list[bytes]) -> tuple[dict, tlog.Tree]:
    """Tiles in memory, read as prefixes of the widest (so older tree sizes read too)."""
    tiles: dict = {}
    edge: dict = {}
    size = 0
    for i in range(0, len(entries), 37):  # appends of uneven sizes cross tile edges
        batch = [tlog.leaf_hash(e) for e in entries[i : i + 37]]
        edge, changed = tlog.extend(size, edge, batch)
        size += len(batch)
        for lv, n, h in changed:
            tiles[(lv, n)] = b"".join(h)
    return tiles, tlog.Tree(size, lambda lv, n, w: tiles[(lv, n)][: w * tlog.HASH])


# -- vectors


def test_signed_note_c2sp_example_verifies_and_any_flip_fails():
    v = note.Verifier.from_vkey(C2SP_NOTE_VKEY)
    assert v in note.parse(C2SP_NOTE).verified_by([v])
    bad = C2SP_NOTE.replace(b"example message", b"example massage")
    with pytest.raises(note.NoteTrustError):
        note.parse(bad).verified_by([v])


def test_tessera_log_byte_for_byte(tmp_path):
    """Our writer, given tessera's key and entries, writes tessera's checkpoints, tiles and
    entry bundles exactly."""
    key = tessera_key()
    assert note.vkey(TESSERA_ORIGIN, 1, key.public.raw) == TESSERA_VKEY
    cp0 = note.Checkpoint(TESSERA_ORIGIN, 0, tlog.EMPTY_ROOT)
    sig0 = note.sign(cp0.text(), TESSERA_ORIGIN, key.public.raw, key.sign_raw)
    assert note.Note(cp0.text(), (sig0,)).encode() == _tessera_cp(0)
    store = LocalStore(tmp_path, create=True)
    log = LogStore(store, note.Verifier(TESSERA_ORIGIN, key.public.raw))
    for i, w in enumerate(TESSERA_WORDS, 1):
        head = _append_as(log, key, [w.encode()])
        if i in TESSERA_CHECKPOINTS:
            assert head.raw == _tessera_cp(i)
            assert (tmp_path / "log/checkpoint").read_bytes() == _tessera_cp(i)
    for rel, digest in TESSERA_SHA256.items():
        assert hashlib.sha256((tmp_path / "log" / rel).read_bytes()).hexdigest() == digest


def _tessera_cp(size: int) -> bytes:
    root, sig = TESSERA_CHECKPOINTS[size]
    return f"{TESSERA_ORIGIN}\n{size}\n{root}\n\n\u2014 {TESSERA_ORIGIN} {sig}\n".encode()


def _append_as(log: LogStore, key, entries):
    """append() for a key whose log origin is not weightvault's derived one (tessera's)."""
    from weightvault.log import store as ls

    with log.store.lock("log"):
        return ls._append_once(log, key.sign_raw, key.public.raw, entries, None)


def test_tile_paths_and_layout_match_tlog_tiles():
    assert tlog.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tlog.tile_path(2, 5, 17) == "tile/2/005.p/17"
    assert tlog.tile_path(-1, 1000, 3) == "tile/entries/x001/000.p/3"
    t = tlog.tiles_for(70000)  # the spec's example
    assert sum(1 for lv, _, w in t if lv == 0 and w == 256) == 273
    assert (0, 273, 112) in t and (1, 0, 256) in t and (1, 1, 17) in t and (2, 0, 1) in t
    assert tlog.tiles_for(256) == [(0, 0, 256), (1, 0, 1)]


def test_bundle_encoding():
    data = tlog.encode_bundle([b"one", b"", b"two"])
    assert data == b"\x00\x03one\x00\x00\x00\x03two"
    assert tlog.decode_bundle(data, 3) == [b"one", b"", b"two"]
    for bad, n in ((data[:-1], 3), (data + b"\x00", 3), (data, 4)):
        with pytest.raises(tlog.TreeError):
            tlog.decode_bundle(bad, n)
    with pytest.raises(tlog.TreeError):
        tlog.encode_bundle([b"x" * 65536])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 255, 256, 257, 600, 65536 + 300])
def test_proofs_against_the_definition(n):
    rnd = random.Random(n)
    entries = [b"e%d" % i for i in range(n)]
    _, tree = mem_tree(entries)
    leaves = [tlog.leaf_hash(e) for e in entries]
    root = tree.root()
    if n <= 700:
        assert root == tlog_verify._mth(leaves)
    for i in {0, n - 1, rnd.randrange(n), rnd.randrange(n)}:
        proof = tree.inclusion(i)
        assert tlog.verify_inclusion(leaves[i], i, n, proof, root)
        assert not tlog.verify_inclusion(leaves[i], i ^ 1, n, proof, root) or n == 1
        if proof:
            bad = list(proof)
            bad[0] = bytes(32)
            assert not tlog.verify_inclusion(leaves[i], i, n, bad, root)
    for m in {1, n // 2 or 1, n - 1 or 1, rnd.randrange(1, n + 1)}:
        old = tlog.Tree(m, tree._read).root()
        proof = tree.consistency(m)
        assert tlog.verify_consistency(m, n, old, root, proof)
        if proof:
            assert not tlog.verify_consistency(m, n, old, root, proof[:-1])
            assert not tlog.verify_consistency(m, n, bytes(32), root, proof)


def test_proof_of_a_million_entry_tree_reads_few_tiles():
    """Tiles built from leaf hashes only (no entries), as in benchmarks/log_bench.py."""
    n = 1_000_000
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    edge, changed = tlog.extend(0, {}, leaves)
    tiles = {(lv, i): b"".join(h) for lv, i, h in changed}
    tree = tlog.Tree(n, lambda lv, i, w: tiles[(lv, i)][: w * 32])
    root = tree.root()
    tree2 = tlog.Tree(n, tree._read)
    proof = tree2.inclusion(123_456)
    assert tlog.verify_inclusion(leaves[123_456], 123_456, n, proof, root)
    assert tree2.tiles_read <= 20


# -- the log on storage


@pytest.fixture
def lab(tmp_path):
    k = keys.generate(tmp_path / "lab.key")
    store = LocalStore(tmp_path / "vault", create=True)
    log = LogStore(store, log_verifier(k.public.raw))
    return k, log, tmp_path


def _statements(n: int, start: int = 0) -> list[bytes]:
    return [st.replicated(hashlib.sha256(b"%d" % i).hexdigest(), f"m{i}", "vault")
            for i in range(start, start + n)]  # fmt: skip


def _independent(vault: Path, k, witnesses=None):
    return tlog_verify.verify_log(str(vault / "log"), origin_for(k.public.raw), k.public.raw,
                                  witnesses or {})  # fmt: skip


def test_append_verify_prove_and_independent_verifier(lab):
    k, log, tmp = lab
    state = State.load(tmp / "state", "lab")
    for i in range(0, 530, 53):
        head = append(log, k, _statements(53, i), state)
    assert head.size == 530
    rep = check.verify(log)
    assert rep.entries == 530 and rep.checkpoints == 10
    size, entries, _ = _independent(tmp / "vault", k)
    assert size == 530 and entries == _statements(0) + entries  # parsed from the bundles
    assert [st.parse(e, "e")["name"] for e in entries[:3]] == ["m0", "m1", "m2"]
    for idx in (0, 255, 256, 529):
        proof = check.make_proof(log, idx, entries[idx], head)
        assert check.check_proof(proof, "p", log.verifier).entry == entries[idx]
        i, e, s, _ = tlog_verify.verify_proof(proof, origin_for(k.public.raw), k.public.raw)
        assert (i, e, s) == (idx, entries[idx], 530)
    # any one bit of any byte changed: refused (base64's unused low bits included)
    for pos in range(len(proof)):
        for bit in (0, 1):
            bad = proof[:pos] + bytes([proof[pos] ^ (1 << bit)]) + proof[pos + 1:]
            with pytest.raises((CorruptData, IntegrityError, TrustError)):
                check.check_proof(bad, "p", log.verifier)


def test_cosign_and_a_forked_log_is_refused(lab, tmp_path):
    k, log, tmp = lab
    w = keys.generate(tmp / "steward.key")
    wv_ = {witness_name(w.public.raw): w.public.raw}
    append(log, k, _statements(5), None)
    wstate = State.load(tmp / "wstate", "w")
    check.cosign(log, w, wstate)
    append(log, k, _statements(300, 5), None)
    head = check.cosign(log, w, wstate)
    assert head.size == 305
    wver = witness_verifier(w.public.raw)
    rep = check.verify(log, (wver,))
    assert rep.cosignatures == {witness_name(w.public.raw): 305}
    _, _, seen = _independent(tmp / "vault", k, wv_)
    assert seen == set(wv_)
    cp = check.best_checkpoint(log, 3, log.head(), (wver,))
    proof = check.make_proof(log, 3, list(log.read_all(305))[3], cp)
    assert tlog_verify.verify_proof(proof, origin_for(k.public.raw), k.public.raw, wv_)[3] == set(wv_)
    # the lab rewrites history: a different log of a larger size under the same key
    other = LocalStore(tmp_path / "forked", create=True)
    flog = LogStore(other, log.verifier)
    append(flog, k, _statements(400, 1000), None)
    with pytest.raises(IntegrityError, match=r"tree size 400 is not consistent with tree size 305"):
        check.cosign(flog, w, wstate)
    assert not (tmp_path / "forked/log/cosignatures").exists()


def test_writer_never_signs_a_tree_inconsistent_with_its_state(lab):
    k, log, tmp = lab
    state = State.load(tmp / "state", "lab")
    append(log, k, _statements(10), state)
    saved = (tmp / "vault/log/checkpoint").read_bytes()
    append(log, k, _statements(10, 10), state)
    (tmp / "vault/log/checkpoint").write_bytes(saved)  # a pointer left behind: still size 20
    assert log.head().size == 20
    for f in (tmp / "vault/log/checkpoints").iterdir():  # rolled back by whoever holds storage
        if f.name != "10":
            f.unlink()
    with pytest.raises(IntegrityError, match=r"tree size 10 is behind .* tree size 20"):
        append(log, k, _statements(1, 99), state)
    assert log.head().size == 10


class Crash(BaseException):
    pass


class CrashingStore(LocalStore):
    """Dies (like SIGKILL: no cleanup) after `after` successful puts."""

    def __init__(self, root, after):
        super().__init__(root)
        self.after = after

    def put_bytes(self, key, data, *, exclusive=False):
        if self.after == 0:
            raise Crash(key)
        self.after -= 1
        return super().put_bytes(key, data, exclusive=exclusive)


def test_a_crash_at_any_write_never_forks_the_log(lab):
    k, log, tmp = lab
    append(log, k, _statements(250), None)
    for step in range(8):
        crashing = LogStore(CrashingStore(tmp / "vault", step), log.verifier)
        try:
            append(crashing, k, _statements(9, 1000 + step * 10), None)
        except Crash:
            pass
        before = log.head()
        head = append(log, k, _statements(3, 5000 + step * 10), None)  # other entries
        check.verify(log)
        assert head.size == before.size + 3
    size, _, _ = _independent(tmp / "vault", k)
    assert size == log.head().size


def test_a_writer_with_state_starts_from_a_published_checkpoint_past_the_pointer(lab):
    """Another machine's writer published checkpoints/8 and died before the pointer: a writer
    whose own state is older starts from 8, never from the pointer's 5 (from 5 it would have
    overwritten tiles that the signed checkpoint 8 covers: a fork)."""
    k, log, tmp = lab
    mine = State.load(tmp / "state", "lab")
    append(log, k, _statements(5), mine)
    other = LogStore(CrashingStore(tmp / "vault", 3), log.verifier)  # tiles, checkpoints/8
    theirs = _statements(3, 50)  # once: each call stamps the current second
    with pytest.raises(Crash, match="log/checkpoint$"):
        append(other, k, theirs, None)
    pointer = log._read(CHECKPOINT, 1 << 16).split(b"\n")[1]
    assert pointer == b"5" and log.checkpoint_sizes()[-1] == 8
    head = append(log, k, _statements(2, 100), mine)
    assert head.size == 10
    check.verify(log)
    assert list(log.read_all(10))[5:8] == theirs
    assert _independent(tmp / "vault", k)[0] == 10


def test_two_writers_racing_never_fork(lab):
    k, log, tmp = lab
    append(log, k, _statements(1), None)
    code = (
        "import sys; from pathlib import Path\n"
        "from weightvault.format import keys\n"
        "from weightvault.storage.store import LocalStore\n"
        "from weightvault.log import statements as st\n"
        "from weightvault.log.store import LogStore, append, log_verifier\n"
        "k = keys.load_signing_key(Path(sys.argv[1]))\n"
        "log = LogStore(LocalStore(Path(sys.argv[2])), log_verifier(k.public.raw))\n"
        "for i in range(25):\n"
        "    append(log, k, [st.replicated('%064x' % (int(sys.argv[3]) * 100 + i), 'm', 'r')], None)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp / "lab.key"),
                               str(tmp / "vault"), str(w)], env=env) for w in (1, 2)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rep = check.verify(log)
    assert rep.entries == 51 and rep.checkpoints == 51
    ids = {st.parse(e, "e")["bundle"] for e in log.read_all(51)}
    assert len(ids) == 51


def test_racing_writer_on_a_store_without_locks_retries(lab, monkeypatch):
    """A clash with bytes another writer put beyond the checkpoint: when a new checkpoint
    appeared meanwhile, start again on the new tree."""
    k, log, tmp = lab
    append(log, k, _statements(2), None)
    other = LogStore(LocalStore(tmp / "vault"), log.verifier)
    monkeypatch.setattr(type(log.store), "process_lock", False)
    real = log.write_tiles
    calls = []

    def racing(objs):
        if not calls:
            calls.append(1)
            # another machine's writer (no shared lock on such a store) wins the race
            from weightvault.log import store as ls

            ls._append_once(other, ls.raw_signer(k), k.public.raw, _statements(1, 77), None)
        return real(objs)

    monkeypatch.setattr(log, "write_tiles", racing)
    head = append(log, k, _statements(1, 88), None)
    assert head.size == 4
    check.verify(log)


def test_inventory_from_statements():
    a, b = "a" * 64, "b" * 64
    stmts = list(enumerate(st.parse(x, "x") for x in [
        st.sealed(a, "ma", 10, "c" * 64, 3, False), st.replicated(a, "ma", "s3"),
        st.replicated(b, "mb", "s3"), st.replicated(a, "ma", "disk"),
        st.retired(b, "mb", None, "deliberate"), st.repaired(b, "mb", "disk", 2),
    ]))  # fmt: skip
    assert inventory_of(stmts, "s3") == {a: "ma"}
    assert inventory_of(stmts, "disk") == {a: "ma", b: "mb"}


def test_summary_of_a_bundle():
    from weightvault.log.archive import summary_of

    a = "a" * 64
    stmts = list(enumerate(st.parse(x, "x") for x in [
        st.sealed(a, "ma", 10, "c" * 64, 3, False), st.replicated(a, "ma", "s3"),
        st.replicated(a, "ma", "disk"),
        st.make("audited", time="2026-12-01T00:00:00Z", replica="s3", level="full", result="ok",
                bundles=1, objects=3, bytes=10, damage=0, record=None),
        st.retired(a, "ma", "disk", "moved"),
    ]))  # fmt: skip
    s = summary_of(stmts, a)
    assert s["held_on"] == ["s3"] and s["last_full_audit"] == "2026-12-01T00:00:00Z"
    assert s["retired"]["replica"] == "disk"


def test_statements_are_bounded_and_validated():
    with pytest.raises(CorruptData):
        st.replicated("nothex", "m", "r")
    with pytest.raises(CorruptData):
        st.retired("a" * 64, "m", None, "x" * 501)
    with pytest.raises(CorruptData, match="over the 4096"):
        st.parse(b"{" + b" " * 5000 + b"}", "entry 3")
    with pytest.raises(CorruptData, match="canonical"):
        st.parse(b'{ "v":1}', "entry 3")


# -- the command line, bad input


@pytest.fixture
def cli_log(tmp_path):
    key = tmp_path / "lab.key"
    ok(wv("keygen", key))
    k = keys.load_signing_key(key)
    vault = tmp_path / "vault"
    log = LogStore(LocalStore(vault, create=True), log_verifier(k.public.raw))
    append(log, k, [st.sealed("a" * 64, "minilm", 10, "c" * 64, 3, False)], None)
    append(log, k, _statements(300), None)
    return key, vault, log


def test_cli_verify_prove_check(cli_log, tmp_path):
    key, vault, _ = cli_log
    r = ok(wv("log", "verify", vault, "--key", f"{key}.pub", "--json")).json()
    assert r["size"] == 301
    proof = tmp_path / "p.tlog-proof"
    ok(wv("log", "prove", "minilm", "-o", proof, "--vault", vault, "--log-key", f"{key}.pub"))
    r = ok(wv("log", "check", proof, "--key", f"{key}.pub", "--json")).json()
    assert r["statement"]["name"] == "minilm" and r["index"] == 0
    tlog_verify.verify_proof(proof.read_bytes(), origin_for(keys.load_public_key(Path(
        f"{key}.pub")).raw), keys.load_public_key(Path(f"{key}.pub")).raw)  # fmt: skip
    data = proof.read_bytes()
    for pos in sorted({0, 30, 60, len(data) // 2, len(data) - 30, len(data) - 3}):
        bad = tmp_path / f"bad{pos}"
        bad.write_bytes(data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :])
        r = wv("log", "check", bad, "--key", f"{key}.pub")
        assert r.code in (1, 4), (pos, r.err)
        one_error(r, r.code, str(bad))


def test_cli_bad_inputs(cli_log, tmp_path, other_key):
    key, vault, log = cli_log
    pub = f"{key}.pub"
    # a proof for another log
    ok(wv("log", "prove", "minilm", "-o", tmp_path / "p", "--vault", vault, "--log-key", pub))
    one_error(wv("log", "check", tmp_path / "p", "--key", f"{other_key}.pub"), 4, "unknown key")
    # a checkpoint by an unknown key
    one_error(wv("log", "verify", vault, "--key", f"{other_key}.pub"), 4, "log/checkpoint",
              "unknown key")  # fmt: skip
    # a tile with a wrong hash
    tile = vault / "log/tile/0/000"
    good = tile.read_bytes()
    tile.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])
    one_error(wv("log", "verify", vault, "--key", pub), 1, "tile/0/000")
    tile.write_bytes(good)
    # a truncated entry bundle
    bundle = vault / "log/tile/entries/000"
    good_b = bundle.read_bytes()
    bundle.write_bytes(good_b[:-5])
    one_error(wv("log", "verify", vault, "--key", pub), 1, "tile/entries/000", "truncated")
    bundle.write_bytes(good_b)
    # a checkpoint going backwards from one the verifier saw before
    seen = tmp_path / "seen.checkpoint"
    seen.write_bytes((vault / "log/checkpoint").read_bytes())
    ok(wv("log", "verify", vault, "--key", pub, "--since", seen))
    (vault / "log/checkpoint").write_bytes((vault / "log/checkpoints/1").read_bytes())
    ok(wv("log", "verify", vault, "--key", pub, "--since", seen))  # the published one counts
    for f in (vault / "log/checkpoints").iterdir():
        if f.name != "1":
            f.unlink()
    one_error(wv("log", "verify", vault, "--key", pub, "--since", seen), 1, "tree size 301",
              "tree size 1")  # fmt: skip


def test_cli_oversized_entry_is_refused(tmp_path):
    """An entry over its bound, signed by the lab's own key (a buggy or hostile writer)."""
    key = tmp_path / "lab.key"
    ok(wv("keygen", key))
    k = keys.load_signing_key(key)
    log = LogStore(LocalStore(tmp_path / "v", create=True), log_verifier(k.public.raw))
    from weightvault.log import store as ls

    with log.store.lock("log"):
        ls._append_once(log, ls.raw_signer(k), k.public.raw, [b"{" + b" " * 5000 + b"}"], None)
    one_error(wv("log", "verify", tmp_path / "v", "--key", f"{key}.pub"), 1, "over the 4096")
    with pytest.raises(CorruptData):
        append(log, k, [b"x" * 5000], None)


def test_cli_cosign_publish_and_verify_with_witness(cli_log, tmp_path):
    key, vault, log = cli_log
    sk = tmp_path / "steward.key"
    ok(wv("keygen", sk))
    state = tmp_path / "wstate"
    ok(wv("log", "cosign", vault, "--log-key", f"{key}.pub", "--key", sk, "--state-dir", state))
    pub = tmp_path / "public"
    ok(wv("log", "publish", pub, "--vault", vault, "--log-key", f"{key}.pub"))
    assert sorted(p.name for p in pub.iterdir()) == ["log"]
    r = ok(wv("log", "verify", pub, "--key", f"{key}.pub", "--witness", f"{sk}.pub",
              "--require-witness", "--json")).json()  # fmt: skip
    assert r["cosignatures"] and r["size"] == 301
    one_error(wv("log", "verify", pub, "--key", f"{key}.pub", "--witness", f"{key}.pub",
                 "--require-witness"), 4, "no cosignature")  # fmt: skip
    k = keys.load_signing_key(key)
    p = keys.load_public_key(Path(f"{sk}.pub")).raw
    assert _independent(pub, k, {witness_name(p): p})[2] == {witness_name(p)}
    # the steward refuses a log rolled back behind what it cosigned
    (vault / "log/checkpoint").write_bytes((vault / "log/checkpoints/1").read_bytes())
    for f in (vault / "log/checkpoints").iterdir():
        if f.name != "1":
            f.unlink()
    one_error(wv("log", "cosign", vault, "--log-key", f"{key}.pub", "--key", sk, "--state-dir",
                 state), 1, "tree size 1", "301")  # fmt: skip


def test_conflict_and_trust_errors_are_typed():
    assert Conflict.exit_code == 5 and TrustError.exit_code == 4
    assert CHECKPOINT == "log/checkpoint"


# -- end to end with the real model


def test_seal_replicate_audit_append_and_the_log_alone_proves_loss(tmp_path, minilm_dir, lab_key):
    """Seal to two replicas, audit: the log holds sealed, replicated and audited statements,
    both verifiers accept it. Then every copy of the bundle and all local state are lost: the
    log alone makes the next audit report LOSS (exit 1) on both replicas."""
    import shutil

    from conftest import write_config

    state = tmp_path / "state"
    env = {**os.environ, "XDG_STATE_HOME": str(state)}
    cfg = write_config(tmp_path / "wv.toml", lab_key, {
        "a": {"url": str(tmp_path / "a"), "role": "primary"}, "b": {"url": str(tmp_path / "b")}})
    ok(wv("-c", cfg, "seal", minilm_dir, "--name", "minilm", "-q", env=env))
    ok(wv("-c", cfg, "audit", "--level", "metadata", env=env))
    shown = ok(wv("-c", cfg, "log", "show", "--json", env=env)).json()
    (bid,) = [b for b in shown if b != "*"]
    assert set(shown[bid]) == {"sealed", "replicated/a", "replicated/b"}
    assert {k: v["result"] for k, v in shown["*"].items()} == {"audited/a": "ok", "audited/b": "ok"}
    pub = f"{lab_key}.pub"
    for r in ("a", "b"):
        assert ok(wv("log", "verify", tmp_path / r, "--key", pub, "--json")).json()["size"] == 5
        k = keys.load_public_key(Path(pub)).raw
        assert tlog_verify.verify_log(str(tmp_path / r / "log"), origin_for(k), k)[0] == 5
    proof = tmp_path / "minilm.tlog-proof"
    ok(wv("-c", cfg, "log", "prove", "minilm", "-o", proof, env=env))
    doc = ok(wv("log", "check", proof, "--key", pub, "--json")).json()["statement"]
    assert doc["kind"] == "sealed" and doc["bundle"] == bid
    for r in ("a", "b"):
        shutil.rmtree(tmp_path / r / "bundles" / "minilm")
    shutil.rmtree(state / "weightvault" / "replicas", ignore_errors=True)
    for f in (state / "weightvault").glob("known*"):
        f.unlink()
    r = wv("-c", cfg, "audit", "--level", "metadata", env=env)
    assert r.code == 1, r.out + r.err
    assert r.out.count("lost: bundles/minilm") == 2


def test_replicas_without_the_log_catch_up_and_publish(tmp_path, lab_key):
    """A replica that was down misses appends; the next append mirrors everything to it."""
    from conftest import write_config

    from weightvault.config import load
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.replicas import ReplicaSet

    cfg = write_config(tmp_path / "wv.toml", lab_key, {
        "a": {"url": str(tmp_path / "a")}, "b": {"url": str(tmp_path / "b")}})
    for r in ("a", "b"):
        LocalStore(tmp_path / r, create=True)
    k = keys.load_signing_key(lab_key)
    plog = PreservationLog(ReplicaSet(load(cfg)), k.public.raw, key=k, state_dir=tmp_path / "s")
    plog.append(*_statements(3), mirror_to=["a"])  # b was down
    assert not (tmp_path / "b/log").exists()
    plog.append(*_statements(300, 3))
    assert plog.errors == {}
    for r in ("a", "b"):
        assert check.verify(plog.copy(r)).entries == 303
    assert plog.inventory("vault") and plog.inventory("a", prefer="b") == {}


@pytest.mark.slow
def test_log_on_local_s3_and_sftp_replicas_with_a_witness(tmp_path, s3_server, ssh_server,
                                                           lab_key, minilm_dir):  # fmt: skip
    """The real model sealed to a local disk, SeaweedFS and sshd: every replica holds the
    same log, the steward cosigns on its SFTP replica, the published copy and a proof carrying
    the cosignature pass the independent verifier."""
    from conftest import Lab

    lab = Lab(tmp_path, s3_server, ssh_server, lab_key)
    ok(lab.run("seal", minilm_dir, "--name", "minilm", "-q"))
    ok(lab.run("audit", "--level", "metadata"))
    pub = f"{lab_key}.pub"
    roots = {ok(lab.run("log", "verify", r, "--key", pub, "--json")).json()["root"]
             for r in ("primary", "cloud", "steward")}  # fmt: skip
    assert len(roots) == 1
    sk = tmp_path / "steward.key"
    ok(wv("keygen", sk))
    ok(lab.run("log", "cosign", "steward", "--log-key", pub, "--key", sk,
               "--state-dir", tmp_path / "sstate"))  # fmt: skip
    ok(lab.run("log", "publish", tmp_path / "public"))
    k = keys.load_public_key(Path(pub)).raw
    w = keys.load_public_key(Path(f"{sk}.pub")).raw
    ws = {witness_name(w): w}
    size, entries, seen = tlog_verify.verify_log(str(tmp_path / "public/log"), origin_for(k), k, ws)
    assert size == 7 and seen == set(ws)
    kinds = sorted(st.parse(e, "e")["kind"] for e in entries)
    assert kinds == ["audited"] * 3 + ["replicated"] * 3 + ["sealed"]
    proof = tmp_path / "p.tlog-proof"
    ok(lab.run("log", "prove", "minilm", "-o", proof, "--witness", f"{sk}.pub"))
    assert tlog_verify.verify_proof(proof.read_bytes(), origin_for(k), k, ws)[3] == set(ws)
    ok(wv("log", "check", proof, "--key", pub, "--witness", f"{sk}.pub"))


def test_escrow_round_appends_custody_statements(tmp_path, lab_key, minilm_dir):
    """handover, challenge and the depositor's check each append a custody statement naming
    the digest of the custody record; the steward cosigns the log on its replica; with the
    custody log's tail deleted everywhere and the local state lost, the log still shows it."""
    from test_escrow import World

    w = World(tmp_path, lab_key, str(tmp_path / "steward-vault"), None, None)
    ok(w.seal(minilm_dir))
    h = ok(w.lab("escrow", "handover", "minilm", "--steward", "steward", "--conditions",
                 w.conditions, "--json", "--quiet")).json()  # fmt: skip
    ok(w.steward("escrow", "accept", "minilm", "--identity", w.ids["steward"][0], "--quiet"))
    c = ok(w.lab("escrow", "challenge", "minilm", "--steward", "steward", "-n", "2",
                 "--json")).json()  # fmt: skip
    ok(w.steward("escrow", "respond", "minilm"))
    r = ok(w.lab("escrow", "check", "minilm", "--steward", "steward", "--json")).json()
    shown = ok(w.lab("log", "show", "minilm", "--json")).json()
    (kinds,) = shown.values()
    assert kinds["custody/handover"]["record"] == h["digest"]
    assert kinds["custody/challenge"]["record"] == c["digest"]
    assert kinds["custody/result"]["record"] == r["digest"]
    assert kinds["sealed"]["encrypted"] is True
    pub = f"{lab_key}.pub"
    for v in ("lab-vault", "steward-vault"):
        ok(wv("log", "verify", tmp_path / v, "--key", pub))
    ok(wv("log", "cosign", tmp_path / "steward-vault", "--log-key", pub, "--key",
          w.steward_key, "--state-dir", tmp_path / "sstate"))  # fmt: skip
    ok(wv("log", "verify", tmp_path / "steward-vault", "--key", pub, "--witness",
          f"{w.steward_key}.pub", "--require-witness"))  # fmt: skip
    # the tail of the custody log deleted on every replica: the log still names it
    ok(w.lab("escrow", "log", "minilm"))
    for v in ("lab-vault", "steward-vault"):
        records = sorted((tmp_path / v / "custody" / "minilm").rglob("*.json"))
        records[-1].unlink()
    one_error(w.lab("escrow", "log", "minilm"), 1, "minilm", "missing")  # the local state saw it
    fresh = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "new-machine")}  # state lost too
    one_error(wv("-c", w.lab_cfg, "escrow", "log", "minilm", env=fresh), 1,
              "custody log of minilm", "result record", r["digest"][:16], "missing")  # fmt: skip


def test_schema_examples_are_valid_canonical_statements():
    root = Path(__file__).resolve().parent.parent / "manifests/examples/log-statements.jsonl"
    kinds = set()
    for i, line in enumerate(root.read_bytes().splitlines()):
        kinds.add(st.parse(line, f"example {i}")["kind"])
    assert kinds == set(st.KINDS)


def test_deleted_audit_trail_is_found_from_the_log_when_local_state_is_lost(tmp_path, lab_key,
                                                                             minilm_dir):  # fmt: skip
    import shutil

    from conftest import write_config

    cfg = write_config(tmp_path / "wv.toml", lab_key, {
        "a": {"url": str(tmp_path / "a"), "role": "primary"}, "b": {"url": str(tmp_path / "b")}})
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    ok(wv("-c", cfg, "seal", minilm_dir, "--name", "minilm", "-q", env=env))
    ok(wv("-c", cfg, "audit", "--level", "metadata", env=env))
    ok(wv("-c", cfg, "audit-log", "verify", env=env))
    shutil.rmtree(tmp_path / "b" / "audits")
    fresh = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "new-machine")}
    r = wv("-c", cfg, "audit-log", "verify", "--json", env=fresh)
    assert r.code == 1, r.out + r.err
    out = r.json()
    assert not [p for p in out["a"]["problems"] if "preservation log" in p]
    (p,) = [p for p in out["b"]["problems"] if "preservation log" in p]
    assert "missing from the replica" in p


def test_show_and_the_card_say_what_the_log_holds(tmp_path, lab_key, minilm_dir):
    """`show --html` shows the log's latest statements for the bundle ("held on 2 replicas,
    last full audit ..."), all from verified log entries."""
    from conftest import ok, write_config, wv

    cfg = write_config(tmp_path / "lab.toml", lab_key, {
        "primary": {"url": str(tmp_path / "vault")},
        "mirror": {"url": str(tmp_path / "mirror")},
    }, audit={"state_dir": str(tmp_path / "state")})  # fmt: skip
    ok(wv("-c", cfg, "seal", minilm_dir, "--name", "m", "--quiet"))
    ok(wv("-c", cfg, "audit", "--level", "full"))
    log = ok(wv("-c", cfg, "show", "m", "--json")).json()["log"]
    assert log["held_on"] == ["mirror", "primary"]
    assert log["last_full_audit"] and log["sealed"]
    assert log["checkpoint"]["size"] >= 4
    card = tmp_path / "card.html"
    ok(wv("-c", cfg, "show", "m", "--html", card))
    page = card.read_text()
    assert "Preservation log" in page and "2 replicas: mirror, primary" in page


def test_the_stewards_custody_events_reach_the_labs_log(tmp_path, lab_key, minilm_dir):
    """The steward never writes the lab's log; the lab anchors the steward's accept, response
    and release records in it when it reads the custody log."""
    from test_escrow import World

    w = World(tmp_path, lab_key, str(tmp_path / "steward-vault"), None, None)
    ok(w.seal(minilm_dir))
    ok(w.lab("escrow", "handover", "minilm", "--steward", "steward", "--conditions",
             w.conditions, "--quiet"))  # fmt: skip
    ok(w.steward("escrow", "accept", "minilm", "--identity", w.ids["steward"][0], "--quiet"))
    ok(w.steward("escrow", "release", "minilm", tmp_path / "out", "--share", w.share("alice"),
                 "--share", w.share("bob"), "--quiet"))  # fmt: skip
    ok(w.lab("escrow", "log", "minilm"))
    (kinds,) = ok(w.lab("log", "show", "minilm", "--json")).json().values()
    assert {"custody/handover", "custody/accept", "custody/release"} <= set(kinds), kinds
    release = sorted((tmp_path / "lab-vault/custody/minilm").glob("*.json"))[-1].read_bytes()
    assert kinds["custody/release"]["record"] == hashlib.sha256(release).hexdigest()
    ok(w.lab("escrow", "log", "minilm"))  # anchored once: nothing new to append
    (again,) = ok(w.lab("log", "show", "minilm", "--json")).json().values()
    assert again == kinds


def test_add_sealed_appends_what_a_failed_seal_append_missed(tmp_path, lab_key, other_key):
    """A bundle committed on the replicas but absent from the log (its seal's append failed)
    gets its `sealed` and `replicated` statements from `log add-sealed`, once; a bundle whose
    signature does not verify under the trusted keys gets none (exit 4)."""
    import shutil

    from conftest import write_config

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    cfg = write_config(tmp_path / "wv.toml", lab_key, {
        "a": {"url": str(tmp_path / "a"), "role": "primary"}, "b": {"url": str(tmp_path / "b")}})
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(50_000))
    ok(wv("-c", cfg, "seal", src, "--name", "one", "-q", env=env))

    def smuggle(name: str, key: Path, to=("a", "b")) -> None:
        """Commit `name` on replicas without the log knowing: sealed elsewhere, copied in."""
        (src / "w.bin").write_bytes(os.urandom(50_000))
        other = tmp_path / f"elsewhere-{name}-{to[0]}"
        ok(wv("seal", src, "--vault", other, "--key", key, "--name", name, "-q", env=env))
        for r in to:
            shutil.copytree(other / "bundles" / name, tmp_path / r / "bundles" / name)
            shutil.copytree(other / "objects", tmp_path / r / "objects", dirs_exist_ok=True)

    smuggle("two", lab_key)
    pub = f"{lab_key}.pub"
    size = ok(wv("log", "verify", tmp_path / "a", "--key", pub, "--json")).json()["size"]
    one_error(wv("-c", cfg, "log", "show", "two", env=env), 2, "two", "no statement")
    r = ok(wv("-c", cfg, "log", "add-sealed", "two", "one", "--trust", pub, "--json", env=env))
    assert [(o["name"], o["statements"], o["held_on"]) for o in r.json()] == [
        ("two", 3, ["a", "b"]), ("one", 0, ["a", "b"])]
    shown = ok(wv("-c", cfg, "log", "show", "two", "--json", env=env)).json()
    (bid,) = shown
    assert set(shown[bid]) == {"sealed", "replicated/a", "replicated/b"}
    assert shown[bid]["sealed"]["signer"] == keys.load_public_key(Path(pub)).key_id
    for rep in ("a", "b"):
        assert ok(wv("log", "verify", tmp_path / rep, "--key", pub, "--json")).json()["size"] \
            == size + 3
    again = ok(wv("-c", cfg, "log", "add-sealed", "two", "--trust", pub, env=env))
    assert "already in the log" in again.out
    assert ok(wv("log", "verify", tmp_path / "a", "--key", pub, "--json")).json()["size"] \
        == size + 3

    smuggle("forged", other_key)  # signed by a key the user does not trust
    one_error(wv("-c", cfg, "log", "add-sealed", "forged", "--trust", pub, env=env), 4,
              "forged", "no replica holds a bundle of this name that verifies")  # fmt: skip
    assert ok(wv("log", "verify", tmp_path / "a", "--key", pub, "--json")).json()["size"] \
        == size + 3

    smuggle("split", lab_key, ("a",))  # two different bundles of one name
    smuggle("split", lab_key, ("b",))
    one_error(wv("-c", cfg, "log", "add-sealed", "split", "--trust", pub, env=env), 5,
              "split", "2 different bundles")  # fmt: skip
    assert ok(wv("log", "verify", tmp_path / "a", "--key", pub, "--json")).json()["size"] \
        == size + 3


@pytest.mark.parametrize("reader", ["s3read", "fsspec"])
def test_audits_append_to_a_log_on_s3_without_forking_it(tmp_path, s3_server, lab_key, reader):
    """Each audit appends to the log on an S3 replica, from a fresh state directory (a new
    machine each time): every append lands and the log stays one tree. s3fs's listing cache
    once made a key written after a listing read as missing, so a writer took its own
    published tiles for leftovers and overwrote them with other entries (a fork)."""
    import secrets

    from conftest import s3_env, write_config

    bucket = s3_server.make_bucket("log-" + secrets.token_hex(4))
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"s3": {
        "url": f"s3://{bucket}/v", "storage_options": {"endpoint_url": s3_server.endpoint_url}}})
    env = {**s3_env(s3_server), "XDG_STATE_HOME": str(tmp_path / "state"),
           "WEIGHTVAULT_S3_READER": reader}  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(100_000))
    ok(wv("-c", cfg, "seal", src, "--name", "m", "-q", env=env))
    akey = tmp_path / "audit.key"
    ok(wv("keygen", akey))
    for i in range(3):
        r = ok(wv("-c", cfg, "audit", "--level", "full", "--key", akey, "--state-dir",
                  tmp_path / f"audit-state-{i}", env={**env, "XDG_STATE_HOME":
                                                      str(tmp_path / f"state-{i}")}))  # fmt: skip
        assert "not updated" not in r.err, r.err
    shown = ok(wv("-c", cfg, "log", "show", "--json", env=env)).json()
    assert shown["*"]["audited/s3"]["result"] == "ok"
    pub = f"{lab_key}.pub"
    size = ok(wv("-c", cfg, "log", "verify", "s3", "--key", pub, "--json", env=env)).json()["size"]
    assert size == 2 + 3
