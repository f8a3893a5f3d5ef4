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
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive.auditlog import Chain, Verified, now, replica_dir, tool
from weightvault.archive.pipeline import run
from weightvault.archive.replicate import ReplicateResult, replicate
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
               trusted: list[PublicKey], level: str, failures: list[dict],
               pool: dict[str, dict[str, int]], seen: set[str],
               ) -> tuple[list[Target], str, str | None]:  # fmt: skip
    """Check one bundle's files against its signed manifest without reading payload (full
    level: tag file bytes too). Appends what is wrong to `failures`; returns the objects to
    hash, the bundle's state and its id. `pool`: the vault's object pool listing, filled on
    first use; `seen`: keys an earlier bundle of this audit already accounts for."""
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
        if "" not in pool:
            pool[""] = store.list(POOL)  # once per replica, whatever the number of versions
        listing = {**listing, **pool[""]}
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


@dataclass
class ReplicaAudit:
    replica: str
    url: str
    level: str
    outcome: str = "pass"
    record: dict = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict:
        return {"replica": self.replica, "url": self.url, "level": self.level,
                "outcome": self.outcome, "error": self.error, "record": self.record}  # fmt: skip


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


def audit_replica(
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
    failures: list[dict] = []
    transient: list[dict] = []
    bundles: list[dict] = []
    targets: list[Target] = []
    checked = 0
    unverifiable = 0  # metadata level: objects the server kept no usable checksum of
    listed = set(store.list_dirs(BUNDLES))  # fails only when the replica cannot be listed
    expected = dict(expected or {})
    pool: dict[str, dict[str, int]] = {}  # the pool's listing, read once per replica
    seen: set[str] = set()  # an object several versions share is one target
    for bname in sorted(listed | set(expected)):
        before_n = len(failures)
        try:
            mine, state, bid = _inventory(vault, bname, bname in expected, expected.get(bname),
                                          trusted, level, failures, pool, seen)  # fmt: skip
        except StorageError as e:
            store.list_dirs(BUNDLES)  # the replica itself gone: unreachable, not damage
            mine, state, bid = [], "unreadable", expected.get(bname)
            failures.append(_failure(None, "unreadable", "readable files", str(e),
                                     obj=prefix(bname), bundle=bname))  # fmt: skip
        checked += sum(1 for t in mine if t.server_verified)
        unverifiable += sum(1 for t in mine if t.server_verified is False)
        bad = {f["object"] for f in failures[before_n:]}
        targets += [t for t in mine if t.key not in bad and t.key not in seen]
        seen.update(t.key for t in mine)
        if state == "intact" and len(failures) > before_n:
            state = "damaged"
        bundles.append({"name": bname, "bundle": bid, "state": state})
    # choose what to hash
    if level == "full":
        to_hash = targets
    elif level == "sample":
        to_hash = _sample(targets, verified, t0, cycle_days or 90, interval_days,
                          chain.head())  # fmt: skip
    else:
        to_hash = []
    if executor is not None and executor.distributed and to_hash:
        from weightvault.archive.distributed import hash_on_cluster

        results = hash_on_cluster(executor, store, to_hash, workers)
    else:
        results = run(to_hash, lambda t, _e: _hash_check(store, t), workers=workers)
    reread = 0
    for t, f in zip(to_hash, results, strict=True):
        checked += 1
        if f is None:
            verified.mark(t.key, t0)
            continue
        mark = store.counters.payload_read
        again = _hash_check(store, t)  # a transient bad read is not rot
        reread += store.counters.payload_read - mark  # not counted: the replica is read once
        if again is None:
            transient.append(f)
            verified.mark(t.key, t0)
        else:
            failures.append(again)
    for f in failures:
        for b in bundles:
            if b["name"] == f["bundle"] and b["state"] == "intact":
                b["state"] = "damaged"
    verified.save()
    cycle = cycle_days or 90
    all_keys = [t.key for t in targets]
    ages = [verified.age(k, t0) for k in all_keys]
    coverage = {
        "cycle_days": cycle_days if level == "sample" else None,
        "objects": len(all_keys),
        "verified_within_cycle": sum(1 for a in ages if a is not None and a <= cycle * DAY),
        "oldest_age_seconds": None if any(a is None for a in ages) or not ages
        else int(max(ages)),
    }  # fmt: skip
    record = {
        "format": "weightvault-audit", "format_version": 1,
        "eventType": "fixity check", "eventDateTime": started, "ended": now(),
        "eventOutcome": "fail" if failures else "pass",
        "replica": {"name": name, "url": store.url}, "level": level,
        "agent": {"tool": tool(), "key": key.public.key_id},
        "objects_checked": checked, "bytes_read": store.counters.payload_read - before - reread,
        "objects_unverifiable": unverifiable,
        "bundles": bundles, "failures": failures, "transient": transient, "repairs": [],
        "coverage": coverage,
    }  # fmt: skip
    entry = chain.append(record, key)
    return ReplicaAudit(name, store.url, level, record["eventOutcome"], entry.record)


def _sample(targets: list[Target], verified: Verified, at: float, cycle_days: int,
            interval_days: float | None, head) -> list[Target]:  # fmt: skip
    """Least recently verified first, enough bytes that the whole replica is re-hashed once
    per cycle at this schedule; anything that would be overdue by the next run is included."""
    if interval_days is None:
        last = None
        if head is not None and head.record["level"] == "sample":
            last = time.mktime(time.strptime(head.record["eventDateTime"], "%Y-%m-%dT%H:%M:%SZ"))
            last -= time.timezone
        interval_days = max((at - last) / DAY, 1 / 24) if last else 1.0
    interval = min(interval_days, cycle_days) * DAY
    cycle = cycle_days * DAY
    total = sum(t.size for t in targets)
    budget = total * interval / cycle

    def age(t: Target) -> float:
        a = verified.age(t.key, at)
        return float("inf") if a is None else a

    chosen, spent = [], 0
    for t in sorted(targets, key=age, reverse=True):
        # never hashed by an audit here: first in line, but within the budget (it was checked
        # when written), so a new replica's first cycle is spread like any other
        overdue = age(t) != float("inf") and age(t) + interval > cycle
        if spent >= budget and not overdue:
            break
        chosen.append(t)
        spent += t.size
    return chosen


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
    if fixity is None or not fixity["failures"]:
        return ReplicaAudit(name, store.url, "repair", "pass"), []
    by_bundle: dict[str, set[str]] = {}
    for f in fixity["failures"]:
        by_bundle.setdefault(f["bundle"], set()).add(f["object"])
    repairs, lost = [], []
    for bname, suspects in sorted(by_bundle.items()):
        ok_sources = [s for _n, s in sources if _holds(s, bname, trusted)]
        try:
            if not ok_sources:
                raise IntegrityError(f"no other replica holds bundle {bname}")
            r: ReplicateResult = replicate(ok_sources, store, bname, trusted, workers=workers,
                                           suspect={_key(s, store) for s in suspects})  # fmt: skip
            done = {e.key: e for e in r.events}
            for obj in sorted(suspects):
                k = _key(obj, store)
                e = done.get(k)
                detail = f"copied from {e.source}" if e else "verified in place on re-check"
                repairs.append({"object": obj, "bundle": bname, "outcome": "repaired",
                                "detail": detail})  # fmt: skip
        except WeightvaultError as e:
            files = _files_using(sources + [(name, store)], bname, suspects, trusted)
            msg = (f"bundle {bname}: NO HEALTHY COPY of {len(suspects)} object(s) on any replica; "
                   f"these files cannot be restored: {', '.join(files) or 'unknown'} ({e})")  # fmt: skip
            lost.append(msg)
            for obj in sorted(suspects):
                repairs.append({"object": obj, "bundle": bname, "outcome": "unrepairable",
                                "detail": str(e)[:4000]})  # fmt: skip
    record = {
        "format": "weightvault-audit", "format_version": 1,
        "eventType": "replication", "eventDateTime": started, "ended": now(),
        "eventOutcome": "fail" if lost else "pass",
        "replica": {"name": name, "url": store.url}, "level": "repair",
        "agent": {"tool": tool(), "key": key.public.key_id},
        "objects_checked": len(repairs), "bytes_read": 0, "bundles": [],
        "failures": [], "transient": [], "repairs": repairs,
        "coverage": {"cycle_days": None, "objects": 0, "verified_within_cycle": 0,
                     "oldest_age_seconds": None},
    }  # fmt: skip
    entry = chain.append(record, key)
    return ReplicaAudit(name, store.url, "repair", record["eventOutcome"], entry.record), lost


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
        for b in a.record.get("bundles", []):
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
