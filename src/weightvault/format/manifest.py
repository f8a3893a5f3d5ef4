"""The bundle manifest: building it, its canonical bytes and id, and checking one read back.

Schema validation covers shapes; `check` covers what a schema cannot: paths safe and unique,
chunks tiling each file exactly, every chunk's object listed, sizes plausible for the codec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from weightvault.errors import CorruptData
from weightvault.format import canon, keys, spec
from weightvault.format.paths import check_relpath, check_unique

# the encryption scheme of format version 5 (FORMAT.md 10.3); crypt.py takes it from here
SCHEME_LINEAGE = "weightvault-aead-2"

PAYLOAD_TYPE = "application/vnd.weightvault.manifest+json; version=1"
MANIFEST_KEY = "data/weightvault.json"
SIGNATURE_KEY = "weightvault.sig"
MAX_MANIFEST = canon.MAX_DOC
# docs/FORMAT.md section 9. 6: clear, every chunk with the BLAKE3 digest of its plaintext (a new
# version proves an unchanged chunk by hashing it, not by decoding its object); 5: encrypted, chunk objects shared within a lineage (scheme
# weightvault-aead-2), written for every encrypted bundle; 4: objects in the vault's shared
# pool, the spec copies and every tag file proven by the signed manifest, lineage (written for
# every clear bundle, and for encrypted ones before 5); 3: SHA-256 only, clear or encrypted;
# 1: clear and 2: encrypted, both with SHA-512 and chunk digests (read only)
FORMAT_VERSION = 6  # clear bundles
ENCRYPTED_VERSION = 5  # encrypted bundles
VERSIONS = (1, 2, 3, 4, 5, 6)
CHUNK_DIGESTS = 6  # the first version whose files carry `chunks_blake3` (clear bundles only)
POOLED = 4  # the first version whose objects live in the vault's pool (objects/HEX)
# zstd never expands input by more than this (frame header + block headers); RFC 8878 section 3.1.1.2
_ZSTD_SLACK = 64
_FSPLIT_SLACK = 64
_FSPLIT_DTYPE = {"fsplit-bf16": "BF16", "fsplit-f16": "F16", "fsplit-f32": "F32"}


def chunk_digests(f: dict) -> list[str] | None:
    """A file entry's chunks' BLAKE3 digests, in chunk order (format version 6: its
    `chunks_blake3`, 64 hex digits per chunk), or None where the version has none."""
    s = f.get("chunks_blake3")
    return None if s is None else [s[i : i + 64] for i in range(0, len(s), 64)]


def zstd_bound(n: int) -> int:
    return n + (n >> 7) + _ZSTD_SLACK


@dataclass(frozen=True)
class Manifest:
    doc: dict
    raw: bytes | bytearray  # canonical bytes, exactly as stored and signed

    @cached_property  # hashing a 10 TB model's 40 MB manifest takes a tenth of a second
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
    def encryption(self) -> dict | None:
        return self.doc["encryption"]

    @property
    def plain_files(self) -> list[dict]:
        """Every payload file stored as it is (not chunked): the retirement record and, in an
        encrypted bundle, the sealed private section and the key envelopes. Each has `path`
        (under data/), `size`, `sha256` and, in format versions 1 and 2, `sha512`. From format
        version 4 also the specification copies (`spec`: data/FORMAT.md and data/spec/...)."""
        out = [*self.doc.get("spec", ()), *self.doc["record"]]
        enc = self.doc["encryption"]
        if enc:
            out += [enc["private"], *enc["envelopes"]]
        return out

    @property
    def version(self) -> int:
        return self.doc["format_version"]

    @property
    def pooled(self) -> bool:
        """Its objects live in the vault's shared pool (format version 4 and later)."""
        return self.doc["format_version"] >= POOLED

    @property
    def supersedes(self) -> dict | None:
        return self.doc.get("supersedes")

    @property
    def bytes_in(self) -> int:
        return sum(f["size"] for f in self.files)

    @property
    def bytes_stored(self) -> int:
        return sum(o["size"] for o in self.doc["objects"])

    @classmethod
    def from_doc(cls, doc: dict) -> Manifest:
        _check_new(doc)
        return cls(doc, canon.encode(doc))

    @classmethod
    def signed(cls, doc: dict, signers: keys.SigningKey | Sequence[keys.SigningKey],
               ) -> tuple[Manifest, list[dict]]:  # fmt: skip
        """A new manifest and one signature of it per key. Its canonical bytes are encoded
        once, into the buffer that is signed (keys.sign_framed) and then kept as `raw`: a
        10 TB model's manifest is 40 MB, and each copy of it was driver memory."""
        _check_new(doc)
        buf = canon.encode(doc, keys.PAE_ROOM)
        signatures = keys.sign_framed(signers, PAYLOAD_TYPE, buf, keys.PAE_ROOM)
        return cls(doc, buf), signatures

    def opened(self, private: dict, what: str) -> Manifest:
        """This encrypted bundle's manifest with its decrypted private section merged in: the
        file table and source, checked like a version 1 manifest's. Same bytes, same id."""
        version = self.doc["format_version"]
        if not isinstance(private, dict) or private.get("format_version") != version:
            raise CorruptData(f"{what}: not a private section of format version {version}")
        spec.validate(private, "private" if version >= 3 else "private-v2", what)
        if private["bundle"] != {"name": self.name, "salt": self.doc["encryption"]["salt"]}:
            raise CorruptData(f"{what}: belongs to another bundle")
        doc = {**self.doc, "files": private["files"], "source": private["source"]}
        check(doc, what, opened=True)
        return Manifest(doc, self.raw)

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Manifest:
        doc = canon.parse(raw, what, max_size=MAX_MANIFEST)
        if not isinstance(doc, dict):
            raise CorruptData(f"{what}: not a JSON object")
        if doc.get("format") != "weightvault-manifest":
            raise CorruptData(f"{what}: not a weightvault manifest")
        if doc.get("format_version") not in VERSIONS:
            raise CorruptData(
                f"{what}: format version {doc.get('format_version')!r} is not supported by this "
                "weightvault (it reads versions 1 to 6); see the FORMAT.md inside the bundle"
            )
        _check_version(doc, what)  # before the schema: its message is the clearer one
        spec.validate(doc, schema(doc["format_version"]), what)
        check(doc, what)
        if canon.encode(doc) != raw:
            raise CorruptData(f"{what}: not in canonical form")
        return cls(doc, raw)


