#!/usr/bin/env python3
"""Reference restorer for weightvault bundles, format versions 1 to 6.

The proof that the format spec (docs/FORMAT.md with its fsplit appendix; every bundle carries
a copy as data/FORMAT.md) is complete: written from the spec alone, sharing no code with
weightvault, and tested to restore bit-exact what weightvault seals. Read it in one sitting.

    python reference_restore.py BAG_DIR DEST [--trust PUBKEY.pem]
                                [--data-key HEX | --data-key-file FILE]

BAG_DIR is a bundle directory: VAULT/bundles/NAME/ in a vault, or a standalone bag (an export,
or a copy of a version 1-3 bundle directory); DEST must not exist or be empty. A version 4 to 6
bundle's objects are read from BAG_DIR/data/objects/ if the bag holds them, else from the
vault's shared pool, BAG_DIR/../../objects/ (section 2.2).
Needs Python 3.11+, `zstandard`, `numpy` (fsplit-* chunks) and, with --trust, `cryptography`.
Version 4 is the main text of the spec; version 3 differs as section 9.2 lists (no `spec`,
`supersedes`, `bag_info`; objects inside the bag), versions 1 and 2 also as section 9.1 lists
(SHA-512 digests, chunk digests, version 1 always clear, version 2 always encrypted), and
version 5 is version 4 always encrypted, with chunk objects of scheme weightvault-aead-2
(section 10.3: bound to the lineage, not to the chunk's position), and version 6 is version 4
always clear, each file with `chunks_blake3`, the BLAKE3 digests of its chunks' plaintexts
(section 4.3). The file's SHA-256 proves every restored byte, so the chunk digests are checked
only where the `blake3` module is installed (optional; nothing else here needs it).
Encrypted bundles (section 10: versions 2 and 5, or 3 and 4 with `encryption`) need their data key:
the 64 hex digits that `age -d -i IDENTITY data/keys/recipient-N.age` prints, given as
--data-key HEX or as --data-key-file FILE holding that output (combining SLIP-39 shares is
left to other tools). The key must pass the bundle's key check (section 10.6) before it is
used. Encrypted bundles also need `cryptography` (AES-256-GCM and HKDF-SHA256) with or
without --trust: their one extra dependency.
Without --trust the signature is NOT checked (a warning says so); the manifest is still checked
against weightvault.sig's payload_sha256. Files are written into a temporary sibling of DEST,
renamed into place only once every file's SHA-256 has matched (section 7). Exit 0 on success;
on any failure exit 1 with one "error:" line on stderr, leaving DEST as it was.
"""

import argparse
import base64
import hashlib
import json
import re
import shutil
import struct
import sys
import tempfile
import unicodedata
from pathlib import Path

import zstandard

try:  # format version 6's chunk digests: checked if available (the file's SHA-256 suffices)
    import blake3
except ImportError:
    blake3 = None

PAYLOAD_TYPE = "application/vnd.weightvault.manifest+json; version=1"
DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
DEVICES |= {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}
FSPLIT = {"fsplit-bf16": ("BF16", 1, 2), "fsplit-f16": ("F16", 2, 2), "fsplit-f32": ("F32", 3, 4)}
SOURCE_KEYS = {
    "kind",
    "path",
    "repo_type",
    "repo_id",
    "revision",
    "commit",
    "refs",
    "endpoint",
    "excluded",
    "verified_against",
    "verified_files",
}
ROLES = {"record", "report", "interview", "attachment", "model-signing"}
SEALED_MAGIC = b"WVE2\x01"  # section 10.3: magic "WVE2" and version byte 1
SEGMENT_SIZE = 1048576  # section 10.2: the only segment_size of scheme weightvault-aead-1
PRIVATE_PATH = "private/manifest.sealed"
PRIVATE_MAX = 256 * 1024 * 1024  # section 10.4: the private section's plaintext limit
ENVELOPE_PATH = r"keys/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.age"


class Refused(Exception):
    """The bundle is damaged, forged, or not something this reader understands."""


def check(ok, message):
    if not ok:
        raise Refused(message)


