"""An outsider's verifier of a replica's audit chain, written from docs/FORMAT.md alone
(sections 4.1, 6, 8, 8.1, 8.2, 9), manifests/audit-record.schema.json and its examples.

It imports nothing from weightvault on purpose: it is the reader a stranger writes decades
later with the specification, the Python standard library, `cryptography` (Ed25519) and
`jsonschema`. Given a replica's root (the directory holding `audits/`) and the auditor's
public key, `verify_replica` returns every problem it finds (none: the chain verifies) and
the full failures, repairs and bundles lists of every record, read from the record when
whole and from its `lists/H.jsonl` file when the record holds only the first items.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Section 8: a record larger than this is refused before it is parsed.
MAX_RECORD = 67_108_864
# Section 8.1: a list file's line, its line feed included.
MAX_LINE = 74_567
# Section 4.1: every integer between -(2^53-1) and 2^53-1.
MAX_INT = 2**53 - 1
# Sections 8.1 and 8.2: list -> (the member its items are counted by, the counts member,
# how many items a record holds inline, the first record version that bounds it).
LISTS = {
    "failures": ("kind", "failures_by_kind", 100, 2),
    "repairs": ("outcome", "repairs_by_outcome", 100, 2),
    "bundles": ("state", "bundles_by_state", 1000, 3),
}
TRANSIENT_INLINE = 100
RECORD_NAME = re.compile(r"^[0-9]{8}\.json$")
SCHEMA = Path(__file__).resolve().parent.parent / "manifests" / "audit-record.schema.json"


def payload_type(version: int) -> str:
    """Section 8: each record is signed under the payload type of its own version."""
    return f"application/vnd.weightvault.audit+json; version={version}"


def pae(ptype: str, body: bytes) -> bytes:
    """Section 6: DSSE pre-authentication encoding."""
    t = ptype.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


class NotCanonical(ValueError):
    pass


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)  # U+007F and everything above it literally
    out.append('"')
    return "".join(out)


def canonical(v) -> bytes:
    """Section 4.1's canonical form (RFC 8785 restricted to integers and ASCII keys)."""

    def enc(x) -> str:
        if x is None:
            return "null"
        if x is True:
            return "true"
        if x is False:
            return "false"
        if isinstance(x, int):
            if not -MAX_INT <= x <= MAX_INT:
                raise NotCanonical(f"integer {x} out of range")
            return str(x)
        if isinstance(x, str):
            return _string(x)
        if isinstance(x, list):
            return "[" + ",".join(enc(i) for i in x) + "]"
        if isinstance(x, dict):
            if not all(k.isascii() for k in x):
                raise NotCanonical("an object key is not ASCII")
            return "{" + ",".join(f"{_string(k)}:{enc(x[k])}" for k in sorted(x)) + "}"
        raise NotCanonical(f"a {type(x).__name__} is not allowed")

    try:
        return enc(v).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate has no UTF-8 form
        raise NotCanonical("a string is not Unicode text") from e


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise NotCanonical(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_float(s):
    raise NotCanonical(f"number {s} is not an integer")


def parse_canonical(data: bytes):
    """The value `data` holds, or NotCanonical: bytes not valid UTF-8 JSON, duplicate keys,
    floating point numbers, or bytes that are not the canonical form of what they parse to."""
    try:
        v = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                       parse_float=_no_float, parse_constant=_no_float)  # fmt: skip
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotCanonical(f"not JSON: {e}") from e
    if canonical(v) != data:
        raise NotCanonical("bytes are not the canonical form of the JSON they hold")
    return v


