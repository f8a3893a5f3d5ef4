"""Versions of one model: lineage, amending the record, diff and standalone export.

From format version 4 every bundle's chunk objects live in the vault's shared pool
(docs/FORMAT.md section 2.2), so a new version that names the same objects costs only what it
adds. A version names the one it supersedes in its signed manifest (`supersedes`); the links
are checked like any other signed statement, never inferred from names or dates.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from weightvault import __version__
from weightvault.errors import CorruptData, InputError, IntegrityError, StorageError
from weightvault.format import canon
from weightvault.format.keys import PublicKey, SigningKey
from weightvault.format.manifest import MANIFEST_KEY, SIGNATURE_KEY, Manifest
from weightvault.format.paths import check_name
from weightvault.storage.store import Store
from weightvault.storage.vault import (
    MAX_SIG,
    Bundle,
    Vault,
    already_sealed,
    commit_files,
    object_key,
    pool_key,
    pool_sizes,
    prefix,
)

# ---------------------------------------------------------------------------------------------
# Lineage


def lineage(vault: Vault, b: Bundle, trusted: list[PublicKey], *, depth: int = 1000) -> dict:
    """The versions before `b` (following each signed `supersedes` link, newest first) and the
    bundles in this vault that name `b` as the version they supersede. A link whose bundle is
    missing or untrusted ends the walk and says so."""
    back: list[dict] = []
    cur, seen = b, {b.bundle_id}
    while (sup := cur.manifest.supersedes) and len(back) < depth:
        entry = {"name": sup["name"], "bundle": sup["bundle"], "state": "ok"}
        back.append(entry)
        try:
            prev = vault.load(sup["name"], trusted)
        except (InputError, CorruptData, IntegrityError, StorageError) as e:
            entry["state"] = f"cannot be read and verified here ({e})"
            break
        except Exception as e:  # noqa: BLE001 - a trust failure ends the walk the same way
            entry["state"] = f"not trusted ({e})"
            break
        if prev.bundle_id != sup["bundle"]:
            entry["state"] = f"a different bundle ({prev.bundle_id[:16]}) has that name here"
            break
        if prev.bundle_id in seen:
            entry["state"] = "a cycle"
            break
        seen.add(prev.bundle_id)
        cur = prev
    forward = []
    for n in vault.names():
        if n == b.name:
            continue
        try:
            other = vault.load(n, trusted)
        except Exception:  # noqa: BLE001 - a bundle that cannot be trusted names nothing
            continue
        sup = other.manifest.supersedes
        if sup and sup["bundle"] == b.bundle_id:
            forward.append({"name": n, "bundle": other.bundle_id})
    return {"supersedes": back, "superseded_by": forward}


# ---------------------------------------------------------------------------------------------
# Amend: a new version with the same weight objects and a changed retirement record


@dataclass
class AmendResult:
    bundle: str
    name: str
    supersedes: str
    record_files: int
    bytes_added: int  # bytes written into the vault: record files, spec copies and bag files
    seconds: float
    format_version: int = 4  # 5: an encrypted version (FORMAT.md 10.8)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def next_name(vault: Vault, base: str) -> str:
    stem, _, tail = base.rpartition(".")
    if not (stem and tail.isdigit()):
        stem = base
    for k in range(2, 100000):
        cand = f"{stem}.{k}"
        if len(cand) <= 128 and not vault.store.list(prefix(cand)):
            return check_name(cand)
    raise InputError(f"no free version name after {base!r}: pass --name")


def amend(store: Store, ref: str, key: SigningKey, trusted: list[PublicKey],
          record: list[tuple[str, Path, str]], *, name: str | None = None,
          unlock=None) -> AmendResult:  # fmt: skip
    """Seal a new version of bundle `ref` that names the same weight objects and carries its
    record files plus `record` ((role, local file, path in the bundle) as a RecordPlan gives;
    a new file replaces one at the same path). The weights are not read: the pool's listing
    shows every object at its signed size, and the new manifest repeats the signed file table.

    An encrypted bundle (format version 5) is opened first with `unlock` (custody.unlock.Keys:
    an identity or shares, the key check run), as `seal --supersedes` opens it: the new
    version keeps the lineage's data key and lineage salt, so it names the same chunk objects,
    and gets what every encrypted seal writes (FORMAT.md 10.8): a new salt, its own private
    section (the same file table, bound to the new name and salt), and the data key wrapped
    anew for the previous version's recipients and split anew among its custodians."""
    from weightvault.archive.seal import (
        _KeyPlan,
        _previous_key,
        _store_plain,
        _store_record_file,
        previous_version,
        sign_and_commit,
        store_spec,
    )

    t0 = time.monotonic()
    vault = Vault(store)
    prev = previous_version(vault, ref, trusted)
    m = prev.manifest
    if not m.pooled:
        raise InputError(f"bundle {prev.name} is of format version {m.version}: its objects are "
                         "not in the vault's pool; seal a new version with --supersedes instead")  # fmt: skip
    if not record:
        raise InputError("nothing to amend: give --interview, --report, --record or --attach")
    keys = None
    if m.encryption is not None:
        from weightvault.format import crypt

        if m.encryption["scheme"] != crypt.SCHEME_LINEAGE:
            raise InputError(f"bundle {prev.name} is encrypted with scheme "
                             f"{m.encryption['scheme']}: its chunk objects are bound to that "
                             "bundle, so no other bundle can name them; seal a new version "
                             "with --supersedes instead")  # fmt: skip
        opened = _previous_key(store, prev, unlock, "amend")  # refuses before any write
        keys = _KeyPlan.new(_same_custody(m.encryption), opened)
        m = opened.manifest  # the file table and source, for the new private section
    new_name = check_name(name) if name else next_name(vault, prev.name)
    if vault.is_committed(new_name):
        raise already_sealed(vault, new_name)
    written: list[str] = []
    with store.pool_lock(shared=True):
        pool = pool_sizes(store, [pool_key(o["name"]) for o in m.doc["objects"]])
        for o in m.doc["objects"]:
            have = pool.get(pool_key(o["name"]))
            if have != o["size"]:
                got = "missing" if have is None else f"{have} bytes, expected {o['size']}"
                raise IntegrityError(f"{store.describe(pool_key(o['name']))}: {got}; run "
                                     f"`weightvault repair` before amending {prev.name}")  # fmt: skip
        try:
            new_paths = {path for _r, _l, path in record}
            entries = [_store_record_file(store, new_name, *r, written) for r in record]
            for e in m.record:
                if e["path"] in new_paths:
                    continue
                data = _read_checked(store, f"{prefix(m.name)}/data/{e['path']}", e)
                entries.append({**e, **_store_plain(store, new_name, e["path"], [data], written)})
            doc = {**m.doc, "name": new_name,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "tool": {"name": "weightvault", "version": __version__},
                   "record": sorted(entries, key=lambda r: r["path"]),
                   "spec": store_spec(store, new_name, written),
                   "supersedes": {"bundle": prev.bundle_id, "name": prev.name}}  # fmt: skip
            if keys:  # as every encrypted seal: the file table into the sealed private section
                doc = keys.seal_manifest(doc, store, new_name, written)
            manifest = sign_and_commit(vault, doc, key)
        except BaseException:
            if not vault.is_committed(new_name):
                for k in set(written):
                    with contextlib.suppress(Exception):
                        store.delete(k)
                with contextlib.suppress(Exception):
                    store.prune_dirs(prefix(new_name))  # no empty bundle directory either
            raise
    added = sum(store.size(k) or 0 for k in store.list(prefix(new_name)))
    return AmendResult(manifest.bundle_id, new_name, prev.bundle_id, len(manifest.record),
                       added, round(time.monotonic() - t0, 3), manifest.version)  # fmt: skip


