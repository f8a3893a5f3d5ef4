"""A library of hostile bundles (issue 8), built programmatically from one small sealed bundle.

`seal_base()` seals a tiny model (a bf16 safetensors file cut into three chunks: zstd, and two
fsplit-bf16; a zstd-compressed config.json; a raw random file) with the weightvault CLI. Each
`case_*` function below takes a `Work` (a private copy of that vault) and mutates it into one
kind of malicious bundle. Manifests are signed, so a case that edits the manifest re-signs it
with the test's own trusted key (`Work.write_manifest`) and regenerates the bag's tag files from
what is on disk, so that weightvault's deeper checks are the ones exercised, not the signature.

Every case carries what weightvault must answer: for `restore`, `verify --deep` and (where it
differs) plain `verify`, an exit code and a fragment of the one error line (or of the DAMAGED
report). `bug` marks a case where weightvault does not do what FORMAT.md or its own contract
requires; tests/test_hostile.py runs those as strict xfails. Cases registered with `cli=False`
are variants of a family that already has a CLI case; they run in-process (see `case`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightvault.format import bag, canon
from weightvault.format.keys import load_signing_key
from weightvault.format.manifest import PAYLOAD_TYPE

NAME = "n"
INTEGRITY, USAGE, STORAGE, TRUST = 1, 2, 3, 4
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MAGIC = 0x184D2A50
MiB, GiB = 1 << 20, 1 << 30


# --- the base bundle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    root: Path
    model: Path
    vault: Path
    key: Path  # trusted: the tests pass key.pub to --trust
    other_key: Path  # a valid key nobody trusts
    name: str = NAME

    @property
    def pub(self) -> Path:
        return self.key.with_name(self.key.name + ".pub")


def cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "weightvault.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


def make_model(d: Path) -> Path:
    """A tiny model directory: 1.2 MB of bf16 weights, a JSON config, a random (raw) file."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(8)
    weights = rng.normal(0, 0.02, 600_000).astype(np.float32).view(np.uint32) >> 16
    data = weights.astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [600_000],
                               "data_offsets": [0, len(data)]}}).encode()  # fmt: skip
    header += b" " * (-len(header) % 8)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
    (d / "config.json").write_text(json.dumps({"model_type": "tiny", "note": "hello " * 2000}))
    (d / "rand.bin").write_bytes(rng.bytes(5000))
    return d


def seal_base(root: Path) -> Base:
    root.mkdir(parents=True, exist_ok=True)
    model = make_model(root / "model")
    keys = root / "keys"
    keys.mkdir()
    for k in ("lab.key", "other.key"):
        r = cli("keygen", keys / k)
        assert r.returncode == 0, r.stderr
    vault = root / "vault"
    r = cli("seal", model, "--vault", vault, "--key", keys / "lab.key", "--name", NAME,
            "--chunk-size", "1", "--quiet", cwd=root)  # fmt: skip
    assert r.returncode == 0, r.stderr
    base = Base(root, model, vault, keys / "lab.key", keys / "other.key")
    codecs = sorted({c["codec"] for f in Work.doc_of(base) for c in f["chunks"]})
    assert codecs == ["fsplit-bf16", "raw", "zstd"], codecs  # every codec path is exercised
    return base


# --- one case's private copy, and the editing helpers -----------------------------------------


class Work:
    """A private copy of the base vault for one case, and the means to forge it."""

    def __init__(self, base: Base, root: Path):
        self.base, self.root = base, root
        self.vault = root / "vault"
        shutil.copytree(base.vault, self.vault, symlinks=True)
        self.bundle = self.vault / "bundles" / base.name
        self.data = self.bundle / "data"

    @staticmethod
    def doc_of(base: Base) -> list[dict]:
        return json.loads((base.vault / "bundles" / base.name / "data/weightvault.json")
                          .read_bytes())["files"]  # fmt: skip

    @property
    def manifest_path(self) -> Path:
        return self.data / "weightvault.json"

    def raw(self) -> bytes:
        return self.manifest_path.read_bytes()

    def doc(self) -> dict:
        return json.loads(self.raw())

    @property
    def objects_dir(self) -> Path:
        """Where the bundle's objects are: the vault's pool (format version 4, FORMAT.md
        section 2.2), or inside the bag (versions 1 to 3)."""
        pool = self.vault / "objects"
        return pool if pool.is_dir() else self.data / "objects"

    def object_path(self, name: str) -> Path:
        return self.objects_dir / name

    def edit(self, fn: Callable[[dict], object]) -> None:
        """Apply fn to the manifest document, then store it canonical, signed and bagged."""
        doc = self.doc()
        fn(doc)
        self.write_manifest(canon.canonical(doc))

    def write_manifest(self, raw: bytes, *, key: Path | None = None, sign: bool = True,
                       tags: bool = True) -> None:  # fmt: skip
        self.manifest_path.write_bytes(raw)
        if sign:
            self.sign(raw, key)
        if tags:
            self.regen_tags()

    def sign(self, raw: bytes, key: Path | None = None, *, payload_sha256: str | None = None,
             extra: list[dict] | None = None) -> None:  # fmt: skip
        """weightvault.sig over `raw` by `key` (default: the trusted key)."""
        sk = load_signing_key(key or self.base.key)
        sig = {"format": "weightvault-signature", "format_version": 1,
               "payload_type": PAYLOAD_TYPE,
               "payload_sha256": payload_sha256 or hashlib.sha256(raw).hexdigest(),
               "signatures": [*(extra or []), sk.sign(PAYLOAD_TYPE, raw)]}  # fmt: skip
        (self.bundle / "weightvault.sig").write_bytes(canon.canonical(sig))

    def regen_tags(self) -> None:
        """Payload and tag manifests and bag-info from what is on disk now (a consistent bag)."""
        algs = self.algs()
        entries = []
        for p in sorted(self.data.rglob("*")):
            if p.is_symlink() or not p.is_file():
                continue
            body = p.read_bytes()
            entries.append(bag.Entry(p.relative_to(self.bundle).as_posix(), len(body),
                                     *bag.digests(body, algs)))  # fmt: skip
        bundle_id = hashlib.sha256(self.raw()).hexdigest()
        info = []
        for line in (self.bundle / "bag-info.txt").read_text().splitlines():
            if line.startswith("Payload-Oxum:"):
                line = f"Payload-Oxum: {sum(e.size for e in entries)}.{len(entries)}"
            elif line.startswith("External-Identifier:"):
                line = f"External-Identifier: weightvault:bundle:{bundle_id}"
            info.append(line + "\n")
        (self.bundle / "bag-info.txt").write_text("".join(info))
        for alg in algs:
            (self.bundle / f"manifest-{alg}.txt").write_bytes(bag.manifest_text(entries, alg))
        self.regen_tag_manifests()

    def algs(self) -> tuple[str, ...]:
        """The digest algorithms of this bag's format version (section 3 / 9.1)."""
        try:
            return bag.algs(self.doc()["format_version"])
        except (ValueError, KeyError, TypeError, RecursionError):  # a case broke it on purpose
            return bag.ALGS

    def regen_tag_manifests(self) -> None:
        algs = self.algs()
        tags = bag.tag_entries({t: (self.bundle / t).read_bytes() for t in bag.tag_files(algs)},
                               algs)  # fmt: skip
        for alg in algs[::-1]:  # the sha256 one is the commit marker: last
            (self.bundle / f"tagmanifest-{alg}.txt").write_bytes(bag.manifest_text(tags, alg))