def is_uint(v, high=None):
    return type(v) is int and v >= 0 and (high is None or v <= high)


def is_hex(v, digits=64):
    return isinstance(v, str) and re.fullmatch(f"[0-9a-f]{{{digits}}}", v) is not None


def sha512s(version):
    """Section 9.1: versions 1 and 2 add `sha512` to objects and plain payload files."""
    return {"sha512"} if version < 3 else set()


def sha512_ok(entry):
    """A `sha512` member, where members() required one, is 128 hex digits."""
    return "sha512" not in entry or is_hex(entry["sha512"], 128)


def digests_match(data, entry):
    """SHA-256, and in versions 1 and 2 SHA-512, of `data` against a manifest entry."""
    return hashlib.sha256(data).hexdigest() == entry["sha256"] and (
        "sha512" not in entry or hashlib.sha512(data).hexdigest() == entry["sha512"]
    )


def members(obj, required, optional=(), what=""):
    check(
        isinstance(obj, dict) and set(required) <= obj.keys() <= set(required) | set(optional),
        f"{what}: wrong members",
    )


def load_canonical(raw, what):
    """Section 4.1: no duplicate keys, no floats, and the bytes are the canonical encoding."""

    def pairs(items):
        check(len({k for k, _ in items}) == len(items), f"{what}: duplicate key")
        return dict(items)

    def no_float(text):
        raise Refused(f"{what}: floating point number {text}")

    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=pairs,
            parse_float=no_float,
            parse_constant=no_float,
        )
        again = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        check(again.encode("utf-8") == raw, f"{what}: not in canonical form")
    except (UnicodeError, ValueError) as e:
        raise Refused(f"{what}: not valid JSON ({e})") from None
    check(isinstance(doc, dict), f"{what}: not a JSON object")
    return doc


def check_signature(bag, manifest_raw, trust):
    """Section 6: the payload digest always; the Ed25519 signature when a key is trusted."""
    env = load_canonical((bag / "weightvault.sig").read_bytes(), "weightvault.sig")
    members(
        env,
        {"format", "format_version", "payload_type", "payload_sha256", "signatures"},
        what="weightvault.sig",
    )
    check(
        (env["format"], env["format_version"], env["payload_type"])
        == ("weightvault-signature", 1, PAYLOAD_TYPE)
        and is_uint(env["format_version"]),
        "weightvault.sig: unknown format",
    )
    check(
        hashlib.sha256(manifest_raw).hexdigest() == env["payload_sha256"],
        "data/weightvault.json does not match payload_sha256 in weightvault.sig",
    )
    sigs = env["signatures"]
    check(isinstance(sigs, list) and 1 <= len(sigs) <= 16, "weightvault.sig: not 1..16 signatures")
    for s in sigs:
        members(s, {"keyid", "alg", "public_key", "sig"}, what="weightvault.sig signature")
    if trust is None:
        print("warning: signature NOT checked (no --trust key given)", file=sys.stderr)
        return
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(Path(trust).read_bytes())
    check(isinstance(key, Ed25519PublicKey), f"{trust}: not an Ed25519 public key")
    keyid = hashlib.sha256(key.public_bytes_raw()).hexdigest()
    ptype = PAYLOAD_TYPE.encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(manifest_raw), manifest_raw)
    for s in sigs:
        if s["keyid"] == keyid and s["alg"] == "ed25519":
            try:
                return key.verify(base64.b64decode(s["sig"], validate=True), pae)
            except (InvalidSignature, ValueError):
                pass
    raise Refused(f"no valid signature by the trusted key {keyid}")


