"""The audit trail: signed, hash-chained records of every fixity check and repair.

Each replica has its own chain. A record names the digest of the one before it, so removing,
reordering or editing a record breaks the chain; records are kept twice (on the replica audited
and in the local state directory), so truncating one copy shows against the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from weightvault import __version__
from weightvault.errors import CorruptData, IntegrityError, StorageError, TrustError
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey, verify_signatures
from weightvault.storage.store import Store

# the DSSE payload type of each record version (FORMAT.md section 8): a record is verified
# under its own version's type, so older records keep verifying in a chain that goes on in
# a newer version
PAYLOAD_TYPES = {v: f"application/vnd.weightvault.audit+json; version={v}" for v in (1, 2, 3)}
RECORD_VERSION = 3  # what this version writes
PAYLOAD_TYPE = PAYLOAD_TYPES[RECORD_VERSION]
PREFIX = "audits"  # on the replica: audits/<signer>/<seq>.json (and legacy audits/<seq>.json)
MAX_RECORD = 64 << 20
# Version 2: failures, transient failures and repairs a record carries inline; the rest of
# each list is in a file named by its digest (FORMAT.md section 8.1). An item's canonical form
# is at most MAX_LINE - 1 bytes (a failure with every string at its schema's maxLength, every
# character a control character escaped as \u00XX; a repair is at most 49,982), so the three
# lists take at most 2 x 100 x 74,567 + 100 x 49,983 = 19.9 MB of a record's 64 MiB whatever
# an audit or a repair finds. The schema's maxItems says the same.
RECORD_FAILURES = 100
MAX_LINE = 74_567  # bytes, the newline included (tests/test_audit_record_v2.py)
# the lists kept in files: what counts each, the version that bounds it, how many items a
# record holds inline. Version 3 bounds `bundles` too (FORMAT.md 8.2): one entry per bundle
# on the replica, at most 878 bytes with its newline (a typical one 115), so version 2
# records reached 64 MiB somewhere between 76,000 and 580,000 bundles
LISTS = {"failures": "kind", "repairs": "outcome", "bundles": "state"}
SINCE = {"failures": 2, "repairs": 2, "bundles": 3}
RECORD_BUNDLES = 1000


def inline_cap(member: str) -> int:
    """How many items of list `member` a record holds inline."""
    return RECORD_BUNDLES if member == "bundles" else RECORD_FAILURES


# the members an item of each list must have (the schema says the rest, inline; a list file's
# lines are checked against the record's digest, this only keeps a reader from tripping)
_ITEM_KEYS = {"failures": ("object", "bundle"), "repairs": ("object", "bundle"),
              "bundles": ("name", "bundle", "state")}


def lists_of(version: int) -> list[str]:
    """The lists a record of `version` bounds (FORMAT.md 8.1, 8.2)."""
    return [m for m in LISTS if version >= SINCE[m]]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def state_root(configured: Path | None) -> Path:
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "weightvault"


def replica_dir(root: Path, url: str) -> Path:
    """Local state of one replica, keyed by its URL (the same replica in two configs shares)."""
    d = root / "replicas" / hashlib.sha256(url.encode()).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    (d / "url").write_text(url + "\n")
    return d


@dataclass(frozen=True)
class Entry:
    seq: int
    raw: bytes  # the envelope as stored
    record: dict

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def _name(seq: int) -> str:
    return f"{seq:08d}.json"


def signer_dir(key_id: str) -> str:
    """Each signer keeps its own chain (a lab and its steward auditing one replica never
    write the same file): audits/<first 16 hex of the key id>/."""
    return key_id[:16]


def parse(raw: bytes, what: str) -> dict:
    env = canon.parse_canonical(raw, what, max_size=MAX_RECORD)
    if not isinstance(env, dict) or set(env) != {"record", "signatures"}:
        raise CorruptData(f"{what}: not a signed audit record")
    spec.validate(env["record"], "audit-record", what)
    consistent(env["record"], what)
    return env


def consistent(rec: dict, what: str) -> None:
    """What a version 2 record's schema cannot say about its own counts (FORMAT.md 8.1)."""
    if rec["format_version"] < 2:
        return
    problem = ""
    repair = rec["eventType"] == "replication"
    if repair != (rec["level"] == "repair"):
        problem = f"eventType {rec['eventType']!r} with level {rec['level']!r} (a repair " \
                  "record is eventType 'replication' at level 'repair', and only it)"  # fmt: skip
    elif repair and (rec["failures_total"] or rec["transient_total"] or
                     rec.get("bundles_total")):  # fmt: skip
        problem = "a repair record with failures or bundles"
    elif not repair and rec["repairs_total"]:
        problem = "a fixity record with repairs"
    elif len(rec["transient"]) != min(rec["transient_total"], RECORD_FAILURES):
        problem = f"holds {len(rec['transient'])} transient failures inline of " \
                  f"{rec['transient_total']}"  # fmt: skip
    for member in lists_of(rec["format_version"]):
        if problem:
            break
        by, cap = LISTS[member], inline_cap(member)
        total, inline, counts = rec[f"{member}_total"], rec[member], rec[f"{member}_by_{by}"]
        if len(inline) != min(total, cap):
            problem = f"holds {len(inline)} {member} inline of {total} (the first " \
                      f"{cap} must be)"  # fmt: skip
        elif sum(counts.values()) != total:
            problem = f"{member}_by_{by} does not add up to {member}_total {total}"
        elif total == len(inline):
            h = hashlib.sha256(b"".join(canon.canonical(x) + b"\n" for x in inline))
            if h.hexdigest() != rec[f"{member}_sha256"]:
                problem = f"{member}_sha256 is not the digest of its {member}"
            elif _count(inline, by) != counts:
                problem = f"{member}_by_{by} does not count its {member}"
    if problem:
        raise CorruptData(f"{what}: {problem}")