def file_entry(doc: dict, path: str) -> dict:
    return next(f for f in doc["files"] if f["path"] == path)


def chunk_of(doc: dict, codec: str) -> tuple[dict, dict]:
    """The first chunk using `codec`, and its file entry."""
    for f in doc["files"]:
        for c in f["chunks"]:
            if c["codec"] == codec:
                return f, c
    raise LookupError(codec)


def resort(doc: dict) -> None:
    doc["files"].sort(key=lambda f: f["path"])
    doc["objects"].sort(key=lambda o: o["name"])


def put_object(w: Work, doc: dict, chunk: dict, stored: bytes) -> str:
    """Store `stored` as a new object, point `chunk` at it and list it (the old object is dropped
    from the manifest and the bag if no other chunk uses it)."""
    name = hashlib.sha256(stored).hexdigest()
    w.object_path(name).write_bytes(stored)
    old, chunk["object"] = chunk["object"], name
    if not any(c["object"] == old for f in doc["files"] for c in f["chunks"]):
        doc["objects"] = [o for o in doc["objects"] if o["name"] != old]
        w.object_path(old).unlink()
    if name not in {o["name"] for o in doc["objects"]}:
        doc["objects"].append({"name": name, "size": len(stored)})
    resort(doc)
    return name


def rewrite_object(w: Work, codec: str, fn: Callable[[bytes], bytes],
                   chunk_fn: Callable[[dict, dict], object] | None = None) -> None:  # fmt: skip
    """Replace the stored bytes of the first `codec` chunk by fn(old bytes); re-sign."""

    def change(doc: dict) -> None:
        f, c = chunk_of(doc, codec)
        put_object(w, doc, c, fn(w.object_path(c["object"]).read_bytes()))
        if chunk_fn:
            chunk_fn(f, c)

    w.edit(change)


def rename(doc: dict, old: str, new: str) -> None:
    file_entry(doc, old)["path"] = new
    resort(doc)


def add_copy(doc: dict, of: str, new: str) -> None:
    doc["files"].append({**file_entry(doc, of), "path": new})
    resort(doc)


# --- crafted zstd frames -----------------------------------------------------------------------


def zstd_rle_frame(total: int, fcs: int | None, *, window_log: int = 17, byte: int = 0) -> bytes:
    """One zstd frame (RFC 8878) of RLE blocks producing `total` copies of `byte`: 4 bytes per
    128 KiB of output, so 2 GiB of zeros is 64 KiB. The header declares `fcs` as the content
    size (None: absent), whatever `total` really is. The checksum flag is set, as FORMAT.md 5.2
    requires, so each case meets the check it is about; the checksum itself is 4 zero bytes,
    never reached."""
    fhd = (3 << 6 if fcs is not None else 0) | 4  # 8-byte Frame_Content_Size, checksum
    out = bytearray(ZSTD_MAGIC + bytes([fhd, (window_log - 10) << 3]))
    if fcs is not None:
        out += struct.pack("<Q", fcs)
    block = min(1 << window_log, 128 << 10)
    left = total
    while True:
        n = min(block, left)
        left -= n
        out += (int(left == 0) | 1 << 1 | n << 3).to_bytes(3, "little") + bytes([byte])
        if not left:
            return bytes(out) + bytes(4)


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE_MAGIC, len(payload)) + payload


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    code: int | tuple[int, ...]  # the exit code, or the codes any acceptable fix may give
    text: str = ""  # a fragment of the error line (or of the DAMAGED report)

    @property
    def codes(self) -> tuple[int, ...]:
        return self.code if isinstance(self.code, tuple) else (self.code,)


OK = Expect(0)  # success; a restore must then hold exactly the manifest's files, bit-exact
CLEAN = (0, INTEGRITY, USAGE, STORAGE)  # any outcome but a crash or a hang


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Work], None]
    restore: Expect
    verify: Expect  # verify --deep
    shallow: Expect | None  # plain verify, when it is worth running
    bug: str | None
    doc: str
    timeout: float | None  # seconds per CLI call, if not the harness's default
    cli: bool  # False: run in-process (see `case`)


CASES: dict[str, Case] = {}


def case(restore: Expect, verify: Expect, shallow: Expect | None = None, *,
         bug: str | None = None, timeout: float | None = None, cli: bool = True):  # fmt: skip
    """Register a case. `cli=False` marks a variant whose refusal is the same code path (the
    manifest checks of Vault.load, or one codec check) as a CLI case of its family: it runs
    in-process through weightvault.archive.restore.restore and weightvault.archive.verify.verify, which is what
    the CLI calls, so that the whole suite stays within its time budget (each CLI call costs
    about 0.4 s of interpreter start-up and imports)."""

    def register(fn: Callable[[Work], None]) -> Callable[[Work], None]:
        name = fn.__name__.removeprefix("case_")
        CASES[name] = Case(name, fn, restore, verify, shallow, bug, (fn.__doc__ or "").strip(),
                           timeout, cli)  # fmt: skip
        return fn

    return register


def both(code: int, text: str) -> dict:
    return {"restore": Expect(code, text), "verify": Expect(code, text)}


@case(restore=OK, verify=OK, shallow=OK)
def case_control_resigned(w: Work) -> None:
    """Not hostile: the manifest re-signed and the bag re-made unchanged. Proves that the
    forging helpers make a valid bundle, so every refusal below is due to its one mutation."""
    w.write_manifest(w.raw())


# Paths (FORMAT.md section 7): each refused before anything is written.

UNSAFE = "unsafe path"


@case(**both(INTEGRITY, "unsafe path '../escaped.bin': has a '..' component"))
def case_path_dotdot(w: Work) -> None:
    """A file path that climbs out of the destination."""
    w.edit(lambda d: rename(d, "rand.bin", "../escaped.bin"))


@case(**both(INTEGRITY, "unsafe path 'sub/../../escaped.bin': has a '..' component"))
def case_path_dotdot_nested(w: Work) -> None:
    """A `..` hidden after a harmless first component."""
    w.edit(lambda d: rename(d, "rand.bin", "sub/../../escaped.bin"))