def check_paths(paths, what):
    """Section 7: every rule for every path in one list, checked before anything is written."""
    for path in paths:
        bad = f"unsafe path {path!r}"
        check(isinstance(path, str) and path, bad)  # load_canonical made sure it is valid UTF-8
        check(len(path.encode("utf-8")) <= 4096, f"{bad}: longer than 4096 bytes")
        check(unicodedata.is_normalized("NFC", path), f"{bad}: not NFC")
        check(not path.startswith("/") and not re.match(r"[A-Za-z]:", path), f"{bad}: absolute")
        check("\\" not in path, f"{bad}: backslash")
        check(not re.search(r"[\x00-\x1f\x7f]", path), f"{bad}: control character")
        for part in path.split("/"):
            check(part not in ("", ".", ".."), f"{bad}: empty, '.' or '..' component")
            check(len(part.encode("utf-8")) <= 255, f"{bad}: component longer than 255 bytes")
            check(not part.endswith((" ", ".")), f"{bad}: component ends with space or dot")
            check(part.split(".")[0].upper() not in DEVICES, f"{bad}: Windows device name")
    check(paths == sorted(set(paths)), f"{what}: paths not sorted or not unique")
    folded = {unicodedata.normalize("NFC", p.casefold()) for p in paths}
    check(len(folded) == len(paths), f"{what}: two paths are equal ignoring case")
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    check(not dirs & set(paths), f"{what}: a path is also a directory of another path")


def bound(codec, length):
    """Section 5: the largest object a chunk of `length` bytes may be stored as."""
    check(codec in ("raw", "zstd") or codec in FSPLIT, f"unknown codec {codec!r}")
    if codec == "raw":
        return length
    return length + length // 128 + 64 + (64 * -(-length // 4194304) if codec in FSPLIT else 0)


def check_manifest(m):
    """Sections 4 and 7: members, types, invariants, paths. Returns {object name: size}."""
    version = m.get("format_version") if isinstance(m, dict) else None
    check(
        is_uint(version) and version in (1, 2, 3, 4, 5, 6),
        f"manifest: unknown format_version {version!r}",
    )
    members(
        m,
        {
            "format",
            "format_version",
            "name",
            "created",
            "tool",
            "source",
            "chunking",
            "files",
            "objects",
            "encryption",
            "record",
        }
        | ({"spec", "supersedes", "bag_info"} if version >= 4 else set()),
        what="manifest",
    )
    check(m["format"] == "weightvault-manifest", "manifest: not a weightvault manifest")
    check(version not in (1, 6) or m["encryption"] is None,
          f"manifest: version {version} must not be encrypted")  # fmt: skip
    check(version not in (2, 5) or m["encryption"] is not None,
          f"manifest: version {version} must be encrypted")  # fmt: skip
    encrypted = m["encryption"] is not None  # versions 2 and 5, or 3 and 4 with encryption
    members(m["tool"], {"name", "version"}, what="manifest tool")
    members(m["chunking"], {"target_size", "piece_size"}, what="manifest chunking")
    if encrypted:  # section 10.2: the real source and files are in the private section
        check(
            m["source"] == {"kind": "encrypted"} and m["files"] == [],
            'manifest: an encrypted bundle needs source {"kind": "encrypted"} and files []',
        )
    else:
        check_source(m["source"])
    check(
        all(isinstance(m[k], list) for k in ("files", "objects", "record")), "manifest: bad arrays"
    )
    for r in m["record"]:  # section 4.6: checked, but not part of the restored model
        members(r, {"path", "role", "size", "sha256"} | sha512s(version), what="manifest record")
        check(
            r["role"] in ROLES
            and is_uint(r["size"])
            and is_hex(r["sha256"])
            and sha512_ok(r)
            and str(r["path"]).startswith("record/"),
            f"bad record {r['path']!r}",
        )
    plain = [r["path"] for r in m["record"]]
    if version >= 4:  # sections 4.7 and 4.8
        check(isinstance(m["spec"], list) and m["spec"], "manifest: spec must list files")
        for s in m["spec"]:
            members(s, {"path", "size", "sha256"}, what="manifest spec")
            check(
                is_uint(s["size"])
                and is_hex(s["sha256"])
                and re.fullmatch(r"FORMAT\.md|spec/[a-z0-9][a-z0-9.-]{0,63}\.json", str(s["path"])),
                f"bad spec file {s['path']!r}",
            )
        check("FORMAT.md" in [s["path"] for s in m["spec"]], "manifest: spec lacks FORMAT.md")
        plain += [s["path"] for s in m["spec"]]
        sup = m["supersedes"]
        if sup is not None:
            members(sup, {"bundle", "name"}, what="manifest supersedes")
            check(is_hex(sup["bundle"]), "manifest: supersedes.bundle is not a bundle id")
        members(m["bag_info"], {"organization", "description"}, what="manifest bag_info")
    check_paths(sorted(plain), "record")
    if encrypted:
        payload = check_encryption(m["encryption"], version)
        check_paths(sorted(payload + plain), "payload files")
    sizes = {}
    for o in m["objects"]:
        members(o, {"name", "size"} | sha512s(version), what="manifest object")
        check(is_hex(o["name"]) and is_uint(o["size"]) and sha512_ok(o), "bad object")
        check(
            not encrypted or sealed_length(o["size"], SEGMENT_SIZE) is not None,
            f"object {o['name']}: {o['size']} bytes is not the size of a sealed object",
        )
        sizes[o["name"]] = o["size"]
    names = [o["name"] for o in m["objects"]]
    check(names == sorted(sizes), "manifest: objects not sorted by name or not unique")
    if not encrypted:  # encrypted: files are checked once the private section is open
        check_files(m, sizes)
    return sizes