def raw_public_key(key: bytes) -> bytes:
    """The raw 32-byte Ed25519 key, from the raw bytes or a SubjectPublicKeyInfo PEM
    (section 6: key files are informative; keys are identified by SHA-256 of the raw bytes)."""
    if len(key) == 32:
        return key
    k = serialization.load_pem_public_key(key)
    if not isinstance(k, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class Result:
    problems: list[str] = field(default_factory=list)
    records: dict[int, dict] = field(default_factory=dict)  # sequence -> verified R
    lists: dict[int, dict[str, list[dict]]] = field(default_factory=dict)  # the full lists

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_replica(root: Path, public_key: bytes, schema: Path = SCHEMA,
                   inline: dict[str, int] | None = None) -> Result:  # fmt: skip
    """Verify `root/audits/SIGNER/` (SIGNER: the first 16 hex digits of the key's id).
    `inline` overrides how many items a record holds inline (list name, or "transient", to a
    number): only for tests that shrink a writer's bounds so that small audits spill."""
    raw = raw_public_key(public_key)
    keyid = hashlib.sha256(raw).hexdigest()
    return verify_chain(Path(root) / "audits" / keyid[:16], raw, schema, inline)


def verify_chain(chain_dir: Path, public_key: bytes, schema: Path = SCHEMA,
                 inline: dict[str, int] | None = None) -> Result:  # fmt: skip
    limits = {name: spec[2] for name, spec in LISTS.items()} | {"transient": TRANSIENT_INLINE}
    limits |= inline or {}
    raw = raw_public_key(public_key)
    keyid = hashlib.sha256(raw).hexdigest()
    pub = Ed25519PublicKey.from_public_bytes(raw)
    validator = jsonschema.Draft202012Validator(json.loads(Path(schema).read_bytes()))
    res = Result()
    chain_dir = Path(chain_dir)
    if not chain_dir.is_dir():
        res.problems.append(f"{chain_dir}: no audit chain for key {keyid[:16]}")
        return res
    files = {int(p.name[:8]): p for p in chain_dir.iterdir()
             if RECORD_NAME.match(p.name) and p.is_file()}  # fmt: skip
    if not files:
        res.problems.append(f"{chain_dir}: no audit records")
        return res
    digests: dict[int, str] = {}
    for n in range(1, max(files) + 1):
        path = files.get(n)
        if path is None:
            res.problems.append(f"{chain_dir / f'{n:08d}.json'}: record missing from the chain")
            continue
        data = _read_bounded(path, res)
        if data is None:
            continue
        digests[n] = hashlib.sha256(data).hexdigest()
        rec = _check_record(path, data, n, keyid, pub, validator, limits, res)
        if rec is None:
            continue
        # the chain: sequence is the file's number, previous the digest of the file before
        if rec["sequence"] != n:
            res.problems.append(f"{path}: sequence {rec['sequence']} in file number {n}")
            continue
        want = None if n == 1 else digests.get(n - 1)
        if n > 1 and (n - 1) not in files:
            continue  # its link cannot be checked: the missing record is already reported
        if rec["previous"] != want:
            res.problems.append(f"{path}: previous is {rec['previous']}, the hex SHA-256 of "
                                f"the record before is {want}")  # fmt: skip
            continue
        lists = _full_lists(path, rec, limits, res)
        if lists is None:
            continue
        res.records[n] = rec
        res.lists[n] = lists
    return res


def _read_bounded(path: Path, res: Result) -> bytes | None:
    with open(path, "rb") as f:
        data = f.read(MAX_RECORD + 1)
    if len(data) > MAX_RECORD:
        res.problems.append(f"{path}: larger than {MAX_RECORD} bytes, refused unread")
        return None
    return data


def _check_record(path, data, n, keyid, pub, validator, limits, res) -> dict | None:
    try:
        env = parse_canonical(data)
    except NotCanonical as e:
        res.problems.append(f"{path}: {e}")
        return None
    if not (
        isinstance(env, dict)
        and set(env) == {"record", "signatures"}
        and isinstance(env["record"], dict)
        and isinstance(env["signatures"], list)
    ):
        res.problems.append(f'{path}: not an envelope {{"record", "signatures"}}')
        return None
    rec = env["record"]
    version = rec.get("format_version")
    if type(version) is not int or version not in (1, 2, 3):
        res.problems.append(f"{path}: unknown format_version {version!r}")
        return None
    # signatures before anything in the record is believed (section 6)
    sigs = env["signatures"]
    if not 1 <= len(sigs) <= 16:
        res.problems.append(f"{path}: {len(sigs)} signatures, not 1 to 16")
        return None
    body = pae(payload_type(version), canonical(rec))
    good = bad = 0
    for s in sigs:
        if not (
            isinstance(s, dict)
            and set(s) == {"keyid", "alg", "public_key", "sig"}
            and all(isinstance(v, str) for v in s.values())
        ):
            res.problems.append(f"{path}: a signature is not {{keyid, alg, public_key, sig}}")
            return None
        if s["keyid"] != keyid:
            continue
        try:
            if s["alg"] != "ed25519":
                raise InvalidSignature
            pub.verify(base64.b64decode(s["sig"], validate=True), body)
            good += 1
        except (InvalidSignature, ValueError):
            bad += 1
    if bad or not good:
        res.problems.append(f"{path}: signature by key {keyid[:16]} "
                            + ("does not verify under " + payload_type(version) if bad
                               else "absent"))  # fmt: skip
        return None
    errors = sorted(validator.iter_errors(rec), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(map(str, e.absolute_path)) or "record"
        res.problems.append(f"{path}: schema: {where}: {e.message}")
        return None
    if version >= 2 and not _counts(path, rec, limits, res):
        return None
    return rec


def _list_bytes(items: list[dict]) -> bytes:
    return b"".join(canonical(i) + b"\n" for i in items)


def _counts(path: Path, rec: dict, limits: dict[str, int], res: Result) -> bool:
    """Sections 8.1 and 8.2: the inline share, the counts and (a whole list) its digest."""
    ok = True
    v = rec["format_version"]
    t = rec["transient_total"]
    if len(rec["transient"]) != min(t, limits["transient"]):
        res.problems.append(f"{path}: transient holds {len(rec['transient'])} items, "
                            f"transient_total is {t}")  # fmt: skip
        ok = False
    for name, (by, counts_member, _, since) in LISTS.items():
        if v < since:
            continue
        inline = limits[name]
        items, total, counts = rec[name], rec[f"{name}_total"], rec[counts_member]
        if len(items) != min(total, inline):
            res.problems.append(f"{path}: {name} holds {len(items)} items, {name}_total is "
                                f"{total}")  # fmt: skip
            ok = False
        if sum(counts.values()) != total:
            res.problems.append(f"{path}: {counts_member} adds up to {sum(counts.values())}, "
                                f"{name}_total is {total}")  # fmt: skip
            ok = False
        if total <= inline:
            if dict(Counter(i[by] for i in items)) != counts:
                res.problems.append(f"{path}: {counts_member} does not count the {name}")
                ok = False
            if hashlib.sha256(_list_bytes(items)).hexdigest() != rec[f"{name}_sha256"]:
                res.problems.append(f"{path}: {name}_sha256 is not the digest of the {name}")
                ok = False
    return ok


def _full_lists(path: Path, rec: dict, limits: dict[str, int],
                res: Result) -> dict[str, list[dict]] | None:  # fmt: skip
    """Every list of a verified record: inline when whole, else from its checked file."""
    out: dict[str, list[dict]] = {}
    for name, (_by, _counts_member, _, since) in LISTS.items():
        items = rec[name]
        if rec["format_version"] < since or rec[f"{name}_total"] <= limits[name]:
            out[name] = list(items)
            continue
        got = _list_file(path.parent / "lists" / f"{rec[f'{name}_sha256']}.jsonl", rec, name,
                         res)  # fmt: skip
        if got is None:
            return None
        out[name] = got
    return out


def _list_file(lf: Path, rec: dict, name: str, res: Result) -> list[dict] | None:
    """Section 8.1: at most L_total lines, each at most MAX_LINE bytes with its line feed,
    the last ending in one, exactly L_total of them, and their SHA-256 equal to L_sha256;
    checked whole before any line is used."""
    total = rec[f"{name}_total"]
    h = hashlib.sha256()
    lines: list[bytes] = []
    try:
        with open(lf, "rb") as f:
            while len(lines) < total:
                line = f.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    res.problems.append(f"{lf}: line {len(lines) + 1} is longer than {MAX_LINE} "
                                        "bytes or has no line feed")  # fmt: skip
                    return None
                h.update(line)
                lines.append(line)
            extra = f.read(1)
    except FileNotFoundError:
        res.problems.append(f"{lf}: missing, {name}_total {total} needs it")
        return None
    if len(lines) != total or extra:
        res.problems.append(f"{lf}: {'more' if extra else len(lines)} lines, {name}_total is "
                            f"{total}")  # fmt: skip
        return None
    if h.hexdigest() != rec[f"{name}_sha256"]:
        res.problems.append(f"{lf}: SHA-256 is not {name}_sha256 of the record")
        return None
    # The digest proves the signer wrote these bytes; what follows holds the file to the
    # definitions of 8.1 (items, the first ones inline, the counts), which no sentence makes
    # a reader's MUST but which a full list must meet to mean what the record says.
    try:
        items = [parse_canonical(line[:-1]) for line in lines]
    except NotCanonical as e:
        res.problems.append(f"{lf}: a line is not canonical JSON: {e}")
        return None
    by, counts_member, _, _ = LISTS[name]
    if items[: len(rec[name])] != rec[name]:
        res.problems.append(f"{lf}: its first items are not the record's {name}")
        return None
    if dict(Counter(i.get(by) for i in items if isinstance(i, dict))) != rec[counts_member]:
        res.problems.append(f"{lf}: the record's {counts_member} does not count its items")
        return None
    return items
