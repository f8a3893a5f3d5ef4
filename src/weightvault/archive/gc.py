"""Garbage collection: remove what interrupted writes left behind, and nothing else.

A seal writes its objects first and commits the bundle last (docs/FORMAT.md section 2.1), so a
crash, a kill or a full disk leaves *orphans*: files under `bundles/NAME/` of a NAME that was
never committed, `tmp/*.part` scratch files, and, rarely, files in a committed bundle's
`data/objects/`, `data/record/` or `data/keys/` that its manifest does not name (a seal of the
same name that lost a race). gc finds them and, unless asked for a dry run, removes them.

It never removes:
- anything a committed manifest names (the manifest is read only after its signature verifies
  against a trusted key; a bundle whose manifest cannot be trusted is left whole);
- anything younger than the grace period (default 24 h): a seal in progress writes its objects
  long before it commits. An uncommitted bundle is kept whole while any file in it is younger
  than the grace period, since a seal that runs for more than a day still writes new objects;
- an object on an S3 replica whose Object Lock retention may still be in force (deleting it
  would only hide it behind a delete marker): from the replica's `object_lock` (last-modified
  + days) and, on a bucket with Object Lock, the object's own retention and legal hold;
- tag files, manifests, `audits/`, `custody/`, lock files, or anything outside `bundles/` and
  `tmp/`.

gc never runs by itself: a person runs it (docs/OPERATIONS.md section 4).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field

from weightvault.archive.spill import KeySet
from weightvault.errors import InputError, StorageError, WeightvaultError
from weightvault.format import bag
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import MANIFEST_KEY, SIGNATURE_KEY
from weightvault.format.paths import name_ok
from weightvault.progress import human_size as _size
from weightvault.storage.store import TMP, Store
from weightvault.storage.vault import BUNDLES, POOL, Vault, object_key, prefix

DEFAULT_GRACE = 24 * 3600.0
SWEPT = ("data/objects/", "data/record/", "data/keys/")  # of a committed bundle
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"^[0-9a-f]+\.part$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_duration(text: str) -> float:
    """'24h', '90m', '7d', '1h30m', '2w', '0' or plain seconds -> seconds."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise InputError(f"--grace {text!r}: expected a duration such as 24h, 90m, 7d or 0")
    return float(sum(float(n) * _UNITS[u] for n, u in parts))


def _human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass
class Orphan:
    key: str
    size: int
    reason: str  # why it is an orphan
    age: float | None  # seconds since last modified, None if the backend does not say
    kept: str = ""  # why it stays anyway (grace period, Object Lock, commit in progress)

    def as_dict(self) -> dict:
        d = {"key": self.key, "size": self.size, "reason": self.reason,
             "age_seconds": None if self.age is None else round(self.age, 3)}  # fmt: skip
        if self.kept:
            d["kept"] = self.kept
        return d


@dataclass
class GcResult:
    replica: str
    url: str
    dry_run: bool
    grace: float
    removed: list[Orphan] = field(default_factory=list)  # removed, or would be (dry run)
    kept: list[Orphan] = field(default_factory=list)  # orphans that stay, each saying why
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_removed(self) -> int:
        return sum(o.size for o in self.removed)

    def as_dict(self) -> dict:
        return {"replica": self.replica, "url": self.url, "dry_run": self.dry_run,
                "grace_seconds": self.grace, "files": len(self.removed),
                "bytes": self.bytes_removed, "removed": [o.as_dict() for o in self.removed],
                "kept": [o.as_dict() for o in self.kept], "notes": self.notes}  # fmt: skip


def referenced(doc: dict) -> set[str]:
    """Paths relative to a bundle's root that its manifest names in `objects`, `record` or
    `encryption`: every string in the latter two counts as a path under data/ (when in doubt,
    keep)."""
    out = {f"data/objects/{o['name']}" for o in doc.get("objects") or []}

    def walk(v) -> None:
        if isinstance(v, str):
            out.add(f"data/{v}")
            out.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc.get("record"))
    walk(doc.get("encryption"))
    return out


def gc(
    name: str,
    store: Store,
    *,
    trusted: list[PublicKey],
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    object_lock=None,
    now: float | None = None,
    protect: set[str] = frozenset(),
) -> GcResult:
    """Find (and unless `dry_run`, remove) the orphans on one replica. `object_lock` is the
    replica's configured config.ObjectLock, if any. `protect`: bundle names known to be
    committed (on another replica, or by the local audit state): never debris here."""
    if grace < 0:
        raise InputError("the grace period cannot be negative")
    # exclusive: no seal, amend or replicate that may reuse a pooled object is between
    # deciding to reuse it and committing (FORMAT.md section 2.2)
    with store.pool_lock(shared=False), _PoolRefs() as pool:
        return _gc(name, store, pool, trusted=trusted, grace=grace, dry_run=dry_run,
                   object_lock=object_lock, now=now, protect=protect)  # fmt: skip