def check_source(source):
    """Section 4.5 (when encrypted, on the private section's source: never "encrypted")."""
    members(source, {"kind"}, SOURCE_KEYS, what="manifest source")
    check(source["kind"] in ("local", "hf-cache", "hf-hub"), "manifest: unknown source kind")


def check_files(m, sizes, segment=None):
    """Sections 4.3 and 7 on `files`; with `segment`, also the encrypted rules of 10.3 (in
    version 5, chunks may share an object: identical chunks seal to one object)."""
    used, chunk_digest = set(), {"sha256"} if m["format_version"] < 3 else set()
    for f in m["files"]:
        b3 = {"chunks_blake3"} if m["format_version"] == 6 else set()  # 4.3
        members(f, {"path", "size", "mode", "sha256", "chunks"} | b3, what="manifest file")
        check(
            not b3
            or (re.fullmatch(r"([0-9a-f]{64})*", str(f["chunks_blake3"])) is not None
                and len(f["chunks_blake3"]) == 64 * len(f["chunks"])),
            f"{f['path']}: chunks_blake3 is not 64 hex digits per chunk",
        )
        check(
            is_uint(f["size"])
            and is_uint(f["mode"], 511)
            and is_hex(f["sha256"])
            and isinstance(f["chunks"], list),
            f"{f['path']}: bad size, mode, sha256 or chunks",
        )
        end = 0
        for c in f["chunks"]:
            what = f"{f['path']} chunk at {end}"
            required = {"offset", "length", "codec", "object"} | chunk_digest  # 4.3, 9.1
            members(c, required, {"dtype"}, what=what)
            check(
                is_uint(c["offset"])
                and c["offset"] == end
                and is_uint(c["length"], 1 << 30)
                and c["length"] >= 1,
                f"{what}: chunks do not tile the file",
            )
            check(
                ("sha256" not in c or is_hex(c["sha256"])) and c["object"] in sizes,
                f"{what}: bad sha256 or object",
            )
            check(
                c["codec"] not in FSPLIT
                or c.get("dtype", FSPLIT[c["codec"]][0]) == FSPLIT[c["codec"]][0],
                f"{what}: codec {c['codec']} contradicts dtype",
            )
            limit = bound(c["codec"], c["length"])
            check(
                sizes[c["object"]] <= (limit if segment is None else sealed_size(limit, segment)),
                f"{what}: object {c['object']} larger than the {c['codec']} bound",
            )
            if segment is not None:  # section 10.3
                check(
                    c["codec"] != "raw"
                    or sealed_length(sizes[c["object"]], segment) == c["length"],
                    f"{what}: raw object {c['object']} does not hold {c['length']} bytes",
                )
                check(
                    c["object"] not in used or m["format_version"] == 5,
                    f"{what}: object {c['object']} is shared with another chunk (encrypted)",
                )
            used.add(c["object"])
            end += c["length"]
        check(end == f["size"], f"{f['path']}: chunk lengths do not add up to size")
    check(used == set(sizes), "manifest: an object is listed but used by no chunk")
    check_paths([f["path"] for f in m["files"]], "files")


