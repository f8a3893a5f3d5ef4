#!/usr/bin/env python3
"""Reference restorer for weightvault bundles, format version 1.

This file is the proof that docs/FORMAT.md (a copy travels in every bundle as data/FORMAT.md)
is complete: it was written from that document alone, imports no weightvault code, and the
weightvault test suite checks that it restores, bit-exact, what weightvault sealed. It is
meant to be read in one sitting by someone who has only a bundle and this file.

    python reference_restore.py BAG_DIR DEST [--trust PUBKEY.pem]

BAG_DIR is a bundle directory (a copy of VAULT/bundles/NAME/); DEST must not exist or be an
empty directory. It needs Python 3.11+, `zstandard`, `numpy` (for fsplit-* chunks) and, with
--trust, `cryptography` (Ed25519). Without --trust the signature is NOT checked (a warning
says so); the manifest is still checked against the payload_sha256 in weightvault.sig.
Exit status 0 on success; 1, with one error line on stderr, on any failure.
"""

import argparse
import base64
import hashlib
import json
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import zstandard

HEX64, HEX128 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{128}")
PAYLOAD_TYPE = "application/vnd.weightvault.manifest+json; version=1"
DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
DEVICES |= {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}
FSPLIT = {"fsplit-bf16": "BF16", "fsplit-f16": "F16", "fsplit-f32": "F32"}
SOURCE_KEYS = {"kind", "path", "repo_type", "repo_id", "revision", "commit", "refs",
               "endpoint", "excluded", "verified_against", "verified_files"}


class Refused(Exception):
    """The bundle is damaged, forged, or not something this reader understands."""


def check(ok, message):
    if not ok:
        raise Refused(message)


def is_uint(value, high=None):
    return type(value) is int and value >= 0 and (high is None or value <= high)


def load_canonical(raw, what):
    """Parse canonical JSON (section 4.1): no duplicate keys, no floats, bytes == re-encoding."""
    def pairs(items):
        check(len({k for k, _ in items}) == len(items), f"{what}: duplicate key")
        return dict(items)

    def no_float(text):
        raise Refused(f"{what}: floating point number {text}")

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs,
                         parse_float=no_float, parse_constant=no_float)
        again = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        check(again.encode("utf-8") == raw, f"{what}: not in canonical form")
    except (UnicodeError, ValueError) as e:
        raise Refused(f"{what}: not valid JSON ({e})") from None
    check(isinstance(doc, dict), f"{what}: not a JSON object")
    return doc


def members(obj, required, optional=(), what=""):
    check(isinstance(obj, dict), f"{what}: not an object")
    keys = set(obj)
    check(set(required) <= keys <= set(required) | set(optional), f"{what}: wrong members {sorted(keys)}")


def check_signature(bag, manifest_raw, trust):
    """Section 6: payload digest always; the Ed25519 signature when a trusted key is given."""
    env = load_canonical((bag / "weightvault.sig").read_bytes(), "weightvault.sig")
    members(env, {"format", "format_version", "payload_type", "payload_sha256", "signatures"},
            what="weightvault.sig")
    check(env["format"] == "weightvault-signature" and env["format_version"] == 1
          and env["payload_type"] == PAYLOAD_TYPE, "weightvault.sig: unknown format or version")
    check(hashlib.sha256(manifest_raw).hexdigest() == env["payload_sha256"],
          "data/weightvault.json does not match payload_sha256 in weightvault.sig")
    sigs = env["signatures"]
    check(isinstance(sigs, list) and 1 <= len(sigs) <= 16, "weightvault.sig: need 1..16 signatures")
    if trust is None:
        print("warning: signature NOT checked (no --trust key given)", file=sys.stderr)
        return
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )
    key = load_pem_public_key(Path(trust).read_bytes())
    check(isinstance(key, Ed25519PublicKey), f"{trust}: not an Ed25519 public key")
    keyid = hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()
    ptype = PAYLOAD_TYPE.encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(manifest_raw), manifest_raw)
    for s in sigs:
        members(s, {"keyid", "alg", "public_key", "sig"}, what="weightvault.sig signature")
        if s["keyid"] == keyid and s["alg"] == "ed25519":
            try:
                key.verify(base64.b64decode(s["sig"], validate=True), pae)
                return
            except (InvalidSignature, ValueError):
                pass
    raise Refused(f"no valid signature by the trusted key {keyid[:16]}")


