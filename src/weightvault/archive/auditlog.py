"""The audit trail: signed, hash-chained records of every fixity check and repair.

Each replica has its own chain. A record names the digest of the one before it, so removing,
reordering or editing a record breaks the chain; records are kept twice (on the replica audited
and in the local state directory), so truncating one copy shows against the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from weightvault import __version__
from weightvault.errors import CorruptData, StorageError, TrustError
from weightvault.format import canon, spec
from weightvault.format.keys import PublicKey, SigningKey, verify_signatures
from weightvault.storage.store import Store

PAYLOAD_TYPE = "application/vnd.weightvault.audit+json; version=1"
PREFIX = "audits"  # on the replica: audits/<seq>.json
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


def parse(raw: bytes, what: str) -> dict:
    env = canon.parse(raw, what, max_size=MAX_RECORD)
    if not isinstance(env, dict) or set(env) != {"record", "signatures"}:
        raise CorruptData(f"{what}: not a signed audit record")
    spec.validate(env["record"], "audit-record", what)
    return env


class Chain:
    """One replica's chain, in the local state directory and on the replica."""

    def __init__(self, local_dir: Path, store: Store | None):
        self.local = local_dir / "audits"
        self.local.mkdir(parents=True, exist_ok=True)
        self.store = store

    def _local_entries(self) -> list[tuple[int, bytes]]:
        out = []
        for p in sorted(self.local.glob("*.json")):
            if p.stem.isdigit():
                out.append((int(p.stem), p.read_bytes()))
        return out

    def head(self) -> Entry | None:
        entries = self._local_entries()
        if not entries:
            return None
        seq, raw = entries[-1]
        return Entry(seq, raw, parse(raw, str(self.local / _name(seq)))["record"])

    def append(self, record: dict, key: SigningKey) -> Entry:
        head = self.head()
        record = {**record, "sequence": (head.seq + 1) if head else 1,
                  "previous": head.digest if head else None}  # fmt: skip
        spec.validate(record, "audit-record", "new audit record")
        body = canon.canonical(record)
        env = {"record": record, "signatures": [key.sign(PAYLOAD_TYPE, body)]}
        raw = canon.canonical(env)
        seq = record["sequence"]
        tmp = self.local / f".{_name(seq)}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, self.local / _name(seq))
        if self.store is not None:
            try:
                self.store.put_bytes(f"{PREFIX}/{_name(seq)}", raw)
            except StorageError:
                pass  # the local copy stands; verify_chain reports the replica's copy as short
        return Entry(seq, raw, record)

    def verify(self, trusted: list[PublicKey]) -> tuple[int, list[str]]:
        """(records checked, problems) over the local copy, and against the replica's copy."""
        problems: list[str] = []
        local = self._local_entries()
        problems += _check(local, trusted, str(self.local))
        if self.store is not None:
            try:
                remote_keys = sorted(self.store.list(PREFIX))
                remote = [(int(k.rsplit("/", 1)[1][:-5]), self.store.read_bytes(k, MAX_RECORD))
                          for k in remote_keys if k.rsplit("/", 1)[1][:-5].isdigit()]  # fmt: skip
            except StorageError as e:
                problems.append(f"replica copy unreadable: {e}")
                remote = None
            if remote is not None:
                problems += _check(remote, trusted, self.store.describe(PREFIX))
                lmap, rmap = dict(local), dict(remote)
                for seq in sorted(set(lmap) | set(rmap)):
                    if seq not in rmap:
                        problems.append(
                            f"record {seq} is in the local trail but not on the replica"
                        )
                    elif seq not in lmap:
                        problems.append(
                            f"record {seq} is on the replica but not in the local trail"
                        )
                    elif lmap[seq] != rmap[seq]:
                        problems.append(
                            f"record {seq} differs between the local and replica copies"
                        )
        return len(local), problems


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
    """When each object on a replica was last fully hashed (drives sample audits)."""

    def __init__(self, local_dir: Path):
        self.path = local_dir / "verified.json"
        try:
            self.times: dict[str, float] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.times = {}

    def mark(self, key: str, when: float) -> None:
        self.times[key] = when

    def age(self, key: str, at: float) -> float | None:
        t = self.times.get(key)
        return None if t is None else at - t

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.times, sort_keys=True))
        os.replace(tmp, self.path)


def tool() -> dict:
    return {"name": "weightvault", "version": __version__}
