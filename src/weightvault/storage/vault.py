"""Bundles in a vault: layout, listing, name resolution, trusted loading and the commit protocol.

Layout (docs/FORMAT.md section 2): bundles/<name>/ is one BagIt bag. Its stored chunk objects
are named by the SHA-256 of their stored bytes: from format version 4 in the vault's shared
pool, objects/<sha256>, stored once whichever bundles name them; in versions 1 to 3 inside
the bag, bundles/<name>/data/objects/<sha256>. A writer commits by writing the commit marker
(tagmanifest-sha256.txt) last, but a reader never takes the marker's absence as proof that a
bundle was not committed: whoever holds the storage can delete a file. A bundle whose manifest
carries a valid signature by a trusted key is committed whatever its tag files say, and a
missing tag file of such a bundle is damage (FORMAT.md section 2.1).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from weightvault.errors import (
    Conflict,
    CorruptData,
    InputError,
    IntegrityError,
    MissingSignature,
    NotFound,
    StorageError,
)
from weightvault.format import bag, canon, spec
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import (
    MANIFEST_KEY,
    MAX_MANIFEST,
    PAYLOAD_TYPE,
    POOLED,
    SIGNATURE_KEY,
    Manifest,
)
from weightvault.format.paths import name_ok
from weightvault.storage.store import Store

BUNDLES = "bundles"
POOL = "objects"  # format version 4: the vault's shared objects
FORMAT_KEY = "data/FORMAT.md"
OBJECTS = "data/objects"
MAX_SIG = 64 << 10


def prefix(name: str) -> str:
    return f"{BUNDLES}/{name}"


def pool_key(obj: str) -> str:
    return f"{POOL}/{obj}"


POOL_LIST_LIMIT = 10_000  # pool keys listed before a lookup turns to one size() per key


def pool_sizes(store: Store, keys, *, workers: int = 16) -> dict[str, int]:
    """Key -> size of those of `keys` (pool keys) that the store holds: from a listing of the
    pool while it is short (an empty or young pool: a few requests), else from one size()
    per key. Memory and requests grow with the keys asked about, never with the pool: at
    1 PB the pool is some 15 million objects, and a bundle, a v2 or a status row asks about
    a few thousand. Absence here only ever means "copy it" or "report it missing"."""
    want = set(keys)
    if not want:
        return {}
    limit = max(POOL_LIST_LIMIT, 4 * len(want))
    found: dict[str, int] = {}
    # closed when left early: an SFTP listing holds an SSH connection of its own until then
    with contextlib.closing(store.iter_list(POOL)) as listing:
        for n, (k, size) in enumerate(listing):
            if n >= limit:
                break
            if k in want:
                found[k] = size
        else:
            return found
    from concurrent.futures import ThreadPoolExecutor

    ordered = sorted(want)
    with ThreadPoolExecutor(min(workers, len(ordered)),
                            thread_name_prefix="weightvault-size") as pool:  # fmt: skip
        return {k: s for k, s in zip(ordered, pool.map(store.size, ordered), strict=True)
                if s is not None}  # fmt: skip


def object_key(name: str | Manifest, obj: str) -> str:
    """Where object `obj` of a bundle is stored in a vault: given the bundle's manifest, in the
    pool for format version 4 and later; given only a name, inside the bag (versions 1-3)."""
    if isinstance(name, Manifest):
        if name.pooled:
            return pool_key(obj)
        name = name.name
    return f"{prefix(name)}/{OBJECTS}/{obj}"


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    signature: dict | None
    signer: PublicKey | None  # None only when loaded with insecure=True
    signers: tuple[PublicKey, ...] = ()  # every trusted key whose signature verified

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id


class Vault:
    def __init__(self, store: Store):
        self.store = store

    def describe(self, key: str) -> str:
        return self.store.describe(key)

    # -- listing and lookup
    def names(self) -> list[str]:
        # only signed bundles: a directory without a signature is an interrupted write (from
        # version 4 the signature is the last file written), never shown as a bundle
        return [n for n in self.store.list_dirs(BUNDLES) if name_ok(n) and self.is_committed(n)]

    def has_marker(self, name: str) -> bool:
        """The writer finished: every file of the bundle was written."""
        return self.store.exists(f"{prefix(name)}/{bag.COMMIT_MARKER}")

    def is_committed(self, name: str) -> bool:
        """May be committed: the signature, which a writer puts down only after every object
        (and, from version 4, after every other file: section 2.1), is there. Whether it is,
        is settled by load()'s signature check. A bundle without one is an interrupted write,
        unless the bundle is known committed elsewhere (the caller's to say)."""
        return self.store.exists(f"{prefix(name)}/{SIGNATURE_KEY}")

    def read_signature(self, name: str) -> dict:
        key = f"{prefix(name)}/{SIGNATURE_KEY}"
        if not self.store.exists(key):
            raise MissingSignature(
                f"{self.describe(key)}: missing; the bundle is unsigned (use --insecure to read it)"
            )
        doc = canon.parse(self.store.read_bytes(key, MAX_SIG), self.describe(key))
        spec.validate(doc, "signature", self.describe(key))
        return doc

    def bundle_id_of(self, name: str) -> str:
        return self.read_signature(name)["payload_sha256"]

    def resolve(self, ref: str) -> str:
        """A bundle name, or a unique prefix (at least 4 hex digits) of a bundle id."""
        names = self.names()
        if ref in names:
            return ref
        ref_l = ref.lower()
        if len(ref_l) >= 4 and all(c in "0123456789abcdef" for c in ref_l):
            hits = []
            for n in names:
                try:
                    if self.bundle_id_of(n).startswith(ref_l):
                        hits.append(n)
                except (CorruptData, StorageError, IntegrityError):
                    continue
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise InputError(
                    f"{ref!r} matches {len(hits)} bundles ({', '.join(hits[:5])}); "
                    "give more digits or the name"
                )
        if ref_l and len(ref_l) < 4 and all(c in "0123456789abcdef" for c in ref_l):
            raise InputError(f"{ref!r}: no bundle of that name, and a bundle id prefix needs at "
                             "least 4 hex digits")  # fmt: skip
        if name_ok(ref) and (self.has_marker(ref) or self.store.exists(f"{prefix(ref)}/{MANIFEST_KEY}")):
            # named, but never signed (or its signature is gone): say so, as a trust failure
            raise MissingSignature(f"{self.describe(f'{prefix(ref)}/{SIGNATURE_KEY}')}: missing; "
                                   "the bundle is unsigned, or its seal stopped before signing "
                                   "(use --insecure to read it)")  # fmt: skip
        raise NotFound(f"{ref!r}: no such bundle in {self.store.url}{_did_you_mean(ref, names)}")

    def load(self, ref: str, trusted: list[PublicKey], *, insecure: bool = False) -> Bundle:
        """Read a bundle's manifest, checking its digest and signature before parsing it."""
        try:
            name = self.resolve(ref)
        except MissingSignature:
            if not insecure:
                raise
            name = ref  # an unsigned bundle, read as the user asked
        return self.load_exact(name, trusted, insecure=insecure)

    def load_exact(self, name: str, trusted: list[PublicKey], *, insecure: bool = False) -> Bundle:
        """load() of a name taken as it is (no listing to resolve it against)."""
        mkey = f"{prefix(name)}/{MANIFEST_KEY}"
        try:
            sig = self.read_signature(name)
        except MissingSignature:
            if not insecure:
                raise
            sig = None
        what = self.describe(mkey)
        if not self.store.exists(mkey):
            raise IntegrityError(f"{what}: missing")
        raw = self.store.read_bytes(mkey, MAX_MANIFEST)
        digest = hashlib.sha256(raw).hexdigest()
        if sig is not None and digest != sig["payload_sha256"]:
            raise IntegrityError(
                f"{what}: manifest digest {digest} differs from the signed "
                f"{sig['payload_sha256']} (the manifest was altered after signing)"
            )
        signers: list[PublicKey] = []
        if not insecure:
            if not trusted:
                raise InputError(
                    "no trusted public key given: pass --trust KEY.pub (or --insecure to skip "
                    "signature checks)"
                )
            from weightvault.format.trust import as_policy

            signers = as_policy(trusted).verify(
                PAYLOAD_TYPE, raw, sig["signatures"],
                self.describe(f"{prefix(name)}/{SIGNATURE_KEY}"), subject=sig["payload_sha256"],
            )
        manifest = Manifest.parse(raw, what)
        if manifest.name != name:
            raise CorruptData(f"{what}: names bundle {manifest.name!r} but lives under {name!r}")
        return Bundle(manifest, sig, signers[0] if signers else None, tuple(signers))

    # -- commit
    def commit(self, name: str, files: list[tuple[str, bytes]]) -> None:
        """Write a bundle's non-object files in commit order (from version 4 the signature
        last: that one write commits). Every object and record file the manifest names must
        already be stored and checked. Idempotent: re-running it over an interrupted commit of
        the same manifest completes it."""
        st, p = self.store, prefix(name)
        assert files[0][0] == MANIFEST_KEY and files[-1][0] in (bag.COMMIT_MARKER, SIGNATURE_KEY)
        manifest_raw = files[0][1]
        with st.lock(f"commit-{name}"):
            if self.is_committed(name):
                raise already_sealed(self, name)
            mkey = f"{p}/{MANIFEST_KEY}"
            ours = True  # this commit wrote the manifest (no other writer shares these files)
            if not st.put_bytes(mkey, manifest_raw, exclusive=True):
                existing = st.read_bytes(mkey, len(manifest_raw) + 1)
                if existing != manifest_raw and not st.process_lock:
                    raise Conflict(
                        f"{self.describe(p)}: another seal of {name!r} is committing (or one "
                        "crashed while committing); run `weightvault gc` if none is running"
                    )
                if existing != manifest_raw:  # we hold the lock: debris of a crashed seal
                    st.put_bytes(mkey, manifest_raw)
                ours = st.process_lock
            try:
                for key, data in files[1:]:
                    st.put_bytes(f"{p}/{key}", data)
            except BaseException:
                # A commit that fails (a full disk, a server gone) takes back what it wrote,
                # so no manifest is left naming objects a failed seal then removes, and the
                # name is free for the next try. A crash cannot: gc removes that debris.
                if ours and not self.is_committed(name):
                    for key, _ in reversed(files[:-1]):
                        with contextlib.suppress(Exception):
                            st.delete(f"{p}/{key}")
                raise

    def read_commit_files(self, m: Manifest) -> list[tuple[str, bytes]]:
        """The non-object files of committed bundle `m`, as stored, in commit order. (From
        format version 4, `commit_files` computes them from the manifest and signature.)"""
        p = prefix(m.name)
        return [(k, self.store.read_bytes(f"{p}/{k}", bag.MAX_TAG_FILE if k != MANIFEST_KEY
                                          else MAX_MANIFEST))
                for k in commit_order(m.doc["format_version"])]  # fmt: skip


def commit_order(format_version: int) -> tuple[str, ...]:
    """FORMAT.md section 2.1: what a writer commits after the objects, in order. From
    version 4, FORMAT.md is a plain payload file named by the manifest (written before it),
    and the signature comes after the tag files that do not depend on it."""
    algs = bag.algs(format_version)
    if format_version >= 4:
        # the signature commits the bundle (section 2) and goes last, alone: the tag manifest
        # lists its digest, computed before either is written, so a crash at any point leaves
        # either no signature (an interrupted write) or every file
        return (MANIFEST_KEY, "manifest-sha256.txt", "bagit.txt", "bag-info.txt",
                bag.COMMIT_MARKER, SIGNATURE_KEY)  # fmt: skip
    return (MANIFEST_KEY, FORMAT_KEY, SIGNATURE_KEY, *(f"manifest-{a}.txt" for a in algs),
            "bagit.txt", "bag-info.txt", *(f"tagmanifest-{a}.txt" for a in algs[:0:-1]),
            bag.COMMIT_MARKER)  # fmt: skip


def commit_files(manifest: Manifest, signature: dict | bytes, *, bagging_date: str | None = None,
                 organization: str | None = None, description: str | None = None,
                 standalone: bool = False) -> list[tuple[str, bytes]]:  # fmt: skip
    """Every file of a bundle but its objects and plain payload files, in commit order.
    From format version 4 they are a function of the signed manifest and the signature alone
    (FORMAT.md section 3), so anyone holding those two can rebuild them byte for byte and
    nothing else decides them; `standalone`: the exported form, whose bag holds the objects
    under data/objects/ (the pooled form's bag does not)."""
    sig_bytes = signature if isinstance(signature, bytes) else canon.canonical(signature)
    version = manifest.doc["format_version"]
    algs = bag.algs(version)
    payload = plain_entries(manifest)
    if version < POOLED or standalone:
        payload += [bag.Entry(f"{OBJECTS}/{o['name']}", o["size"], o["name"], o.get("sha512"))
                    for o in manifest.doc["objects"]]  # fmt: skip
    payload += bag.tag_entries({MANIFEST_KEY: manifest.raw}, algs)
    if version < POOLED:
        format_md = spec.format_md()
        payload += bag.tag_entries({FORMAT_KEY: format_md}, algs)
        agent = None
    else:
        info = manifest.doc["bag_info"]
        organization, description = info["organization"], info["description"]
        bagging_date = manifest.doc["created"][:10]
        agent = f"{manifest.doc['tool']['name']} {manifest.doc['tool']['version']}"
    tags = {
        "bagit.txt": bag.BAGIT_TXT,
        "bag-info.txt": bag.bag_info(
            bundle_id=manifest.bundle_id,
            name=manifest.name,
            bagging_date=bagging_date or manifest.doc["created"][:10],
            oxum_bytes=sum(e.size for e in payload),
            oxum_count=len(payload),
            description=description or describe_source(manifest.doc),
            organization=organization,
            format_version=version,
            agent=agent,
        ),
        **{f"manifest-{a}.txt": bag.manifest_text(payload, a) for a in algs},
        SIGNATURE_KEY: sig_bytes,
    }
    entries = bag.tag_entries(tags, algs)
    out = {MANIFEST_KEY: manifest.raw, **tags,
           **{f"tagmanifest-{a}.txt": bag.manifest_text(entries, a) for a in algs}}  # fmt: skip
    if version < POOLED:
        out[FORMAT_KEY] = format_md
    return [(k, out[k]) for k in commit_order(version)]


def plain_entries(manifest: Manifest) -> list[bag.Entry]:
    return [bag.Entry(f"data/{r['path']}", r["size"], r["sha256"], r.get("sha512"))
            for r in manifest.plain_files]  # fmt: skip


def already_sealed(vault: Vault, name: str) -> Conflict:
    try:
        bid = vault.bundle_id_of(name)
    except Exception:  # noqa: BLE001 - the message is best effort
        bid = "?"
    return Conflict(f"{name!r} is already sealed in {vault.store.url} as bundle {bid[:16]}")


def describe_source(doc: dict) -> str:
    src = doc["source"]
    if src["kind"] == "encrypted":
        return (
            f"weightvault bundle {doc['name']!r}: an encrypted model, {len(doc['objects'])} objects"
        )
    what = src.get("repo_id") or src.get("path", "")
    extra = f" at commit {src['commit']}" if src.get("commit") else ""
    n = len(doc["files"])
    return f"weightvault bundle {doc['name']!r}: {n} files of {what}{extra}"


def _did_you_mean(ref: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(ref, names, n=3, cutoff=0.6)
    if not close:  # a case slip or a partial name difflib scores low
        close = [n for n in names if ref.lower() in n.lower()][:3]
    return f"; did you mean {', '.join(close)}?" if close else ""
