"""Unit and property tests of the pure pieces: paths, canonical JSON, manifest invariants,
chunk plans, and the ordered pipeline."""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.archive import pipeline
from weightvault.errors import CorruptData, InputError, WeightvaultError
from weightvault.format import canon, chunking
from weightvault.format.manifest import Manifest
from weightvault.format.paths import check_relpath, check_unique

BAD_PATHS = {
    "../etc/passwd": "'..'",
    "a/../../b": "'..'",
    "/etc/passwd": "absolute",
    "a\\b": "backslash",
    "a\x00b": "NUL",
    "a\nb": "control",
    "C:evil": "drive letter",
    "a//b": "empty",
    "./a": "'.'",
    "nul": "device",
    "sub/COM1.txt": "device",
    "aux.json": "device",
    "trailing./x": "ends with",
    "x" * 300: "255 bytes",
    "cafe\u0301": "NFC",
    "ab:c": "':'",
    "what?.txt": "'?'",
    "x\x85y": "control",
    "CON .txt": "device",
}


@pytest.mark.parametrize("path,why", BAD_PATHS.items())
def test_unsafe_paths_rejected(path, why):
    with pytest.raises(CorruptData, match="unsafe path") as e:
        check_relpath(path, "m")
    assert why in str(e.value)


@pytest.mark.parametrize("path", ["model.safetensors", "1_Pooling/config.json", "a/b/c.d",
                                  "unicodé/文件.bin", "a b/c"])  # fmt: skip
def test_safe_paths_accepted(path):
    assert check_relpath(path, "m") == path


@pytest.mark.parametrize("paths,msg", [
    (["a", "a"], "duplicate"),
    (["Model.bin", "model.bin"], "differ only in case"),
    (["a", "a/b"], "is a file and a directory"),
])  # fmt: skip
def test_colliding_paths(paths, msg):
    with pytest.raises(CorruptData, match=msg):
        check_unique(paths, "m")


@given(st.text(max_size=40))
def test_path_check_never_raises_anything_else(p):
    try:
        check_relpath(p, "m")
    except CorruptData:
        pass


def test_canonical_json_is_jcs_for_our_documents():
    assert canon.canonical({"b": [1, "é\n"], "a": {"z": None, "y": True}}) == (
        '{"a":{"y":true,"z":null},"b":[1,"é\\n"]}'.encode()
    )
    with pytest.raises(ValueError):
        canon.canonical({"x": 1.5})


def _old_canonical(obj):
    """The canonical encoder before the bytes-level one (0.4): check, json.dumps, encode."""

    def check(o, depth):
        if depth > canon.MAX_DEPTH:
            raise ValueError("document nested too deeply")
        if isinstance(o, float):
            raise ValueError("floats")
        if isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str) or not k.isascii():
                    raise ValueError("key")
                check(v, depth + 1)
        elif isinstance(o, list):
            for v in o:
                check(v, depth + 1)

    check(obj, 0)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _same_as_old(doc) -> None:
    try:
        want = _old_canonical(doc)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        with pytest.raises(type(e)):
            canon.canonical(doc)
        return
    assert canon.canonical(doc) == want
    assert bytes(canon.encode(doc, headroom=7)) == bytes(7) + want


_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63)
            | st.text() | st.text(alphabet="\"\\\x00\x1f\x7f\u2028\u2029\ud800\U0001f600é/<>")
            | st.sampled_from([1.5, (1, "t")]))  # fmt: skip
_keys = st.text(max_size=6) | st.sampled_from(["a", "é", "\t", "b\"", "", "0"])
_docs = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=6)
                     | st.dictionaries(_keys, kids, max_size=6), max_leaves=40)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(_docs)
def test_bytes_encoder_equals_the_old_canonical_form(doc):
    _same_as_old(doc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="a\\\"\ud800\udbff\udc00\udfff\U0001f600é"), max_size=4),
       st.booleans())
