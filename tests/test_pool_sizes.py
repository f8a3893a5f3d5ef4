"""What a command learns of a replica's pool grows with the bundle it asks about, never with
the pool: `pool_sizes` lists a short pool, and asks about each key once the pool is long
(replicate, status, a new version and amend all go through it)."""

from __future__ import annotations

import os
import random

import pytest

from weightvault.archive.replicate import bundle_state, replicate
from weightvault.archive.seal import SealOptions, seal
from weightvault.archive.versions import amend
from weightvault.errors import IntegrityError
from weightvault.format import keys
from weightvault.storage import vault as vaultmod
from weightvault.storage.store import LocalStore
from weightvault.storage.vault import POOL, pool_key, pool_sizes


class Counting(LocalStore):
    """A local store that counts the pool keys its listings hand out and its size() calls."""

    listed = 0
    sized = 0

    def iter_list(self, prefix):
        for item in super().iter_list(prefix):
            Counting.listed += 1
            yield item

    def size(self, key):
        Counting.sized += 1
        return super().size(key)


@pytest.fixture
def counting():
    Counting.listed = Counting.sized = 0
    return Counting


def _pool(root, n: int) -> LocalStore:
    store = Counting(root, create=True)
    for i in range(n):
        store.put_bytes(pool_key(f"{i:064x}"), b"x" * (i % 7))
    return store


def test_a_short_pool_is_listed_and_nothing_is_asked_per_key(tmp_path, counting):
    store = _pool(tmp_path / "v", 30)
    want = [pool_key(f"{i:064x}") for i in (0, 5, 29, 31)]  # 31 is not there
    counting.listed = counting.sized = 0
    assert pool_sizes(store, want) == {want[0]: 0, want[1]: 5, want[2]: 29 % 7}
    assert counting.listed == 30 and counting.sized == 0


def test_a_long_pool_is_not_listed_to_its_end(tmp_path, counting, monkeypatch):
    monkeypatch.setattr(vaultmod, "POOL_LIST_LIMIT", 10)
    store = _pool(tmp_path / "v", 200)
    want = [pool_key(f"{i:064x}") for i in (3, 150, 199, 500)]
    counting.listed = counting.sized = 0
    got = pool_sizes(store, want)
    everything = dict(LocalStore(tmp_path / "v").list(POOL))
    assert got == {k: everything[k] for k in want if k in everything}
    assert counting.listed <= 17 and counting.sized == len(want)  # 4 x 4 keys, then one each
    assert pool_sizes(store, []) == {}


def test_replicate_status_versions_and_amend_on_a_long_pool(tmp_path, monkeypatch):
    """The per-key path end to end: replicate copies exactly what the target lacks, status
    sees the copy complete, a new version names the unchanged chunks again, amend checks the
    objects it keeps."""
    monkeypatch.setattr(vaultmod, "POOL_LIST_LIMIT", 1)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    sk = keys.generate(tmp_path / "k.key")
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    for i in range(3):
        (src / f"w{i}.bin").write_bytes(rng.randbytes(300_000))
    a = LocalStore(tmp_path / "a", create=True)
    b = LocalStore(tmp_path / "b", create=True)
    r1 = seal(str(src), a, sk, SealOptions(name="m", chunk_size=64 << 10))
    # the target already holds some of the objects (an earlier, interrupted copy)
    objects = sorted(k for k, _ in a.iter_list(POOL))
    for k in objects[::2]:
        b.put_bytes(k, a.read_bytes(k, 1 << 20))
    rep = replicate([a], b, "m", [sk.public])
    copied = sorted(e.key for e in rep.events if e.key.startswith(POOL + "/"))
    assert copied == sorted(set(objects) - set(objects[::2])) and rep.committed_now
    assert bundle_state(b, "m", r1.bundle, [sk.public]).state == "complete"
    os.remove(tmp_path / "b" / objects[1])
    state = bundle_state(b, "m", r1.bundle, [sk.public])
    assert (state.state, state.missing) == ("incomplete", 1)
    (src / "w1.bin").write_bytes(rng.randbytes(300_000))  # one file changes
    r2 = seal(str(src), a, sk, SealOptions(name="m-v2", supersedes="m", chunk_size=64 << 10,
                                          trusted=[sk.public]))  # fmt: skip
    assert r2.files_reused == 2
    later = tmp_path / "later.jsonl"
    later.write_text('{"role": "interviewer", "content": "Anything else?", '
                     '"time": "2026-01-05T10:00:00Z"}\n'
                     '{"role": "model", "content": "No.", "time": "2026-01-05T10:01:00Z"}\n')  # fmt: skip
    plan = [("interview", later, "record/interviews/later.jsonl")]
    r3 = amend(a, "m-v2", sk, [sk.public], plan)
    assert r3.name != "m-v2"
    gone = next(k for k in objects if k not in set(objects[::2]))  # held by v1 and v2 alike
    os.remove(tmp_path / "a" / gone)  # amend refuses to name an object that is gone
    with pytest.raises(IntegrityError, match="missing"):
        amend(a, "m-v2", sk, [sk.public], plan, name="m-v2b")