@case(**both(INTEGRITY, "is absolute"))
def case_path_absolute(w: Work) -> None:
    """An absolute path (to a file next to the vault, which must not appear)."""
    w.edit(lambda d: rename(d, "rand.bin", str(w.root / "pwned")))


@case(**both(INTEGRITY, "contains a backslash"))
def case_path_backslash(w: Work) -> None:
    """A Windows-style traversal: `..\\escaped.bin`."""
    w.edit(lambda d: rename(d, "rand.bin", "..\\escaped.bin"))


@case(cli=False, **both(INTEGRITY, "starts with a drive letter"))
def case_path_drive_letter(w: Work) -> None:
    """`C:escaped.bin`, drive-relative on Windows."""
    w.edit(lambda d: rename(d, "rand.bin", "C:escaped.bin"))


@case(**both(INTEGRITY, "contains a control character or NUL"))
def case_path_nul(w: Work) -> None:
    """A NUL inside a path (`rand.bin\\0.txt` would be cut to `rand.bin` by a C library)."""
    w.edit(lambda d: rename(d, "rand.bin", "rand.bin\x00.txt"))


@case(**both(INTEGRITY, "component 'CON' is a reserved device name"))
def case_path_device_con(w: Work) -> None:
    """A Windows device name as a file name."""
    w.edit(lambda d: rename(d, "rand.bin", "CON"))


@case(**both(INTEGRITY, "component 'aux.txt' is a reserved device name"))
def case_path_device_aux_txt(w: Work) -> None:
    """A device name with an extension, in a subdirectory."""
    w.edit(lambda d: rename(d, "rand.bin", "sub/aux.txt"))


@case(cli=False, **both(INTEGRITY, "component 'rand.bin.' ends with a space or dot"))
def case_path_trailing_dot(w: Work) -> None:
    """A trailing dot (Windows silently strips it, colliding with another name)."""
    w.edit(lambda d: rename(d, "rand.bin", "rand.bin."))


@case(cli=False, **both(INTEGRITY, "has a 'empty' component"))
def case_path_empty_component(w: Work) -> None:
    """`a//rand.bin`."""
    w.edit(lambda d: rename(d, "rand.bin", "a//rand.bin"))


@case(cli=False, **both(INTEGRITY, "is not in Unicode NFC form"))
def case_path_not_nfc(w: Work) -> None:
    """A decomposed `é` (NFD), which some filesystems merge with the composed one."""
    w.edit(lambda d: rename(d, "rand.bin", "e\u0301.bin"))


@case(cli=False, **both(INTEGRITY, "has a component longer than 255 bytes"))
def case_path_long_component(w: Work) -> None:
    """A 300-byte file name."""
    w.edit(lambda d: rename(d, "rand.bin", "x" * 300))


@case(**both(INTEGRITY, "duplicate path: 'rand.bin' and 'rand.bin'"))
def case_path_duplicate(w: Work) -> None:
    """The same path twice (the second copy would overwrite the first)."""
    w.edit(lambda d: add_copy(d, "rand.bin", "rand.bin"))


@case(**both(INTEGRITY, "paths differ only in case: 'RAND.bin' and 'rand.bin'"))
def case_path_case_collision(w: Work) -> None:
    """Names equal on a case-insensitive filesystem."""
    w.edit(lambda d: add_copy(d, "rand.bin", "RAND.bin"))


@case(cli=False, **both(INTEGRITY, "paths differ only in case: 'STRASSE.bin' and 'straße.bin'"))
def case_path_casefold_collision(w: Work) -> None:
    """Names equal only under full Unicode case folding (ß -> ss)."""
    w.edit(
        lambda d: add_copy(d, "rand.bin", "straße.bin") or add_copy(d, "rand.bin", "STRASSE.bin")
    )


@case(**both(INTEGRITY, "'config.json' is a file and a directory of 'config.json/inner.bin'"))
def case_path_file_and_dir(w: Work) -> None:
    """A file that is also a directory of another file."""
    w.edit(lambda d: add_copy(d, "rand.bin", "config.json/inner.bin"))


@case(
    cli=False,
    **both(INTEGRITY, "'CONFIG.JSON' is a file and a directory of 'config.json/inner.bin'"),
)
def case_path_file_and_dir_case(w: Work) -> None:
    """A file that is a directory of another file once case is ignored."""
    w.edit(lambda d: rename(d, "config.json", "CONFIG.JSON") or
           add_copy(d, "rand.bin", "config.json/inner.bin"))  # fmt: skip


@case(**both(INTEGRITY, "unsafe path 'record/../../escaped': has a '..' component"))
def case_record_path_dotdot(w: Work) -> None:
    """A retirement-record file whose path climbs out (the schema only wants `record/...`)."""

    def add(doc: dict) -> None:
        body = b"record"
        doc["record"] = [
            {
                "path": "record/../../escaped",
                "role": "attachment",
                "size": 6,
                "sha256": sha256(body),
            }
        ]

    w.edit(add)


@case(cli=False, **both(INTEGRITY, "contains a control character or NUL"))
def case_path_newline(w: Work) -> None:
    """A newline in a path (would forge a line of the bag's manifest-sha256.txt)."""
    w.edit(lambda d: rename(d, "rand.bin", "rand.bin\n0000  data/evil"))


# Links and non-regular files in the bag.


@case(restore=Expect(INTEGRITY, "is a symbolic link; a vault holds only regular files"),
      verify=Expect(INTEGRITY, "is a symbolic link"),
      shallow=Expect(INTEGRITY, "is a symbolic link"))  # fmt: skip
def case_symlink_object(w: Work) -> None:
    """An object file replaced by a symbolic link to /etc/passwd."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    w.object_path(obj).unlink()
    w.object_path(obj).symlink_to("/etc/passwd")


@case(restore=Expect(INTEGRITY, "is a symbolic link"),
      verify=Expect(INTEGRITY, "is a symbolic link"),
      shallow=Expect(INTEGRITY, "is a symbolic link"))  # fmt: skip
def case_symlink_object_dev_zero(w: Work) -> None:
    """An object file replaced by a symbolic link to /dev/zero (endless bytes)."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    w.object_path(obj).unlink()
    w.object_path(obj).symlink_to("/dev/zero")


@case(restore=Expect((INTEGRITY, STORAGE)), verify=Expect((INTEGRITY, STORAGE)),
      timeout=5)  # fmt: skip
def case_fifo_object(w: Work) -> None:
    """An object file replaced by a FIFO: open() for reading blocks until a writer appears."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    w.object_path(obj).unlink()
    os.mkfifo(w.object_path(obj))


@case(restore=Expect(INTEGRITY, "not a regular file"), verify=Expect(INTEGRITY, "not a regular file"),
      shallow=Expect(INTEGRITY, "not a regular file"))  # fmt: skip
def case_directory_object(w: Work) -> None:
    """An object file replaced by a directory."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    w.object_path(obj).unlink()
    w.object_path(obj).mkdir()


