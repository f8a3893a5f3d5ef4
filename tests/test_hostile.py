"""Hostile input (issue 8): crafted malicious bundles, each refused by `weightvault restore` and
`weightvault verify` with one clear line and a documented exit code, writing nothing outside
the destination, leaving no destination or temporary sibling behind, within a fixed time and
memory bound; plus property-based fuzzing of the decoders and the manifest and path checks.

The bundles are built by tests/hostile/build.py (one function per case, each documenting what
it forges and what weightvault must answer); tests/hostile/run.py runs the CLI under limits.
Cases marked `bug` there are strict xfails here: each is a defect in weightvault, described in
the case's reason.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hostile import build
from hostile.build import CASES, USAGE, Base, Expect
from hostile.run import PREFIX, Run, child_env, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from weightvault.archive.restore import restore
from weightvault.archive.verify import VerifyReport, verify
from weightvault.errors import CorruptData, WeightvaultError
from weightvault.format import fsplit
from weightvault.format import manifest as manifest_mod
from weightvault.format.codec import codec_names, iter_decode
from weightvault.format.keys import load_public_key
from weightvault.format.manifest import Manifest
from weightvault.format.paths import check_relpath, check_unique
from weightvault.storage.store import LocalStore

MAX_RSS = 400 << 20
TIMEOUT = 60.0


# --- running the cases -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    return build.seal_base(tmp_path_factory.mktemp("hostile") / "base")


Snapshot = dict[str, tuple]


def snapshot(root: Path, skip: set[str]) -> Snapshot:
    """Every entry under root (links not followed): type, size, mode and mtime."""
    out: Snapshot = {}
    for dirpath, dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        for n in dirs + files:
            st_ = os.lstat(os.path.join(dirpath, n))
            out[(rel / n).as_posix()] = (stat.S_IFMT(st_.st_mode), st_.st_size, st_.st_mode,
                                         st_.st_mtime_ns)  # fmt: skip
    return out


@dataclass(repr=False)
class Outcome:
    work: build.Work
    runs: dict[str, Run]
    before: Snapshot
    after: Snapshot
    out_left: list[str]  # what is left in the destination's parent
    tmp_left: list[str]  # what is left in the children's TMPDIR
    doc: dict | None  # the manifest as forged, when it parses

    def __repr__(self) -> str:  # cheap: pytest shows locals in failure reports
        return f"Outcome({self.work.root.name})"


class Outcomes(dict):
    def __repr__(self) -> str:
        return f"Outcomes({len(self)} cases)"


HEAVY = {"bag_manifest_huge", "fifo_object", "many_files", "manifest_oversized", "json_deep_20mb"}
COMMANDS = {"restore": ("restore",), "verify": ("verify", "--deep"), "shallow": ("verify",)}


def _jobs(case: build.Case, w: build.Work, base: Base):
    env = child_env(w.root / "tmp")
    common = ("--vault", w.vault, "--trust", base.pub)
    for label, expect in (("restore", case.restore), ("verify", case.verify),
                          ("shallow", case.shallow)):  # fmt: skip
        if expect is None:
            continue
        cmd, *opts = COMMANDS[label]
        args = (cmd, build.NAME, *((w.root / "out" / "dest",) if cmd == "restore" else ()),
                *opts, *common)  # fmt: skip
        yield label, args, env


def _prepare(name: str, base: Base, root: Path) -> build.Work:
    w = build.build(name, base, root / name)
    (w.root / "out").mkdir()
    (w.root / "tmp").mkdir()
    return w


@pytest.fixture(scope="module")
def outcomes(request, base, tmp_path_factory) -> dict[str, Outcome]:
    """Build and run every case selected in this session, the CLI calls in parallel."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_hostile_bundle"]  # fmt: skip
    root = tmp_path_factory.mktemp("cases")
    works = {n: _prepare(n, base, root) for n in selected}
    befores = {n: snapshot(w.root, {"out", "tmp"}) for n, w in works.items()}
    jobs = [(n, label, args, env) for n, w in works.items()
            for label, args, env in _jobs(CASES[n], w, base)]  # fmt: skip
    jobs.sort(key=lambda j: j[0] not in HEAVY)  # the slow ones first, overlapping the rest
    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as ex:
        futures = [(n, label, ex.submit(run_cli, *args, cwd=works[n].root, env=env,
                                        timeout=CASES[n].timeout or TIMEOUT))
                   for n, label, args, env in jobs]  # fmt: skip
        runs: dict[str, dict[str, Run]] = {n: {} for n in works}
        for n, label, fut in futures:
            runs[n][label] = fut.result()
    out = Outcomes()
    for n, w in works.items():
        doc = None
        if w.manifest_path.stat().st_size < 64 << 20:
            try:
                doc = json.loads(w.raw())
            except (ValueError, RecursionError):
                pass
        out[n] = Outcome(w, runs[n], befores[n], snapshot(w.root, {"out", "tmp"}),
                         sorted(os.listdir(w.root / "out")), sorted(os.listdir(w.root / "tmp")),
                         doc if isinstance(doc, dict) else None)  # fmt: skip
    return out


