"""The bundle manifest: building it, its canonical bytes and id, and checking one read back.

Schema validation covers shapes; `check` covers what a schema cannot: paths safe and unique,
chunks tiling each file exactly, every chunk's object listed, sizes plausible for the codec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import canon, spec
from .errors import CorruptData
from .paths import check_relpath, check_unique

PAYLOAD_TYPE = "application/vnd.weightvault.manifest+json; version=1"
MANIFEST_KEY = "data/weightvault.json"
SIGNATURE_KEY = "weightvault.sig"
MAX_MANIFEST = canon.MAX_DOC
# zstd never expands input by more than this (frame header + block headers); RFC 8878 section 3.1.1.2
_ZSTD_SLACK = 64
_FSPLIT_SLACK = 64
_FSPLIT_DTYPE = {"fsplit-bf16": "BF16", "fsplit-f16": "F16", "fsplit-f32": "F32"}


def zstd_bound(n: int) -> int:
    return n + (n >> 7) + _ZSTD_SLACK


@dataclass(frozen=True)
class Manifest:
    doc: dict
    raw: bytes  # canonical bytes, exactly as stored and signed

    @property
    def bundle_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def files(self) -> list[dict]:
        return self.doc["files"]

    @property
    def objects(self) -> dict[str, dict]:
        return {o["name"]: o for o in self.doc["objects"]}

    @property
    def record(self) -> list[dict]:
        return self.doc["record"]

    @property
    def bytes_in(self) -> int:
        return sum(f["size"] for f in self.files)

    @property
    def bytes_stored(self) -> int:
        return sum(o["size"] for o in self.doc["objects"])

    @classmethod
    def from_doc(cls, doc: dict) -> Manifest:
        spec.validate(doc, "manifest", "new manifest")
        check(doc, "new manifest")
        return cls(doc, canon.canonical(doc))

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Manifest:
        doc = canon.parse(raw, what, max_size=MAX_MANIFEST)
        if not isinstance(doc, dict):
            raise CorruptData(f"{what}: not a JSON object")
        if doc.get("format") != "weightvault-manifest":
            raise CorruptData(f"{what}: not a weightvault manifest")
        if doc.get("format_version") != 1:
            raise CorruptData(
                f"{what}: format version {doc.get('format_version')!r} is not supported by this "
                "weightvault (it reads version 1); see the FORMAT.md inside the bundle"
            )
        spec.validate(doc, "manifest", what)
        check(doc, what)
        if canon.canonical(doc) != raw:
            raise CorruptData(f"{what}: not in canonical form")
        return cls(doc, raw)


def check(doc: dict, what: str) -> None:
    objects: dict[str, dict] = {}
    for o in doc["objects"]:
        if o["name"] in objects:
            raise CorruptData(f"{what}: object {o['name']} listed twice")
        objects[o["name"]] = o
    names = [o["name"] for o in doc["objects"]]
    if names != sorted(names):
        raise CorruptData(f"{what}: objects are not sorted by name")
    paths = [check_relpath(f["path"], what) for f in doc["files"]]
    if paths != sorted(paths):
        raise CorruptData(f"{what}: files are not sorted by path")
    check_unique(paths, what)
    used: set[str] = set()
    for f in doc["files"]:
        pos = 0
        for c in f["chunks"]:
            if c["offset"] != pos:
                raise CorruptData(
                    f"{what}: {f['path']}: chunk at offset {c['offset']} should start at {pos} "
                    "(chunks overlap or leave a gap)"
                )
            pos += c["length"]
            obj = objects.get(c["object"])
            if obj is None:
                raise CorruptData(
                    f"{what}: {f['path']}: chunk names object {c['object']} "
                    "that the manifest does not list"
                )
            used.add(c["object"])
            if c["codec"].startswith("fsplit-") and c.get("dtype") != _FSPLIT_DTYPE[c["codec"]]:
                raise CorruptData(f"{what}: {f['path']}: chunk at {c['offset']} uses {c['codec']} "
                                  f"but its dtype is {c.get('dtype')!r}")  # fmt: skip
            if obj["size"] > stored_bound(c["codec"], c["length"]):
                raise CorruptData(
                    f"{what}: object {c['object']} is {obj['size']} bytes, too large for "
                    f"{c['length']} bytes of {c['codec']}"
                )
            if c["codec"] == "raw" and obj["size"] != c["length"]:
                raise CorruptData(f"{what}: raw object {c['object']} size differs from its chunk")
        if pos != f["size"]:
            raise CorruptData(
                f"{what}: {f['path']}: chunks cover {pos} bytes but the file has {f['size']}"
            )
    rpaths = [check_relpath(r["path"], what) for r in doc["record"]]
    if rpaths != sorted(rpaths):
        raise CorruptData(f"{what}: record files are not sorted by path")
    check_unique(rpaths, what)
    unused = set(objects) - used
    if unused:
        raise CorruptData(f"{what}: object {sorted(unused)[0]} is listed but no chunk uses it")


def stored_bound(codec: str, length: int) -> int:
    if codec == "raw":
        return length
    if codec == "zstd":
        return zstd_bound(length)
    # fsplit: each 4 MiB block stores its streams raw at worst, plus a small header
    blocks = max(1, -(-length // (4 << 20)))
    return zstd_bound(length) + blocks * _FSPLIT_SLACK