def check_path(path):
    """Section 7: every rule, before anything is written."""
    check(isinstance(path, str) and path, "empty or non-string path")
    what = f"unsafe path {path!r}"
    try:
        check(len(path.encode("utf-8")) <= 4096, f"{what}: longer than 4096 bytes")
    except UnicodeError:
        raise Refused(f"{what}: not UTF-8") from None
    check(unicodedata.is_normalized("NFC", path), f"{what}: not NFC")
    check(not path.startswith("/") and not re.match(r"[A-Za-z]:", path), f"{what}: absolute")
    check("\\" not in path, f"{what}: backslash")
    check(not re.search(r"[\x00-\x1f\x7f]", path), f"{what}: control character")
    for part in path.split("/"):
        check(part not in ("", ".", ".."), f"{what}: empty, '.' or '..' component")
        check(len(part.encode("utf-8")) <= 255, f"{what}: component longer than 255 bytes")
        check(not part.endswith((" ", ".")), f"{what}: component ends with space or dot")
        check(part.split(".")[0].upper() not in DEVICES, f"{what}: Windows device name")


def check_manifest(m):
    """Section 4 and 7: members, types, invariants, paths. Returns {object name: size}."""
    members(m, {"format", "format_version", "name", "created", "tool", "source", "chunking",
                "files", "objects", "encryption"}, what="manifest")
    check(m["format"] == "weightvault-manifest", "manifest: not a weightvault manifest")
    check(m["format_version"] == 1, f"manifest: unknown format_version {m['format_version']!r}")
    check(m["encryption"] is None, "manifest: encrypted bundles are not version 1")
    check(isinstance(m["name"], str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", m["name"])
          and m["name"].split(".")[0].upper() not in DEVICES, "manifest: bad bundle name")
    check(isinstance(m["created"], str)
          and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"]), "manifest: bad created")
    members(m["tool"], {"name", "version"}, what="manifest tool")
    members(m["chunking"], {"target_size", "piece_size"}, what="manifest chunking")
    members(m["source"], {"kind"}, SOURCE_KEYS, what="manifest source")
    check(m["source"]["kind"] in ("local", "hf-cache", "hf-hub"), "manifest: unknown source kind")
    objects, files = m["objects"], m["files"]
    check(isinstance(objects, list) and isinstance(files, list), "manifest: files/objects not arrays")
    sizes = {}
    for o in objects:
        members(o, {"name", "size", "sha512"}, what="manifest object")
        check(isinstance(o["name"], str) and HEX64.fullmatch(o["name"]) and is_uint(o["size"])
              and isinstance(o["sha512"], str) and HEX128.fullmatch(o["sha512"]), "bad object entry")
        sizes[o["name"]] = o["size"]
    names = [o["name"] for o in objects]
    check(names == sorted(set(names)), "manifest: objects not sorted by name or not unique")
    used = set()
    for f in files:
        members(f, {"path", "size", "mode", "sha256", "chunks"}, what="manifest file")
        check_path(f["path"])
        check(is_uint(f["size"]) and is_uint(f["mode"], 511) and isinstance(f["sha256"], str)
              and HEX64.fullmatch(f["sha256"]) and isinstance(f["chunks"], list),
              f"{f['path']}: bad size, mode, sha256 or chunks")
        end = 0
        for c in f["chunks"]:
            what = f"{f['path']} chunk at {end}"
            members(c, {"offset", "length", "sha256", "codec", "object"}, {"dtype"}, what=what)
            check(c["offset"] == end and is_uint(c["length"], 1 << 30) and c["length"] >= 1,
                  f"{what}: chunks do not tile the file")
            check(isinstance(c["sha256"], str) and HEX64.fullmatch(c["sha256"]), f"{what}: bad sha256")
            check(c["object"] in sizes, f"{what}: object {c['object']} is not listed in objects")
            check(c["codec"] not in FSPLIT or c.get("dtype", FSPLIT[c["codec"]]) == FSPLIT[c["codec"]],
                  f"{what}: codec {c['codec']} contradicts dtype {c.get('dtype')}")
            check(sizes[c["object"]] <= bound(c["codec"], c["length"]),
                  f"{what}: object {c['object']} larger than the {c['codec']} bound")
            used.add(c["object"])
            end += c["length"]
        check(end == f["size"], f"{f['path']}: chunk lengths do not add up to size")
    check(used == set(sizes), "manifest: an object is listed but used by no chunk")
    paths = [f["path"] for f in files]
    check(paths == sorted(set(paths)), "manifest: files not sorted by path or not unique")
    folded = {unicodedata.normalize("NFC", p.casefold()) for p in paths}
    check(len(folded) == len(paths), "manifest: two paths are equal ignoring case")
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    check(not dirs & set(paths), "manifest: a path is also a directory of another path")
    return sizes


def bound(codec, length):
    """Section 5: the largest object a chunk of `length` bytes may be stored as."""
    if codec == "raw":
        return length
    check(codec == "zstd" or codec in FSPLIT, f"unknown codec {codec!r}")
    extra = 64 * -(-length // 4194304) if codec in FSPLIT else 0
    return length + length // 128 + 64 + extra


def unzstd(data, length, what="zstd"):
    """Section 5.2: one frame, declaring `length`, window <= 2^27, nothing left over."""
    try:
        params = zstandard.get_frame_parameters(data)
        check(params.content_size == length, f"{what}: frame does not declare {length} bytes")
        check(params.window_size <= 1 << 27, f"{what}: window larger than 2^27")
        pos = zstandard.frame_header_size(data)  # RFC 8878 3.1.1: walk the blocks to the end
        while True:
            check(pos + 3 <= len(data), f"{what}: truncated frame")
            header = int.from_bytes(data[pos:pos + 3], "little")
            check((header >> 1) & 3 != 3, f"{what}: reserved block type")
            pos += 3 + (1 if (header >> 1) & 3 == 1 else header >> 3)
            if header & 1:
                break
        check(pos + (4 if data[4] & 4 else 0) == len(data), f"{what}: bytes left over after frame")
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
        with dctx.stream_reader(data, read_across_frames=False) as reader:
            out = bytearray()
            while len(out) < length and (piece := reader.read(length - len(out))):
                out += piece
            check(len(out) == length and reader.read(1) == b"", f"{what}: wrong decoded length")
        return bytes(out)
    except zstandard.ZstdError as e:
        raise Refused(f"{what}: {e}") from None


def unfsplit(data, length, codec):
    """Section 5.3 and Appendix A."""
    raise Refused(f"{codec}: not implemented yet")


def decode(data, codec, length):
    if codec == "raw":
        check(len(data) == length, "raw object has the wrong size")
        return data
    if codec == "zstd":
        return unzstd(data, length)
    return unfsplit(data, length, codec)


def read_object(bag, name, size):
    """Section 7.1 step 3: the stored bytes, checked against size and name."""
    path = bag / "data" / "objects" / name
    check(path.is_file() and path.stat().st_size == size, f"object {name}: missing or wrong size")
    data = path.read_bytes()
    check(hashlib.sha256(data).hexdigest() == name, f"object {name}: SHA-256 does not match its name")
    return data


def restore(bag, dest, trust):
    bag, dest = Path(bag), Path(dest)
    check((bag / "tagmanifest-sha256.txt").is_file(), f"{bag}: not a committed bundle (section 2)")
    check(not dest.exists() or (dest.is_dir() and not any(dest.iterdir())),
          f"{dest}: exists and is not an empty directory")
    manifest_raw = (bag / "data" / "weightvault.json").read_bytes()
    check_signature(bag, manifest_raw, trust)                                  # step 1
    manifest = load_canonical(manifest_raw, "data/weightvault.json")           # step 2
    sizes = check_manifest(manifest)
    if manifest["name"] != bag.resolve().name:
        print(f"warning: bundle is named {manifest['name']}, not {bag.name}", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        for f in manifest["files"]:                                            # step 3
            target = tmp.joinpath(*f["path"].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(target, "xb") as out:
                for c in f["chunks"]:
                    plain = decode(read_object(bag, c["object"], sizes[c["object"]]),
                                   c["codec"], c["length"])
                    check(len(plain) == c["length"]
                          and hashlib.sha256(plain).hexdigest() == c["sha256"],
                          f"{f['path']}: chunk at {c['offset']} (object {c['object']}) is damaged")
                    digest.update(plain)
                    out.write(plain)
            check(digest.hexdigest() == f["sha256"], f"{f['path']}: file SHA-256 mismatch")
            target.chmod(f["mode"])                                            # step 4
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(manifest["files"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bag_dir")
    ap.add_argument("dest")
    ap.add_argument("--trust", metavar="PUBKEY.pem", help="Ed25519 public key to verify with")
    args = ap.parse_args(argv)
    try:
        count = restore(args.bag_dir, args.dest, args.trust)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # I/O errors, malformed documents, missing libraries
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"restored {count} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