def _check_new(doc: dict) -> None:
    spec.validate(doc, schema(doc["format_version"]), "new manifest")
    check(doc, "new manifest")


def schema(format_version: int) -> str:
    return {1: "manifest-v1", 2: "manifest-v1", 3: "manifest-v3"}.get(format_version, "manifest")


def check(doc: dict, what: str, *, opened: bool = False) -> None:
    """`opened`: `doc` is an encrypted bundle's manifest with its private section merged in."""
    _check_version(doc, what)
    enc = doc["encryption"]
    if enc is not None:
        _check_encryption(doc, what, opened)
    elif doc["source"]["kind"] == "encrypted":
        raise CorruptData(f"{what}: source says encrypted but the bundle is not")
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
    sealed = enc is not None
    digests = doc["format_version"] >= CHUNK_DIGESTS  # every file has chunks_blake3, or none
    for f in doc["files"]:
        pos = 0
        if ("chunks_blake3" in f) != digests:
            raise CorruptData(f"{what}: {f['path']}: {'no' if digests else 'a'} chunks_blake3, "
                              f"which format version {doc['format_version']} "
                              f"{'requires' if digests else 'does not have'}")  # fmt: skip
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
            if sealed and c["object"] in used and enc["scheme"] != SCHEME_LINEAGE:
                raise CorruptData(f"{what}: object {c['object']} is used by two chunks "
                                  "(each encrypted chunk has its own)")  # fmt: skip
            used.add(c["object"])
            if c["codec"].startswith("fsplit-") and c.get("dtype") != _FSPLIT_DTYPE[c["codec"]]:
                raise CorruptData(f"{what}: {f['path']}: chunk at {c['offset']} uses {c['codec']} "
                                  f"but its dtype is {c.get('dtype')!r}")  # fmt: skip
            if obj["size"] > stored_bound(c["codec"], c["length"], sealed):
                raise CorruptData(
                    f"{what}: object {c['object']} is {obj['size']} bytes, too large for "
                    f"{c['length']} bytes of {c['codec']}"
                )
            if c["codec"] == "raw" and not sealed and obj["size"] != c["length"]:
                raise CorruptData(f"{what}: raw object {c['object']} size differs from its chunk")
        if pos != f["size"]:
            raise CorruptData(
                f"{what}: {f['path']}: chunks cover {pos} bytes but the file has {f['size']}"
            )
        if digests and len(f["chunks_blake3"]) != 64 * len(f["chunks"]):
            raise CorruptData(f"{what}: {f['path']}: chunks_blake3 holds "
                              f"{len(f['chunks_blake3']) / 64:g} digests for "
                              f"{len(f['chunks'])} chunks")  # fmt: skip
    rpaths = [check_relpath(r["path"], what) for r in doc["record"]]
    if rpaths != sorted(rpaths):
        raise CorruptData(f"{what}: record files are not sorted by path")
    if any(not p.startswith("record/") for p in rpaths):
        raise CorruptData(f"{what}: a record file's path does not start with record/")
    spaths = [check_relpath(s["path"], what) for s in doc.get("spec", ())]
    if spaths != sorted(spaths):
        raise CorruptData(f"{what}: spec files are not sorted by path")
    if "spec" in doc and "FORMAT.md" not in spaths:
        raise CorruptData(f"{what}: spec does not name FORMAT.md")
    rpaths += spaths
    if enc is not None:
        epaths = [check_relpath(e["path"], what) for e in enc["envelopes"]]
        if epaths != sorted(epaths):
            raise CorruptData(f"{what}: key envelopes are not sorted by path")
        rpaths = [*rpaths, *epaths, check_relpath(enc["private"]["path"], what)]
    check_unique(rpaths, what)
    if enc is not None and not opened:
        return  # which chunk uses which object is in the encrypted section: checked on opening
    unused = set(objects) - used
    if unused:
        raise CorruptData(f"{what}: object {sorted(unused)[0]} is listed but no chunk uses it")


