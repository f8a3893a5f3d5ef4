"""Fixity audits and repair of every replica.

Depths: `metadata` (listings, sizes, server-side SHA-256 where the store keeps one: no payload
read), `sample` (metadata for everything plus full hashing of the least recently verified
objects, enough that every byte is re-hashed once per cycle), `full` (every stored byte, every
tag file, every signature). A failing object is read again before it is called damaged.
"""

from __future__ import annotations

import json
import os
import time
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive import auditlog
from weightvault.archive.auditlog import (
    RECORD_VERSION,
    BoundedList,
    Chain,
    Verified,
    empty_list,
    failures_total,
    now,
    replica_dir,
    tool,
    truncated,
)
from weightvault.archive.pipeline import run
from weightvault.archive.replicate import ReplicateResult, replicate
from weightvault.archive.spill import Groups, guard
from weightvault.archive.verify import check_bag
from weightvault.errors import (
    CorruptData,
    IntegrityError,
    StorageError,
    TrustError,
    WeightvaultError,
)
from weightvault.format.keys import PublicKey, SigningKey
from weightvault.format.manifest import MANIFEST_KEY
from weightvault.format.paths import name_ok
from weightvault.storage.chunkio import check_object
from weightvault.storage.store import Store
from weightvault.storage.vault import BUNDLES, POOL, Vault, commit_order, object_key, prefix

LEVELS = ("metadata", "sample", "full")
DAY = 86400.0
# failures of one replica a command's report lines show in full: a replica gone wholesale
# fails every object, millions of lines. The signed record (version 2) holds the first
# RECORD_FAILURES of them and the report's --json shows that record; past those, the full
# list is a file beside the record (auditlog.BoundedList), named in the report
REPORT_FAILURES = 1000


@dataclass
class Target:
    """One object an audit may hash: key, expected sha256 / size / sha512 (format versions 1
    and 2 only), owning bundle."""

    key: str
    sha256: str
    size: int
    sha512: str | None
    bundle: str
    # metadata level on a store with server checksums: True when the server returned a SHA-256
    # equal to the name, False when it returned none usable, None when not asked
    server_verified: bool | None = None


def _inventory(vault: Vault, bname: str, must: bool, want: str | None,
               trusted: list[PublicKey], level: str, failures: list[dict], seen: _Work,
               ) -> tuple[list[Target], str, str | None]:  # fmt: skip
    """Check one bundle's files against its signed manifest without reading payload (full
    level: tag file bytes too). Appends what is wrong to `failures`; returns the objects to
    hash, the bundle's state and its id. `seen`: the audit's work tables (the vault's pool
    listing, and the keys an earlier bundle of this audit already accounts for)."""
    store, p = vault.store, prefix(bname)
    listing = store.list(p)
    if not listing:
        if not must:
            return [], "absent", None
        failures.append(_failure(None, "lost", want or "the bundle",
                                 "no file of this bundle is on the replica", obj=p,
                                 bundle=bname))  # fmt: skip
        return [], "lost", want
    if not must and not vault.is_committed(bname):
        return [], "uncommitted", None
    try:
        b = vault.load_exact(bname, trusted)
    except (CorruptData, IntegrityError, TrustError) as e:
        failures.append(_failure(None, "manifest", "a manifest signed by a trusted key",
                                 str(e), obj=f"{p}/{MANIFEST_KEY}", bundle=bname))  # fmt: skip
        return [], "unreadable", want
    m = b.manifest
    if want is not None and m.bundle_id != want:
        failures.append(_failure(None, "conflict", want, f"bundle {m.bundle_id}",
                                 obj=f"{p}/{MANIFEST_KEY}", bundle=bname))  # fmt: skip
    mine = [Target(object_key(m, o["name"]), o["name"], o["size"], o.get("sha512"), bname)
            for o in m.doc["objects"]]  # fmt: skip
    mine += [Target(f"{p}/data/{r['path']}", r["sha256"], r["size"], r.get("sha512"), bname)
             for r in m.plain_files]  # fmt: skip
    if m.pooled:
        listing = ChainMap(listing, seen.pool(store))  # the pool: listed once per replica
    for t in mine:
        if t.key not in listing:
            failures.append(_failure(t, "missing", t.sha256, "missing"))
        elif listing[t.key] != t.size:
            failures.append(_failure(t, "size", str(t.size), str(listing[t.key])))
    # every level: a tag file gone is damage (its absence never demotes the bundle)
    for k in commit_order(m.doc["format_version"]):
        if f"{p}/{k}" not in listing:
            failures.append(_failure(None, "tag", "present", "missing", obj=f"{p}/{k}",
                                     bundle=bname))  # fmt: skip
    checksum = getattr(store, "checksum", None)
    if checksum is not None and level == "metadata":
        bad = {f["object"] for f in failures}
        for t in mine:
            if t.key in bad or t.key in seen:
                continue
            have = checksum(t.key)
            # only a full SHA-256 equal to the name proves the bytes; none (or a composite
            # multipart one) proves nothing, and is left to sample and full audits
            t.server_verified = have is not None and have == t.sha256
            if have is not None and have != t.sha256:
                t.server_verified = None
                failures.append(_failure(t, "damaged", t.sha256, f"server sha256 {have}"))
    if level == "full":
        missing_tags = {f["object"] for f in failures if f["kind"] == "tag"}
        for pr in check_bag(vault, b):  # tag files, extra files: never object bytes
            kind = pr.kind if pr.kind in ("tag", "extra") else "tag"
            if not any(pr.where.endswith(k) for k in missing_tags):
                failures.append(_failure(None, kind, "as the signed manifest says", pr.detail,
                                         obj=pr.where, bundle=bname))  # fmt: skip
    return mine, "intact", m.bundle_id