def check_run(r: Run, e: Expect, label: str) -> None:
    """One clean answer: in time, in memory, the expected exit code, and for a failure one
    'weightvault: error: ' line on stderr (or, for verify, a DAMAGED report on stdout)."""
    assert r.code is not None, f"{label} did not finish in time and was killed\n{r.describe()}"
    assert r.maxrss < MAX_RSS, f"{label} used {r.maxrss >> 20} MiB\n{r.describe()}"
    assert "Traceback" not in r.err, f"{label} crashed\n{r.describe()}"
    assert r.code in e.codes, f"{label}: exit {r.code}, expected {e.codes}\n{r.describe()}"
    if r.code == 0:
        return
    if r.err_lines or label == "restore":
        assert len(r.err_lines) == 1, f"{label}: not one error line\n{r.describe()}"
        assert r.err_lines[0].startswith(PREFIX), r.describe()
        assert not r.out.strip(), r.describe()
        assert e.text in r.err_lines[0], f"{label}: expected {e.text!r}\n{r.describe()}"
    else:
        assert r.code == 1 and r.out.startswith("DAMAGED: "), r.describe()
        assert e.text in r.out, f"{label}: expected {e.text!r}\n{r.describe()}"


def remove_tree(root: Path) -> None:
    """Delete without recursion (shutil.rmtree recurses once per directory level in 3.11)."""
    dirs, stack = [], [root]
    while stack:
        d = stack.pop()
        dirs.append(d)
        for entry in os.scandir(d):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for d in reversed(dirs):
        os.rmdir(d)


def check_restored(dest: Path, doc: dict) -> None:
    """Exactly the manifest's files, regular, with their sizes, digests and modes."""
    want = {f["path"]: f for f in doc["files"]}
    got = {}
    stack = [dest]  # iterative: rglob and os.walk recurse, and a case nests 1200 levels
    while stack:
        for entry in os.scandir(stack.pop()):
            p = Path(entry.path)
            assert not entry.is_symlink(), p
            if entry.is_file():
                got[p.relative_to(dest).as_posix()] = p
            else:
                assert entry.is_dir(), p
                stack.append(p)
    assert sorted(got) == sorted(want)
    for path, f in want.items():
        data = got[path].read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], path
        assert got[path].stat().st_mode & 0o777 == f["mode"], path


def _params(cli: bool):
    for name, c in CASES.items():
        if c.cli != cli:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {c.bug}")] if c.bug else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params(cli=True)))