def _check_version(doc: dict, what: str) -> None:
    version, enc = doc["format_version"], doc.get("encryption")
    if (version < 3 or version >= 5) and (version in (2, 5)) != (enc is not None):
        raise CorruptData(f"{what}: format version {version} "
                          f"{'requires' if version in (2, 5) else 'does not allow'} "
                          "encryption")  # fmt: skip
    if isinstance(enc, dict) and enc.get("scheme") in (SCHEME_LINEAGE, "weightvault-aead-1") \
            and (enc["scheme"] == SCHEME_LINEAGE) != (version == 5):  # others: the schema says
        raise CorruptData(f"{what}: encryption scheme {enc.get('scheme')!r} is not one of "
                          f"format version {version}")  # fmt: skip


def _check_encryption(doc: dict, what: str, opened: bool) -> None:
    from weightvault.format.crypt import plain_size

    enc = doc["encryption"]
    if not opened and (doc["files"] or doc["source"] != {"kind": "encrypted"}):
        raise CorruptData(f"{what}: an encrypted manifest lists files or their source in the clear")
    if opened and doc["source"].get("kind") == "encrypted":
        raise CorruptData(f"{what}: the private section does not say where the files came from")
    if not opened and doc["source"]["kind"] != "encrypted":
        raise CorruptData(f"{what}: source must be {{'kind': 'encrypted'}}")
    shares = [e for e in enc["envelopes"] if e["kind"] == "share"]
    info = enc["shares"]
    if (info is None) != (not shares):
        raise CorruptData(f"{what}: `shares` must describe the share envelopes, and only them")
    if info and not (info["count"] == len(shares) and 1 <= info["threshold"] <= info["count"]):
        raise CorruptData(f"{what}: {len(shares)} share envelopes, but shares says "
                          f"{info['threshold']} of {info['count']}")  # fmt: skip
    for e in enc["envelopes"]:
        if (e["kind"] == "share") != (e["share_digest"] is not None):
            raise CorruptData(f"{what}: envelope {e['path']}: share_digest is for shares only")
    for o in doc["objects"]:
        if plain_size(o["size"]) is None:
            raise CorruptData(f"{what}: object {o['name']} is {o['size']} bytes, which no "
                              "sealed object has")  # fmt: skip


def stored_bound(codec: str, length: int, sealed: bool = False) -> int:
    if codec == "raw":
        n = length
    elif codec == "zstd":
        n = zstd_bound(length)
    else:
        # fsplit: each 4 MiB block stores its streams raw at worst, plus a small header
        blocks = max(1, -(-length // (4 << 20)))
        n = zstd_bound(length) + blocks * _FSPLIT_SLACK
    if sealed:
        from weightvault.format.crypt import sealed_size

        return sealed_size(n)
    return n