def check_encryption(enc, version):
    """Sections 10.2 and 10.5: the encryption member. Returns its payload file paths."""
    lineage = {"lineage_salt"} if version == 5 else set()  # section 10.2: version 5 only
    members(
        enc,
        {"scheme", "salt", "segment_size", "key_check", "private", "envelopes", "shares"}
        | lineage,
        what="manifest encryption",
    )
    scheme = "weightvault-aead-2" if version == 5 else "weightvault-aead-1"
    check(enc["scheme"] == scheme, f"encryption scheme {enc['scheme']!r} is not {scheme}")
    check(is_hex(enc["salt"]), "manifest encryption: salt is not 32 bytes of hex")
    check(not lineage or is_hex(enc["lineage_salt"]), "manifest encryption: bad lineage_salt")
    check(
        is_uint(enc["segment_size"]) and enc["segment_size"] == SEGMENT_SIZE,
        f"manifest encryption: segment_size {enc['segment_size']!r} is not {SEGMENT_SIZE}",
    )
    members(enc["key_check"], {"nonce", "ciphertext"}, what="manifest key_check")
    check(
        is_hex(enc["key_check"]["nonce"], 24) and is_hex(enc["key_check"]["ciphertext"], 74),
        "manifest key_check: nonce is not 12 bytes or ciphertext not 37 bytes of hex",
    )
    private = enc["private"]
    members(private, {"path", "size", "sha256"} | sha512s(version), what="manifest private")
    length = sealed_length(private["size"], SEGMENT_SIZE)
    check(
        private["path"] == PRIVATE_PATH
        and length is not None
        and length <= PRIVATE_MAX
        and is_hex(private["sha256"])
        and sha512_ok(private),
        "manifest private: bad path, size or digest",
    )
    envelopes = enc["envelopes"]
    check(
        isinstance(envelopes, list) and 1 <= len(envelopes) <= 64,
        "manifest encryption: not 1..64 envelopes",
    )
    for e in envelopes:
        members(
            e,
            {"path", "kind", "label", "recipient", "share_digest", "size", "sha256"}
            | sha512s(version),
            what="manifest envelope",
        )
        check(
            isinstance(e["path"], str)
            and re.fullmatch(ENVELOPE_PATH, e["path"]) is not None
            and e["kind"] in ("recipient", "share")
            and (e["label"] is None or isinstance(e["label"], str))
            and isinstance(e["recipient"], str)
            and (is_hex(e["share_digest"]) if e["kind"] == "share" else e["share_digest"] is None)
            and is_uint(e["size"])
            and is_hex(e["sha256"])
            and sha512_ok(e),
            f"bad envelope {e['path']!r}",
        )
    paths = [e["path"] for e in envelopes]
    check_paths(paths, "envelopes")
    count = sum(e["kind"] == "share" for e in envelopes)
    shares = enc["shares"]
    if shares is None:
        check(count == 0, "manifest encryption: share envelopes without shares")
    else:
        members(shares, {"scheme", "threshold", "count", "identifier"}, what="manifest shares")
        check(
            shares["scheme"] == "slip39"
            and is_uint(shares["count"], 16)
            and is_uint(shares["threshold"], shares["count"])
            and shares["threshold"] >= 1
            and is_uint(shares["identifier"], 32767)
            and shares["count"] == count,
            "manifest shares: bad scheme, threshold, count or identifier",
        )
    return [*paths, PRIVATE_PATH]


def sealed_length(size, segment):
    """Section 10.3: len(P) of a sealed object from its size alone; None if no P fits."""
    if not is_uint(size) or size < 21:
        return None
    q, r = divmod(size - 21, segment + 16)
    if r == 0:
        return q * segment if q >= 1 else None
    return q * segment + r - 16 if r >= 17 or (r == 16 and q == 0) else None