def _count(items, by: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x[by]] = out.get(x[by], 0) + 1
    return out


def truncated(rec: dict, member: str = "failures") -> bool:
    """Whether the record's full list `member` is in a file rather than inline."""
    return rec["format_version"] >= SINCE[member] and rec[f"{member}_total"] > len(rec[member])


def bundles_total(rec: dict) -> int:
    """How many bundles the audit looked at (before version 3: all of them inline)."""
    return rec["bundles_total"] if rec["format_version"] >= 3 else len(rec["bundles"])


def failures_total(rec: dict) -> int:
    return rec["failures_total"] if rec["format_version"] >= 2 else len(rec["failures"])


def failures_by_kind(rec: dict) -> dict[str, int]:
    """kind -> how many failures of the record are of it (version 1: counted inline)."""
    if rec["format_version"] >= 2:
        return dict(rec["failures_by_kind"])
    return _count(rec["failures"], "kind")


def list_name(sha256: str) -> str:
    """Where a record's full list (failures, repairs, bundles) lives, under its chain's directory on
    the replica and in the local state: named by its digest, so it is written before the
    record's number is final and two writers never contend for a name (FORMAT.md 8.1)."""
    return f"lists/{sha256}.jsonl"


class BoundedList:
    """A record's failures (or a repair's repairs, or an audit's bundles) as they are found:
    each hashed and written as one canonical line to a temporary file in the local chain
    directory, only the first inline_cap(member) kept in memory for the record itself. A replica
    gone wholesale fails millions of objects; they never sit in memory together."""

    def __init__(self, tmp_dir: Path, member: str = "failures"):
        self.member, self.by = member, LISTS[member]
        tmp_dir.mkdir(parents=True, exist_ok=True)
        _sweep(tmp_dir, member)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f".{member}.", suffix=".tmp")
        # held until the file is closed or the process dies: the sweep of a later audit
        # tells a live writer's file (an audit may run for days) from a crashed one's by it
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.path = Path(name)
        self._f = os.fdopen(fd, "wb")
        self._h = hashlib.sha256()
        self.inline: list[dict] = []
        self.total = 0
        self.counts: dict[str, int] = {}
        self.bundles: dict[str, int] = {}  # bundle -> items of it

    def add(self, x: dict) -> None:
        line = canon.canonical(x) + b"\n"
        self._h.update(line)
        self._f.write(line)
        self.total += 1
        self.counts[x[self.by]] = self.counts.get(x[self.by], 0) + 1
        if self.member != "bundles":
            self.bundles[x["bundle"]] = self.bundles.get(x["bundle"], 0) + 1
        if len(self.inline) < inline_cap(self.member):
            self.inline.append(x)

    def fields(self) -> dict:
        """The record's members that describe the list (version 2)."""
        m = self.member
        return {m: self.inline, f"{m}_total": self.total, f"{m}_sha256": self._h.hexdigest(),
                f"{m}_by_{self.by}": dict(sorted(self.counts.items()))}  # fmt: skip

    def finish(self) -> Path | None:
        """The file holding every item when the record cannot hold them all, else None
        (and the file is gone). The file stays open, and locked against other audits' sweeps,
        until discard(), which the caller calls once the record has moved it into place."""
        self._f.flush()
        if self.total > len(self.inline):
            return self.path
        self.discard()
        return None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _sweep(tmp_dir: Path, member: str) -> None:
    """Remove the temporary list files that crashed audits left in the local chain directory:
    those no live process holds locked. Each can be as large as the damage it listed."""
    for p in tmp_dir.glob(f".{member}.*.tmp"):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone already, or not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live audit's file
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        finally:
            os.close(fd)