def test_hostile_bundle(name: str, outcomes: dict[str, Outcome]) -> None:
    c, o = CASES[name], outcomes[name]
    for label in ("restore", "verify", "shallow"):
        expect = getattr(c, label)
        if expect is not None:
            check_run(o.runs[label], expect, label)
    if o.runs["restore"].code == 0:
        assert o.out_left == ["dest"]
        check_restored(o.work.root / "out" / "dest", o.doc)
        remove_tree(o.work.root / "out" / "dest")  # pytest's own cleanup recurses per level
    else:
        assert o.out_left == [], "a failed restore left a destination or temporary sibling"
    assert o.tmp_left == [], "scratch files left in TMPDIR"
    changed = {k for k in o.before.keys() | o.after.keys() if o.before.get(k) != o.after.get(k)}
    assert not changed, f"written outside the destination: {sorted(changed)[:10]}"


def _attempt(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except WeightvaultError as e:
        return e


def check_outcome(got, e: Expect, label: str) -> None:
    """The in-process counterpart of check_run: what the CLI would turn into its one line."""
    if isinstance(got, WeightvaultError):
        msg = str(got)
        assert got.exit_code in e.codes, f"{label}: {type(got).__name__} ({got.exit_code}): {msg}"
        assert "\n" not in msg and e.text in msg, f"{label}: expected {e.text!r}, got {msg!r}"
    elif isinstance(got, VerifyReport) and not got.ok:
        report = "\n".join(str(p) for p in got.problems)
        assert 1 in e.codes and e.text in report, f"{label}: expected {e.text!r}, got {report}"
    else:
        assert 0 in e.codes, f"{label}: succeeded, expected {e}"


@pytest.mark.parametrize("name", list(_params(cli=False)))
def test_hostile_bundle_in_process(name: str, base: Base, tmp_path: Path) -> None:
    c = CASES[name]
    w = build.build(name, base, tmp_path / name)
    (w.root / "out").mkdir()
    before = snapshot(w.root, {"out"})
    trusted = [load_public_key(base.pub)]
    dest = w.root / "out" / "dest"
    got = _attempt(restore, LocalStore(w.vault), build.NAME, dest, trusted)
    check_outcome(got, c.restore, "restore")
    if isinstance(got, WeightvaultError):
        assert os.listdir(w.root / "out") == [], "a failed restore left something behind"
    else:
        check_restored(dest, w.doc())
    for label, deep in (("verify", True), ("shallow", False)):
        if (e := getattr(c, label)) is not None:
            got = _attempt(verify, LocalStore(w.vault), build.NAME, trusted, deep=deep)
            check_outcome(got, e, label)
    assert snapshot(w.root, {"out"}) == before, "written outside the destination"


def test_every_case_is_documented() -> None:
    assert len(CASES) >= 40
    for name, c in CASES.items():
        assert c.doc and c.build.__doc__, name


# --- seal --interview with a 100 MB line ---------------------------------------------------------


def test_interview_line_of_100_mb(base: Base, tmp_path: Path) -> None:
    big = tmp_path / "interview.jsonl"
    with open(big, "wb") as f:
        f.write(b'{"role": "interviewer", "time": "2026-01-01T00:00:00Z", "content": "')
        piece = b"x" * (1 << 20)
        for _ in range(100):
            f.write(piece)
        f.write(b'"}\n')
    (tmp_path / "tmp").mkdir()
    vault = tmp_path / "vault"
    r = run_cli("seal", base.model, "--vault", vault, "--key", base.key, "--name", "iv",
                "--interview", big, cwd=tmp_path, env=child_env(tmp_path / "tmp"))  # fmt: skip
    check_run(r, Expect(USAGE, "interview.jsonl line 1: longer than 16 MiB"), "seal")
    assert r.seconds < 15, r.describe()  # fails fast: it stops reading after 16 MiB
    assert not list(vault.glob("bundles/*")), "nothing may be sealed"
    assert os.listdir(tmp_path / "tmp") == [], "the record's scratch copy must be removed"


# --- the manifest reader's size limit, without a 256 MiB file -----------------------------------


def test_manifest_size_limit(base: Base, monkeypatch) -> None:
    raw = (base.vault / "bundles" / base.name / "data" / "weightvault.json").read_bytes()
    assert Manifest.parse(raw, "m").name == base.name
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST", len(raw) - 1)
    with pytest.raises(CorruptData, match=f"m: {len(raw)} bytes is larger than the {len(raw) - 1}"):
        Manifest.parse(raw, "m")


def test_store_reads_at_most_the_limit(tmp_path: Path) -> None:
    """read_bytes refuses an oversized file after reading the limit plus one buffer at most."""
    (tmp_path / "tmp").mkdir()
    with open(tmp_path / "big", "wb") as f:
        f.truncate(64 << 20)
    store = LocalStore(tmp_path)
    with pytest.raises(CorruptData, match="larger than the 1000 bytes allowed"):
        store.read_bytes("big", 1000)
    assert store.counters.bytes_read <= (1 << 20) + 1001


# --- property-based fuzzing ----------------------------------------------------------------------

CODECS = sorted(codec_names())
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def encode(codec: str, plain: bytes) -> bytes:
    if codec == "raw":
        return plain
    if codec == "zstd":
        return zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
            plain
        )
    dtype = {v: k for k, v in fsplit._CODECS.items()}[codec]
    return b"".join(fsplit.encode_block(dtype, plain[i : i + fsplit.BLOCK_MAX])
                    for i in range(0, len(plain), fsplit.BLOCK_MAX))  # fmt: skip


