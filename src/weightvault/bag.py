"""BagIt 1.0 (RFC 8493) tag files for a bundle, written and read.

A bundle directory is a complete bag: bagit.txt, bag-info.txt, payload manifests in sha256 and
sha512 over data/, the weightvault.sig tag file, and tag manifests (tagmanifest-sha256.txt is
written last and is the commit marker).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from . import __version__
from .errors import CorruptData

BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
PROFILE_ID = "urn:weightvault:bagit-profile:1"
ALGS = ("sha256", "sha512")
TAG_FILES = ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "manifest-sha512.txt",
             "weightvault.sig")  # fmt: skip
COMMIT_MARKER = "tagmanifest-sha256.txt"
MAX_TAG_FILE = 64 << 20
_LINE = re.compile(r"^([0-9a-f]+)[ \t]+(\S.*)$")


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the bag root, e.g. data/objects/<hex>
    size: int
    sha256: str
    sha512: str


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
    description: str, organization: str | None = None,
) -> bytes:  # fmt: skip
    fields = [
        ("BagIt-Profile-Identifier", PROFILE_ID),
        ("Bag-Software-Agent", f"weightvault {__version__}"),
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


def digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest()


def tag_entries(files: dict[str, bytes]) -> list[Entry]:
    return [Entry(p, len(b), *digests(b)) for p, b in files.items()]


def parse_manifest(text: bytes, what: str) -> dict[str, str]:
    """path -> digest from a (tag)manifest file; CorruptData on anything malformed."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptData(f"{what}: not UTF-8") from None
    out: dict[str, str] = {}
    for n, line in enumerate(s.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise CorruptData(f"{what}: line {n} is not '<digest> <path>'")
        path = _decode_path(m.group(2))
        if path in out:
            raise CorruptData(f"{what}: line {n} lists {path!r} twice")
        out[path] = m.group(1)
    return out


def parse_info(text: bytes, what: str) -> dict[str, str]:
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptData(f"{what}: not UTF-8") from None
    out: dict[str, str] = {}
    key = None
    for n, line in enumerate(s.splitlines(), 1):
        if line[:1] in (" ", "\t") and key:
            out[key] += " " + line.strip()
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise CorruptData(f"{what}: line {n} is not 'Label: value'")
        key = k.strip()
        out[key] = v.strip()
    return out
