"""Copy a bundle to another replica: only what is missing, each object checked, manifest last.

An interrupted replicate leaves the target without a commit marker; running it again skips
every object already there and finishes. Objects are copied from the first source that holds a
good copy, so one damaged source does not stop the copy (the same routine repairs damage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from weightvault.archive.pipeline import run
from weightvault.archive.verify import check_bag
from weightvault.errors import Conflict, IntegrityError, StorageError, TrustError
from weightvault.format import bag, canon
from weightvault.format.fixity import Fixity
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import MANIFEST_KEY, MAX_MANIFEST, SIGNATURE_KEY
from weightvault.storage.store import Store
from weightvault.storage.vault import (
    MAX_SIG,
    Bundle,
    Vault,
    commit_files,
    object_key,
    pool_sizes,
    prefix,
)


@dataclass
class CopyEvent:
    key: str
    action: str  # copied | replaced
    source: str
    reason: str = ""

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class ReplicateResult:
    bundle: str
    name: str
    target: str
    objects: int = 0
    present: int = 0
    copied: int = 0
    bytes_copied: int = 0
    committed_now: bool = False
    events: list[CopyEvent] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "events"}
        d["events"] = [e.as_dict() for e in self.events]
        return d


def copy_object(sources: list[Store], dst: Store, key: str, sha256: str, size: int,
                sha512: str | None = None) -> str:  # fmt: skip
    """Copy one object from the first source whose bytes match `sha256`; the copy is checked
    (read back, or by the server) before it replaces anything. Returns the source used."""
    problems = []
    for src in sources:
        try:
            f = src.open_read(key)
        except StorageError as e:
            problems.append(str(e))
            continue
        got = Fixity(sha512 is not None)
        with f, dst.new_object() as w:
            try:
                while data := f.read(1 << 20):
                    got.update(data)
                    w.write(data)
            except StorageError as e:
                problems.append(str(e))
                continue
            if got.difference(size, sha256, sha512):
                problems.append(f"{src.describe(key)}: damaged (sha256 {got.sha256}, "
                                f"{got.size} bytes)")  # fmt: skip
                continue
            w.commit(key, sha256=sha256)
            return src.url
    raise IntegrityError(f"{dst.describe(key)}: no good copy to copy from ({'; '.join(problems)})")


def replicate(
    sources: list[Store],
    dst: Store,
    ref: str,
    trusted: list[PublicKey],
    *,
    insecure: bool = False,
    verify_existing: bool = False,
    suspect: set[str] = frozenset(),
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    bundle: Bundle | None = None,
    executor=None,
) -> ReplicateResult:
    """`suspect`: keys to re-hash on the target whatever their size (an audit flagged them)."""
    src_vault = Vault(sources[0])
    b = bundle or src_vault.load(ref, trusted, insecure=insecure)
    with dst.pool_lock(shared=True):  # gc on the target keeps what this copy counts as present
        return _replicate(sources, dst, src_vault, b, verify_existing=verify_existing,
                          suspect=suspect, workers=workers, on_bytes=on_bytes,
                          executor=executor)  # fmt: skip


def _replicate(sources: list[Store], dst: Store, src_vault: Vault, b: Bundle, *,
               verify_existing: bool, suspect: set[str], workers: int | None,
               on_bytes: Callable[[int], None] | None, executor) -> ReplicateResult:  # fmt: skip
    m, name = b.manifest, b.manifest.name
    if m.pooled:
        # Every tag file follows from the manifest and the signature (FORMAT.md section 3):
        # the copy writes those bytes, never what the source happens to hold.
        sig_raw = sources[0].read_bytes(f"{prefix(name)}/{SIGNATURE_KEY}", MAX_SIG)
        if b.signature is not None and canon.parse(sig_raw, "signature") != b.signature:
            raise IntegrityError(f"{sources[0].describe(prefix(name))}: signature changed "
                                 "while reading")  # fmt: skip
        files = commit_files(m, sig_raw)
    else:
        problems = check_bag(src_vault, b)
        if problems:
            raise IntegrityError(f"source {sources[0].url}: bundle {name} is damaged, not "
                                 f"copying its tag files: {problems[0]}")  # fmt: skip
        files = src_vault.read_commit_files(m)
        if files[0][1] != m.raw:
            raise IntegrityError(f"{sources[0].describe(prefix(name))}: manifest changed while "
                                 "reading")  # fmt: skip
    dv = Vault(dst)
    result = ReplicateResult(m.bundle_id, name, dst.url, objects=len(m.doc["objects"]))
    committed = dv.is_committed(name)
    mkey = f"{prefix(name)}/{MANIFEST_KEY}"
    if dv.is_committed(name) and dst.exists(mkey):
        theirs = dst.read_bytes(mkey, MAX_MANIFEST)
        if theirs != m.raw:
            their_id = hashlib.sha256(theirs).hexdigest()
            raise Conflict(f"{dst.describe(prefix(name))}: holds a different bundle under the "
                           f"name {name!r} ({their_id[:16]}, not {m.bundle_id[:16]})")  # fmt: skip
    listing = dst.list(f"{prefix(name)}/data")
    wanted = [(object_key(m, o["name"]), o["name"], o["size"], o.get("sha512"))
              for o in m.doc["objects"]]  # fmt: skip
    if m.pooled:
        listing.update(pool_sizes(dst, [w[0] for w in wanted]))
    wanted += [(f"{prefix(name)}/data/{r['path']}", r["sha256"], r["size"], r.get("sha512"))
               for r in m.plain_files]  # fmt: skip
    if executor is not None and executor.distributed and wanted:
        from weightvault.archive.distributed import copy_on_cluster

        events = copy_on_cluster(executor, sources, dst, [
            (item, listing.get(item[0]), verify_existing or item[0] in suspect)
            for item in wanted], workers, on_bytes)  # fmt: skip
    else:
        events = run(wanted, lambda item, _e: copy_if_needed(
            sources, dst, item, listing.get(item[0]), verify_existing or item[0] in suspect,
            on_bytes), workers=workers)  # fmt: skip
    for e, item in zip(events, wanted, strict=True):
        if e is None:
            result.present += 1
        else:
            result.events.append(e)
            result.copied += 1
            result.bytes_copied += item[2]
    if not committed:
        dv.commit(name, files)
        result.committed_now = True
    else:  # damaged or missing tag files of a committed bundle: rewrite from the good source
        for k, data in files:
            key = f"{prefix(name)}/{k}"
            try:
                same = dst.read_bytes(key, len(data) + 1) == data
            except StorageError:
                same = False
            if not same:
                dst.put_bytes(key, data)
                result.events.append(CopyEvent(key, "replaced", sources[0].url, "tag file"))
    return result


def copy_if_needed(sources: list[Store], dst: Store, item: tuple, listed: int | None,
                   verify: bool, on_bytes: Callable[[int], None] | None = None) -> CopyEvent | None:  # fmt: skip
    """Copy one wanted (key, sha256, size, sha512) unless the target already holds it intact:
    `listed` is its size in the target's listing (None: absent); `verify` re-hashes it there
    (an S3 target's server checksum is always compared)."""
    key, sha, size, sha512 = item
    why = _need(dst, key, sha, size, listed, verify)
    if why is None:
        return None
    used = copy_object(sources, dst, key, sha, size, sha512)
    if on_bytes:
        on_bytes(size)
    return CopyEvent(key, "copied" if why == "missing" else "replaced", used, why)


def _need(dst: Store, key: str, sha: str, size: int, listed: int | None,
          verify: bool) -> str | None:  # fmt: skip
    if listed is None:
        return "missing"
    if listed != size:
        return f"size {listed}, expected {size}"
    checksum = getattr(dst, "checksum", None)
    if checksum is not None:
        have = checksum(key)
        if have is not None and have != sha:
            return f"server checksum {have} differs"
        if have is None:
            return _hash_differs(dst, key, sha)
    elif verify:
        return _hash_differs(dst, key, sha)
    return None


def _hash_differs(store: Store, key: str, sha: str) -> str | None:
    h = hashlib.sha256()
    with store.open_read(key) as f:
        while data := f.read(1 << 20):
            h.update(data)
    return None if h.hexdigest() == sha else f"stored bytes hash to {h.hexdigest()}"


@dataclass
class BundleState:
    # complete | incomplete | uncommitted | absent | unreachable | conflict | untrusted |
    # committed (present, not verified: no trusted key) | retired (a trusted notice says so)
    state: str
    bundle: str | None = None
    missing: int = 0
    detail: str = ""

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def bundle_state(store: Store, name: str, bundle_id: str | None = None,
                 trusted: list[PublicKey] | None = None) -> BundleState:  # fmt: skip
    """What a replica holds of one bundle, from listings and metadata only (no payload). The
    manifest is parsed only after its signature verifies against `trusted` over its raw bytes
    (an unsigned manifest can be made arbitrarily costly to parse); with no trusted key the
    state comes from the listing alone."""
    p = prefix(name)
    listing = store.list(p)
    if not listing:
        return BundleState("absent")
    if f"{p}/{SIGNATURE_KEY}" not in listing:
        return BundleState("uncommitted", detail="an interrupted seal or replicate")
    if f"{p}/{bag.COMMIT_MARKER}" not in listing:
        # signed after every object was stored: committed, its tag manifest lost since
        return BundleState("incomplete", detail="signed manifest present but tag files "
                           "missing (run `weightvault audit`, then `weightvault repair`)")
    if not trusted:
        return BundleState("committed", detail="not verified: no trusted key given")
    try:
        m = Vault(store).load_exact(name, trusted).manifest
    except TrustError as e:
        return BundleState("untrusted", detail=str(e))
    except Exception as e:  # noqa: BLE001 - any failure here is what status reports
        return BundleState("incomplete", detail=f"manifest unreadable: {e}")
    if bundle_id and m.bundle_id != bundle_id:
        return BundleState("conflict", m.bundle_id, detail="a different bundle under this name")
    missing = 0
    if m.pooled:
        listing = {**listing, **pool_sizes(store, [object_key(m, o["name"])
                                                   for o in m.doc["objects"]])}  # fmt: skip
    for o in m.doc["objects"]:
        if listing.get(object_key(m, o["name"])) != o["size"]:
            missing += 1
    for r in m.plain_files:
        if listing.get(f"{p}/data/{r['path']}") != r["size"]:
            missing += 1
    if missing:
        return BundleState("incomplete", m.bundle_id, missing, f"{missing} objects missing or "
                           "of the wrong size")  # fmt: skip
    return BundleState("complete", m.bundle_id)


def needs_action(row: dict[str, BundleState]) -> bool:
    """Whether a status row (replica -> state of one bundle) is something to act on: damage, a
    conflict, or a committed bundle that a replica lacks. A row where no replica holds the
    bundle committed is only an interrupted seal's files: `gc` removes them, nothing is lost."""
    states = {s.state for s in row.values()} - {"unreachable"}
    if states & {"incomplete", "conflict"}:
        return True
    return "complete" in states and bool(states - {"complete", "retired"})


def status(stores: dict[str, Store | None], errors: dict[str, str],
           trusted: list[PublicKey] | None = None) -> dict[str, dict]:  # fmt: skip
    """bundle name -> replica name -> BundleState."""
    names: set[str] = set()
    for st in stores.values():
        if st is not None:
            names.update(n for n in st.list_dirs("bundles"))
    out: dict[str, dict] = {}
    for n in sorted(names):
        row: dict[str, BundleState] = {}
        ref_id = None
        for rname, st in stores.items():
            if st is None:
                row[rname] = BundleState("unreachable", detail=errors.get(rname, ""))
                continue
            try:
                row[rname] = bundle_state(st, n, ref_id, trusted)
            except StorageError as e:
                row[rname] = BundleState("unreachable", detail=str(e))
            ref_id = ref_id or row[rname].bundle
        out[n] = row
    if trusted:
        _mark_retired(out, stores, trusted)
    return out


def _mark_retired(table: dict[str, dict], stores: dict[str, Store | None],
                  trusted: list[PublicKey]) -> None:  # fmt: skip
    """A bundle absent from a replica that a trusted key retired it from (its signed notice
    there, archive/retire.py) is `retired` there, not something to act on."""
    from weightvault.archive.retire import retired_ids

    for rname, st in stores.items():
        if st is None:
            continue
        for bid, d in retired_ids(st, trusted, rname).items():
            row = table.get(d["name"])
            if row is None or row[rname].state not in ("absent", "uncommitted"):
                continue
            if bid in {s.bundle for s in row.values() if s.bundle}:
                row[rname] = BundleState("retired", bundle=bid, detail=d["reason"])