@st.composite
def mutated(draw, blob: bytes, tokens: list[bytes] | None = None) -> tuple[bytes, bool]:
    """`blob` after 0-4 random edits: flip, truncate, insert, delete, duplicate, token."""
    b = bytearray(blob)
    n = draw(st.integers(0, 4))
    for _ in range(n):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "dup", "token"]))
        pos = draw(st.integers(0, len(b)))
        if op == "flip" and pos < len(b):
            b[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del b[pos : pos + draw(st.integers(1, 64))]
        elif op == "dup":
            b[pos:pos] = b[pos : pos + draw(st.integers(1, 64))]
        elif op == "token" and tokens:
            b[pos:pos] = draw(st.sampled_from(tokens))
    return bytes(b), bytes(b) != blob


@FUZZ
@given(data=st.data(), codec=st.sampled_from([*CODECS, "lz4", "fsplit-f64", "fsplit-", ""]))
def test_iter_decode_yields_exactly_length_or_corrupt(data, codec: str) -> None:
    """Any stored bytes, any declared length: exactly `length` bytes, or CorruptData."""
    if data.draw(st.booleans()) and codec in CODECS:
        plain = data.draw(st.binary(max_size=3000))
        stored, changed = data.draw(mutated(encode(codec, plain)))
        length = len(plain) + data.draw(st.sampled_from([0, 0, 0, -1, 1, -2, 2, 1000]))
        length = max(length, 0)
    else:
        plain, stored, changed = None, data.draw(st.binary(max_size=4096)), True
        length = data.draw(st.integers(0, 1 << 16))
    out = bytearray()
    try:
        for piece in iter_decode(codec, io.BytesIO(stored).read, length):
            out += piece
            assert len(out) <= length, "yielded more than the declared length"
    except CorruptData:
        return
    assert len(out) == length
    if plain is not None and not changed and length == len(plain):
        assert out == plain


@FUZZ
@given(data=st.data())
def test_iter_decode_fsplit_headers(data) -> None:
    """fsplit blocks with random header fields (lengths up to 2^32-1) and short payloads."""
    codec = data.draw(st.sampled_from([c for c in CODECS if c.startswith("fsplit-")]))
    size = 4 if codec == "fsplit-f32" else 2
    layout = {"fsplit-bf16": 1, "fsplit-f16": 2, "fsplit-f32": 3}[codec]
    u32 = st.one_of(st.integers(0, 64), st.sampled_from([fsplit.BLOCK_MAX, 2**32 - 1]),
                    st.integers(0, 2**32 - 1))  # fmt: skip
    head = struct.pack("<BBBI", 0xF5, 1, data.draw(st.sampled_from([layout, layout, 0, 9])),
                       data.draw(u32))  # fmt: skip
    desc = b"".join(struct.pack("<BI", data.draw(st.integers(0, 2)), data.draw(u32))
                    for _ in range(size))  # fmt: skip
    stored = head + desc + data.draw(st.binary(max_size=256))
    length = data.draw(st.one_of(st.integers(0, 64), st.integers(0, 1 << 30)))
    try:
        out = b"".join(iter_decode(codec, io.BytesIO(stored).read, length))
    except CorruptData:
        return
    assert len(out) == length


@pytest.fixture(scope="module")
def real_manifest(base: Base) -> bytes:
    return (base.vault / "bundles" / base.name / "data" / "weightvault.json").read_bytes()


JSON_TOKENS = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"0", b"-1", b"-0", b"1e5",
               b"1.5", b"NaN", b"Infinity", b"null", b"true", b"\\u0000", b"\\u00e9", b"\\n",
               b"9" * 30, b"9" * 5000, b'"a":1,', b"\xff", b"\xc3\xa9", b"\xe2\x80", b" ",
               b"[" * 40, b'"..', b'"/', b'"CON"', b'"path":"', b'"name":"n",']  # fmt: skip