def _same_custody(enc: dict):
    """Seal options that wrap a data key for the same recipients and split it among the same
    custodians, with the same threshold, as the encrypted bundle whose `encryption` is `enc`."""
    from weightvault.archive.seal import SealOptions

    def order(e: dict) -> tuple[int, str]:  # recipient-2 before recipient-10
        return len(e["label"]), e["label"]

    envs = sorted(enc["envelopes"], key=order)
    return SealOptions(
        encrypt_to=[e["recipient"] for e in envs if e["kind"] == "recipient"],
        custodians=[(e["label"], e["recipient"]) for e in envs if e["kind"] == "share"],
        threshold=enc["shares"]["threshold"] if enc["shares"] else None,
    )


def _read_checked(store: Store, key: str, entry: dict, limit: int = 1 << 30) -> bytes:
    data = store.read_bytes(key, min(limit, entry["size"]))
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IntegrityError(f"{store.describe(key)}: does not match the signed manifest")
    return data


# ---------------------------------------------------------------------------------------------
# Diff


@dataclass
class Diff:
    a: str
    b: str
    added: list[dict] = field(default_factory=list)  # {path, size}
    removed: list[dict] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)  # {path, size_a, size_b, tensors}
    same: int = 0
    record: dict = field(default_factory=dict)  # added/removed/changed record paths
    bytes_new: int = 0  # stored bytes of objects b names and a does not

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def diff(store: Store, a: Bundle, b: Bundle) -> Diff:
    """Files and record files added, removed and changed from `a` to `b`, with sizes; for a
    changed safetensors file, the tensors whose bytes changed. Reads the chunks holding the
    two headers, and the chunks whose objects differ between the versions (a tensor held by
    the same objects in both is unchanged; the others are compared by digest)."""
    ma, mb = a.manifest, b.manifest
    for m in (ma, mb):
        if m.encryption is not None:
            raise InputError(f"bundle {m.name} is encrypted: its file table is not readable "
                             "without its key")  # fmt: skip
    fa, fb = {f["path"]: f for f in ma.files}, {f["path"]: f for f in mb.files}
    out = Diff(ma.name, mb.name)
    out.added = [{"path": p, "size": fb[p]["size"]} for p in sorted(fb.keys() - fa.keys())]
    out.removed = [{"path": p, "size": fa[p]["size"]} for p in sorted(fa.keys() - fb.keys())]
    for p in sorted(fa.keys() & fb.keys()):
        x, y = fa[p], fb[p]
        if x["sha256"] == y["sha256"]:
            out.same += 1
            continue
        entry = {"path": p, "size_a": x["size"], "size_b": y["size"]}
        if p.endswith(".safetensors"):
            with contextlib.suppress(CorruptData, IntegrityError, StorageError, InputError):
                entry["tensors"] = _tensor_diff(store, ma, x, mb, y)
        out.changed.append(entry)
    ra, rb = {r["path"]: r for r in ma.record}, {r["path"]: r for r in mb.record}
    out.record = {
        "added": [{"path": p, "size": rb[p]["size"]} for p in sorted(rb.keys() - ra.keys())],
        "removed": [{"path": p, "size": ra[p]["size"]} for p in sorted(ra.keys() - rb.keys())],
        "changed": [{"path": p, "size_a": ra[p]["size"], "size_b": rb[p]["size"]}
                    for p in sorted(ra.keys() & rb.keys()) if ra[p]["sha256"] != rb[p]["sha256"]],
    }  # fmt: skip
    oa = ma.objects
    out.bytes_new = sum(o["size"] for n, o in mb.objects.items() if n not in oa)
    return out