def empty_list(member: str) -> dict:
    """The members of a record (version SINCE[member] on) without any of `member`."""
    return {member: [], f"{member}_total": 0, f"{member}_sha256": hashlib.sha256().hexdigest(),
            f"{member}_by_{LISTS[member]}": {}}  # fmt: skip


def check_list(src, what: str, rec: dict, member: str = "failures", out=None) -> None:
    """Read a list file (an open binary stream: hostile bytes) and check it against the signed
    record before any line of it is used (FORMAT.md 8.1): at most `member`_total lines, each
    ending in a newline and at most MAX_LINE bytes, exactly that many, the SHA-256 of the
    whole equal to `member`_sha256; each line the canonical JSON of an item, the first of
    them the record's inline items, and the items counted as the record counts them. The
    bytes go to `out` (a private copy to read the lines from: the stored file could change
    between two reads) as they are checked. IntegrityError, one line naming the file, when
    anything differs."""
    total, want = rec[f"{member}_total"], rec[f"{member}_sha256"]
    by, inline = LISTS[member], rec[member]
    h, lines, carry = hashlib.sha256(), 0, b""
    counts: dict[str, int] = {}

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{what}: {why}; the signed audit record's full {member} list "
                              "cannot be trusted")  # fmt: skip

    def item(line: bytes, n: int) -> None:
        if n <= len(inline) and line != canon.canonical(inline[n - 1]) + b"\n":
            raise bad(f"line {n}: its first items are not the record's {member}")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: a line of "[[[[..."
            raise bad(f"line {n} is not JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(by), str) or \
                any(k not in obj for k in _ITEM_KEYS[member]):  # fmt: skip
            raise bad(f"line {n} is not an item of an audit record's {member} list")
        if n > len(inline) and _flat_canonical(obj) != line[:-1] and \
                _canonical_or_none(obj) != line[:-1]:  # fmt: skip
            raise bad(f"line {n} is not in canonical form (section 4.1)")
        counts[obj[by]] = counts.get(obj[by], 0) + 1

    while chunk := src.read(1 << 20):
        h.update(chunk)
        if out is not None:
            out.write(chunk)
        data, start = carry + chunk, 0  # carry: the start of a line, at most MAX_LINE bytes
        while (i := data.find(b"\n", start)) != -1:
            if i + 1 - start > MAX_LINE:
                raise bad(f"line {lines + 1} is longer than {MAX_LINE} bytes")
            lines += 1
            if lines > total:
                raise bad(f"more lines than the {total} {member} the record counts")
            item(data[start : i + 1], lines)
            start = i + 1
        carry = data[start:]
        if len(carry) > MAX_LINE:
            raise bad(f"line {lines + 1} is longer than {MAX_LINE} bytes")
    if carry:
        raise bad("the last line has no newline (the file was truncated or edited)")
    if lines != total:
        raise bad(f"{lines} lines where the record counts {total} {member} (truncated)")
    if h.hexdigest() != want:
        raise bad(f"its SHA-256 differs from the record's {member}_sha256 (edited)")
    if counts != rec[f"{member}_by_{by}"]:
        raise bad(f"{member}_by_{by} does not count its items")


def _flat_canonical(obj: dict) -> bytes | None:
    """The canonical form of a list item (an object of ASCII keys and string or null values),
    three times faster than canon.canonical: for such objects json's sorted, compact,
    non-ASCII-literal output is RFC 8785's (the same escapes, lowercase hex). None where it
    may not be (the caller then asks canon)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()  # fmt: skip
    except (UnicodeEncodeError, TypeError, ValueError):
        return None


def _canonical_or_none(obj) -> bytes | None:
    """canon.canonical, None for what has no canonical form (a float, a lone surrogate, nesting
    too deep): a hostile line is refused with the others, not raised past the check."""
    try:
        return canon.canonical(obj)
    except (ValueError, RecursionError):
        return None


def _lines(f, what: str, member: str) -> Iterator[dict]:
    """The items of a checked list file, open for reading (closed at the end)."""
    with f:
        for n, line in enumerate(f, 1):
            obj = canon.parse(line, f"{what} line {n}")
            if not isinstance(obj, dict) or any(k not in obj for k in _ITEM_KEYS[member]):
                raise CorruptData(f"{what} line {n}: not an item of an audit record's "
                                  f"{member} list")  # fmt: skip
            yield obj


class Chain:
    """The audit chains of one replica, in the local state directory and on the replica: one
    per signer under audits/<signer>/, plus the single legacy chain audits/NNNNNNNN.json that
    versions before this one wrote (read, never extended). A record is written to the replica
    with an exclusive create before the local copy, so two writers never replace each other's
    records, and a lost local state resumes from the replica's verified chain."""

    def __init__(self, local_dir: Path, store: Store | None, signer: str | None = None):
        self.local_root = local_dir / "audits"
        self.local_root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.signer = signer  # a key id: the chain this object appends to and reads head of

    @property
    def local(self) -> Path:
        return self.local_root / signer_dir(self.signer) if self.signer else self.local_root

    def _subdirs(self) -> list[str | None]:
        """Every chain known locally or on the replica: None is the legacy one."""
        names: set[str | None] = {None}
        names |= {p.name for p in self.local_root.iterdir() if p.is_dir()}
        if self.store is not None:
            with contextlib.suppress(StorageError):
                names |= set(self.store.list_dirs(PREFIX))
        return sorted(names, key=lambda n: (n is not None, n or ""))

    @staticmethod
    def _entries_in(d: Path) -> list[tuple[int, bytes]]:
        if not d.is_dir():
            return []
        return [(int(p.stem), p.read_bytes()) for p in sorted(d.glob("*.json"))
                if p.stem.isdigit()]  # fmt: skip

    def _local_entries(self, sub: str | None = None) -> list[tuple[int, bytes]]:
        return self._entries_in(self.local_root / sub if sub else self.local)

    def _remote_entries(self, sub: str | None) -> list[tuple[int, bytes]]:
        pre = f"{PREFIX}/{sub}" if sub else PREFIX
        out = []
        for k in sorted(self.store.list(pre)):
            rest = k[len(pre) + 1:]
            if "/" not in rest and rest.endswith(".json") and rest[:-5].isdigit():
                out.append((int(rest[:-5]), self.store.read_bytes(k, MAX_RECORD)))
        return out

    def head(self) -> Entry | None:
        """The newest record of this signer's chain or, with no signer, of any chain here."""
        if self.signer:
            return _last(self._local_entries(), self.local)
        heads = [h for sub in self._subdirs() if (h := _last(
            self._local_entries(sub), self.local_root / sub if sub else self.local_root))]
        return max(heads, key=lambda h: (h.record["ended"], h.seq), default=None)

    def _sync(self, key: SigningKey) -> list[tuple[int, bytes]]:
        """This signer's chain, local and replica copies reconciled: the replica's records
        (verified against the signer's key) fill a lost or short local state; local records a
        failed put left off the replica are written there (exclusively). A copy that differs
        from the other at the same sequence is a fork, never overwritten."""
        local = self._local_entries()
        if self.store is None:
            return local
        sub = signer_dir(key.public.key_id)
        try:
            remote = self._remote_entries(sub)
        except StorageError:
            return local  # the replica is behind; the next append that reaches it catches up
        lmap, rmap = dict(local), dict(remote)
        for seq in sorted(set(lmap) & set(rmap)):
            if lmap[seq] != rmap[seq]:
                raise IntegrityError(f"{self.store.describe(f'{PREFIX}/{sub}/{_name(seq)}')}: "
                                     "differs from the local record of the same number (the "
                                     "audit trail forked); nothing was written")  # fmt: skip
        if len(remote) > len(local):
            problems = _check(remote, [key.public], self.store.describe(f"{PREFIX}/{sub}"))
            if problems:
                raise IntegrityError(problems[0])
            self.local.mkdir(parents=True, exist_ok=True)
            for seq, raw in remote:
                if seq not in lmap:
                    rec = parse(raw, str(self.local / _name(seq)))["record"]
                    for m in _files_of(rec):  # its list files too, where they check
                        with contextlib.suppress(IntegrityError):
                            self._checked_copy(seq, rec, m)[0].close()
                    _write_local(self.local / _name(seq), raw)
            return remote
        for seq, raw in local:
            if seq not in rmap:
                with contextlib.suppress(StorageError):
                    rec = parse(raw, str(self.local / _name(seq)))["record"]
                    for m in _files_of(rec):  # the lists before the record that names them
                        self._put_list(sub, rec[f"{m}_sha256"], self.list_path(rec, m))
                    self.store.put_bytes(f"{PREFIX}/{sub}/{_name(seq)}", raw, exclusive=True)
        return local

    def _put_list(self, sub: str, sha256: str, path: Path) -> None:
        """A record's list file onto the replica, exclusively (named by its digest: one
        already there is this list, or is refused when read), streamed from the local copy."""
        key = f"{PREFIX}/{sub}/{list_name(sha256)}"
        with self.store.new_object() as w, open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                w.write(chunk)
            w.commit(key, exclusive=True, sha256=sha256)

    def append(self, record: dict, key: SigningKey,
               files: dict[str, Path] | None = None) -> Entry:  # fmt: skip
        """Sign and store `record`. `files`: list member -> the file of all its items, one
        canonical line each (BoundedList.finish: None when the record holds them all), for
        each list the record holds only the first of; each is stored beside the chain before
        the record, on the replica and locally, and is gone from its path afterwards (moved
        into place, or removed when the append fails)."""
        files = {m: p for m, p in (files or {}).items() if p is not None}
        try:
            return self._append(record, key, files)
        finally:
            for p in files.values():
                p.unlink(missing_ok=True)

    def _append(self, record: dict, key: SigningKey, files: dict[str, Path]) -> Entry:
        if self.signer is None:
            self.signer = key.public.key_id
        sub = signer_dir(key.public.key_id)
        for _attempt in range(8):
            entries = self._sync(key)
            head = _last(entries, self.local)
            seq = (head.seq + 1) if head else 1
            rec = {**record, "sequence": seq, "previous": head.digest if head else None}
            spec.validate(rec, "audit-record", "new audit record")
            consistent(rec, "new audit record")
            if set(files) != set(_files_of(rec)):
                raise ValueError(f"list files for {sorted(files)}, the record needs "
                                 f"{_files_of(rec)}")  # fmt: skip
            version = rec["format_version"]
            body = canon.canonical(rec)
            raw = canon.canonical({"record": rec,
                                   "signatures": [key.sign(PAYLOAD_TYPES[version], body)]})  # fmt: skip
            if self.store is not None:
                try:
                    for m, path in files.items():
                        self._put_list(sub, rec[f"{m}_sha256"], path)
                    if not self.store.put_bytes(f"{PREFIX}/{sub}/{_name(seq)}", raw,
                                                exclusive=True):  # fmt: skip
                        continue  # another writer with this key took the number: catch up
                except StorageError:
                    pass  # the local copy stands; the next append puts it on the replica
            self.local.mkdir(parents=True, exist_ok=True)
            for m, path in files.items():
                dest = self.list_path(rec, m)
                dest.parent.mkdir(exist_ok=True)
                os.replace(path, dest)  # the same name is the same bytes
            _write_local(self.local / _name(seq), raw)
            return Entry(seq, raw, rec)
        raise IntegrityError(f"{self.store.describe(f'{PREFIX}/{sub}')}: could not append an "
                             "audit record after 8 tries (another writer keeps taking the "
                             "next number)")  # fmt: skip

    def list_path(self, rec: dict, member: str = "failures") -> Path:
        """The local copy of a truncated record's full list `member`."""
        return self.local / list_name(rec[f"{member}_sha256"])

    def full_list(self, entry: Entry, member: str = "failures") -> Iterator[dict]:
        """Every item of a record's list `member` (failures, repairs, bundles), in record order, for a
        record of this signer's chain. A record that holds only the first of them is completed
        from its list file, the local copy or else the replica's, checked against the signed
        record before a line of it is used (check_list); the record itself was verified when
        the chain was read."""
        rec = entry.record
        if not truncated(rec, member):
            return iter(rec[member])
        f, what = self._checked_copy(entry.seq, rec, member)
        return _lines(f, what, member)  # read by the generator, closed by it or by GC

    def _checked_copy(self, seq: int, rec: dict, member: str):
        """A private copy of a record's list file that checks against the record (the local
        copy, else the replica's, which is then kept locally too), open for reading and
        already unlinked, and what it was copied from; IntegrityError naming each copy tried
        when none checks. Locked while it is written, as every temporary list file is
        (BoundedList), so another audit's sweep never takes it for a leftover."""
        sub = signer_dir(self.signer or rec["agent"]["key"])
        name = list_name(rec[f"{member}_sha256"])
        local = self.local_root / sub / name
        sources = [self._local_file(sub)(name)]
        if self.store is not None:
            sources.append(self._remote_file(sub)(name))
        errors = []
        local.parent.parent.mkdir(parents=True, exist_ok=True)
        for i, (what, opener) in enumerate(sources):
            fd, tmp = tempfile.mkstemp(dir=local.parent.parent, prefix=f".{member}.",
                                       suffix=".tmp")  # fmt: skip
            copy = Path(tmp)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with os.fdopen(fd, "wb") as out:
                    with opener() as src:
                        check_list(src, what, rec, member, out)
                    out.flush()
                    if i and not local.exists():  # the replica's copy, verified: keep it too
                        local.parent.mkdir(exist_ok=True)
                        with contextlib.suppress(OSError):
                            os.link(copy, local)
                    f = open(copy, "rb")  # noqa: SIM115 - the caller's to close
                copy.unlink()  # nothing to clean up, however far the caller reads
            except FileNotFoundError:
                copy.unlink(missing_ok=True)
                errors.append(f"{what}: missing")
                continue
            except (IntegrityError, StorageError, OSError) as e:
                copy.unlink(missing_ok=True)
                errors.append(str(e))
                continue
            return f, what
        raise IntegrityError(f"the full {member} list of audit record {seq} cannot be "
                             f"read: {'; '.join(errors)}")  # fmt: skip

    def verify(self, trusted: list[PublicKey]) -> tuple[int, list[str]]:
        """(records checked, problems) over every chain's local copy, and against the
        replica's copy; a record's list files (versions 2 and 3) are checked in each copy."""
        problems: list[str] = []
        count = 0
        for sub in self._subdirs():
            where = self.local_root / sub if sub else self.local_root
            local = self._entries_in(where)  # (sub None: the legacy chain, whatever the signer)
            count += len(local)
            problems += _check(local, trusted, str(where), self._local_file(sub))
            if self.store is None:
                continue
            try:
                remote = self._remote_entries(sub)
            except (StorageError, CorruptData) as e:  # CorruptData: a file over MAX_RECORD
                problems.append(f"replica copy unreadable: {e}")
                continue
            problems += _check(remote, trusted,
                               self.store.describe(f"{PREFIX}/{sub}" if sub else PREFIX),
                               self._remote_file(sub))  # fmt: skip
            lmap, rmap = dict(local), dict(remote)
            label = f"{sub}/" if sub else ""
            for seq in sorted(set(lmap) | set(rmap)):
                if seq not in rmap:
                    problems.append(f"record {label}{seq} is in the local trail but not on "
                                    "the replica")  # fmt: skip
                elif seq not in lmap:
                    problems.append(f"record {label}{seq} is on the replica but not in the "
                                    "local trail")  # fmt: skip
                elif lmap[seq] != rmap[seq]:
                    problems.append(f"record {label}{seq} differs between the local and "
                                    "replica copies")  # fmt: skip
        return count, problems


    def _local_file(self, sub: str | None) -> Callable[[str], tuple[str, Callable]]:
        d = self.local_root / sub if sub else self.local_root
        return lambda name: (str(d / name), partial(open, d / name, "rb"))

    def _remote_file(self, sub: str | None) -> Callable[[str], tuple[str, Callable]]:
        pre = f"{PREFIX}/{sub}" if sub else PREFIX
        return lambda name: (self.store.describe(f"{pre}/{name}"),
                             lambda: self.store.open_read(f"{pre}/{name}"))  # fmt: skip


def _files_of(rec: dict) -> list[str]:
    """The lists of a record that are kept in files."""
    return [m for m in lists_of(rec["format_version"]) if truncated(rec, m)]


def _last(entries: list[tuple[int, bytes]], where: Path) -> Entry | None:
    if not entries:
        return None
    seq, raw = entries[-1]
    return Entry(seq, raw, parse(raw, str(where / _name(seq)))["record"])


def _write_local(path: Path, raw: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)


def _check(entries: list[tuple[int, bytes]], trusted: list[PublicKey], where: str,
           files: Callable[[str], tuple[str, Callable]] | None = None) -> list[str]:  # fmt: skip
    """Problems of one copy of a chain: each record's signature first (under its own
    version's payload type), then its links; `files` (name -> (description, opener)): also
    check each truncated record's list files in this copy."""
    problems = []
    prev_digest = None
    for i, (seq, raw) in enumerate(entries, 1):
        what = f"{where}/{_name(seq)}"
        if seq != i:
            problems.append(
                f"{what}: expected record {i} here (a record was removed or renumbered)"
            )
            return problems
        try:
            env = parse(raw, what)
            body = canon.canonical(env["record"])
            verify_signatures(PAYLOAD_TYPES[env["record"]["format_version"]], body,
                              env["signatures"], trusted, what)  # fmt: skip
        except (CorruptData, TrustError) as e:
            problems.append(str(e))
            return problems
        rec = env["record"]
        for m in _files_of(rec) if files is not None else ():
            fwhat, opener = files(list_name(rec[f"{m}_sha256"]))
            try:
                with opener() as src:
                    check_list(src, fwhat, rec, m)
            except FileNotFoundError:
                problems.append(f"{fwhat}: missing (the full {m} list of record {seq})")
            except (IntegrityError, StorageError, OSError) as e:
                problems.append(str(e))
        if rec["sequence"] != seq:
            problems.append(f"{what}: says it is record {rec['sequence']}")
        if rec["previous"] != prev_digest:
            problems.append(f"{what}: does not follow record {seq - 1} (removed, reordered or "
                            "edited records before it)")  # fmt: skip
            return problems
        prev_digest = hashlib.sha256(raw).hexdigest()
    return problems


class Verified:
    """When each object on a replica was last fully hashed (drives sample audits). Kept in a
    SQLite file (verified.db), not in memory: a replica of 1 PB holds about 15 million objects,
    and the audit's own work tables (audit.py) live beside it, in a private temporary database
    of the same connection. A verified.json of earlier versions is taken over on first use."""

    def __init__(self, local_dir: Path):
        import sqlite3

        self.path = local_dir / "verified.db"
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS verified (key TEXT PRIMARY KEY, t REAL)")
        old = local_dir / "verified.json"
        if old.exists():
            try:
                times = json.loads(old.read_text())
            except ValueError:
                times = {}
            if isinstance(times, dict):
                self.db.executemany("INSERT OR IGNORE INTO verified VALUES (?, ?)",
                                    [(k, float(v)) for k, v in times.items()
                                     if isinstance(v, int | float)])  # fmt: skip
            self.db.commit()
            old.unlink()

    def mark(self, key: str, when: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO verified VALUES (?, ?)", (key, when))

    def age(self, key: str, at: float) -> float | None:
        row = self.db.execute("SELECT t FROM verified WHERE key = ?", (key,)).fetchone()
        return None if row is None else at - row[0]

    def save(self) -> None:
        self.db.commit()

    def close(self) -> None:
        """Marks not saved are dropped: an audit that failed half way proves nothing."""
        self.db.close()


def tool() -> dict:
    return {"name": "weightvault", "version": __version__}
