"""BagIt 1.0 (RFC 8493) tag files for a bundle, written and read.

A bundle directory is a complete bag: bagit.txt, bag-info.txt, payload manifests over data/,
the weightvault.sig tag file, and tag manifests (tagmanifest-sha256.txt is written last and is
the commit marker). Format version 3 bags use SHA-256 only; versions 1 and 2 also SHA-512.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weightvault import __version__
from weightvault.errors import CorruptData

BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
PROFILE_IDS = {
    1: "urn:weightvault:bagit-profile:1",
    2: "urn:weightvault:bagit-profile:1",
    3: "urn:weightvault:bagit-profile:2",
    4: "urn:weightvault:bagit-profile:3",
    5: "urn:weightvault:bagit-profile:3",  # the same bag as version 4
    6: "urn:weightvault:bagit-profile:3",  # likewise
}  # by format version
ALGS_OLD = ("sha256", "sha512")  # format versions 1 and 2
ALGS = ("sha256",)  # format version 3
COMMIT_MARKER = "tagmanifest-sha256.txt"
MAX_TAG_FILE = 64 << 20
# A tag file line: a digest, spaces and a path (4096 bytes at most, 12 KiB percent-encoded)
MAX_LINE = 64 << 10
_LINE = re.compile(r"^([0-9a-f]+)[ \t]+(\S.*)$")


def algs(format_version: int) -> tuple[str, ...]:
    """The digest algorithms of a bundle's bag manifests, first the one that names objects."""
    return ALGS if format_version >= 3 else ALGS_OLD


def tag_files(algs: tuple[str, ...]) -> tuple[str, ...]:
    """The tag files a tag manifest lists (never a tag manifest)."""
    return ("bagit.txt", "bag-info.txt", *(f"manifest-{a}.txt" for a in algs), "weightvault.sig")


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the bag root, e.g. data/objects/<hex>
    size: int
    sha256: str
    sha512: str | None = None  # format versions 1 and 2 only


def manifest_text(entries: list[Entry], alg: str) -> bytes:
    lines = [f"{getattr(e, alg)}  {_encode_path(e.path)}\n" for e in sorted(entries, key=_k)]
    return "".join(lines).encode()


def _k(e: Entry) -> str:
    return e.path


def _encode_path(p: str) -> str:
    # RFC 8493 2.1.3: CR, LF and % in file paths are percent-encoded
    return p.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _decode_path(p: str) -> str:
    return p.replace("%0D", "\r").replace("%0A", "\n").replace("%0d", "\r").replace(
        "%0a", "\n").replace("%25", "%")  # fmt: skip


def bag_info(
    *, bundle_id: str, name: str, bagging_date: str, oxum_bytes: int, oxum_count: int,
    description: str, organization: str | None = None, format_version: int,
    agent: str | None = None,
) -> bytes:  # fmt: skip
    """`agent`: the Bag-Software-Agent (from format version 4 the manifest's `tool`, so that
    the file follows from the signed manifest; before, the running weightvault)."""
    fields = [
        ("BagIt-Profile-Identifier", PROFILE_IDS[format_version]),
        ("Bag-Software-Agent", agent or f"weightvault {__version__}"),
        ("Bagging-Date", bagging_date),
        ("External-Identifier", f"weightvault:bundle:{bundle_id}"),
        ("External-Description", description),
        ("Internal-Sender-Identifier", name),
        ("Payload-Oxum", f"{oxum_bytes}.{oxum_count}"),
    ]
    if organization:
        fields.insert(0, ("Source-Organization", organization))
    return "".join(f"{k}: {_one_line(v)}\n" for k, v in fields).encode()


def _one_line(v: str) -> str:
    return " ".join(v.split())


def digests(data: bytes, algs: tuple[str, ...] = ALGS) -> tuple[str, ...]:
    return tuple(hashlib.new(a, data).hexdigest() for a in algs)


def file_digests(f: BinaryIO, what: str, limit: int = MAX_TAG_FILE,
                 algs: tuple[str, ...] = ALGS) -> tuple:  # fmt: skip
    """(size, *digests in `algs` order) of a file read in pieces; CorruptData past `limit`."""
    hs, size = [hashlib.new(a) for a in algs], 0
    while data := f.read(1 << 20):
        size += len(data)
        if size > limit:
            raise CorruptData(f"{what}: larger than the {limit} bytes allowed")
        for h in hs:
            h.update(data)
    return size, *(h.hexdigest() for h in hs)


def tag_entries(files: dict[str, bytes], algs: tuple[str, ...] = ALGS) -> list[Entry]:
    return [Entry(p, len(b), *digests(b, algs)) for p, b in files.items()]


def iter_lines(f: BinaryIO, what: str, limit: int = MAX_TAG_FILE) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a tag file read from the binary file `f`, numbered and
    split as `str.splitlines` of the whole text would; CorruptData if it is not UTF-8, longer
    than `limit` bytes or has a line longer than MAX_LINE. Memory: one line, whatever the file."""
    n = total = 0
    while raw := f.readline(MAX_LINE + 1):
        total += len(raw)
        if total > limit:
            raise CorruptData(f"{what}: larger than the {limit} bytes allowed")
        if len(raw) > MAX_LINE:
            raise CorruptData(f"{what}: line {n + 1} is longer than {MAX_LINE} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptData(f"{what}: not UTF-8") from None
        for line in text.splitlines():
            n += 1
            yield n, line


def iter_manifest(f: BinaryIO, what: str) -> Iterator[tuple[int, str, str]]:
    """(line number, path, digest) of each entry of a (tag)manifest file, read line by line;
    CorruptData on anything malformed. Duplicates are the caller's to find."""
    for n, line in iter_lines(f, what):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise CorruptData(f"{what}: line {n} is not '<digest> <path>'")
        yield n, _decode_path(m.group(2)), m.group(1)


def parse_manifest(text: bytes, what: str) -> dict[str, str]:
    """path -> digest from a (tag)manifest file; CorruptData on anything malformed."""
    out: dict[str, str] = {}
    for n, path, digest in iter_manifest(io.BytesIO(text), what):
        if path in out:
            raise CorruptData(f"{what}: line {n} lists {path!r} twice")
        out[path] = digest
    return out


def iter_info(f: BinaryIO, what: str) -> Iterator[tuple[str, str]]:
    """(label, value) of each bag-info.txt field, continuation lines joined, read line by line;
    CorruptData on anything malformed or on a value longer than MAX_LINE."""
    key: str | None = None
    parts: list[str] = []
    size = 0
    for n, line in iter_lines(f, what):
        if line[:1] in (" ", "\t") and key:
            parts.append(line.strip())
            size += len(parts[-1]) + 1
            if size > MAX_LINE:
                raise CorruptData(f"{what}: line {n}: the value of {key!r} is longer than "
                                  f"{MAX_LINE} characters")  # fmt: skip
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise CorruptData(f"{what}: line {n} is not 'Label: value'")
        if key is not None:
            yield key, " ".join(parts)
        key, parts = k.strip(), [v.strip()]
        size = len(parts[0])
    if key is not None:
        yield key, " ".join(parts)


def parse_info(text: bytes, what: str) -> dict[str, str]:
    return dict(iter_info(io.BytesIO(text), what))