def _gc(name: str, store: Store, pool: _PoolRefs, *, trusted: list[PublicKey], grace: float,
        dry_run: bool, object_lock, now: float | None, protect: set[str]) -> GcResult:  # fmt: skip
    t = time.time() if now is None else now
    res = GcResult(name, store.url, dry_run, grace)
    vault = _Listed(store)

    def age(mtime: float | None) -> float | None:
        return None if mtime is None else max(0.0, t - mtime)

    def young(a: float | None) -> bool:
        # unknown age: treat as new (keep), unless the user asked for no grace at all
        return (a is None and grace > 0) or (a is not None and a < grace)

    grace_note = f"younger than the grace period ({_human_duration(grace)})"
    uncommitted: dict[str, list[Orphan]] = {}
    loose: list[Orphan] = []  # orphans inside committed bundles, and scratch files
    listing = store.list_times(BUNDLES)
    by_name: dict[str, dict[str, tuple[int, float | None]]] = {}
    for key, st in listing.items():
        parts = key.split("/")
        if len(parts) >= 3:
            by_name.setdefault(parts[1], {})[key] = st
    for bname in store.list_dirs(BUNDLES):
        by_name.setdefault(bname, {})
    vault.listed = [n for n, fs in by_name.items()
                    if name_ok(n) and (f"{prefix(n)}/{SIGNATURE_KEY}" in fs
                                       or f"{prefix(n)}/{MANIFEST_KEY}" in fs)]  # fmt: skip
    for bname in sorted(set(protect) - set(by_name)):
        # lost here, so what it names is unknown here: its objects may be all that is left
        pool.block(f"bundle {bname} is committed elsewhere but absent here")
    for bname, files in sorted(by_name.items()):
        p = prefix(bname)
        if not name_ok(bname):
            res.notes.append(f"{store.describe(p)}: not a valid bundle name; left alone")
            pool.block(f"{store.describe(p)} is not a bundle gc can read")
            continue
        if f"{p}/{MANIFEST_KEY}" in files and (f"{p}/{SIGNATURE_KEY}" in files
                                               or bname in protect):
            pool.count(vault, bname, trusted)
        elif f"{p}/{MANIFEST_KEY}" in files:
            pool.unsigned(store, bname)
        elif bname in protect:
            pool.block(f"bundle {bname} is committed elsewhere but its manifest is not here")
        signed = f"{p}/{SIGNATURE_KEY}" in files
        if f"{p}/{bag.COMMIT_MARKER}" not in files and (signed or bname in protect):
            # The writer signs only after every object is stored, and a signature (or a
            # bundle known committed elsewhere) outweighs a missing marker: whoever holds the
            # storage can delete a tag file. Left whole; audit reports it, repair completes it.
            why = ("its manifest is signed" if signed else
                   "it is committed on another replica or known to the local audit state")
            res.notes.append(f"bundle {bname}: commit marker missing but {why}; nothing in it "
                             "is removed (run `weightvault audit` and `weightvault repair`)")
            continue
        legacy = any(k.startswith(f"{p}/data/objects/") for k in files)
        if not signed and bname not in protect and (
                f"{p}/{bag.COMMIT_MARKER}" not in files or not legacy):
            # No signature: an interrupted write. From version 4 the signature is the last file
            # written, so a tag manifest without one is a seal killed just before it signed;
            # a version 1-3 bundle (its objects in its own bag) wrote its signature before its
            # tag manifest, so there a tag manifest without one means a deleted signature:
            # damage, left whole (below).
            found = [Orphan(k, s, f"interrupted seal or replicate of {bname!r} (never committed)",
                            age(m)) for k, (s, m) in sorted(files.items())]  # fmt: skip
            fresh = [o for o in found if young(o.age)]
            if fresh:
                why = (f"uncommitted bundle {bname!r} has files {grace_note}; a seal or "
                       "replicate may still be writing it")  # fmt: skip
                for o in found:
                    o.kept = why
                res.kept += found
            else:
                uncommitted[bname] = found
            continue
        try:
            b = vault.load(bname, trusted)
        except (WeightvaultError, OSError) as e:
            if isinstance(e, StorageError):
                raise
            res.notes.append(f"bundle {bname}: its manifest cannot be trusted, so nothing in it "
                             f"is removed ({e})")  # fmt: skip
            continue
        named = referenced(b.manifest.doc)
        for key, (size, mtime) in sorted(files.items()):
            rel = key[len(p) + 1 :]
            if not rel.startswith(SWEPT) or rel in named:
                continue
            o = Orphan(key, size, f"in committed bundle {bname!r} but not named by its "
                       "signed manifest", age(mtime))  # fmt: skip
            if young(o.age):
                o.kept = grace_note
                res.kept.append(o)
            else:
                loose.append(o)
    pool.settle(uncommitted)
    unnamed: set[str] = set()  # a key may come twice (a listing retried part way): once here
    for key, size, mtime in store.iter_times(POOL):  # streamed: the pool is never held whole
        if key in unnamed or not _HEX64.match(key.rsplit("/", 1)[-1]) or key in pool.named:
            continue
        unnamed.add(key)
        if key in pool.held:
            res.kept.append(Orphan(key, size, "in the object pool, named by no signed manifest",
                                   age(mtime), kept="named by the unsigned manifest of an "
                                   "interrupted seal that is kept"))  # fmt: skip
            continue
        if pool.blocked:
            res.kept.append(Orphan(key, size, "in the object pool, named by no signed manifest "
                                   "gc could read", age(mtime), kept=pool.blocked[0]))  # fmt: skip
            continue
        o = Orphan(key, size, "in the object pool but named by no committed bundle's signed "
                   "manifest", age(mtime))  # fmt: skip
        if young(o.age):
            o.kept = grace_note
            res.kept.append(o)
        else:
            loose.append(o)
    if pool.blocked:
        res.notes.append(f"no pool object removed: {pool.blocked[0]}")
    for key, (size, mtime) in store.list_times(TMP).items():
        if not _PART.match(key.rsplit("/", 1)[-1]):
            continue  # lock files and anything unknown stay
        o = Orphan(key, size, "scratch file of an interrupted write", age(mtime))
        if young(o.age):
            o.kept = grace_note
            res.kept.append(o)
        else:
            loose.append(o)

    _apply_object_lock(store, object_lock, t, uncommitted, loose, res)

    if not dry_run:
        for bname, found in sorted(uncommitted.items()):
            with store.lock(f"commit-{bname}"):  # a local seal cannot commit meanwhile
                # look again: a seal of this name may have started since the listing
                again = store.list_times(prefix(bname))
                was = {o.key: (o.size, o.age) for o in found}
                moved = vault.is_committed(bname) or any(
                    k not in was or s != was[k][0] or young(age(m)) for k, (s, m) in again.items())  # fmt: skip
                if moved:
                    res.notes.append(f"bundle {bname} was written to while gc ran; left alone")
                    for o in found:
                        o.kept = "its bundle was written to while gc ran"
                    res.kept += found
                    continue
                for o in found:
                    store.delete(o.key)
                store.prune_dirs(prefix(bname))
            res.removed += found
        gone = {o.key for o in res.removed}
        if any(o.key.startswith(f"{POOL}/") for o in loose) and _bundles_moved(
                store, {k: v for k, v in listing.items() if k not in gone}):  # fmt: skip
            # a seal, amend or replicate this lock cannot see (another machine) may be about
            # to name one of them: keep every pool object this run
            why = "bundles were written to while gc ran; pool objects are removed by a later run"
            res.notes.append(why)
            for o in [o for o in loose if o.key.startswith(f"{POOL}/")]:
                o.kept = why
                res.kept.append(o)
                loose.remove(o)
        for o in loose:
            store.delete(o.key)
            res.removed.append(o)
    else:
        res.removed = [o for found in uncommitted.values() for o in found] + loose
    res.removed.sort(key=lambda o: o.key)
    res.kept.sort(key=lambda o: o.key)
    return res