def _header(store: Store, m: Manifest, f: dict) -> tuple[int, dict]:
    """(data start, tensor name -> (dtype, shape, start, end) in the file) from the chunks
    that hold the safetensors header: only those chunks are read."""
    import json
    import struct

    from weightvault.storage.chunkio import decode_chunk

    buf = bytearray()

    def need(n: int) -> None:
        for c in f["chunks"]:
            if c["offset"] + c["length"] <= len(buf):
                continue
            if len(buf) >= n:
                return
            decode_chunk(store, object_key(m, c["object"]), m.objects[c["object"]], c,
                         file_path=f["path"], sink=lambda _pos, data: buf.extend(data))  # fmt: skip

    need(8)
    (hlen,) = struct.unpack("<Q", bytes(buf[:8]))
    if hlen > 100 << 20:
        raise CorruptData(f"{f['path']}: safetensors header too large")
    need(8 + hlen)
    doc = json.loads(bytes(buf[8 : 8 + hlen]))
    base = 8 + hlen
    tensors = {k: (v["dtype"], v["shape"], base + v["data_offsets"][0], base + v["data_offsets"][1])
               for k, v in doc.items() if k != "__metadata__"}  # fmt: skip
    return base, tensors


def _tensor_diff(store: Store, ma: Manifest, fa: dict, mb: Manifest, fb: dict) -> dict:
    _, ta = _header(store, ma, fa)
    _, tb = _header(store, mb, fb)

    def objs(f: dict, start: int, end: int) -> list[str]:
        return [c["object"] for c in f["chunks"]
                if c["offset"] < end and c["offset"] + c["length"] > start]  # fmt: skip

    # Tensors held by the same objects in both are unchanged; the others are compared by the
    # digest of their bytes, decoding only the chunks that hold them (each once).
    maybe = [k for k in sorted(ta.keys() & tb.keys()) if ta[k][:2] == tb[k][:2]
             and objs(fa, *ta[k][2:]) != objs(fb, *tb[k][2:])]  # fmt: skip
    da = _tensor_digests(store, ma, fa, {k: ta[k][2:] for k in maybe})
    db = _tensor_digests(store, mb, fb, {k: tb[k][2:] for k in maybe})
    changed = [k for k in sorted(ta.keys() & tb.keys())
               if ta[k][:2] != tb[k][:2] or (k in da and da[k] != db[k])]  # fmt: skip

    def row(t: dict, k: str) -> dict:
        return {"name": k, "dtype": t[k][0], "shape": t[k][1], "bytes": t[k][3] - t[k][2]}

    return {"added": [row(tb, k) for k in sorted(tb.keys() - ta.keys())],
            "removed": [row(ta, k) for k in sorted(ta.keys() - tb.keys())],
            "changed": [row(tb, k) for k in changed]}  # fmt: skip