@FUZZ
@given(data=st.data())
def test_manifest_parse_raises_only_weightvault_errors(real_manifest: bytes, data) -> None:
    """Mutated real manifests: parsed, or refused with a WeightvaultError, never a crash."""
    raw, _ = data.draw(mutated(real_manifest, JSON_TOKENS))
    try:
        Manifest.parse(raw, "fuzzed")
    except WeightvaultError:
        pass


def test_manifest_parse_lone_surrogate_in_path(real_manifest: bytes) -> None:
    raw = real_manifest.replace(b'"path":"rand.bin"', b'"path":"rand\\udc80.bin"')
    assert raw != real_manifest
    with pytest.raises(CorruptData):
        Manifest.parse(raw, "m")


def test_manifest_parse_lone_surrogate_elsewhere(real_manifest: bytes) -> None:
    raw = real_manifest.replace(b'"kind":"local","path":"', b'"kind":"local","path":"\\udc80')
    assert raw != real_manifest
    with pytest.raises(CorruptData):
        Manifest.parse(raw, "m")


NASTY_PARTS = ["", ".", "..", "...", "a", "CON", "con.txt", "aux ", "COM\u00b9", "LPT9.x", "nul",
               "conin$", "x" * 255, "x" * 256, "é", "e\u0301", "a ", "a.", " a", "C:", "c:x",
               "\\", "a\\b", "\x00", "\x7f", "\x85", "<", ">", ":", '"', "|", "?", "*", "ß",
               "SS", "İ", "\u2028", "\ufeff", "%2e%2e", "~", "$"]  # fmt: skip
PATHS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=64),
    st.lists(st.sampled_from(NASTY_PARTS), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(NASTY_PARTS), min_size=1, max_size=6).map("\\".join),
    st.builds(lambda p: "/" + p, st.text(max_size=8)),
    st.text(alphabet="a/", min_size=4000, max_size=4200),
)


def _safe(p: str) -> None:
    """What an accepted path must be: relative, no traversal, no separators but `/`."""
    parts = p.split("/")
    assert p and not p.startswith("/") and "\\" not in p and "\x00" not in p
    assert all(part not in ("", ".", "..") for part in parts)
    assert len(p.encode()) <= 4096 and all(len(part.encode()) <= 255 for part in parts)


@FUZZ
@given(p=st.one_of(PATHS, st.none(), st.integers(), st.binary(max_size=8),
                   st.lists(st.text(max_size=4), max_size=2)))  # fmt: skip
def test_check_relpath_raises_only_corrupt_data(p) -> None:
    try:
        got = check_relpath(p, "fuzzed")
    except CorruptData:
        return
    assert got == p
    _safe(p)


