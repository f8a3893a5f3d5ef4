"""The bag's tag files are read as streams (issue 8): what verify reports, and that its memory
does not grow with the size of an unsigned tag file."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from weightvault.archive.seal import SealOptions, seal
from weightvault.archive.verify import MAX_UNKNOWN, check_bag
from weightvault.errors import CorruptData
from weightvault.format import bag, keys
from weightvault.storage.opener import open_store
from weightvault.storage.vault import Vault


def lines(text: bytes) -> list[tuple[int, str]]:
    return list(bag.iter_lines(io.BytesIO(text), "t"))


@pytest.mark.parametrize(
    "text",
    [b"", b"a\nb\n", b"a\r\nb", b"a\rb\r\n\nc", b"\n\n", b"x\x0by\x0cz\n",
     "a\u2028b\x85c\u2029\nd".encode(), b"last line without newline"],
)  # fmt: skip
def test_lines_are_numbered_as_splitlines_of_the_whole(text: bytes) -> None:
    assert lines(text) == list(enumerate(text.decode().splitlines(), 1))


def test_tag_file_limits() -> None:
    with pytest.raises(CorruptData, match="t: not UTF-8"):
        lines(b"ok\n\xff\n")
    with pytest.raises(CorruptData, match="t: line 2 is longer than 65536 bytes"):
        lines(b"ok\n" + b"x" * (bag.MAX_LINE + 1))
    with pytest.raises(CorruptData, match="t: larger than the 10 bytes allowed"):
        list(bag.iter_lines(io.BytesIO(b"12345\n12345\n"), "t", limit=10))


def test_parse_manifest() -> None:
    d = "0" * 64
    assert bag.parse_manifest(f"{d}  data/a%25b\r\n\n{d} data/c%0A\n".encode(), "m") == {
        "data/a%b": d, "data/c\n": d}  # fmt: skip
    with pytest.raises(CorruptData, match="m: line 2 lists 'data/a' twice"):
        bag.parse_manifest(f"{d}  data/a\n{d}  data/a\n".encode(), "m")
    with pytest.raises(CorruptData, match="m: line 1 is not '<digest> <path>'"):
        bag.parse_manifest(b"not a line\n", "m")


def test_parse_info() -> None:
    text = b"A: 1\nB: two\n  more\n\tand more\nA: 3\n"
    assert bag.parse_info(text, "i") == {"A": "3", "B": "two more and more"}
    assert list(bag.iter_info(io.BytesIO(text), "i")) == [
        ("A", "1"), ("B", "two more and more"), ("A", "3")]  # fmt: skip
    with pytest.raises(CorruptData, match="i: line 2 is not 'Label: value'"):
        bag.parse_info(b"A: 1\nno label\n", "i")
    with pytest.raises(CorruptData, match="i: line .* the value of 'B' is longer than"):
        bag.parse_info(b"B: x\n" + b" continued\n" * 10_000, "i")


def test_file_digests() -> None:
    assert bag.file_digests(io.BytesIO(b"abc"), "f") == (3, *bag.digests(b"abc"))
    with pytest.raises(CorruptData, match="f: larger than the 2 bytes allowed"):
        bag.file_digests(io.BytesIO(b"abc"), "f", limit=2)


@pytest.fixture
def sealed(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 4}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 64)
    key = keys.generate(tmp_path / "k")
    store = open_store(str(tmp_path / "vault"), create=True)
    seal(str(model), store, key, SealOptions(name="m"))
    vault = Vault(store)
    return vault, vault.load("m", [key.public]), tmp_path / "vault" / "bundles" / "m"


def details(problems) -> list[str]:
    return [f"{Path(p.where).name}: {p.detail}" for p in problems]


def test_clean_bag_has_no_problems(sealed) -> None:
    vault, b, _ = sealed
    assert check_bag(vault, b) == []


FIXED = "differs from the bytes the signed manifest fixes (FORMAT.md section 3)"


def test_unknown_paths_make_the_payload_manifest_differ(sealed) -> None:
    """Format version 4: every tag file follows from the signed manifest and the signature,
    so lines naming unknown paths make manifest-sha256.txt differ from those bytes (one
    problem, however many lines)."""
    vault, b, bundle = sealed
    p = bundle / "manifest-sha256.txt"
    extra = "".join(f"{'0' * 64}  data/objects/x{i:05d}\n" for i in range(MAX_UNKNOWN + 50))
    p.write_bytes(p.read_bytes() + extra.encode())
    assert details(check_bag(vault, b)) == [f"manifest-sha256.txt: {FIXED}"]


def test_tag_file_problems(sealed) -> None:
    vault, b, bundle = sealed
    (bundle / "bagit.txt").write_bytes(b"BagIt-Version: 0.97\n")
    m256 = bundle / "manifest-sha256.txt"
    first = m256.read_bytes().splitlines(keepends=True)[0]
    m256.write_bytes(m256.read_bytes() + first)
    (bundle / "bag-info.txt").write_bytes(b"Payload-Oxum: 1.1\n")
    got = details(check_bag(vault, b))
    assert got == [f"manifest-sha256.txt: {FIXED}", f"bagit.txt: {FIXED}",
                   f"bag-info.txt: {FIXED}"]  # fmt: skip
    m256.unlink()
    got = details(check_bag(vault, b))
    assert "manifest-sha256.txt: missing" in got


def test_a_manifest_the_format_does_not_have_is_reported(sealed) -> None:
    vault, b, bundle = sealed
    for name in ("manifest-sha512.txt", "tagmanifest-md5.txt"):
        (bundle / name).write_bytes(b"")
    got = details(check_bag(vault, b))
    assert got == [f"{n}: file in the bag that the signed manifest does not name"
                   for n in ("manifest-sha512.txt", "tagmanifest-md5.txt")]  # fmt: skip


def test_memory_does_not_grow_with_a_tag_file(sealed) -> None:
    """A 32 MiB manifest-sha256.txt of unknown paths: verify's bag check holds a line, not the
    file (it used to hold the bytes, the text, the lines and every path: about 11x the file)."""
    vault, b, bundle = sealed
    line = "%064x  data/objects/%040d\n"
    with open(bundle / "manifest-sha256.txt", "w") as f:
        for i in range(0, (32 << 20) // len(line % (0, 0)), 1000):
            f.write("".join(line % (j, j) for j in range(i, i + 1000)))
    tracemalloc.start()
    try:
        problems = check_bag(vault, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MiB"
    assert len(problems) < MAX_UNKNOWN + 20