def _bundles_moved(store: Store, listing: dict) -> bool:
    """Anything under bundles/ created, grown or removed since gc's listing?"""
    again = store.list_times(BUNDLES)
    return again.keys() != listing.keys() or any(
        again[k][0] != listing[k][0] for k in again)  # fmt: skip


class _PoolRefs:
    """The pool objects that signed manifests name. Counting comes from manifests whose
    signature verified with a trusted key only, and never from absence: if any bundle on the
    replica cannot be read and verified, no pool object is removed (`blocked` says why)."""

    def __init__(self) -> None:
        self.named = KeySet()  # on disk: 15 million keys at 1 PB
        self.blocked: list[str] = []
        self.soft: dict[str, set[str]] = {}  # unsigned manifests of interrupted seals

    def __enter__(self) -> _PoolRefs:
        return self

    def __exit__(self, *exc) -> None:
        self.named.close()

    def unsigned(self, store: Store, bname: str) -> None:
        """An interrupted seal's manifest, never signed: it commits nothing, but a seal that is
        still running may be about to sign it, so what it names is kept unless this run
        removes the bundle itself (`settle`). Unparseable: nothing is removed."""
        from weightvault.format.manifest import MAX_MANIFEST, Manifest

        key = f"{prefix(bname)}/{MANIFEST_KEY}"
        try:
            m = Manifest.parse(store.read_bytes(key, MAX_MANIFEST), store.describe(key))
        except (WeightvaultError, OSError) as e:
            self.block(f"bundle {bname}: its unsigned manifest cannot be read ({e})")
            return
        self.soft[bname] = {object_key(m, o["name"]) for o in m.doc["objects"]} if m.pooled \
            else set()  # fmt: skip

    def settle(self, removed: dict) -> None:
        """What the unsigned manifests of bundles this run does not remove name is kept."""
        self.held = set()
        for bname, names in self.soft.items():
            if bname not in removed:
                self.held |= names

    def block(self, why: str) -> None:
        self.blocked.append(why)

    def count(self, vault: Vault, bname: str, trusted: list[PublicKey]) -> None:
        try:
            m = vault.load_exact(bname, trusted).manifest
        except (WeightvaultError, OSError) as e:
            self.block(f"bundle {bname}: its manifest cannot be read and verified ({e})")
            return
        if m.pooled:
            self.named.update(object_key(m, o["name"]) for o in m.doc["objects"])