@FUZZ
@given(paths=st.lists(PATHS, max_size=6))
def test_check_unique_raises_only_corrupt_data(paths: list[str]) -> None:
    try:
        check_unique(paths, "fuzzed")
    except CorruptData:
        return
    folded = [p.casefold() for p in paths]
    assert len(set(folded)) == len(folded)


@settings(max_examples=50, deadline=None)
@given(p=st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll"]), min_size=1))
@example("rand\udc80.bin")
def test_check_relpath_lone_surrogates(p: str) -> None:
    try:
        check_relpath(p, "fuzzed")
    except CorruptData:
        return


MANIFEST_KEYS = ["path", "size", "mode", "sha256", "chunks", "offset", "length", "codec", "dtype",
                 "object", "name", "sha512", "files", "objects", "record", "role", "format",
                 "format_version", "encryption", "source", "kind", "extra"]  # fmt: skip
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 420, 511, 512, 2**30, 2**30 + 1, 2**31, 2**53 - 1, 2**53, -1]),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=16),
    st.sampled_from(NASTY_PARTS),
    st.sampled_from(["0" * 64, "f" * 64, "0" * 128, "raw", "zstd", "fsplit-bf16", "fsplit-f32",
                     "lz4", "BF16", "F16", "record/x", "record/../x", "weightvault-manifest"]),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(MANIFEST_KEYS), c,
                                                        max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def mutated_doc(draw, doc: dict) -> dict:
    """The document with 1-3 structural edits: a value replaced, a member or item removed, an
    item duplicated, a member added, anywhere in the tree."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        node = doc
        while True:
            keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            child = node[k]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            op = draw(st.sampled_from(["replace", "delete", "dup", "add"]))
            if op == "replace":
                node[k] = draw(JSON_VALUES)
            elif op == "delete":
                del node[k]
            elif op == "dup" and isinstance(node, list):
                node.insert(k, copy.deepcopy(child))
            elif op == "add" and isinstance(node, dict):
                node[draw(st.sampled_from(MANIFEST_KEYS))] = draw(JSON_VALUES)
            break
    return doc


@FUZZ
@given(data=st.data())
def test_manifest_check_raises_only_weightvault_errors(real_manifest: bytes, data) -> None:
    """Structurally edited real manifests, canonical and well-formed JSON, so that the schema
    and the invariant checks (paths, chunk tiling, objects, bounds) are what is exercised."""
    doc = data.draw(mutated_doc(json.loads(real_manifest)))
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        m = Manifest.parse(raw, "fuzzed")
    except WeightvaultError:
        return
    # accepted: then it holds every invariant FORMAT.md 4.3 and 7 require
    for f in m.files:
        _safe(f["path"])
        assert sum(c["length"] for c in f["chunks"]) == f["size"]
        assert all(c["object"] in m.objects for c in f["chunks"])


def test_harness_limits_apply_and_peak_memory_is_the_childs_own():
    """The bounds every hostile case runs under are really set in the child, and its peak
    RSS is its own even when this process is large (a forked child's would include ours)."""
    import subprocess
    import sys

    from hostile import run as harness

    ballast = bytearray(300 << 20)  # this process: 300 MiB more, all touched
    ballast[::4096] = b"\1" * len(ballast[::4096])
    code = ("import resource as r; print(r.getrlimit(r.RLIMIT_AS)[0], "
            "r.getrlimit(r.RLIMIT_NOFILE)[0], r.getrlimit(r.RLIMIT_FSIZE)[0], "
            "r.getrlimit(r.RLIMIT_CORE)[0])")  # fmt: skip
    p, report = harness.spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    out = p.stdout.read().decode().split()
    assert p.wait() == 0
    peak = harness.peak_rss(report)
    assert list(map(int, out)) == [harness.AS_LIMIT, min(harness.NOFILE, int(out[1])),
                                   harness.FSIZE, 0]  # fmt: skip
    assert 1 << 20 < peak < 100 << 20, peak
    del ballast
