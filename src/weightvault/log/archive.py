"""The preservation log of a lab's replica set: what other parts of weightvault call.

The log is written on one replica, the primary (the replica whose role is `primary`, else the
first configured), under its lock, and then mirrored byte for byte to every other replica
that answers (docs/FORMAT.md section 12). A replica that was down catches up at the next
append, replicate or audit. Readers verify everything they read against the log's key.

    plog = PreservationLog(replica_set, public_key_bytes, key=signing_key, state_dir=dir)
    plog.append(statements.replicated(bundle_id, name, "s3"))
    plog.inventory("s3")   # {bundle id: name} the log says s3 must hold
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.errors import IntegrityError, StorageError, WeightvaultError
from weightvault.log import statements, tlog
from weightvault.log.store import (
    CHECKPOINT,
    CHECKPOINTS,
    ROOT,
    Head,
    LogStore,
    State,
    append,
    log_verifier,
    origin_for,
    prune_partials,
)


def mirror(src: LogStore, dst: LogStore) -> Head | None:
    """Bring `dst` up to `src`'s newest checkpoint: copy the tiles, entry bundles and
    checkpoints it lacks (write-once), prove `dst`'s own checkpoint consistent with the new one,
    check the copied edge hashes to the root, and move `dst`'s pointer last."""
    head = src.head()
    if head is None:
        return None
    have = dst.head()
    if have is not None:
        if have.size > head.size:
            raise IntegrityError(f"{dst.describe(CHECKPOINT)}: tree size {have.size} is ahead of "
                                 f"{src.describe(CHECKPOINT)} at tree size {head.size}")  # fmt: skip
        if have.raw == head.raw:
            return head
    old = have.size if have else 0
    before = set(tlog.tiles_for(old))
    for level, index, width in tlog.tiles_for(head.size):
        if (level, index, width) in before:
            continue
        paths = [tlog.tile_path(level, index, width)]
        if level == 0:
            paths.append(tlog.tile_path(-1, index, width))
        for p in paths:
            key = f"{ROOT}/{p}"
            data = src._read(key, 1 << 21)
            if data is None:
                raise IntegrityError(f"{src.describe(key)}: missing")
            if not dst.put_once(key, data):
                dst.store.put_bytes(key, data)  # beyond dst's checkpoint: uncommitted leftovers
    if have is not None:
        src.check_consistent(have, head, dst.describe(CHECKPOINT))
    dst.check_root(head)
    for s in src.checkpoint_sizes():
        if s > old or have is None:
            data = src._read(f"{CHECKPOINTS}/{s}", 1 << 16)
            if data is not None:
                dst.put_once(f"{CHECKPOINTS}/{s}", data)
    dst.store.put_bytes(CHECKPOINT, head.raw)
    prune_partials(dst, [tlog.tile_path(lv, n) for lv, n, w in tlog.tiles_for(head.size)
                         if w == tlog.WIDTH and (lv, n, w) not in before] +
                   [tlog.tile_path(-1, n) for lv, n, w in tlog.tiles_for(head.size)
                    if lv == 0 and w == tlog.WIDTH and (lv, n, w) not in before])  # fmt: skip
    return head