class _Listed(Vault):
    """A vault whose committed names come from gc's one listing (Vault.load resolves a name
    against names(), which would otherwise ask the store about every bundle, every time)."""

    listed: list[str] = []

    def names(self) -> list[str]:
        return self.listed


def _apply_object_lock(store: Store, object_lock, t: float, uncommitted: dict,
                       loose: list, res: GcResult) -> None:  # fmt: skip
    """Move every candidate whose Object Lock retention may still be in force to `kept`."""
    lock_state = getattr(store, "lock_state", None)
    if lock_state is None:
        return
    by_config = object_lock is not None
    by_bucket = by_config or store.lock_enabled()
    if not by_bucket:
        return
    now = dt.datetime.fromtimestamp(t, dt.UTC)

    def held(o: Orphan) -> str:
        if by_config and (o.age is None or o.age < object_lock.days * 86400):
            until = "unknown" if o.age is None else (
                now + dt.timedelta(seconds=object_lock.days * 86400 - o.age)).strftime("%Y-%m-%d %H:%M UTC")  # fmt: skip
            return (f"Object Lock: the replica's {object_lock.mode} retention of "
                    f"{object_lock.days} days may be in force until {until}")  # fmt: skip
        state = lock_state(o.key)
        if state is None:
            return ""
        until, legal_hold = state
        if legal_hold:
            return "Object Lock: the object is under legal hold"
        if until is not None and until > now:
            return f"Object Lock: retained until {until.strftime('%Y-%m-%d %H:%M UTC')}"
        return ""

    skipped = 0
    for bname in list(uncommitted):
        found = uncommitted[bname]
        reasons = [held(o) for o in found]
        if any(reasons):
            # a bundle's orphans go together or not at all, so a later run sees them all
            for o, r in zip(found, reasons, strict=True):
                o.kept = r or "another object of this uncommitted bundle is under Object Lock"
            res.kept += found
            skipped += len(found)
            del uncommitted[bname]
    for o in list(loose):
        if r := held(o):
            o.kept = r
            res.kept.append(o)
            loose.remove(o)
            skipped += 1
    if skipped:
        res.notes.append(f"{skipped} orphaned objects are under Object Lock and were skipped; "
                         "run gc again after their retention ends")  # fmt: skip


def summary(r: GcResult) -> list[str]:
    """Human lines for one replica."""
    verb = "would remove" if r.dry_run else "removed"
    lines = [f"{r.replica}: {verb} {len(r.removed)} files, {_size(r.bytes_removed)}"
             + (f"; kept {len(r.kept)} orphans" if r.kept else "")]  # fmt: skip
    lines += [f"  {verb}: {o.key} ({_size(o.size)}): {o.reason}" for o in r.removed]
    lines += [f"  kept: {o.key} ({_size(o.size)}): {o.kept}" for o in r.kept]
    lines += [f"  note: {n}" for n in r.notes]
    return lines