@case(restore=OK, verify=OK)
def case_symlinked_objects_dir(w: Work) -> None:
    """data/objects replaced by a symbolic link to a copy of it outside the vault. The bytes
    are still checked against the signed digests, so this restores (documented, not refused)."""
    elsewhere = w.root / "elsewhere"
    objects = w.objects_dir
    shutil.move(objects, elsewhere)
    objects.symlink_to(elsewhere)


@case(restore=Expect(INTEGRITY, "missing"), verify=Expect(INTEGRITY, "missing"),
      shallow=Expect(INTEGRITY, "missing"))  # fmt: skip
def case_object_missing(w: Work) -> None:
    """An object deleted from the bag."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    w.object_path(obj).unlink()


# Decompression bombs and lying lengths.


def _bomb(w: Work, stored: bytes) -> None:
    def change(doc: dict) -> None:
        f, c = next((f, c) for f, c in ((f, c) for f in doc["files"] for c in f["chunks"])
                    if c["length"] == MiB)  # fmt: skip
        c["codec"] = "zstd"
        c.pop("dtype", None)
        put_object(w, doc, c, stored)

    w.edit(change)


@case(**both(INTEGRITY, "zstd frame declares 2147483648 content bytes, expected 1048576"))  # fmt: skip
def case_zstd_bomb_declared(w: Work) -> None:
    """A 64 KiB zstd object holding 2 GiB of zeros (honest header) for a 1 MiB chunk."""
    _bomb(w, zstd_rle_frame(2 * GiB, 2 * GiB))


@case(**both(INTEGRITY, "zstd frame decodes to more than the declared length"))
def case_zstd_bomb_lying_header(w: Work) -> None:
    """2 GiB of zeros in a frame whose header claims 1 MiB, for a 1 MiB chunk."""
    _bomb(w, zstd_rle_frame(2 * GiB, MiB))


@case(**both(INTEGRITY, "zstd frame declares no content bytes, expected 1048576"))
def case_zstd_bomb_no_size(w: Work) -> None:
    """2 GiB of zeros in a frame that does not declare its content size."""
    _bomb(w, zstd_rle_frame(2 * GiB, None))


@case(**both(INTEGRITY, "zstd: "))
def case_zstd_huge_window(w: Work) -> None:
    """A frame asking for a 2 GiB window (the decoder's memory), FORMAT.md 5.2 allows 2^27."""
    _bomb(w, zstd_rle_frame(MiB, MiB, window_log=31))


def add_file(w: Work, doc: dict, path: str, stored: bytes, length: int, count: int = 1) -> None:
    """A new file of `count` zstd chunks of `length` bytes, all naming one object `stored`, its
    digests wrong (they are never reached)."""
    name = sha256(stored)
    w.object_path(name).write_bytes(stored)
    doc["files"].append({"path": path, "size": count * length, "mode": 420, "sha256": "0" * 64,
                         "chunks": [{"offset": i * length, "length": length,
                                     "codec": "zstd", "object": name} for i in range(count)],
                         **({"chunks_blake3": "0" * 64 * count} if doc["format_version"] >= 6
                            else {})})  # fmt: skip
    doc["objects"].append({"name": name, "size": len(stored)})
    resort(doc)


@case(**both(INTEGRITY, "zstd: zstd decompress error: Data corruption detected"))
def case_declared_size_huge(w: Work) -> None:
    """A new 1 GiB file whose single chunk's object is 17 bytes holding one byte, the frame
    lying that it holds 1 GiB: restore must not allocate or write for the claim."""
    w.edit(lambda d: add_file(w, d, "huge.bin", zstd_rle_frame(1, GiB), GiB))


@case(**both(INTEGRITY, "zstd frame declares 12034 content bytes, expected 12000"))
def case_zstd_length_smaller_than_frame(w: Work) -> None:
    """The manifest declares 12000 bytes for a chunk whose frame holds (and declares) 12034."""

    def shrink(doc: dict) -> None:
        f = file_entry(doc, "config.json")
        f["size"] = f["chunks"][0]["length"] = 12000

    w.edit(shrink)


def _patch_fcs(stored: bytes, new: int) -> bytes:
    fhd = stored[4]
    assert fhd >> 6 == 1 and fhd & 0x20, "expected a single-segment frame with a 2-byte FCS"
    return stored[:5] + struct.pack("<H", new - 256) + stored[7:]


@case(**both(INTEGRITY, "zstd"))
def case_zstd_decodes_more_than_declared(w: Work) -> None:
    """A frame whose header was edited to claim 12000 bytes, matching the manifest, while its
    blocks still decode to 12034."""

    def shrink(f: dict, c: dict) -> None:
        f["size"] = c["length"] = 12000

    rewrite_object(w, "zstd", lambda b: _patch_fcs(b, 12000), shrink)


@case(**both(INTEGRITY, "bytes follow the zstd frame"))
def case_zstd_trailing_garbage(w: Work) -> None:
    """Bytes after the zstd frame (the object's digests match: only decoding can tell)."""
    rewrite_object(w, "zstd", lambda b: b + b"trailing bytes")


# FORMAT.md 5.2: "exactly one Zstandard frame ... no skippable frames"; decoders "MUST fail on
# input that ... has bytes left over". docs/reference_restore.py refuses all three of these;
# weightvault walks the frame's block headers as the stored bytes stream past (codec._OneFrame).
ZSTD_EXTRA = Expect(INTEGRITY, "bytes follow the zstd frame")


@case(restore=ZSTD_EXTRA, verify=ZSTD_EXTRA)
def case_zstd_trailing_magic(w: Work) -> None:
    """The 4-byte zstd magic number after the frame: the start of a frame that never comes
    (libzstd alone decodes it to nothing and reports no error)."""
    rewrite_object(w, "zstd", lambda b: b + ZSTD_MAGIC)


@case(restore=ZSTD_EXTRA, verify=ZSTD_EXTRA)
def case_zstd_trailing_skippable(w: Work) -> None:
    """A skippable frame after the frame (libzstd alone skips it)."""
    rewrite_object(w, "zstd", lambda b: b + skippable(b"hidden payload"))


@case(**both(INTEGRITY, "not a zstd frame at the start of the object"))
def case_zstd_leading_skippable(w: Work) -> None:
    """A skippable frame whose length equals the chunk length, then the real frame:
    get_frame_parameters reports the skippable frame's size as the content size, so only the
    magic number check refuses it."""
    length = chunk_of(w.doc(), "zstd")[1]["length"]
    rewrite_object(w, "zstd", lambda b: skippable(b"\0" * length) + b)


@case(cli=False, **both(INTEGRITY, "zstd"))
def case_zstd_truncated(w: Work) -> None:
    """The frame cut short (digests re-made to match the short object)."""
    rewrite_object(w, "zstd", lambda b: b[: len(b) // 2])


@case(cli=False, **both(INTEGRITY, "zstd frame is truncated"))
def case_zstd_checksum_cut(w: Work) -> None:
    """The frame's last two bytes (half its content checksum) cut off: every content byte is
    there, so only the walk of the frame's structure notices."""
    rewrite_object(w, "zstd", lambda b: b[:-2])


@case(cli=False, **both(INTEGRITY, "bytes follow the zstd frame"))
def case_zstd_second_frame(w: Work) -> None:
    """A second complete frame after the first."""
    import zstandard

    rewrite_object(w, "zstd", lambda b: b + zstandard.ZstdCompressor(
        write_content_size=True, write_checksum=True).compress(b"more"))  # fmt: skip


@case(restore=Expect(INTEGRITY, "stored data is longer than declared"),
      verify=Expect(INTEGRITY, "5001 bytes stored, expected 5000"),
      shallow=Expect(INTEGRITY, "5001 bytes stored, expected 5000"))  # fmt: skip
def case_raw_longer_on_disk(w: Work) -> None:
    """A raw object one byte longer than the manifest says (manifest untouched)."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    with open(w.object_path(obj), "ab") as f:
        f.write(b"!")


@case(**both(INTEGRITY, "is 5001 bytes, too large for 5000 bytes of raw"))
def case_raw_longer_declared(w: Work) -> None:
    """A raw object longer than its chunk, with the signed manifest saying so."""
    rewrite_object(w, "raw", lambda b: b + b"!")


@case(cli=False, restore=Expect(INTEGRITY, "stored data ends 2500 bytes early"),
      verify=Expect(INTEGRITY, "2500 bytes stored, expected 5000"),
      shallow=Expect(INTEGRITY, "2500 bytes stored, expected 5000"))  # fmt: skip
def case_raw_truncated_on_disk(w: Work) -> None:
    """A raw object cut in half (manifest untouched)."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    p = w.object_path(obj)
    p.write_bytes(p.read_bytes()[:2500])


@case(restore=Expect(INTEGRITY, "decodes to sha256"),
      verify=Expect(INTEGRITY, "sha256 of stored bytes is"),
      shallow=Expect(INTEGRITY, "sha256 of stored bytes is"))  # fmt: skip
def case_object_name_mismatch(w: Work) -> None:
    """An object whose bytes were altered in place: its name no longer matches its bytes."""
    (obj,) = [o["name"] for o in w.doc()["objects"] if o["size"] == 5000]
    p = w.object_path(obj)
    body = bytearray(p.read_bytes())
    body[100] ^= 0xFF
    p.write_bytes(bytes(body))


@case(restore=OK, verify=Expect(INTEGRITY, "bytes stored, expected 60"),
      shallow=Expect(INTEGRITY, "bytes stored, expected 60"))  # fmt: skip
def case_object_name_mismatch_same_plaintext(w: Work) -> None:
    """A zstd object re-compressed differently (same plaintext) under its old name. Restore may
    skip stored digests (FORMAT.md 7.1 step 3) and still writes the signed plaintext; verify
    must report the object."""
    import zstandard

    _, c = chunk_of(w.doc(), "zstd")
    p = w.object_path(c["object"])
    old = p.read_bytes()
    plain = zstandard.ZstdDecompressor().decompress(old)
    # the same plaintext as one uncompressed (Raw) block, with the same content checksum: other
    # bytes, a frame every rule of FORMAT.md 5.2 allows
    assert len(plain) < 256 + 65536
    small = len(plain) < 256
    fcs = bytes([len(plain)]) if small else struct.pack("<H", len(plain) - 256)
    fhd = 0x20 | 0x04 | (0 if small else 0x40)  # single segment, checksum, FCS of 1 or 2 bytes
    block = (1 | len(plain) << 3).to_bytes(3, "little")  # last block, Raw
    p.write_bytes(ZSTD_MAGIC + bytes([fhd]) + fcs + block + plain + old[-4:])
    assert sha256(p.read_bytes()) != c["object"]


@case(cli=False, restore=Expect(INTEGRITY, "cannot be decoded"), verify=Expect(INTEGRITY, "bytes stored, expected"),
      shallow=Expect(INTEGRITY, "bytes stored, expected"))  # fmt: skip
def case_objects_swapped(w: Work) -> None:
    """Two objects' contents swapped (each file keeps the other's name)."""
    objs = w.doc()["objects"]
    a, b = (w.object_path(o["name"]) for o in objs[:2])
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


# fsplit blocks.


def _fsplit_patch(offset: int, fmt: str, value: int) -> Callable[[bytes], bytes]:
    def patch(b: bytes) -> bytes:
        assert b[0] == 0xF5
        n = struct.calcsize(fmt)
        return b[:offset] + struct.pack(fmt, value) + b[offset + n :]

    return patch


@case(**both(INTEGRITY, "fsplit: block claims 4294967295 bytes, over BLOCK_MAX"))
def case_fsplit_block_length_huge(w: Work) -> None:
    """An fsplit block header claiming 2^32-1 plaintext bytes."""
    rewrite_object(w, "fsplit-bf16", _fsplit_patch(3, "<I", 0xFFFFFFFF))


@case(**both(INTEGRITY, "fsplit: stored data decodes to more bytes than expected"))
def case_fsplit_block_longer_than_chunk(w: Work) -> None:
    """A block claiming 4 MiB (allowed for a block) inside a 1 MiB chunk."""
    rewrite_object(w, "fsplit-bf16", _fsplit_patch(3, "<I", 4 * MiB))


@case(**both(INTEGRITY, "fsplit: raw stream 1 holds 4294967295 bytes"))
def case_fsplit_stream_length_huge(w: Work) -> None:
    """A stream descriptor claiming 2^32-1 stored bytes."""
    rewrite_object(w, "fsplit-bf16", _fsplit_patch(7 + 5 + 1, "<I", 0xFFFFFFFF))


@case(cli=False, **both(INTEGRITY, "fsplit: unknown stream method 7"))
def case_fsplit_stream_method_unknown(w: Work) -> None:
    """A stream descriptor with method 7."""
    rewrite_object(w, "fsplit-bf16", _fsplit_patch(7, "<B", 7))


@case(**both(INTEGRITY, "fsplit: "))
def case_fsplit_trailing(w: Work) -> None:
    """Bytes after the last fsplit block."""
    rewrite_object(w, "fsplit-bf16", lambda b: b + b"\xf5\x01\x01")


@case(cli=False, **both(INTEGRITY, "fsplit: stored data truncated"))
def case_fsplit_truncated(w: Work) -> None:
    """An fsplit object cut short."""
    rewrite_object(w, "fsplit-bf16", lambda b: b[: len(b) - 1000])


@case(cli=False, **both(INTEGRITY, "uses fsplit-bf16 but its dtype is 'F16'"))
def case_fsplit_wrong_dtype(w: Work) -> None:
    """An fsplit-bf16 chunk whose dtype says F16."""
    w.edit(lambda d: chunk_of(d, "fsplit-bf16")[1].update(dtype="F16"))


# Manifest structure.


@case(**both(INTEGRITY, "does not match the manifest schema at files/0/chunks/0/codec"))
def case_codec_unknown(w: Work) -> None:
    """A codec weightvault does not know (`lz4`)."""
    w.edit(lambda d: d["files"][0]["chunks"][0].update(codec="lz4"))


@case(**both(INTEGRITY, "format version 7 is not supported"))
def case_format_version_unknown(w: Work) -> None:
    """format_version 7 (this weightvault reads 1 to 6)."""
    w.edit(lambda d: d.update(format_version=7))


@case(**both(INTEGRITY, "format version 5 requires encryption"))
def case_format_version_5_clear(w: Work) -> None:
    """format_version 5 is written for encrypted bundles only (FORMAT.md section 9)."""
    w.edit(lambda d: d.update(format_version=5))


# Each version's member set exactly (FORMAT.md section 9): a digest that a version does not
# have is refused, not ignored, and one it requires is never optional.


@case(**both(INTEGRITY, "'sha512' was unexpected"))
def case_v3_object_with_sha512(w: Work) -> None:
    """A version 3 object listing a SHA-512, which only versions 1 and 2 have."""
    w.edit(lambda d: d["objects"][0].update(sha512="0" * 128))


@case(**both(INTEGRITY, "'sha256' was unexpected"))
def case_v3_chunk_with_sha256(w: Work) -> None:
    """A version 3 chunk carrying a plaintext digest, which only versions 1 and 2 have."""
    w.edit(lambda d: d["files"][0]["chunks"][0].update(sha256="0" * 64))


@case(**both(INTEGRITY, "'sha512' is a required property"))
def case_v1_without_sha512(w: Work) -> None:
    """A version 4 manifest relabelled version 1 (without the members version 1 lacks), so
    its objects lack the SHA-512 of v1."""

    def relabel(d: dict) -> None:
        for k in ("spec", "supersedes", "bag_info"):
            d.pop(k, None)
        d.update(format_version=1)

    w.edit(relabel)


@case(**both(INTEGRITY, "source says encrypted but the bundle is not"))
def case_clear_bundle_claims_encrypted_source(w: Work) -> None:
    """A clear version 3 bundle whose source says `encrypted` (it would hide the provenance)."""
    w.edit(lambda d: d.update(source={"kind": "encrypted"}))


@case(restore=OK, verify=Expect(INTEGRITY, "file in the bag that the signed manifest does not"),
      shallow=Expect(INTEGRITY, "file in the bag that the signed manifest does not"))  # fmt: skip
def case_v3_bag_with_sha512_manifest(w: Work) -> None:
    """A planted manifest-sha512.txt in a version 4 bag (BagIt tools would check it; restore may
    skip the bag, verify must report it)."""
    (w.bundle / "manifest-sha512.txt").write_text(f"{'0' * 128}  data/weightvault.json\n")


@case(cli=False, **both(INTEGRITY, "not a weightvault manifest"))
def case_format_wrong(w: Work) -> None:
    """`format` naming another document type."""
    w.edit(lambda d: d.update(format="weightvault-signature"))


@case(cli=False, **both(INTEGRITY, "format version 6 does not allow encryption"))
def case_encryption_not_null(w: Work) -> None:
    """An `encryption` member in a version that is always clear."""
    w.edit(lambda d: d.update(encryption={"alg": "none"}))


@case(cli=False, **both(INTEGRITY, "Additional properties are not allowed"))
def case_unknown_member(w: Work) -> None:
    """An unknown top-level member."""
    w.edit(lambda d: d.update(extra=1))


@case(cli=False, **both(INTEGRITY, "names bundle 'other' but lives under 'n'"))
def case_name_mismatch(w: Work) -> None:
    """A manifest naming another bundle than its directory."""
    w.edit(lambda d: d.update(name="other"))


@case(**both(INTEGRITY, "not valid JSON"))
def case_json_malformed(w: Work) -> None:
    """A manifest cut in the middle (signed as is)."""
    raw = w.raw()
    w.write_manifest(raw[: len(raw) // 2])


@case(cli=False, **both(INTEGRITY, "not valid JSON"))
def case_json_not_utf8(w: Work) -> None:
    """A manifest with an invalid UTF-8 byte in a string."""
    w.write_manifest(w.raw().replace(b'"local"', b'"loc\xffl"'))


@case(cli=False, **both(INTEGRITY, "duplicate key 'name'"))
def case_json_duplicate_key(w: Work) -> None:
    """Two `name` members (parsers disagree about which wins)."""
    w.write_manifest(w.raw().replace(b'"name":"n"', b'"name":"n","name":"other"'))


@case(cli=False, **both(INTEGRITY, "floating point number"))
def case_json_float(w: Work) -> None:
    """A float where an integer belongs (`"mode":420.0`)."""
    w.write_manifest(w.raw().replace(b'"mode":420', b'"mode":420.0', 1))


@case(cli=False, **both(INTEGRITY, "non-standard JSON constant NaN"))
def case_json_nan(w: Work) -> None:
    """A NaN literal."""
    w.write_manifest(w.raw().replace(b'"mode":420', b'"mode":NaN', 1))


@case(cli=False, **both(INTEGRITY, "not valid JSON"))
def case_json_huge_integer(w: Work) -> None:
    """An integer of 100,000 digits (CPython refuses to convert it; a slow bignum otherwise)."""
    w.write_manifest(w.raw().replace(b'"mode":420', b'"mode":' + b"9" * 100_000, 1))


@case(cli=False, **both(INTEGRITY, "does not match the manifest schema"))
def case_json_integer_beyond_2_53(w: Work) -> None:
    """A file size of 2^64 (beyond the exact-integer range FORMAT.md 4.1 allows)."""
    w.edit(lambda d: file_entry(d, "rand.bin").update(size=1 << 64))


@case(**both(INTEGRITY, "not valid JSON"))
def case_json_deep_100k(w: Work) -> None:
    """100,000 nested arrays."""
    w.write_manifest(b"[" * 100_000 + b"]" * 100_000)


@case(**both(INTEGRITY, "not valid JSON"))
def case_json_deep_20mb(w: Work) -> None:
    """A 20 MB manifest of nested arrays."""
    w.write_manifest(b"[" * 10_000_000 + b"]" * 10_000_000)


@case(cli=False, **both(INTEGRITY, "JSON nested deeper than 32 levels"))
def case_json_deep_but_parseable(w: Work) -> None:
    """A valid manifest with a 40-level nested array in an unused place (source.excluded)."""
    w.write_manifest(w.raw().replace(b'"excluded":[', b'"excluded":' + b"[" * 40, 1)
                     .replace(b'"],"kind"', b'"' + b"]" * 40 + b',"kind"', 1))  # fmt: skip


@case(**both(INTEGRITY, "larger than the 268435456 bytes allowed"), shallow=None)
def case_manifest_oversized(w: Work) -> None:
    """A 300 MiB manifest (a sparse file): refused after reading at most 256 MiB + 1 bytes,
    before it is hashed or parsed."""
    with open(w.manifest_path, "r+b") as f:
        f.truncate(300 * MiB)


@case(**both(INTEGRITY, "not in canonical form"))
def case_non_canonical_whitespace(w: Work) -> None:
    """The same document pretty-printed."""
    w.write_manifest(json.dumps(w.doc(), indent=1, sort_keys=True).encode())


@case(cli=False, **both(INTEGRITY, "not in canonical form"))
def case_non_canonical_key_order(w: Work) -> None:
    """Members in reverse order."""
    doc = w.doc()
    w.write_manifest(json.dumps(dict(reversed(list(doc.items()))), separators=(",", ":"),
                                ensure_ascii=False).encode())  # fmt: skip


@case(cli=False, **both(INTEGRITY, "not in canonical form"))
def case_non_canonical_escape(w: Work) -> None:
    """A character written as an escape (`\\u006e` for `n`)."""
    w.write_manifest(w.raw().replace(b'"name":"n"', b'"name":"\\u006e"'))


@case(**both(INTEGRITY, "chunk at offset 78 should start at 88 (chunks overlap or leave a gap)"))
def case_chunks_overlap(w: Work) -> None:
    """The second chunk of a file starting 10 bytes before the first ends."""
    w.edit(lambda d: file_entry(d, "model.safetensors")["chunks"][1].update(offset=78))


@case(
    **both(INTEGRITY, "chunk at offset 1048664 should start at 88 (chunks overlap or leave a gap)")
)
def case_chunks_gap(w: Work) -> None:
    """The middle chunk of a file missing (its object dropped too)."""

    def drop(doc: dict) -> None:
        f = file_entry(doc, "model.safetensors")
        gone = f["chunks"].pop(1)
        doc["objects"] = [o for o in doc["objects"] if o["name"] != gone["object"]]
        w.object_path(gone["object"]).unlink()

    w.edit(drop)


@case(cli=False, **both(INTEGRITY, "chunks cover 1048664 bytes but the file has 1200088"))
def case_chunks_short(w: Work) -> None:
    """The last chunk of a file missing."""

    def drop(doc: dict) -> None:
        gone = file_entry(doc, "model.safetensors")["chunks"].pop()
        doc["objects"] = [o for o in doc["objects"] if o["name"] != gone["object"]]
        w.object_path(gone["object"]).unlink()

    w.edit(drop)


@case(cli=False, **both(INTEGRITY, "that the manifest does not list"))
def case_chunk_object_unlisted(w: Work) -> None:
    """A chunk naming an object the manifest does not list."""
    w.edit(lambda d: file_entry(d, "rand.bin")["chunks"][0].update(object="f" * 64))


@case(cli=False, **both(INTEGRITY, "is listed but no chunk uses it"))
def case_object_unused(w: Work) -> None:
    """An object listed that no chunk uses."""

    def add(doc: dict) -> None:
        doc["objects"].append({"name": "f" * 64, "size": 1})

    w.edit(add)


@case(cli=False, **both(INTEGRITY, "too large for 12034 bytes of zstd"))
def case_object_size_over_bound(w: Work) -> None:
    """An object bigger than zstd can ever make 12034 bytes."""
    rewrite_object(w, "zstd", lambda b: b + b"\0" * 20_000)


@case(cli=False, **both(INTEGRITY, "files are not sorted by path"))
def case_files_unsorted(w: Work) -> None:
    """Files out of order."""
    w.edit(lambda d: d["files"].reverse())


@case(cli=False, **both(INTEGRITY, "objects are not sorted by name"))
def case_objects_unsorted(w: Work) -> None:
    """Objects out of order."""
    w.edit(lambda d: d["objects"].reverse())


@case(cli=False, **both(INTEGRITY, "object "))
def case_object_listed_twice(w: Work) -> None:
    """The same object listed twice."""
    w.edit(lambda d: d["objects"].insert(0, d["objects"][0]))


# Signatures (FORMAT.md section 6).


@case(**both(TRUST, "signed by unknown key"))
def case_sig_unknown_key(w: Work) -> None:
    """A re-signed manifest, signed by a key nobody trusts."""
    raw = w.raw().replace(b'"mode":420', b'"mode":511', 1)
    w.write_manifest(raw, key=w.base.other_key)


@case(**both(TRUST, "does not match the document"))
def case_sig_other_manifest(w: Work) -> None:
    """A valid signature by the trusted key over a different manifest, relabelled with the
    digest of this one."""
    original = w.raw()
    w.edit(lambda d: file_entry(d, "rand.bin").update(mode=511))
    sig = json.loads((w.bundle / "weightvault.sig").read_bytes())
    old = load_signing_key(w.base.key).sign(PAYLOAD_TYPE, original)
    sig["signatures"] = [old]
    (w.bundle / "weightvault.sig").write_bytes(canon.canonical(sig))
    w.regen_tags()


@case(**both(INTEGRITY, "differs from the signed"))
def case_manifest_altered_after_signing(w: Work) -> None:
    """The manifest edited, the signature left as it was."""
    w.write_manifest(w.raw().replace(b'"mode":420', b'"mode":511', 1), sign=False)


@case(cli=False, **both(TRUST, "does not match the document"))
def case_sig_trusted_bad_plus_valid_unknown(w: Work) -> None:
    """A bad signature by the trusted key next to a valid one by another: untrusted."""
    raw = w.raw().replace(b'"mode":420', b'"mode":511', 1)
    w.manifest_path.write_bytes(raw)
    bad = load_signing_key(w.base.key).sign(PAYLOAD_TYPE, raw + b" ")
    w.sign(raw, w.base.other_key, extra=[bad])
    w.regen_tags()


@case(**both(TRUST, "missing; the bundle is unsigned"))
def case_sig_missing(w: Work) -> None:
    """No weightvault.sig at all."""
    (w.bundle / "weightvault.sig").unlink()


@case(cli=False, **both(TRUST, "is not base64"))
def case_sig_not_base64(w: Work) -> None:
    """A signature that is not base64."""
    sig = json.loads((w.bundle / "weightvault.sig").read_bytes())
    sig["signatures"][0]["sig"] = "!" * 88
    (w.bundle / "weightvault.sig").write_bytes(canon.canonical(sig))


@case(cli=False, **both(INTEGRITY, "weightvault.sig: not valid JSON"))
def case_sig_deep_json(w: Work) -> None:
    """A signature file of 30,000 nested arrays."""
    (w.bundle / "weightvault.sig").write_bytes(b"[" * 30_000 + b"]" * 30_000)


@case(**both(INTEGRITY, "weightvault.sig: larger than the 65536 bytes allowed"))
def case_sig_oversized(w: Work) -> None:
    """A 100 MB signature file."""
    with open(w.bundle / "weightvault.sig", "r+b") as f:
        f.truncate(100 * MiB)


# The bag (FORMAT.md section 3): restore may skip it, verify must report it.


# Format version 4 fixes every tag file from the signed manifest (section 3): a tag file that
# differs from those bytes is named as such.
@case(restore=OK, verify=Expect(INTEGRITY, "bag-info.txt: differs from the bytes the signed"),
      shallow=Expect(INTEGRITY, "bag-info.txt: differs from the bytes the signed"))  # fmt: skip
def case_bag_oxum_lies(w: Work) -> None:
    """bag-info.txt's Payload-Oxum claims one byte in one file (tag manifests re-made)."""
    p = w.bundle / "bag-info.txt"
    p.write_text("".join(ln if not ln.startswith("Payload-Oxum:") else "Payload-Oxum: 1.1\n"
                         for ln in p.read_text().splitlines(keepends=True)))  # fmt: skip
    w.regen_tag_manifests()


@case(restore=OK, verify=Expect(INTEGRITY, "file in the bag that the signed manifest does not"),
      shallow=Expect(INTEGRITY, "file in the bag that the signed manifest does not"))  # fmt: skip
def case_bag_extra_payload(w: Work) -> None:
    """A file smuggled into data/ that no manifest lists."""
    (w.data / "smuggled").write_bytes(b"x")


# Resources the spec allows a manifest to ask for.


@case(restore=OK, verify=OK, shallow=OK)  # fmt: skip
def case_many_files(w: Work) -> None:
    """3000 (empty) files: a valid bundle, as a model with many small files would seal."""

    def add(doc: dict) -> None:
        for i in range(3000):
            doc["files"].append({"path": f"many/{i:05d}", "size": 0, "mode": 420,
                                 "sha256": sha256(b""), "chunks": [], "chunks_blake3": ""})  # fmt: skip
        resort(doc)

    w.edit(add)


@case(restore=Expect(CLEAN), verify=OK)  # fmt: skip
def case_path_deep_dirs(w: Work) -> None:
    """A file 1200 directories deep."""
    w.edit(lambda d: rename(d, "rand.bin", "a/" * 1200 + "x"))


@case(restore=Expect(CLEAN), verify=OK)  # fmt: skip
def case_path_too_long_for_os(w: Work) -> None:
    """A 4095-byte path: 15 directories and a file, each name 255 bytes."""
    path = "/".join(c * 255 for c in "abcdefghijklmnop")
    assert len(path) == 4095
    w.edit(lambda d: rename(d, "rand.bin", path))


@case(restore=Expect((INTEGRITY, USAGE, STORAGE)), verify=Expect(INTEGRITY, "zstd"))  # fmt: skip
def case_file_larger_than_limit(w: Work) -> None:
    """A 2 GiB file (two 1 GiB chunks naming one lying 17-byte object), restored where files
    may not exceed 1.5 GiB (the harness's RLIMIT_FSIZE)."""
    w.edit(lambda d: add_file(w, d, "huge.bin", zstd_rle_frame(1, GiB), GiB, 2))


@case(restore=Expect(INTEGRITY, "whole-file sha256"),
      verify=Expect(INTEGRITY, "empty.bin"))  # fmt: skip
def case_empty_file_wrong_digest(w: Work) -> None:
    """An empty file whose declared sha256 is not that of zero bytes."""

    def add(doc: dict) -> None:
        doc["files"].append({"path": "empty.bin", "size": 0, "mode": 420, "sha256": "0" * 64,
                             "chunks": [], "chunks_blake3": ""})  # fmt: skip
        resort(doc)

    w.edit(add)


@case(restore=Expect(INTEGRITY, "(rand.bin bytes 0..5000)"),
      verify=Expect(INTEGRITY, "rand.bin"))  # fmt: skip
def case_single_chunk_file_digest_mismatch(w: Work) -> None:
    """A one-chunk file whose signed digest is not its content's (found as the chunk decodes:
    version 3 has no chunk digests)."""
    w.edit(lambda d: file_entry(d, "rand.bin").update(sha256="0" * 64))


@case(restore=OK, verify=Expect(INTEGRITY, "record/report.md"),
      shallow=Expect(INTEGRITY, "record/report.md"))  # fmt: skip
def case_record_file_tampered(w: Work) -> None:
    """A retirement-record file whose bytes differ from the signed digests (restore does not
    read the record; verify must report it)."""
    signed = b"# report\n"
    (w.data / "record").mkdir()
    (w.data / "record" / "report.md").write_bytes(b"# forged\n")
    w.edit(
        lambda d: d.update(
            record=[
                {
                    "path": "record/report.md",
                    "role": "report",
                    "size": len(signed),
                    "sha256": sha256(signed),
                }
            ]
        )
    )


@case(restore=OK, verify=Expect(INTEGRITY, "manifest-sha256.txt"))
def case_bag_manifest_huge(w: Work) -> None:
    """manifest-sha256.txt replaced by 64 MiB of lines naming objects that do not exist (within
    bag.MAX_TAG_FILE): verify reads it line by line, reports the first verify.MAX_UNKNOWN
    unknown paths and a count of the rest, in bounded memory."""
    line = "%064x  data/objects/%040d\n"
    n = (bag.MAX_TAG_FILE - 1024) // len(line % (0, 0))
    (w.bundle / "manifest-sha256.txt").write_bytes(
        "".join(line % (i, i) for i in range(n)).encode()
    )


@case(**both(INTEGRITY, "lone surrogate"))  # fmt: skip
def case_path_lone_surrogate(w: Work) -> None:
    """A path holding a lone UTF-16 surrogate (valid JSON, not valid Unicode text)."""
    doc = w.doc()
    rename(doc, "rand.bin", "rand\udc80.bin")
    w.write_manifest(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


@case(**both(INTEGRITY, "lone surrogate"))  # fmt: skip
def case_lone_surrogate_elsewhere(w: Work) -> None:
    """A lone surrogate in source.path, a field no other check looks at."""
    doc = w.doc()
    doc["source"]["path"] = "/tmp/\udc80"
    w.write_manifest(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def build(name: str, base: Base, root: Path) -> Work:
    root.mkdir(parents=True)
    w = Work(base, root)
    CASES[name].build(w)
    return w