def sealed_size(length, segment):
    """Section 10.3: the size of the sealed object whose plaintext is `length` bytes."""
    return 21 + length + 16 * max(1, -(-length // segment))


def associated_data(label, salt, index):
    """Section 10.1: AD(LABEL, INDEX)."""
    return b"weightvault/2 " + label + b"\x00" + salt + struct.pack(">Q", index)



def hkdf(ikm, salt, info):
    """Section 10.1: HKDF-SHA256, 32 bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def check_key(key, enc):
    """Section 10.6: refuse a data key that does not open the key check."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = bytes.fromhex(enc["salt"])
    aead = AESGCM(hkdf(key, salt, b"weightvault/2 key check"))
    try:
        plain = aead.decrypt(
            bytes.fromhex(enc["key_check"]["nonce"]),
            bytes.fromhex(enc["key_check"]["ciphertext"]),
            associated_data(b"check", salt, 0),
        )
    except InvalidTag:
        plain = None
    check(
        plain == b"weightvault key check",
        "the data key fails the bundle's key check (section 10.6): it is not this bundle's key",
    )


def open_sealed(data, key, enc, label, index, what):
    """Section 10.3: the plaintext of a sealed object; no segment is used before its tag."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    segment = enc["segment_size"]
    length = sealed_length(len(data), segment)
    check(length is not None, f"{what}: {len(data)} bytes is not the size of a sealed object")
    check(data[:5] == SEALED_MAGIC, f"{what}: not a sealed object (magic or version byte)")
    aead = AESGCM(hkdf(key, data[5:21], b"weightvault/2 object key"))
    if label == b"chunk" and enc.get("scheme") == "weightvault-aead-2":  # the lineage, not position
        ad = b"weightvault/3 chunk\x00" + bytes.fromhex(enc["lineage_salt"])
    else:
        ad = associated_data(label, bytes.fromhex(enc["salt"]), index)
    count = max(1, -(-length // segment))
    view, out, pos = memoryview(data), bytearray(), 21
    for i in range(count):
        end = pos + min(segment, length - i * segment) + 16
        try:  # the nonce's last-segment flag detects truncation and extension
            out += aead.decrypt(struct.pack(">QI", i, i == count - 1), view[pos:end], ad)
        except InvalidTag:
            raise Refused(
                f"{what}: segment {i} fails authentication "
                "(damaged, or moved from another chunk or bundle)"
            ) from None
        pos = end
    check(pos == len(data) and len(out) == length, f"{what}: segments do not fill the object")
    return bytes(out)


def open_private(bag, m, sizes, key):
    """Section 10.7 step 3: read, check, open and merge the private section."""
    enc, what = m["encryption"], f"data/{PRIVATE_PATH}"
    path = bag / "data" / PRIVATE_PATH
    check(
        path.is_file() and path.stat().st_size == enc["private"]["size"],
        f"{what}: missing or wrong size",
    )
    data = path.read_bytes()
    check(digests_match(data, enc["private"]), f"{what}: its digest does not match the manifest")
    private = load_canonical(open_sealed(data, key, enc, b"private", 0, what), what)
    members(
        private, {"format", "format_version", "bundle", "source", "files"}, what="private section"
    )
    check(
        (private["format"], private["format_version"])
        == ("weightvault-private", m["format_version"])
        and is_uint(private["format_version"]),
        "private section: unknown format, or format_version differs from the manifest's",
    )
    members(private["bundle"], {"name", "salt"}, what="private section bundle")
    check(
        private["bundle"]["name"] == m["name"] and private["bundle"]["salt"] == enc["salt"],
        "private section: belongs to another bundle (its name or salt differ)",
    )
    check_source(private["source"])
    check(isinstance(private["files"], list), "private section: files is not an array")
    m["source"], m["files"] = private["source"], private["files"]  # section 10.4: merge, check
    check_files(m, sizes, enc["segment_size"])


def unzstd(data, length, what="zstd", max_window=1 << 27):
    """Section 5.2 (and Appendix A 4.2, with its smaller window): one frame of `length` bytes,
    nothing left over."""
    try:
        check(data[:4] == b"\x28\xb5\x2f\xfd" and len(data) > 5, f"{what}: not a zstd frame")
        params = zstandard.get_frame_parameters(data)
        check(params.content_size == length, f"{what}: frame does not declare {length} bytes")
        check(params.window_size <= max_window, f"{what}: window larger than {max_window}")
        check(
            params.has_checksum and not params.dict_id and not data[4] & 0x18,
            f"{what}: frame lacks a checksum, uses a dictionary or sets reserved bits",
        )
        pos = zstandard.frame_header_size(data)  # RFC 8878 3.1.1: walk the blocks to the end
        while True:
            check(pos + 3 <= len(data), f"{what}: truncated frame")
            header = int.from_bytes(data[pos : pos + 3], "little")
            check((header >> 1) & 3 != 3, f"{what}: reserved block type")
            pos += 3 + (1 if (header >> 1) & 3 == 1 else header >> 3)
            if header & 1:
                break
        check(
            pos + (4 if data[4] & 4 else 0) == len(data),
            f"{what}: the frame does not end exactly at the end of the data",
        )
        dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
        with dctx.stream_reader(data, read_across_frames=False) as reader:
            out = bytearray()
            while len(out) < length and (piece := reader.read(length - len(out))):
                out += piece
            check(len(out) == length and reader.read(1) == b"", f"{what}: wrong decoded length")
        return bytes(out)
    except zstandard.ZstdError as e:
        raise Refused(f"{what}: {e}") from None


def unfsplit(data, length, codec):
    """Section 5.3 and Appendix A: blocks of split exponent/sign+mantissa streams."""
    import numpy as np

    _, layout, size = FSPLIT[codec]
    out, pos = bytearray(), 0

    def take(n):
        nonlocal pos
        check(pos + n <= len(data), f"{codec}: truncated block")
        pos += n
        return data[pos - n : pos]

    while pos < len(data):
        magic, version, lay, block_len = struct.unpack("<BBBI", take(7))
        check((magic, version, lay) == (0xF5, 1, layout), f"{codec}: bad block header")
        check(0 < block_len <= min(4194304, length - len(out)), f"{codec}: bad block length")
        n = block_len // size
        descriptors = take(5 * size)
        streams = []
        for k in range(size):
            method, stored = struct.unpack_from("<BI", descriptors, 5 * k)
            check(
                (method, stored) == (0, n) or (method == 1 and 1 <= stored <= n),
                f"{codec}: bad stream descriptor",
            )
            payload = take(stored)
            if method == 1:
                payload = unzstd(payload, n, f"{codec} stream", max_window=1 << 23)
            streams.append(np.frombuffer(payload, np.uint8).astype(np.uint32))
        a, b = streams[0], streams[1]
        w = (a << 7) | ((b & 0x80) << 8) | (b & 0x7F)  # bf16, f16, or the top half of an f32
        if size == 4:
            w = (w << 16) | (streams[2] << 8) | streams[3]
        out += w.astype(f"<u{size}").tobytes()
        out += take(block_len - n * size)  # the tail: bytes that are not a whole element
    check(len(out) == length, f"{codec}: decoded {len(out)} bytes, not {length}")
    return bytes(out)


def read_object(bag, name, size, version):
    """Section 7.1 step 3: the stored bytes, checked against size and name. Version 4: in the
    bag if it holds the object (a standalone bag), else in the vault's pool (section 2.2)."""
    path = bag / "data" / "objects" / name
    if version >= 4 and not path.is_file():
        path = bag.parent.parent / "objects" / name
    check(path.is_file() and path.stat().st_size == size, f"object {name}: missing or wrong size")
    data = path.read_bytes()
    check(
        hashlib.sha256(data).hexdigest() == name, f"object {name}: SHA-256 does not match its name"
    )
    return data


def read_data_key(hex_key, key_file):
    """--data-key HEX or --data-key-file FILE (what `age -d` prints: 64 hex digits, LF)."""
    if key_file is not None:
        try:
            hex_key = Path(key_file).read_bytes().decode("ascii")
        except UnicodeError:
            hex_key = ""
    what = key_file or "--data-key"
    text = hex_key.strip()
    check(re.fullmatch(r"[0-9a-fA-F]{64}", text), f"{what}: a data key is 64 hex digits")
    return bytes.fromhex(text)


def restore(bag, dest, trust, key=None):
    bag, dest = Path(bag), Path(dest)
    check((bag / "tagmanifest-sha256.txt").is_file(), f"{bag}: not a committed bundle (section 2)")
    check(
        not dest.exists() or (dest.is_dir() and not any(dest.iterdir())),
        f"{dest}: exists and is not an empty directory",
    )
    manifest_raw = (bag / "data" / "weightvault.json").read_bytes()
    check_signature(bag, manifest_raw, trust)  # step 1
    manifest = load_canonical(manifest_raw, "data/weightvault.json")  # step 2
    sizes = check_manifest(manifest)
    opened, version = None, manifest["format_version"]
    if manifest["encryption"] is not None:  # section 10.7
        check(
            key is not None,
            f"bundle {manifest['name']} is encrypted (format version {version}): a data key is "
            "needed (--data-key HEX or --data-key-file FILE; see data/FORMAT.md section 10.5)",
        )
        check_key(key, manifest["encryption"])  # step 2
        open_private(bag, manifest, sizes, key)  # step 3
        enc = manifest["encryption"]

        def opened(data, index, name):  # step 4: open before decoding
            return open_sealed(data, key, enc, b"chunk", index, f"object {name}")

    elif key is not None:
        print("warning: data key ignored: the bundle is not encrypted", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        index = 0  # section 10.3: a chunk's position in the file table
        for f in manifest["files"]:  # step 3
            target = tmp.joinpath(*f["path"].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(target, "xb") as out:
                for k, c in enumerate(f["chunks"]):
                    data, codec = read_object(bag, c["object"], sizes[c["object"]], version), c["codec"]
                    if opened is not None:
                        data = opened(data, index, c["object"])
                    index += 1
                    plain = (
                        data
                        if codec == "raw"
                        else unzstd(data, c["length"])  # section 5
                        if codec == "zstd"
                        else unfsplit(data, c["length"], codec)
                    )
                    check(  # versions 1 and 2: the chunk digest; 3 to 5 have only the file's
                        len(plain) == c["length"]
                        and (version >= 3 or hashlib.sha256(plain).hexdigest() == c["sha256"])
                        and (blake3 is None or version != 6
                             or blake3.blake3(plain).hexdigest()
                             == f["chunks_blake3"][64 * k : 64 * k + 64]),
                        f"{f['path']}: chunk at {c['offset']} (object {c['object']}) is damaged",
                    )
                    digest.update(plain)
                    out.write(plain)
            check(digest.hexdigest() == f["sha256"], f"{f['path']}: file SHA-256 mismatch")
            target.chmod(f["mode"])  # step 4
        tmp.replace(dest)  # only now, every file matched; atomic, replaces an empty DEST
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(manifest["files"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bag_dir")
    ap.add_argument("dest")
    ap.add_argument("--trust", metavar="PUBKEY.pem", help="Ed25519 public key to verify with")
    keys = ap.add_mutually_exclusive_group()
    keys.add_argument("--data-key", metavar="HEX", help="encrypted: the data key, 64 hex digits")
    keys.add_argument("--data-key-file", metavar="FILE", help="encrypted: a file holding it")
    args = ap.parse_args(argv)
    try:
        key = None
        if args.data_key is not None or args.data_key_file is not None:
            key = read_data_key(args.data_key, args.data_key_file)
        count = restore(args.bag_dir, args.dest, args.trust, key)
    except Exception as e:  # Refused, or I/O errors, malformed documents, missing libraries
        reason = str(e) if isinstance(e, Refused) else f"{type(e).__name__}: {e}"
        print(f"error: {reason}", file=sys.stderr)
        return 1
    print(f"restored {count} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