def _tensor_digests(store: Store, m: Manifest, f: dict, ranges: dict) -> dict[str, str]:
    from weightvault.storage.chunkio import decode_chunk

    hs = {k: hashlib.sha256() for k in ranges}
    order = sorted(ranges.items(), key=lambda kv: kv[1])
    for c in f["chunks"]:
        lo, hi = c["offset"], c["offset"] + c["length"]
        inside = [(k, s, e) for k, (s, e) in order if s < hi and e > lo]
        if not inside:
            continue

        def sink(pos: int, data, inside=inside) -> None:
            end = pos + len(data)
            for k, s, e in inside:
                a, b = max(s, pos), min(e, end)
                if a < b:
                    hs[k].update(data[a - pos : b - pos])

        decode_chunk(store, object_key(m, c["object"]), m.objects[c["object"]], c,
                     file_path=f["path"], sink=sink)  # fmt: skip
    return {k: h.hexdigest() for k, h in hs.items()}


# ---------------------------------------------------------------------------------------------
# Export: one standalone BagIt bag


@dataclass
class ExportResult:
    bundle: str
    name: str
    dest: str
    files: int
    bytes: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def export(store: Store, b: Bundle, dest: Path | str) -> ExportResult:
    """Write bundle `b` as one standalone BagIt bag into the new directory `dest`: every file
    of the bag, with its objects under data/objects/ (FORMAT.md section 2.3), each checked
    against the signed manifest while it is copied; the tag files are those the manifest and
    signature fix. Written into a temporary sibling, renamed into place when complete."""
    from weightvault.archive.restore import prepare_destination
    from weightvault.archive.verify import check_bag

    m = b.manifest
    p = prefix(m.name)
    if m.pooled:
        files = commit_files(m, store.read_bytes(f"{p}/{SIGNATURE_KEY}", MAX_SIG), standalone=True)
    else:
        problems = check_bag(Vault(store), b)
        if problems:
            raise IntegrityError(f"bundle {m.name}: its tag files are damaged, not exporting: "
                                 f"{problems[0]}")  # fmt: skip
        files = Vault(store).read_commit_files(m)
    if files[0] != (MANIFEST_KEY, m.raw):
        raise IntegrityError(f"{store.describe(p)}: manifest changed while reading")
    if b.signature is not None and canon.parse(dict(files)[SIGNATURE_KEY], "signature") != \
            b.signature:  # fmt: skip
        raise IntegrityError(f"{store.describe(p)}: signature changed while reading")
    dest = Path(dest).absolute()
    tmp = prepare_destination(dest)
    total = n = 0
    try:
        plain = [(f"data/{r['path']}", f"{p}/data/{r['path']}", r) for r in m.plain_files]
        objs = [(f"data/objects/{o['name']}", object_key(m, o["name"]), {**o, "sha256": o["name"]})
                for o in m.doc["objects"]]  # fmt: skip
        for rel, key, entry in plain + objs:
            total += _copy_out(store, key, entry, tmp / rel)
            n += 1
        for rel, data in files:  # commit order: the commit marker last
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            total += len(data)
            n += 1
        if dest.is_dir():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(m.bundle_id, m.name, str(dest), n, total)


def _copy_out(store: Store, key: str, entry: dict, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with store.open_read(key) as src, open(target, "xb") as out:
        while data := src.read(1 << 20):
            size += len(data)
            if size > entry["size"]:
                break
            h.update(data)
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    if size != entry["size"] or h.hexdigest() != entry["sha256"]:
        raise IntegrityError(f"{store.describe(key)}: does not match the signed manifest")
    if entry.get("sha512"):
        with open(target, "rb") as f:
            if hashlib.file_digest(f, "sha512").hexdigest() != entry["sha512"]:
                raise IntegrityError(f"{store.describe(key)}: sha512 differs from the manifest")
    return size
