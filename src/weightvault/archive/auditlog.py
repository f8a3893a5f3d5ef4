"""The audit trail: signed, hash-chained records of every fixity check and repair.

Each replica has its own chain. A record names the digest of the one before it, so removing,
reordering or editing a record breaks the chain; records are kept twice (on the replica audited
and in the local state directory), so truncating one copy shows against the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from weightvault import __version__
from weightvault.errors import CorruptData, IntegrityError, StorageError, TrustError
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey, verify_signatures
from weightvault.storage.store import Store

PAYLOAD_TYPE = "application/vnd.weightvault.audit+json; version=1"
PREFIX = "audits"  # on the replica: audits/<signer>/<seq>.json (and legacy audits/<seq>.json)
MAX_RECORD = 64 << 20


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
    env = canon.parse(raw, what, max_size=MAX_RECORD)
    if not isinstance(env, dict) or set(env) != {"record", "signatures"}:
        raise CorruptData(f"{what}: not a signed audit record")
    spec.validate(env["record"], "audit-record", what)
    return env


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
                    _write_local(self.local / _name(seq), raw)
            return remote
        for seq, raw in local:
            if seq not in rmap:
                with contextlib.suppress(StorageError):
                    self.store.put_bytes(f"{PREFIX}/{sub}/{_name(seq)}", raw, exclusive=True)
        return local

    def append(self, record: dict, key: SigningKey) -> Entry:
        if self.signer is None:
            self.signer = key.public.key_id
        sub = signer_dir(key.public.key_id)
        for _attempt in range(8):
            entries = self._sync(key)
            head = _last(entries, self.local)
            seq = (head.seq + 1) if head else 1
            rec = {**record, "sequence": seq, "previous": head.digest if head else None}
            spec.validate(rec, "audit-record", "new audit record")
            body = canon.canonical(rec)
            raw = canon.canonical({"record": rec, "signatures": [key.sign(PAYLOAD_TYPE, body)]})
            if self.store is not None:
                try:
                    if not self.store.put_bytes(f"{PREFIX}/{sub}/{_name(seq)}", raw,
                                                exclusive=True):  # fmt: skip
                        continue  # another writer with this key took the number: catch up
                except StorageError:
                    pass  # the local copy stands; the next append puts it on the replica
            self.local.mkdir(parents=True, exist_ok=True)
            _write_local(self.local / _name(seq), raw)
            return Entry(seq, raw, rec)
        raise IntegrityError(f"{self.store.describe(f'{PREFIX}/{sub}')}: could not append an "
                             "audit record after 8 tries (another writer keeps taking the "
                             "next number)")  # fmt: skip

    def verify(self, trusted: list[PublicKey]) -> tuple[int, list[str]]:
        """(records checked, problems) over every chain's local copy, and against the
        replica's copy."""
        problems: list[str] = []
        count = 0
        for sub in self._subdirs():
            local = self._local_entries(sub)
            count += len(local)
            where = self.local_root / sub if sub else self.local_root
            problems += _check(local, trusted, str(where))
            if self.store is None:
                continue
            try:
                remote = self._remote_entries(sub)
            except StorageError as e:
                problems.append(f"replica copy unreadable: {e}")
                continue
            problems += _check(remote, trusted,
                               self.store.describe(f"{PREFIX}/{sub}" if sub else PREFIX))
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


def _last(entries: list[tuple[int, bytes]], where: Path) -> Entry | None:
    if not entries:
        return None
    seq, raw = entries[-1]
    return Entry(seq, raw, parse(raw, str(where / _name(seq)))["record"])


def _write_local(path: Path, raw: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)


def _check(entries: list[tuple[int, bytes]], trusted: list[PublicKey], where: str) -> list[str]:
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
            verify_signatures(PAYLOAD_TYPE, body, env["signatures"], trusted, what)
        except (CorruptData, TrustError) as e:
            problems.append(str(e))
            return problems
        rec = env["record"]
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