@dataclass
class PreservationLog:
    replicas: object  # a weightvault.storage.replicas.ReplicaSet
    public: bytes  # the log's Ed25519 public key (raw)
    key: object | None = None  # a SigningKey with that public key, to append
    state_dir: Path | None = None
    errors: dict[str, str] = field(default_factory=dict)  # replica -> why its copy lags

    @property
    def origin(self) -> str:
        return origin_for(self.public)

    @property
    def primary(self) -> str:
        rs = self.replicas
        for n in rs.names:
            if rs.replica(n).role == "primary":
                return n
        return rs.names[0]

    def copy(self, name: str, *, create: bool = False) -> LogStore:
        return LogStore(self.replicas.store(name, create=create), log_verifier(self.public))

    def append(self, *entries: bytes, mirror_to: list[str] | None = None) -> Head:
        """Append statements (from weightvault.log.statements) on the primary, then mirror to
        the other replicas (or to `mirror_to`); a replica that fails to take the copy is noted
        in `errors` and catches up later."""
        if self.key is None:
            raise WeightvaultError("the preservation log needs the lab's signing key to append")
        primary = self.copy(self.primary, create=True)
        # one writer state per (key, archive): the same key may write the logs of two archives
        url = self.replicas.replica(self.primary).url
        tag = hashlib.sha256(url.encode()).hexdigest()[:16]
        state = State.load(self.state_dir, f"{self.origin}@{tag}") if self.state_dir else None
        head = append(primary, self.key, list(entries), state)
        for n in mirror_to if mirror_to is not None else self.replicas.names:
            if n != self.primary:
                self.mirror(n, primary)
        return head

    def mirror(self, name: str, src: LogStore | None = None) -> Head | None:
        try:
            return mirror(src or self.copy(self.primary), self.copy(name))
        except (StorageError, IntegrityError) as e:
            self.errors[name] = str(e)
            return None

    def source(self, prefer: str | None = None) -> LogStore | None:
        """The first copy that holds the log, preferring `prefer`, then the primary; None if
        every replica answers and none holds a log yet."""
        order = [n for n in ([prefer] if prefer else []) + [self.primary] + self.replicas.names]
        seen, failures = set(), []
        for n in order:
            if n in seen:
                continue
            seen.add(n)
            try:
                copy = self.copy(n)
                if copy.head() is not None:
                    return copy
            except StorageError as e:
                failures.append(f"{n}: {e}")
        if failures:
            raise StorageError("no replica holds the preservation log: " + "; ".join(failures))
        return None

    def statements(self, prefer: str | None = None) -> list[tuple[int, dict]]:
        """Every statement, verified: each entry against the tiles, the tiles against the
        signed checkpoint."""
        src = self.source(prefer)
        head = src.head() if src else None
        if src is None or head is None:
            return []
        src.check_root(head)
        out = []
        for i, e in enumerate(src.read_all(head.size)):
            out.append((i, statements.parse(e, src.describe(f"{ROOT} entry {i}"))))
        return out

    def inventory(self, replica: str, prefer: str | None = None) -> dict[str, str]:
        """{bundle id: name} of every bundle the log says `replica` must hold: replicated or
        repaired there (a seal on a replica is logged as replicated there), and not retired
        there or everywhere since."""
        return inventory_of(self.statements(prefer), replica)

    def latest(self, prefer: str | None = None) -> dict[str, dict[str, dict]]:
        return latest_of(self.statements(prefer))


def inventory_of(stmts: list[tuple[int, dict]], replica: str) -> dict[str, str]:
    held: dict[str, str] = {}
    for _, d in stmts:
        kind = d["kind"]
        if kind in ("replicated", "repaired") and d["replica"] == replica:
            held[d["bundle"]] = d["name"]
        elif kind == "retired" and d["replica"] in (None, replica):
            held.pop(d["bundle"], None)
    return held


def latest_of(stmts: list[tuple[int, dict]]) -> dict[str, dict[str, dict]]:
    """{bundle id: {kind (custody: custody/EVENT; replicated: replicated/REPLICA): latest
    statement with its index}}; audits under the key "audited/REPLICA" of bundle "*"."""
    out: dict[str, dict[str, dict]] = {}
    for i, d in stmts:
        kind = d["kind"]
        if kind == "audited":
            out.setdefault("*", {})[f"audited/{d['replica']}"] = {**d, "index": i}
            continue
        sub = {"custody": d.get("event"), "replicated": d.get("replica"),
               "repaired": d.get("replica")}.get(kind)  # fmt: skip
        out.setdefault(d["bundle"], {})[f"{kind}/{sub}" if sub else kind] = {**d, "index": i}
    return out


def summary_of(stmts: list[tuple[int, dict]], bundle: str) -> dict:
    """What the log says of one bundle, for people: where it must be held, the latest audit of
    each of those replicas, the custody events, whether it was retired."""
    held = sorted(r for r, bids in _holders(stmts).items() if bundle in bids)
    audits: dict[str, dict] = {}
    custody, retired, sealed = [], None, None
    for i, d in stmts:
        if d["kind"] == "audited" and d["replica"] in held:
            audits[d["replica"]] = {"time": d["time"], "level": d["level"],
                                    "result": d["result"], "index": i}  # fmt: skip
        elif d.get("bundle") == bundle:
            if d["kind"] == "sealed":
                sealed = {"time": d["time"], "index": i}
            elif d["kind"] == "custody":
                custody.append({"event": d["event"], "steward": d["steward"], "time": d["time"],
                                "index": i})  # fmt: skip
            elif d["kind"] == "retired":
                retired = {"time": d["time"], "replica": d["replica"], "reason": d["reason"]}
    full = [a["time"] for a in audits.values() if a["level"] == "full" and a["result"] == "ok"]
    return {"bundle": bundle, "sealed": sealed, "held_on": held, "audits": audits,
            "last_full_audit": max(full) if full else None, "custody": custody,
            "retired": retired}  # fmt: skip


def _holders(stmts: list[tuple[int, dict]]) -> dict[str, set[str]]:
    replicas = {d["replica"] for _, d in stmts if d["kind"] in ("replicated", "repaired")}
    return {r: set(inventory_of(stmts, r)) for r in replicas}