class _Work:
    """The objects of one replica's audit, on local disk rather than in memory: a private
    temporary SQLite database attached to the Verified state's connection. At 1 PB a replica
    holds about 15 million objects; as Target objects, a set of seen keys and a dict of the
    pool's listing they were several GB of driver memory. Objects are taken in the order
    bundles name them, each once (a pool object shared by versions is one target)."""

    def __init__(self, verified: Verified):
        self.db = verified.db
        self.db.execute("ATTACH DATABASE '' AS work")
        self.db.execute("CREATE TABLE work.seen (key TEXT PRIMARY KEY, seq INTEGER, "
                        "target INTEGER, sha256 TEXT, size INTEGER, sha512 TEXT, bundle TEXT)")  # fmt: skip
        self.db.execute("CREATE INDEX work.by_seq ON seen (seq)")
        self.db.execute("CREATE TABLE work.pool (key TEXT PRIMARY KEY, size INTEGER)")
        self._seq = 0
        self._pool_listed = False

    def __contains__(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM work.seen WHERE key = ?", (key,)).fetchone() \
            is not None  # fmt: skip

    def add(self, mine: list[Target], bad: set[str]) -> int:
        """Record a bundle's objects; the new ones not found bad become targets. Returns how
        many targets were added."""
        before = self.db.total_changes
        rows = []
        for t in mine:
            self._seq += 1
            rows.append((t.key, self._seq, t.key not in bad, t.sha256, t.size, t.sha512, t.bundle))
        self.db.executemany("INSERT OR IGNORE INTO work.seen VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return self.db.total_changes - before

    def pool(self, store: Store) -> _PoolListing:
        if not self._pool_listed:  # (a listing that failed half way is listed again)
            self.db.executemany("INSERT OR REPLACE INTO work.pool VALUES (?, ?)",
                                store.iter_list(POOL))  # fmt: skip
            self._pool_listed = True
        return _PoolListing(self.db)

    _TARGET = ("SELECT s.key, s.sha256, s.size, s.sha512, s.bundle, v.t FROM work.seen s "
               "LEFT JOIN main.verified v ON v.key = s.key WHERE s.target")  # fmt: skip

    def targets(self) -> Iterator[Target]:
        """Every target, in bundle order."""
        rows = self.db.execute("SELECT key, sha256, size, sha512, bundle FROM work.seen "
                               "WHERE target ORDER BY seq")  # fmt: skip
        return (_target(r) for r in rows)

    def by_age(self) -> Iterator[tuple]:
        """The same, least recently verified first (never verified before all), ties in
        bundle order: what sorting by age, oldest first, gives (sort is stable)."""
        return self.db.execute(self._TARGET + " ORDER BY v.t IS NOT NULL, v.t, s.seq")

    def totals(self) -> tuple[int, int]:
        n, size = self.db.execute("SELECT count(*), total(size) FROM work.seen "
                                  "WHERE target").fetchone()  # fmt: skip
        return n, int(size)

    def coverage(self, at: float, cycle: float) -> tuple[int, int, float | None]:
        """(targets, verified within `cycle` seconds of `at`, oldest age or None when any
        target was never verified or there is none)."""
        n, within, never, oldest = self.db.execute(
            "SELECT count(*), total(v.t IS NOT NULL AND ? - v.t <= ?), total(v.t IS NULL), "
            "min(v.t) FROM work.seen s LEFT JOIN main.verified v ON v.key = s.key "
            "WHERE s.target", (at, cycle)).fetchone()  # fmt: skip
        return n, int(within), None if never or not n else at - oldest


class _PoolListing(Mapping):
    """The pool's listing as a read-only mapping key -> size, looked up in the work tables."""

    def __init__(self, db):
        self.db = db

    def __getitem__(self, key: str) -> int:
        row = self.db.execute("SELECT size FROM work.pool WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __iter__(self):
        return (k for (k,) in self.db.execute("SELECT key FROM work.pool"))

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM work.pool").fetchone()[0]


def _target(row: tuple) -> Target:
    return Target(*row[:5])


@dataclass
class ReplicaAudit:
    replica: str
    url: str
    level: str
    outcome: str = "pass"
    record: dict = field(default_factory=dict)
    error: str = ""
    failures_file: str = ""  # every failure, one JSON object a line, when the record has not
    repairs_file: str = ""  # the same for a repair's repairs
    bundles_file: str = ""  # and for a fixity record's bundles (version 3)
    repaired: dict[str, int] = field(default_factory=dict)  # a repair: bundle -> objects fixed
    # every bundle the audit looked at, as the record lists them (version 3 records hold the
    # first 1,000 and the bundles file the rest): what cross-checks and the local state use
    bundles: list[dict] = field(default_factory=list)

    @property
    def failures_total(self) -> int:
        return failures_total(self.record) if self.record else 0

    def shown_failures(self) -> list[dict]:
        """The failures a report's lines show in full: the first REPORT_FAILURES, in record
        order (past the record's own, from the failures file this audit just wrote)."""
        inline = self.record.get("failures", [])
        if not self.failures_file or len(inline) >= REPORT_FAILURES:
            return inline[:REPORT_FAILURES]
        out = []
        with open(self.failures_file, "rb") as f:
            for line in f:
                if len(out) >= REPORT_FAILURES:
                    break
                out.append(json.loads(line))
        return out

    def as_dict(self) -> dict:
        """The report of this replica: the signed record (version 2: the first
        RECORD_FAILURES failures), `failures_total`, and the `failures_file` holding all
        when the record does not."""
        rec = self.record
        if len(rec.get("failures", ())) > REPORT_FAILURES:  # a version 1 record
            rec = {**rec, "failures": rec["failures"][:REPORT_FAILURES]}
        return {"replica": self.replica, "url": self.url, "level": self.level,
                "outcome": self.outcome, "error": self.error, "record": rec,
                "failures_total": self.failures_total,
                "failures_file": self.failures_file or None,
                "bundles_file": self.bundles_file or None}  \
            | ({"repairs_file": self.repairs_file or None} if self.level == "repair" else {})  # fmt: skip


def _failure(t: Target | None, kind: str, expected: str, found: str, obj: str = "",
             bundle: str = "") -> dict:  # fmt: skip
    return {"object": t.key if t else obj, "bundle": t.bundle if t else bundle, "kind": kind,
            "expected": expected, "found": found}  # fmt: skip


def _hash_check(store: Store, t: Target) -> dict | None:
    try:
        check_object(store, t.key, {"name": t.sha256, "size": t.size}
                     | ({"sha512": t.sha512} if t.sha512 else {}))  # fmt: skip
        return None
    except IntegrityError as e:
        msg = str(e)
        if msg.endswith(": missing"):
            return _failure(t, "missing", t.sha256, "missing")
        return _failure(t, "damaged", t.sha256, msg.split(": ", 1)[-1])


def audit_replica(name: str, store: Store, **kw) -> ReplicaAudit:
    """Audit one replica (_audit_replica). The local state's SQLite databases (verified.db,
    and the work tables in a temporary one) failing, a full disk above all, is one line
    naming them, exit 3."""
    where = (f"{replica_dir(kw['state'], store.url) / 'verified.db'} (or the audit's temporary "
             "work tables)")  # fmt: skip
    with guard(where):
        return _audit_replica(name, store, **kw)


def _audit_replica(
    name: str,
    store: Store,
    *,
    level: str,
    trusted: list[PublicKey],
    key: SigningKey,
    state: Path,
    cycle_days: int | None = None,
    interval_days: float | None = None,
    workers: int | None = None,
    clock: float | None = None,
    expected: dict[str, str | None] | None = None,
    executor=None,
) -> ReplicaAudit:
    """`expected`: bundle name -> id (None: not known) of every bundle this replica must hold,
    learnt from somewhere other than this replica's listing (the other replicas, the local
    audit state: expected_holdings()); one of them absent here is LOSS, not 'nothing to
    check'."""
    started, t0 = now(), clock or time.time()
    local = replica_dir(state, store.url)
    chain = Chain(local, store, key.public.key_id)
    verified = Verified(local)
    before = store.counters.payload_read
    vault = Vault(store)
    failures = BoundedList(chain.local)  # on disk past the record's share: flat memory
    listed_bundles = None  # the record's bundles (version 3: bounded the same way)
    transient: list[dict] = []  # the record's share of them; transient_n counts all
    transient_n = 0
    bundles: list[dict] = []
    checked = 0
    unverifiable = 0  # metadata level: objects the server kept no usable checksum of
    expected = dict(expected or {})
    work = _Work(verified)  # what to hash, on disk: memory stays flat as the replica grows
    try:
        listed = set(store.list_dirs(BUNDLES))  # fails only when the replica cannot be listed
        for bname in sorted(listed | set(expected)):
            found: list[dict] = []  # this bundle's, from its inventory
            try:
                mine, state, bid = _inventory(vault, bname, bname in expected,
                                              expected.get(bname), trusted, level, found,
                                              work)  # fmt: skip
            except StorageError as e:
                store.list_dirs(BUNDLES)  # the replica itself gone: unreachable, not damage
                mine, state, bid = [], "unreadable", expected.get(bname)
                found.append(_failure(None, "unreadable", "readable files", str(e),
                                      obj=prefix(bname), bundle=bname))  # fmt: skip
            checked += sum(1 for t in mine if t.server_verified)
            unverifiable += sum(1 for t in mine if t.server_verified is False)
            work.add(mine, {f["object"] for f in found})
            del mine  # one bundle's objects at a time in memory
            for f in found:
                failures.add(f)
            if state == "intact" and found:
                state = "damaged"
            bundles.append({"name": bname, "bundle": bid, "state": state})
        # choose what to hash, and hash it in bounded batches
        if level == "full":
            chosen = work.targets()
        elif level == "sample":
            chosen = _sample(work, t0, cycle_days or 90, interval_days, chain.head())
        else:
            chosen = iter(())
        reread = 0
        for batch in _batched(chosen):
            if executor is not None and executor.distributed:
                from weightvault.archive.distributed import hash_on_cluster

                results = hash_on_cluster(executor, store, batch, workers)
            else:
                results = run(batch, lambda t, _e: _hash_check(store, t), workers=workers)
            for t, f in zip(batch, results, strict=True):
                checked += 1
                if f is None:
                    verified.mark(t.key, t0)
                    continue
                mark = store.counters.payload_read
                again = _hash_check(store, t)  # a transient bad read is not rot
                reread += store.counters.payload_read - mark  # not counted: read once
                if again is None:
                    transient_n += 1
                    if len(transient) < auditlog.RECORD_FAILURES:
                        transient.append(f)
                    verified.mark(t.key, t0)
                else:
                    failures.add(again)
        for b in bundles:
            if b["name"] in failures.bundles and b["state"] == "intact":
                b["state"] = "damaged"
        listed_bundles = BoundedList(chain.local, "bundles")
        for b in bundles:
            listed_bundles.add(b)
        verified.save()
        cycle = cycle_days or 90
        n, within, oldest = work.coverage(t0, cycle * DAY)
        full_list, bundle_list = failures.finish(), listed_bundles.finish()
    except BaseException:
        failures.discard()
        if listed_bundles is not None:
            listed_bundles.discard()
        raise
    finally:
        verified.close()  # the work tables go with it; marks only if saved (a finished audit)
    coverage = {
        "cycle_days": cycle_days if level == "sample" else None,
        "objects": n,
        "verified_within_cycle": within,
        "oldest_age_seconds": None if oldest is None else int(oldest),
    }  # fmt: skip
    record = {
        "format": "weightvault-audit", "format_version": RECORD_VERSION,
        "eventType": "fixity check", "eventDateTime": started, "ended": now(),
        "eventOutcome": "fail" if failures.total else "pass",
        "replica": {"name": name, "url": store.url}, "level": level,
        "agent": {"tool": tool(), "key": key.public.key_id},
        "objects_checked": checked, "bytes_read": store.counters.payload_read - before - reread,
        "objects_unverifiable": unverifiable,
        **listed_bundles.fields(), **failures.fields(), "transient": transient,
        "transient_total": transient_n, **empty_list("repairs"), "coverage": coverage,
    }  # fmt: skip
    try:
        entry = chain.append(record, key, {"failures": full_list, "bundles": bundle_list})
    finally:
        failures.discard()  # the lock on its file goes only now: moved into place, or removed
        listed_bundles.discard()
    out = ReplicaAudit(name, store.url, level, record["eventOutcome"], entry.record,
                       bundles=bundles)  # fmt: skip
    if truncated(entry.record):
        out.failures_file = str(chain.list_path(entry.record))
    if truncated(entry.record, "bundles"):
        out.bundles_file = str(chain.list_path(entry.record, "bundles"))
    return out


def _sample(work: _Work, at: float, cycle_days: int, interval_days: float | None,
            head) -> Iterator[Target]:  # fmt: skip
    """Least recently verified first, enough bytes that the whole replica is re-hashed once
    per cycle at this schedule; anything that would be overdue by the next run is included.
    Streamed from the work tables in that order (flat memory)."""
    if interval_days is None:
        last = None
        if head is not None and head.record["level"] == "sample":
            last = time.mktime(time.strptime(head.record["eventDateTime"], "%Y-%m-%dT%H:%M:%SZ"))
            last -= time.timezone
        interval_days = max((at - last) / DAY, 1 / 24) if last else 1.0
    interval = min(interval_days, cycle_days) * DAY
    cycle = cycle_days * DAY
    budget = work.totals()[1] * interval / cycle
    # the selection is made whole before any object is hashed and marked (marks change ages)
    work.db.execute("CREATE TABLE work.chosen (n INTEGER PRIMARY KEY, key, sha256, size, "
                    "sha512, bundle)")  # fmt: skip
    insert = "INSERT INTO work.chosen (key, sha256, size, sha512, bundle) VALUES (?, ?, ?, ?, ?)"
    spent = 0
    rows: list[tuple] = []
    for row in work.by_age():
        # never hashed by an audit here: first in line, but within the budget (it was checked
        # when written), so a new replica's first cycle is spread like any other
        a = float("inf") if row[5] is None else at - row[5]
        overdue = a != float("inf") and a + interval > cycle
        if spent >= budget and not overdue:
            break
        rows.append(row[:5])
        spent += row[2]
        if len(rows) >= _BATCH_OBJECTS:
            work.db.executemany(insert, rows)
            rows = []
    work.db.executemany(insert, rows)
    del rows
    for row in work.db.execute("SELECT key, sha256, size, sha512, bundle FROM work.chosen "
                               "ORDER BY n"):  # fmt: skip
        yield _target(row)


# objects per batch the driver holds and hands to the hashing pipeline (or the cluster): about
# 2.5 MB of Target objects, and enough bytes to keep every worker busy between batches
_BATCH_OBJECTS = 10_000


def _batched(targets: Iterator[Target]) -> Iterator[list[Target]]:
    batch: list[Target] = []
    for t in targets:
        batch.append(t)
        if len(batch) >= _BATCH_OBJECTS:
            yield batch
            batch = []
    if batch:
        yield batch


def repair_replica(
    name: str,
    store: Store,
    sources: list[tuple[str, Store]],
    *,
    trusted: list[PublicKey],
    key: SigningKey,
    state: Path,
    workers: int | None = None,
) -> tuple[ReplicaAudit, list[str]]:
    """Fix what the latest audit of this replica found, from replicas where it verifies."""
    started = now()
    local = replica_dir(state, store.url)
    chain = Chain(local, store, key.public.key_id)
    head = chain.head()
    fixity = head.record if head and head.record["eventType"] == "fixity check" else None
    if fixity is None or not failures_total(fixity):
        return ReplicaAudit(name, store.url, "repair", "pass"), []
    # every failure, not only the record's first: from the failures file beside the record,
    # checked against the signed record before any line is used. On disk, grouped by bundle:
    # a replica gone wholesale fails millions of objects, and only one bundle's suspects (the
    # set replicate takes, bounded by that bundle's manifest) are in memory at a time
    by_bundle = Groups()
    repairs = BoundedList(chain.local, "repairs")  # on disk past the record's share
    repaired: dict[str, int] = {}
    lost = []
    try:
        by_bundle.add_all((f["bundle"], f["object"]) for f in chain.full_list(head))
        for bname, suspects in by_bundle:
            ok_sources = [s for _n, s in sources if _holds(s, bname, trusted)]
            try:
                if not ok_sources:
                    raise IntegrityError(f"no other replica holds bundle {bname}")
                r: ReplicateResult = replicate(ok_sources, store, bname, trusted,
                                               workers=workers,
                                               suspect={_key(s, store) for s in suspects})  # fmt: skip
                done = {e.key: e for e in r.events}
                for obj in sorted(suspects):
                    e = done.get(_key(obj, store))
                    detail = f"copied from {e.source}" if e else "verified in place on re-check"
                    repairs.add({"object": obj, "bundle": bname, "outcome": "repaired",
                                 "detail": detail})  # fmt: skip
                repaired[bname] = len(suspects)
            except WeightvaultError as e:
                files = _files_using(sources + [(name, store)], bname, suspects, trusted)
                msg = (f"bundle {bname}: NO HEALTHY COPY of {len(suspects)} object(s) on any "
                       f"replica; these files cannot be restored: {', '.join(files) or 'unknown'}"
                       f" ({e})")  # fmt: skip
                lost.append(msg)
                for obj in sorted(suspects):
                    repairs.add({"object": obj, "bundle": bname, "outcome": "unrepairable",
                                 "detail": str(e)[:4000]})  # fmt: skip
        full_list = repairs.finish()
    except BaseException:
        repairs.discard()
        raise
    finally:
        by_bundle.close()
    record = {
        "format": "weightvault-audit", "format_version": RECORD_VERSION,
        "eventType": "replication", "eventDateTime": started, "ended": now(),
        "eventOutcome": "fail" if lost else "pass",
        "replica": {"name": name, "url": store.url}, "level": "repair",
        "agent": {"tool": tool(), "key": key.public.key_id},
        "objects_checked": repairs.total, "bytes_read": 0, **empty_list("bundles"),
        **empty_list("failures"), "transient": [], "transient_total": 0, **repairs.fields(),
        "coverage": {"cycle_days": None, "objects": 0, "verified_within_cycle": 0,
                     "oldest_age_seconds": None},
    }  # fmt: skip
    try:
        entry = chain.append(record, key, {"repairs": full_list})
    finally:
        repairs.discard()  # the lock on its file goes only now: moved into place, or removed
    out = ReplicaAudit(name, store.url, "repair", record["eventOutcome"], entry.record,
                       repaired=repaired)  # fmt: skip
    if truncated(entry.record, "repairs"):
        out.repairs_file = str(chain.list_path(entry.record, "repairs"))
    return out, lost


def _holds(store: Store, bname: str, trusted: list[PublicKey]) -> bool:
    try:
        Vault(store).load_exact(bname, trusted)
        return True
    except WeightvaultError:
        return False


class Known:
    """Every bundle the local audit state has seen committed (signature verified) on each
    replica, kept per replica URL: what a replica must hold does not come from that replica's
    own listing, which whoever holds the storage can change (FORMAT.md section 2)."""

    def __init__(self, state: Path):
        self.state = Path(state)
        self._files: dict[str, dict[str, str]] = {}

    def _path(self, url: str) -> Path:
        return replica_dir(self.state, url) / "bundles.json"

    def ids(self, url: str) -> dict[str, str]:
        """name -> bundle id seen on the replica at `url`."""
        if url not in self._files:
            path = self._path(url)
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                raw = {}
            except (ValueError, OSError) as e:
                raise CorruptData(f"{path}: unreadable local audit state ({e}); it lists the "
                                  "bundles this replica must hold, so it is not ignored") from None
            self._files[url] = {k: v for k, v in raw.items() if isinstance(v, str)} \
                if isinstance(raw, dict) else {}  # fmt: skip
        return self._files[url]

    def saw(self, url: str, name: str, bundle_id: str) -> None:
        self.ids(url).setdefault(name, bundle_id)

    def forget(self, url: str, bundle_id: str) -> None:
        """After a signed retirement (archive/retire.py), never on a replica's say-so."""
        ids = self.ids(url)
        for n in [n for n, b in ids.items() if b == bundle_id]:
            del ids[n]

    def save(self) -> None:
        for url, ids in self._files.items():
            path = self._path(url)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(ids, indent=1, sort_keys=True))
            os.replace(tmp, path)


HOLDS_ALL = ("primary", "mirror")  # roles that hold every bundle; an escrow replica holds some


def committed_names(store: Store, trusted: list[PublicKey]) -> dict[str, str]:
    """name -> id of the bundles on a replica whose manifests verify against `trusted`."""
    v, out = Vault(store), {}
    for n in store.list_dirs(BUNDLES):
        if name_ok(n) and v.is_committed(n):
            try:
                out[n] = v.load_exact(n, trusted).bundle_id
            except WeightvaultError:
                continue
    return out


def expected_holdings(stores: dict[str, tuple[str, Store]], trusted: list[PublicKey],
                      known: Known) -> dict[str, dict[str, str | None]]:  # fmt: skip
    """replica -> {bundle name: id} that it must hold: on a replica holding everything (role
    primary or mirror), every bundle committed on any reachable replica and every bundle the
    local state has seen on any of them; on another (escrow), what the state saw on it. Less,
    on each replica, the bundles a trusted key retired there (a signed notice, FORMAT.md
    section 2.4): only a signature makes an absence legitimate."""
    from weightvault.archive.retire import retired_ids

    everything: dict[str, str | None] = {}
    for _role, st in stores.values():
        for n, bid in known.ids(st.url).items():
            everything.setdefault(n, bid)
    for _role, st in stores.values():
        try:
            for n, bid in committed_names(st, trusted).items():
                everything.setdefault(n, bid)
        except StorageError:
            continue  # reported when that replica itself is audited
    out = {}
    for n, (role, st) in stores.items():
        try:
            gone = retired_ids(st, trusted, n)
        except StorageError:
            gone = {}
        held = everything if role in HOLDS_ALL else known.ids(st.url)
        out[n] = {b: i for b, i in held.items() if i not in gone}
    return out


def remember(known: Known, audits: list[ReplicaAudit]) -> None:
    for a in audits:
        for b in a.bundles:
            if b["bundle"] and b["state"] in ("intact", "damaged"):
                known.saw(a.url, b["name"], b["bundle"])
    known.save()


def _key(obj: str, store: Store) -> str:
    """An audit names objects by full URL in tag problems; reduce to the store key."""
    root = store.url.rstrip("/") + "/"
    return obj[len(root) :] if obj.startswith(root) else obj


def _files_using(stores, bname: str, suspects: set[str], trusted) -> list[str]:
    for _n, s in stores:
        try:
            m = Vault(s).load(bname, trusted).manifest
        except WeightvaultError:
            continue
        names = {k.rsplit("/", 1)[-1] for k in suspects}
        return sorted({f["path"] for f in m.files for c in f["chunks"] if c["object"] in names}
                      | {r["path"] for r in m.plain_files if f"data/{r['path']}" in
                         {k.split(f"{prefix(bname)}/", 1)[-1] for k in suspects}})  # fmt: skip
    return []


def cross_check(results: dict[str, dict[str, str | None]]) -> list[str]:
    """replica -> bundle name -> id: a replica holding a different manifest for a name."""
    problems = []
    names = {n for per in results.values() for n in per}
    for n in sorted(names):
        ids = {r: per[n] for r, per in results.items() if per.get(n)}
        if len(set(ids.values())) > 1:
            counts: dict[str, int] = {}
            for v in ids.values():
                counts[v] = counts.get(v, 0) + 1
            majority = max(counts, key=counts.get)
            for r, v in ids.items():
                if v != majority:
                    problems.append(f"replica {r} holds a different manifest for bundle {n} "
                                    f"({v[:16]}, the others hold {majority[:16]})")  # fmt: skip
    return problems