def test_lone_surrogates_rejected_exactly_as_before(strings, ascii_):
    """parse re-encodes a document (to find lone surrogates) only when its text holds a
    \\uD8-\\uDF escape: the same verdicts as re-encoding every document."""
    text = json.dumps({"s": strings}, ensure_ascii=ascii_)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a lone surrogate written raw is not UTF-8 at all
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        lone = False
    except UnicodeEncodeError:
        lone = True
    if lone:
        with pytest.raises(CorruptData, match="lone surrogate"):
            canon.parse(data, "doc")
    else:
        assert canon.parse(data, "doc") == json.loads(text)  # escaped pairs join up


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 1025, 3000])
def test_bytes_encoder_batches_long_lists_like_one_dump(n):
    rows = [{"offset": i, "length": 2**40 + i, "object": f"{i:064x}", "codec": "zstd"}
            if i % 3 else i for i in range(n)]  # fmt: skip
    rows[n // 2:n // 2] = [{"nested": [{"x": "é"}]}, [], {}, "s"]
    _same_as_old({"files": [{"chunks": rows, "path": "a"}], "objects": rows, "n": n})


@pytest.mark.parametrize("depth", [30, 31, 32, 33, 34])
def test_bytes_encoder_depth_limit_as_before(depth):
    for leaf in (1, {}, [], {"a": 1}, [1]):
        for parity in (0, 1):
            doc = leaf
            for i in range(depth):
                doc = [doc] if i % 2 == parity else {"k": doc}
            _same_as_old(doc)
            _same_as_old([doc, {"x": doc}])


@pytest.mark.parametrize("doc,msg", [
    (b'{"a":1,"a":2}', "duplicate key"),
    (b'{"a":NaN}', "NaN"),
    (b'{"a":1.0}', "floating point"),
    (b"[" * 50 + b"]" * 50, "nested deeper"),
    (b"[" * 100000 + b"]" * 100000, "recursion|nested"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"a":', "not valid JSON"),
])  # fmt: skip
def test_hostile_json_rejected(doc, msg):
    with pytest.raises(CorruptData, match=msg):
        canon.parse(doc, "doc")


def test_oversized_json_rejected_before_parsing():
    with pytest.raises(CorruptData, match="larger than"):
        canon.parse(b" " * 101, "doc", max_size=100)


@given(st.binary(max_size=200))
def test_json_reader_fuzz(data):
    try:
        canon.parse(data, "doc")
    except CorruptData:
        pass


def _doc(version: int = 3) -> dict:
    obj = hashlib.sha256(b"x").hexdigest()
    d = {
        "format": "weightvault-manifest", "format_version": version, "name": "m",
        "created": "2026-11-22T00:00:00Z", "tool": {"name": "weightvault", "version": "0"},
        "source": {"kind": "local", "path": "/x"},
        "chunking": {"target_size": 1 << 20, "piece_size": 1 << 20},
        "files": [{"path": "a.bin", "size": 10, "mode": 420, "sha256": "0" * 64, "chunks": [
            {"offset": 0, "length": 4, "codec": "raw", "object": obj},
            {"offset": 4, "length": 6, "codec": "zstd", "object": obj},
        ]}],
        "objects": [{"name": obj, "size": 4}],
        "encryption": None, "record": [],
    }  # fmt: skip
    if version < 3:  # versions 1 and 2 also carry SHA-512s and chunk digests
        d["objects"][0]["sha512"] = "3" * 128
        for i, c in enumerate(d["files"][0]["chunks"]):
            c["sha256"] = str(i + 1) * 64
    return d


@pytest.mark.parametrize("version", [1, 3])
def test_valid_manifest_round_trips(version):
    m = Manifest.from_doc(_doc(version))
    assert Manifest.parse(m.raw, "m").bundle_id == hashlib.sha256(m.raw).hexdigest()


def _mutate(fn, version: int = 3):
    d = _doc(version)
    fn(d)
    return d


STRUCTURE = [
    (lambda d: d["files"][0]["chunks"][1].update(offset=3), "overlap or leave a gap"),
    (lambda d: d["files"][0]["chunks"][1].update(offset=5), "overlap or leave a gap"),
    (lambda d: d["files"][0].update(size=11), "chunks cover 10 bytes"),
    (lambda d: d["files"][0]["chunks"][0].update(object="f" * 64), "does not list"),
    (lambda d: d["objects"][0].update(size=5), "too large for 4 bytes of raw"),
    (lambda d: d["objects"][0].update(size=3), "size differs"),
    (lambda d: d["files"][0]["chunks"].pop(), "chunks cover 4 bytes"),
    (lambda d: d["files"].append(copy.deepcopy(d["files"][0])), "duplicate path"),
    (lambda d: d["files"][0].update(path="../x"), "unsafe path"),
    (lambda d: d["files"][0].update(path="/abs"), "unsafe path"),
    (lambda d: d.update(format_version=7), "format version 7 is not supported"),
    (lambda d: d.update(format_version=5), "format version 5 requires encryption"),
    (lambda d: d.update(extra=1), "schema"),
    (lambda d: d["files"][0]["chunks"][0].update(length=0), "schema"),
    (lambda d: d["files"][0]["chunks"][0].update(codec="lz4"), "schema"),
    (lambda d: d["source"].update(kind="encrypted"), "source says encrypted"),
]


@pytest.mark.parametrize("doc,msg", [
    *[(_mutate(fn, v), msg) for v in (1, 3) for fn, msg in STRUCTURE],
    (_mutate(lambda d: d.update(format_version=2), 1), "format version 2 requires encryption"),
    (_mutate(lambda d: d.update(encryption={"scheme": "x"}), 1),
     "format version 1 does not allow encryption"),
    (_mutate(lambda d: d.update(encryption={"scheme": "x"})), "schema"),
    # each version's digest set, exactly: no SHA-512 or chunk digest in 3, both required in 1
    (_mutate(lambda d: d["objects"][0].update(sha512="3" * 128)), "schema"),
    (_mutate(lambda d: d["files"][0]["chunks"][0].update(sha256="1" * 64)), "schema"),
    (_mutate(lambda d: d["objects"][0].pop("sha512"), 1), "schema"),
    (_mutate(lambda d: d["files"][0]["chunks"][0].pop("sha256"), 1), "schema"),
    (_mutate(lambda d: d.update(format_version=1)), "schema"),
    (_mutate(lambda d: d.update(format_version=3), 1), "schema"),
])  # fmt: skip
def test_manifest_invariants(doc, msg):
    raw = canon.canonical(doc)
    with pytest.raises(CorruptData, match=msg):
        Manifest.parse(raw, "m")


def test_non_canonical_manifest_rejected():
    raw = json.dumps(_doc(), indent=1).encode()
    with pytest.raises(CorruptData, match="canonical"):
        Manifest.parse(raw, "m")


@settings(max_examples=200)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.booleans(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=20))  # fmt: skip
def test_manifest_reader_fuzz(obj):
    """Any JSON yields a Manifest or the tool's own typed error, never another exception."""
    try:
        raw = json.dumps(obj).encode()
        Manifest.parse(raw, "m")
    except WeightvaultError:
        pass


def _safetensors(tmp_path, tensors: dict[str, tuple[str, int]], pad: int = 0):
    header, off = {}, 0
    for name, (dtype, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": [nbytes // chunking.ITEMSIZE[dtype]],
                        "data_offsets": [off, off + nbytes]}  # fmt: skip
        off += nbytes
    h = json.dumps(header).encode()
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + bytes(off + pad))
    return p, 8 + len(h)


def test_safetensors_plan_is_tensor_aligned_and_tiles_the_file(tmp_path):
    p, base = _safetensors(tmp_path, {"a": ("BF16", 10_000), "b": ("BF16", 6_000),
                                      "c": ("F32", 100_000), "d": ("I64", 64)}, pad=3)  # fmt: skip
    size = p.stat().st_size
    plan = chunking.plan(p, size, target=16_384)
    pos = 0
    for piece in plan:
        assert piece.offset == pos and 0 < piece.length <= 16_384
        if piece.dtype:
            assert piece.length % chunking.ITEMSIZE[piece.dtype] == 0
        pos += piece.length
    assert pos == size
    assert plan[0] == chunking.Piece(0, base, None)
    assert plan[1] == chunking.Piece(base, 16_000, "BF16")  # a and b grouped
    assert {pc.dtype for pc in plan} == {None, "BF16", "F32", "I64"}


def test_overlapping_tensors_rejected(tmp_path):
    h = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}).encode()  # fmt: skip
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + bytes(24))
    with pytest.raises(InputError, match="overlap"):
        chunking.plan(p, p.stat().st_size)


def test_fixed_chunks_for_other_files(tmp_path):
    assert chunking.plan(tmp_path / "x.bin", 10, target=4096) == [chunking.Piece(0, 10)]
    assert [p.length for p in chunking.plan(tmp_path / "x", 10_000, target=4096)] == [
        4096,
        4096,
        1808,
    ]
    assert chunking.plan(tmp_path / "x", 0) == []


def test_pipeline_orders_lane_and_bounds_open_chunks():
    seen: list[tuple[int, bytes]] = []
    open_now, peak = [0], [0]
    lock = threading.Lock()

    class L(pipeline.Lane):
        def piece(self, job, data):
            seen.append((job, data))

        def end(self, job):
            with lock:
                open_now[0] -= 1

    def work(job, emit):
        with lock:
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
        for i in range(3):
            emit(bytes([job, i]))
        return job * 2

    assert pipeline.run(list(range(50)), work, lane=L(), workers=4, window=3) == [
        j * 2 for j in range(50)
    ]
    assert seen == [(j, bytes([j, i])) for j in range(50) for i in range(3)]
    assert peak[0] <= 3


def test_pipeline_lane_budget_bounds_queued_bytes_and_never_stalls_the_head():
    """Workers ahead of a slow lane stop once `budget` bytes wait for it; the job the lane is
    consuming always moves on, even with pieces bigger than the whole budget (no deadlock)."""
    piece, budget, workers = 1000, 2500, 3
    queued, peak = [0], [0]
    lock = threading.Lock()

    class L(pipeline.Lane):
        def piece(self, job, data):
            time.sleep(0.002)
            with lock:
                queued[0] -= len(data)

    def work(job, emit):
        n = 8000 if job % 5 == 0 else piece  # one piece larger than the budget now and then
        for _ in range(4):
            emit(bytes(n))
            with lock:  # counted once admitted (the lane may have had it already: a low peak)
                queued[0] += n
                peak[0] = max(peak[0], queued[0])
        return job

    jobs = list(range(40))
    assert pipeline.run(jobs, work, lane=L(), workers=workers, budget=budget) == jobs
    # the budget, or a single piece bigger than it, plus one piece being admitted
    assert peak[0] <= 8000 + 8000
    assert queued[0] == 0


def test_pipeline_short_jobs_do_not_wait_for_a_long_one():
    """Uneven jobs (tensor-aligned chunks): while the lane is held by a long job, a worker
    goes on through later short jobs within the byte budget instead of idling."""
    long_started, done_while_long = threading.Event(), []
    long_done = threading.Event()

    class L(pipeline.Lane):
        pass

    def work(job, emit):
        if job == 0:
            long_started.set()
            for _ in range(50):
                time.sleep(0.01)
                emit(b"x" * 10)
            long_done.set()
        else:
            long_started.wait()
            emit(b"y" * 10)
            if not long_done.is_set():
                done_while_long.append(job)
        return job

    assert pipeline.run(list(range(6)), work, lane=L(), workers=2, budget=1 << 20) == list(range(6))
    assert len(done_while_long) >= 3, done_while_long


def test_pipeline_first_error_cancels_and_propagates():
    def work(job, emit):
        if job == 5:
            raise InputError("boom at 5")
        emit(b"x")
        return job

    class L(pipeline.Lane):
        pass

    with pytest.raises(InputError, match="boom at 5"):
        pipeline.run(list(range(100)), work, lane=L(), workers=2)


def test_finisher_bounds_pending_steps_and_raises_the_first_failure():
    running, peak = [0], [0]
    lock = threading.Lock()
    done: list[int] = []

    def step(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        done.append(i)

    f = pipeline.Finisher(threads=4, pending=2)
    for i in range(10):
        f.submit(lambda i=i: step(i))
    f.drain()
    assert sorted(done) == list(range(10)) and peak[0] <= 2

    def fail():
        raise InputError("disk said no")

    f = pipeline.Finisher(threads=1, pending=1)
    f.submit(fail)
    with pytest.raises(InputError, match="disk said no"):  # at the latest, when drained
        for _ in range(50):
            f.submit(lambda: time.sleep(0.001))
        f.drain()


# --- the local store's commit lock -------------------------------------------------------------


def test_local_lock_excludes_and_leaves_no_file(tmp_path):
    """Holders remove the lock file before unlocking (so a vault does not collect one per
    bundle): exclusion must survive that, including a waiter that locked the removed file."""
    import subprocess
    import sys

    from weightvault.storage.store import TMP, LocalStore

    store = LocalStore(tmp_path / "v", create=True)
    inside, most, counter = [0], [0], [0]
    guard = threading.Lock()

    def hold() -> None:
        for _ in range(40):
            with store.lock("commit-x"):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                n = counter[0]
                time.sleep(0.0005)  # a lost update shows if two are inside at once
                counter[0] = n + 1
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (most[0], counter[0]) == (1, 240)
    assert not list((tmp_path / "v" / TMP).glob("*.lock"))

    # another process holding it keeps this one out until it lets go
    done = tmp_path / "done"
    code = ("import sys, time; from pathlib import Path; from weightvault.storage.store import LocalStore\n"
            "s = LocalStore(Path(sys.argv[1]))\n"
            "with s.lock('commit-x'):\n"
            "    print('held', flush=True); time.sleep(0.5); Path(sys.argv[2]).touch()\n")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "v"), str(done)],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "held"
        with store.lock("commit-x"):
            assert done.exists()  # we got in only once it was through
    finally:
        p.wait()
    assert not list((tmp_path / "v" / TMP).glob("*.lock"))
