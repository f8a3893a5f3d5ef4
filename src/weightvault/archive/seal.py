"""Seal: source files -> chunk objects in the vault -> signed manifest -> committed bag."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weightvault import __version__
from weightvault.archive import remote_source, sources
from weightvault.archive.pipeline import (
    Emit,
    FileDigests,
    Finisher,
    default_workers,
    pieces,
    run,
)
from weightvault.errors import Conflict, InputError, IntegrityError, NotFound, TrustError
from weightvault.executors import Executor
from weightvault.format import canon, chunking, codec, crypt
from weightvault.format.fixity import chunk_digest
from weightvault.format.keys import PublicKey, SigningKey
from weightvault.format.manifest import (
    ENCRYPTED_VERSION,
    FORMAT_VERSION,
    PAYLOAD_TYPE,
    POOLED,
    Manifest,
    chunk_digests,
)
from weightvault.format.paths import check_name, check_relpath
from weightvault.format.spec import spec_files
from weightvault.storage.chunkio import drop_cached, trial_decode
from weightvault.storage.store import Store
from weightvault.storage.vault import (
    BUNDLES,
    Bundle,
    Vault,
    already_sealed,
    commit_files,
    describe_source,
    pool_key,
    pool_sizes,
    prefix,
)


@dataclass
class SealOptions:
    name: str | None = None
    chunk_size: int = chunking.DEFAULT_TARGET
    level: int = 3
    codec: str = "auto"  # auto | zstd | raw | fsplit
    workers: int | None = None
    excludes: tuple[str, ...] = sources.DEFAULT_EXCLUDES
    hf_cache_dir: str | None = None
    # The retirement record: (role, local file, path in the bundle, which starts with "record/")
    record: list[tuple[str, Path, str]] = field(default_factory=list)
    organization: str | None = None  # bag-info Source-Organization
    description: str | None = None  # bag-info External-Description (default: from the source)
    oms_key: object | None = None  # ECDSA key: also write an OpenSSF model-signing signature
    external_links: bool = False  # seal the bytes of links pointing outside the source
    # Encryption (FORMAT.md section 10): age recipients of the data key, and custodians
    # (name, age recipient) who each get one SLIP-39 share of it, `threshold` needed to open.
    encrypt_to: list[str] = field(default_factory=list)
    custodians: list[tuple[str, str]] = field(default_factory=list)
    threshold: int | None = None
    # fsspec storage options of an object-store source (s3://...: endpoint_url, key, secret)
    source_options: dict = field(default_factory=dict)
    executor: Executor | None = None  # None or threads: this process; else a Dask cluster
    # The previous version of this model (a bundle name or id prefix in the vault): recorded
    # in the signed manifest; its files that are unchanged are not encoded or stored again.
    supersedes: str | None = None
    trusted: list[PublicKey] = field(default_factory=list)  # for it; default: the sealing key
    # what opens an encrypted previous version (custody.unlock.Keys: identities, shares): the
    # new version shares its data key (FORMAT.md 10.3)
    unlock: object | None = None
    # a clear bundle's format version: FORMAT_VERSION (6), or 4 for older readers (None: the
    # default; encrypted bundles are always ENCRYPTED_VERSION)
    format_version: int | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.encrypt_to or self.custodians)

    @property
    def chunk_digests(self) -> bool:
        """The manifest gives each chunk its BLAKE3 (format version 6: clear bundles)."""
        return not self.encrypted and self.format_version in (None, FORMAT_VERSION)


@dataclass
class SealResult:
    bundle: str
    name: str
    files: int
    bytes_in: int
    bytes_stored: int
    objects: int
    seconds: float
    vault: str
    notes: list[str] = field(default_factory=list)
    supersedes: str | None = None  # bundle id of the previous version
    files_reused: int = 0  # files unchanged since the previous version: not encoded again
    # chunks of changed files whose previous-version object decodes to the same bytes: named
    # again, not encoded or stored again (the chunks of reused files are not counted)
    chunks_reused: int = 0
    bytes_new: int = 0  # stored bytes of objects this seal added to the vault
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True, slots=True)  # 10 TB: 163,840 of them in the driver
class _Job:
    file: int
    src: sources.SourceFile
    piece: chunking.Piece
    last: bool  # last chunk of its file
    multi: bool  # file has more than one chunk (needs the ordered whole-file digest)
    index: int  # position in the chunk job list (a cluster returns results by it)
    # (chunk, object) of the previous version at this file's same offset and length, from its
    # signed manifest: named again if its object decodes to this chunk's bytes (trial decode)
    prev: tuple[dict, dict] | None = None
    # the whole-file digest is known already (hashed in order to compare it with the previous
    # version's): this chunk's bytes are not hashed again
    hashed: bool = False
    # `prev`'s BLAKE3, which this chunk's source bytes matched (the previous version is of
    # format version 6, _Versions.whole): `prev` is named again without reading a byte
    known: str | None = None
    digest: bool = True  # record the chunk's BLAKE3 (a clear bundle: format version 6)


def default_name(spec: str, src: sources.Source) -> str:
    base = src.provenance.get("repo_id", "").split("/")[-1] or os.path.basename(
        os.path.normpath(spec)
    )
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-") or "model"


def seal(
    spec: str | sources.Source,
    store: Store,
    key: SigningKey | Sequence[SigningKey],
    opts: SealOptions | None = None,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    replicas: list[Store] = (),
) -> SealResult:
    """Seal into `store`. `replicas` are the other stores the bundle will be copied to: a name
    already sealed on any of them is refused before any work is done."""
    opts = opts or SealOptions()
    t0 = time.monotonic()
    codec.check_level(opts.level)
    if not 4096 <= opts.chunk_size <= chunking.MAX_TARGET:
        raise InputError(f"chunk size {opts.chunk_size} is out of range 4 KiB..1 GiB")
    vault = Vault(store)
    executor = opts.executor
    if isinstance(spec, sources.Source):  # resolved by the caller before any vault was touched
        src, spec = spec, str(spec.root)
    elif remote_source.is_url(spec):
        src = remote_source.resolve(spec, opts.source_options, excludes=opts.excludes)
    else:
        src = sources.resolve(spec, excludes=opts.excludes, cache_dir=opts.hf_cache_dir,
                              external_links=opts.external_links)
    files_io = remote_source.files_of(src)
    name = check_name(opts.name or default_name(spec, src))
    for v in (vault, *map(Vault, replicas)):
        if v.is_committed(name):
            raise already_sealed(v, name)
    files = sorted(src.files, key=lambda f: f.path)
    signers = [key] if isinstance(key, SigningKey) else list(key)
    prev = previous_version(vault, opts.supersedes, opts.trusted or [k.public for k in signers])
    if opts.format_version is not None and (opts.encrypted or opts.format_version not in (
            POOLED, FORMAT_VERSION)):  # fmt: skip
        raise InputError(f"--format-version {opts.format_version}: a weightvault of this version "
                         f"writes clear bundles as version {POOLED} or {FORMAT_VERSION}, "
                         f"encrypted ones as {ENCRYPTED_VERSION}")  # fmt: skip
    keys = _KeyPlan.new(opts, _previous_key(store, prev, opts.unlock)) if opts.encrypted else None
    if prev is not None and keys is None and prev.manifest.encryption is not None:
        raise InputError(f"--supersedes {prev.name}: it is encrypted, and a lineage stays one "
                         "kind: encrypt the new version too (--encrypt-to or --custodians)")  # fmt: skip
    if keys and executor is not None and executor.distributed:
        raise InputError(f"--executor {executor.spec} cannot seal an encrypted bundle: workers "
                         "would need the data key; seal it with the default executor")  # fmt: skip
    if keys and opts.oms_key is not None:
        raise InputError("--oms-key cannot be combined with encryption: the model-signing "
                         "signature would publish the file names and digests")  # fmt: skip
    created: list[tuple[str, int]] = []  # pool objects this seal added (key, size)
    try:
        with store.pool_lock(shared=True):  # gc removes no pool object until this seal commits
            return _seal(src, files_io, name, files, prev, keys, vault, store, key, opts, t0,
                         created, executor, on_bytes=on_bytes, on_start=on_start)  # fmt: skip
    except BaseException as e:
        if created and not isinstance(e, Conflict) and not vault.is_committed(name):
            with contextlib.suppress(Exception):
                remove_unclaimed(store, [k for k, _ in created])
        raise


def remove_unclaimed(store: Store, keys: list[str]) -> list[str]:
    """Remove the pool objects a failed seal added, except any that a manifest in the vault
    names (another seal may have reused one meanwhile). Only where the store's pool lock
    excludes other processes: under it, exclusive, no seal is between reusing an object and
    committing. Elsewhere they are left to gc (FORMAT.md section 2.2). Any manifest, signed
    or not, counts, and one that cannot be read stops the removal: keeping is never wrong."""
    from weightvault.format.manifest import MANIFEST_KEY, MAX_MANIFEST

    if not store.process_lock:
        return []
    with store.pool_lock(shared=False):
        named: set[str] = set()
        for key in store.list(BUNDLES):
            if key.count("/") == 3 and key.endswith("/" + MANIFEST_KEY):
                try:
                    m = Manifest.parse(store.read_bytes(key, MAX_MANIFEST), store.describe(key))
                except Exception:  # noqa: BLE001 - unreadable: it may name any of them
                    return []
                if m.pooled:
                    named |= {pool_key(o["name"]) for o in m.doc["objects"]}
        gone = [k for k in keys if k not in named]
        for k in gone:
            store.delete(k)
        return gone


def _previous_key(store: Store, prev: Bundle | None, unlock, what: str = "--supersedes"):
    """The opened previous version of an encrypted new version (FORMAT.md 10.3: a lineage has
    one data key), or None for a first version. Opened like restore opens a bundle: the
    identity or shares given (`unlock`: custody.unlock.Keys), the key check, the private
    section. `what` names the request in errors (seal's --supersedes, or amend)."""
    from weightvault.custody.unlock import open_bundle
    from weightvault.format.crypt import KeyAccessError

    if prev is None:
        return None
    if prev.manifest.encryption is None:
        raise InputError(f"{what} {prev.name}: it is not encrypted, and a lineage stays "
                         "one kind: seal the new version without --encrypt-to/--custodians")  # fmt: skip
    try:
        return open_bundle(store, prev, unlock)
    except KeyAccessError as e:
        raise type(e)(f"{what} {prev.name}: the new version shares its data key, so "
                      f"it must be opened: {e}") from None


def previous_version(vault: Vault, ref: str | None, trusted: list[PublicKey]) -> Bundle | None:
    """The bundle a new version supersedes, loaded and its signature checked: a lineage is
    only as good as the link, so a missing or untrusted one is refused, never skipped."""
    if ref is None:
        return None
    try:
        return vault.load(ref, trusted)
    except NotFound:
        raise NotFound(f"--supersedes {ref}: no such bundle in {vault.store.url}") from None
    except TrustError as e:
        raise type(e)(f"--supersedes {ref}: not trusted: {e}") from None


def _seal(src, files_io, name: str, files, prev: Bundle | None, keys, vault: Vault,
          store: Store, key: SigningKey, opts: SealOptions, t0: float,
          created: list[tuple[str, int]], executor, *, on_bytes, on_start) -> SealResult:  # fmt: skip
    workers = opts.workers or default_workers()
    if on_start:
        on_start(sum(f.size for f in files))
    plans = list(remote_source.plans(files, files_io, opts.chunk_size))
    ver = _Versions(files, plans, _previous_table(keys.prev.manifest if keys and keys.prev
                                                  else prev and prev.manifest, keys), store,
                    digest=opts.chunk_digests)  # fmt: skip
    if executor is not None and executor.distributed:
        # a cluster takes its chunk list whole: the unchanged files are decided first
        reuse = {i: e for i, e in ver.judged(run(
            list(ver.candidates), lambda j, _emit: ver.whole(j, files_io, on_bytes),
            workers=workers))}  # fmt: skip
        jobs = [j for i in range(len(files)) if i not in reuse
                for j in ver.chunk_jobs(i, hashed=i in ver.digests)]
    else:
        jobs, reuse = [], {}  # filled as run() takes them (ver.feed)

    written: list[str] = []  # bundle files this seal wrote: removed if it fails

    def commit(w, okey: str) -> None:
        if store.size(okey) == w.size:
            w.abort()  # the vault holds it already (another version, or another chunk)
        else:
            finisher.submit(lambda: _commit_object(store, w, okey, created))

    def work(job: _Job | _Whole, emit: Emit) -> dict:
        if isinstance(job, _Whole):
            return ver.whole(job, files_io, on_bytes)
        return seal_chunk(job, emit, files_io, store, name, opts.level, opts.codec, keys,
                          commit, on_bytes)  # fmt: skip

    lane = FileDigests()
    finisher = Finisher(workers, workers + 1)
    try:
        if executor is not None and executor.distributed:
            from weightvault.archive.distributed import seal_on_cluster

            on_cluster: list[str] = []  # pool objects the workers stored
            results, digests, b3 = seal_on_cluster(executor, jobs, files_io, store, name,
                                                   opts, on_cluster, on_bytes)  # fmt: skip
            digests.update(ver.digests)
            created += [(k, 0) for k in on_cluster]
        else:
            fed: list = []
            try:
                results = run(ver.feed(fed), ver.guarded(work), lane=lane,
                              needs_lane=lambda j: isinstance(j, _Job) and j.multi
                              and not j.hashed,
                              workers=workers)  # fmt: skip
            except BaseException:
                with contextlib.suppress(BaseException):
                    finisher.drain()  # the first error is the one to report
                raise
            reuse = dict(ver.judged(r for j, r in zip(fed, results, strict=True)
                                    if isinstance(j, _Whole)))  # fmt: skip
            jobs = [j for j in fed if isinstance(j, _Job)]
            results = [r for j, r in zip(fed, results, strict=True) if isinstance(j, _Job)]
            digests = {**lane.done, **ver.digests}
            b3 = {}  # each result carries its chunk's
        finisher.drain()  # every object durable (or its error raised) before the manifest
        chunks_reused = sum(1 for r in results if r.get("reused"))
        doc = _manifest_doc(name, src, files, jobs, results, digests, opts, reuse, prev, b3)
        del jobs, results, digests, b3  # the manifest holds what it needs (10 TB: 163,840 chunks)
        record = [_store_record_file(store, name, *r, written) for r in opts.record]
        if opts.oms_key is not None:
            record.append(_model_signing(store, name, doc, opts.oms_key, written))
        doc["record"] = sorted(record, key=lambda r: r["path"])
        doc["spec"] = store_spec(store, name, written)
        for i, f in enumerate(files):
            files_io.check_unchanged(f, _where(src, files_io, f))
            got = doc["files"][i]["sha256"]
            if f.expected_sha256 and got != f.expected_sha256:
                raise IntegrityError(
                    f"{_where(src, files_io, f)}: sha256 {got} computed while sealing differs from the "
                    f"{src.expected_from} {f.expected_sha256}"
                )
        if keys:
            doc = keys.seal_manifest(doc, store, name, written)
        doc["bag_info"] = {"organization": opts.organization,
                           "description": opts.description or describe_source(doc)}  # fmt: skip
        manifest = sign_and_commit(vault, doc, key)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            finisher.drain()  # so `written` is complete
        # Nothing was committed: remove what this run wrote, so no half bundle lingers. Not
        # after a Conflict: another seal of this name is committing the same files, and
        # removing them would break its bundle; gc collects real orphans. Objects it added to
        # the pool are removed by seal() once no seal can be reusing them (remove_unclaimed).
        if not isinstance(e, Conflict) and not vault.is_committed(name):
            for key in set(written):
                with contextlib.suppress(Exception):
                    store.delete(key)
            with contextlib.suppress(Exception):
                store.prune_dirs(prefix(name))  # no empty bundle directory either
        raise
    return SealResult(
        bundle=manifest.bundle_id,
        name=name,
        files=len(files),
        bytes_in=sum(f.size for f in files),
        bytes_stored=manifest.bytes_stored,
        objects=len(manifest.doc["objects"]),
        seconds=round(time.monotonic() - t0, 3),
        vault=store.url,
        notes=src.notes,
        supersedes=prev.bundle_id if prev else None,
        files_reused=len(reuse),
        chunks_reused=chunks_reused,
        bytes_new=sum(size for _k, size in created),
        format_version=manifest.version,
    )


def sign_and_commit(vault: Vault, doc: dict, key: SigningKey | list[SigningKey]) -> Manifest:
    """Check, sign (with each key given) and commit a manifest whose objects and plain files
    are all stored."""
    manifest, signatures = Manifest.signed(doc, key)
    signature = {
        "format": "weightvault-signature",
        "format_version": 1,
        "payload_type": PAYLOAD_TYPE,
        "payload_sha256": manifest.bundle_id,
        "signatures": signatures,
    }
    vault.commit(manifest.name, commit_files(manifest, signature))
    return manifest


def store_spec(store: Store, name: str, written: list[str]) -> list[dict]:
    """Write the specification copies into bundle `name`; their entries for `spec`."""
    return [{"path": p, **_store_plain(store, name, p, [data], written)}
            for p, data in spec_files()]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Whole:
    """Hash a file the previous version has at the same path and size: if the digest is the
    signed one, its chunk entries are reused whole (no decoding, no encoding)."""

    file: int
    src: sources.SourceFile


def _previous_table(m: Manifest | None, keys: _KeyPlan | None) -> tuple[dict, dict]:
    """(path -> file entry, name -> object) of the previous version's signed file table (an
    encrypted one opened): what a new version may name again. Only a pooled version's
    objects can be named by another bundle, and of an encrypted one only chunk objects of
    scheme weightvault-aead-2, sealed under the lineage (FORMAT.md 10.3)."""
    if m is None or not m.pooled or (m.encryption is None) != (keys is None):
        return {}, {}
    if m.encryption is not None and m.encryption["scheme"] != crypt.SCHEME_LINEAGE:
        return {}, {}
    return {f["path"]: f for f in m.files}, m.objects


class _Versions:
    """What a new version takes from the previous one (FORMAT.md 4.8): whole files that are
    unchanged (_Whole jobs), and, in changed files, chunks equal to the previous version's
    chunk at the same place. Every source byte is read and hashed either way. The proof of
    "unchanged" is the previous version's signed digests: each chunk's BLAKE3 where it has
    them (format version 6: one cheap hash, no SHA-256 of an unchanged file, no object read),
    else the file's SHA-256 and, for the chunks of a changed file, a trial decode of the
    previous object (_Job.prev, in seal_chunk). In one process the changed files' chunk jobs
    follow their verdicts into the same worker pool (`feed`), so they run while other files
    are hashed."""

    def __init__(self, files, plans, table: tuple[dict, dict], store: Store,
                 digest: bool = True):  # fmt: skip
        self.files, self.plans = files, plans
        self.old, self.objects = table
        self.digest = digest  # the new manifest gives each chunk its BLAKE3 (clear: version 6)
        self.count = 0  # chunk jobs made (their `index`)
        self.digests: dict[int, str] = {}  # changed candidates: whole-file SHA-256, in order
        # changed candidates whose previous version has chunk digests: (offset, length) ->
        # BLAKE3 of each previous chunk that the source matched
        self.matched: dict[int, dict[tuple[int, int], str]] = {}
        self.candidates: list[_Whole] = []
        self._verdicts: queue.SimpleQueue = queue.SimpleQueue()
        self._failed = threading.Event()
        if not self.old:
            return
        pool = pool_sizes(store, [pool_key(c["object"]) for f in files
                                  if (e := self.old.get(f.path)) and e["size"] == f.size
                                  for c in e["chunks"]])  # fmt: skip
        for i, f in enumerate(files):
            e = self.old.get(f.path)
            if f.size and e and e["size"] == f.size and all(
                    pool.get(pool_key(c["object"])) == self.objects[c["object"]]["size"]
                    for c in e["chunks"]):  # fmt: skip
                self.candidates.append(_Whole(i, f))

    def whole(self, job: _Whole, files_io, on_bytes) -> dict:
        f = job.src
        old = self.old[f.path]
        chunks = old["chunks"]
        ranges = [(c["offset"], c["length"]) for c in chunks]
        olds = chunk_digests(old)
        if self.digest and olds is not None:
            _, got = hash_file(files_io, f, on_bytes, ranges, sha256=False)
            matched = {r: d for r, g, d in zip(ranges, got, olds, strict=True) if g == d}
            same = len(matched) == len(chunks) and f.expected_sha256 in (None, old["sha256"])
            if not same:
                self.matched[job.file] = matched
                # its chunk jobs may start now: they do not need the file's SHA-256, which is
                # still needed whole, from a second read of this file alone
                self._verdicts.put((job.file, False))
                self.digests[job.file] = hash_file(files_io, f)[0]
                return {"file": job.file, "whole": None}
            entry = old
        else:
            d, got = hash_file(files_io, f, on_bytes, ranges if self.digest else None)
            same = d == old["sha256"] and f.expected_sha256 in (None, d)
            if not same:
                self.digests[job.file] = d
            # a version 6 manifest naming a version 4 file's chunks gives them their digests
            entry = {**old, "chunks_blake3": "".join(got)} if self.digest else \
                {k: v for k, v in old.items() if k != "chunks_blake3"}  # a version 4 seal
        self._verdicts.put((job.file, same))
        return {"file": job.file, "whole": {**entry, "mode": f.mode & 0o777} if same else None}

    def judged(self, results) -> list[tuple[int, dict]]:
        """(file index, reused entry) from the results of `whole`."""
        return [(r["file"], r["whole"]) for r in results if r["whole"] is not None]

    def chunk_jobs(self, i: int, hashed: bool = False) -> list[_Job]:
        f, plan = self.files[i], self.plans[i]
        old = self.old.get(f.path)
        at = {(c["offset"], c["length"]): (c, self.objects[c["object"]])
              for c in old["chunks"]} if old else {}  # fmt: skip
        matched = self.matched.get(i)
        out = []
        for j, p in enumerate(plan):
            prev = at.get((p.offset, p.length))
            known = matched.get((p.offset, p.length)) if matched is not None else None
            if prev is not None and matched is not None and known is None:
                prev = None  # its digest differs: no trial decode can find it equal
            out.append(_Job(i, f, p, j == len(plan) - 1, len(plan) > 1, self.count, prev,
                            hashed, known, self.digest))  # fmt: skip
            self.count += 1
        return out

    def guarded(self, work):
        """`work` that tells `feed` when any job failed (run then cancels the rest, and
        verdicts may never come)."""

        def run_one(job, emit):
            try:
                return work(job, emit)
            except BaseException:
                self._failed.set()
                raise

        if not self.candidates:
            return work
        return run_one

    def feed(self, fed: list):
        """Jobs for run(), recorded in `fed`: the candidates' hashing first, the chunks of
        every other file, then each candidate's chunks as soon as its digest differs."""
        cands = {c.file for c in self.candidates}
        for c in self.candidates:
            fed.append(c)
            yield c
        for i in range(len(self.files)):
            if i not in cands:
                for j in self.chunk_jobs(i):
                    fed.append(j)
                    yield j
        for _ in cands:
            while True:
                try:
                    i, same = self._verdicts.get(timeout=0.2)
                    break
                except queue.Empty:
                    if self._failed.is_set():
                        return  # run() raises the failure
            if not same:
                # Its SHA-256 came from one in-order read; that the bytes compared and encoded
                # now are the same ones is what the end-of-seal check of size and mtime says
                # (check_unchanged), as for every file: hashing them twice cost a new version
                # a quarter of its time
                for j in self.chunk_jobs(i, hashed=True):
                    fed.append(j)
                    yield j


def file_sha256(files_io, f, on_bytes: Callable[[int], None] | None = None) -> str:
    """A source file's SHA-256, read in order (a file split across cluster tasks)."""
    return hash_file(files_io, f, on_bytes)[0]


def hash_file(files_io, f, on_bytes: Callable[[int], None] | None = None,
              ranges: list[tuple[int, int]] | None = None, *,
              sha256: bool = True) -> tuple[str | None, list[str]]:  # fmt: skip
    """One in-order read of a source file in PIECE-sized range reads: its SHA-256 (unless not
    `sha256`) and the BLAKE3 of each of `ranges` ((offset, length) tiling the file, in
    order: the previous version's chunks)."""
    h = hashlib.sha256() if sha256 else None
    out: list[str] = []
    fh = files_io.open(f, 0, f.size)
    try:
        for start, length in ranges or [(0, f.size)]:
            b3 = chunk_digest() if ranges is not None else None
            for off, n in pieces(length, codec.PIECE):
                buf = fh.pread(n, start + off)
                if len(buf) != n:
                    raise InputError(f"{f.abspath}: file shrank while sealing")
                if h is not None:
                    h.update(buf)
                if b3 is not None:
                    b3.update(buf)
                if on_bytes:
                    on_bytes(n)
            if b3 is not None:
                out.append(b3.hexdigest())
    finally:
        fh.close()
    return (h.hexdigest() if h else None), out


def seal_chunk(job: _Job, emit: Emit, files_io, store: Store, name: str, level: int,
               codec_name: str, keys: _KeyPlan | None, commit: Callable,
               on_bytes: Callable[[int], None] | None) -> dict:  # fmt: skip
    """Read, encode and store one chunk; `commit(writer, key)` makes it durable. The same code
    runs in this process's threads and in a cluster worker's task. A chunk that the previous
    version holds at the same place (`job.prev`) is first compared with that object's decoded
    bytes: equal, the new manifest names the old object, and nothing is encoded or stored."""
    p = job.piece
    if job.known is not None:
        chunk, obj = job.prev
        return {"chunk": {**chunk, "offset": p.offset, "length": p.length}, "size": obj["size"],
                "reused": True, "file_sha256": None, "blake3": job.known}  # fmt: skip
    # Each byte is hashed once per form (FORMAT.md section 9, version 3): a chunk that is
    # its whole file is hashed here, a longer file's chunks in order by the lane; and, in
    # version 6, once more by the chunk's own digest, here
    h = None if job.multi or job.hashed else hashlib.sha256()
    b3 = chunk_digest() if job.digest else None
    seen = 0  # source bytes of this chunk hashed (or handed to the lane) so far

    def source(fh):
        nonlocal seen
        for off, n in pieces(p.length, codec.PIECE):
            buf = fh.pread(n, p.offset + off)
            if len(buf) != n:
                raise InputError(f"{job.src.abspath}: file shrank while sealing")
            if off >= seen:  # a trial decode that found a difference read these already
                if h is not None:
                    h.update(buf)
                elif not job.hashed:
                    emit(buf)
                if b3 is not None:
                    b3.update(buf)
                if on_bytes:
                    on_bytes(n)
                seen = off + n
            yield buf

    fh = files_io.open(job.src, p.offset, p.offset + p.length)
    try:
        trial = ("differs", "")
        if job.prev is not None:
            chunk, obj = job.prev
            trial = trial_decode(store, pool_key(obj["name"]), obj, chunk, source(fh),
                                 keys.opener if keys else None)  # fmt: skip
            if trial[0] == "same":  # source(fh) was read to its end
                chunk = {**chunk, "offset": p.offset, "length": p.length}
                return {"chunk": chunk, "size": obj["size"], "reused": True,
                        "file_sha256": h.hexdigest() if h else None,
                        "blake3": b3.hexdigest() if b3 else None}  # fmt: skip
        enc = codec.ChunkEncoder(p.length, p.dtype, level, codec_name)
        s256 = hashlib.sha256()
        sealer = keys.chunk_sealer() if keys else None
        w = store.new_object()
        try:
            for buf in source(fh):
                for out in enc.feed_parts(buf):
                    if sealer:
                        out = sealer.feed(out)
                    if out:
                        s256.update(out)
                        w.write(out)
            tail = enc.finish()
            for out in itertools.chain((sealer.feed(tail),), sealer.finish_parts()) if sealer \
                    else (tail,):  # fmt: skip
                if out:
                    s256.update(out)
                    w.write(out)
            obj = s256.hexdigest()
            size = w.size
            if trial[0] == "damaged" and obj == job.prev[1]["name"]:
                # the pool's file of this name is damaged, and an object is never rewritten:
                # naming it would commit a bundle that cannot be restored (FORMAT.md 2.2)
                raise IntegrityError(f"{trial[1]}; run `weightvault repair` before sealing a "
                                     "new version that names it")  # fmt: skip
            # inside the try: if the commit step refuses (an earlier commit failed), nothing
            # else would ever commit or remove this object
            commit(w, pool_key(obj))  # format version 4: the vault's pool (FORMAT.md 2.2)
        except BaseException:
            w.abort()
            raise
    finally:
        fh.close()
    chunk = {"offset": p.offset, "length": p.length, "codec": enc.codec, "object": obj}
    if p.dtype:
        chunk["dtype"] = p.dtype
    return {"chunk": chunk, "size": size, "file_sha256": h.hexdigest() if h else None,
            "blake3": b3.hexdigest() if b3 else None}


def _where(src: sources.Source, files_io, f) -> str:
    describe = getattr(files_io, "describe", None)
    return describe(f) if describe else str(src.root / f.path)


def _commit_object(store: Store, w, key: str, created: list) -> None:
    """Make a pool object durable; `created` gets (key, size) if this call created it (an
    existing pooled object is never rewritten)."""
    try:
        made = w.commit(key, exclusive=True)
    finally:
        w.abort()  # a no-op once committed; else the staged copy goes
    if made:
        created.append((key, w.size))
        drop_cached(store, key)  # synced: recycle its memory


def _store_record_file(store: Store, name: str, role: str, local: Path, path: str,
                       written: list[str]) -> dict:  # fmt: skip
    try:
        f = open(local, "rb")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"{local}: cannot read {role} file ({e.strerror})") from None
    with f:
        entry = _store_plain(store, name, path, iter(lambda: f.read(codec.PIECE), b""), written)
    return {"path": path, "role": role, **entry}


def _store_plain(store: Store, name: str, path: str, pieces, written: list[str]) -> dict:
    """A plain payload file at data/PATH: its size and digests for the manifest."""
    check_relpath(path, "payload file")
    s256 = hashlib.sha256()
    with store.new_object() as w:
        for data in pieces:
            s256.update(data)
            w.write(data)
        key = f"{prefix(name)}/data/{path}"
        w.commit(key)
        written.append(key)
        size = w.size
    return {"size": size, "sha256": s256.hexdigest()}


class _KeyPlan:
    """The data key of one encrypted seal and what it is wrapped and split into. A first
    version draws a data key and a lineage salt; a new version of an encrypted lineage takes
    both from its opened predecessor (`prev`), and draws only the bundle's own salt (private
    section, key check, share digests)."""

    def __init__(self, opts: SealOptions, prev=None):
        self.opts, self.prev = opts, prev
        penc = prev.manifest.encryption if prev else None
        self.dk = prev.data_key if prev else crypt.new_data_key()
        self.lineage = penc["lineage_salt"] if penc and "lineage_salt" in penc \
            else crypt.new_salt()  # fmt: skip
        self.salt = crypt.new_salt()
        # how the trial decode opens a previous chunk object: same key, same lineage
        self.opener = crypt.chunk_opener(self.dk, {"scheme": crypt.SCHEME_LINEAGE,
                                                   "lineage_salt": self.lineage}, 0)  # fmt: skip

    @classmethod
    def new(cls, opts: SealOptions, prev=None) -> _KeyPlan:
        for r in opts.encrypt_to:
            crypt.parse_recipient(r)
        names = [n for n, _ in opts.custodians]
        for n, r in opts.custodians:
            check_name(n, "custodian name")
            crypt.parse_recipient(r)
        if len(set(names)) != len(names):
            raise InputError("custodian names must be unique")
        if opts.custodians and opts.threshold is None:
            raise InputError("--custodians needs --threshold K (how many shares open the bundle)")
        if opts.threshold is not None and not opts.custodians:
            raise InputError("--threshold needs --custodians FILE")
        if opts.custodians and not 1 <= opts.threshold <= len(opts.custodians):
            raise InputError(f"threshold {opts.threshold} is out of range 1..{len(names)} "
                             "(the number of custodians)")  # fmt: skip
        return cls(opts, prev)

    def chunk_sealer(self) -> crypt.LineageSealer:
        return crypt.LineageSealer(self.dk, self.lineage)

    def seal_manifest(self, doc: dict, store: Store, name: str, written: list[str]) -> dict:
        """FORMAT.md section 10: the file table and source go into the sealed private
        section; the signed manifest keeps what an auditor needs (objects, sizes, digests)."""
        doc = {**doc, "format_version": ENCRYPTED_VERSION}
        private = {"format": "weightvault-private", "format_version": doc["format_version"],
                   "bundle": {"name": name, "salt": self.salt},
                   "source": doc["source"], "files": doc["files"]}  # fmt: skip
        sealed = crypt.seal_bytes(self.dk, self.salt, "private", 0, canon.canonical(private))
        path = "private/manifest.sealed"
        priv = {"path": path, **_store_plain(store, name, path, [sealed], written)}
        envelopes = []
        for i, r in enumerate(self.opts.encrypt_to, 1):
            envelopes.append(self._envelope(store, name, f"keys/recipient-{i}.age", "recipient",
                                            f"recipient-{i}", r, crypt.data_key_text(self.dk),
                                            None, written))  # fmt: skip
        shares = None
        if self.opts.custodians:
            split = crypt.split(self.dk, self.opts.threshold, len(self.opts.custodians))
            for (cname, r), sh in zip(self.opts.custodians, split, strict=True):
                envelopes.append(self._envelope(
                    store, name, f"keys/share-{cname}.age", "share", cname, r,
                    crypt.share_plaintext(sh.text, doc["format_version"]),
                    crypt.share_digest(self.salt, sh.text), written))  # fmt: skip
            shares = {"scheme": "slip39", "threshold": self.opts.threshold,
                      "count": len(split), "identifier": split[0].identifier}  # fmt: skip
        return {**doc, "source": {"kind": "encrypted"}, "files": [],
                "encryption": {"scheme": crypt.SCHEME_LINEAGE, "salt": self.salt,
                               "lineage_salt": self.lineage,
                               "segment_size": crypt.SEGMENT,
                               "key_check": crypt.key_check(self.dk, self.salt),
                               "private": priv,
                               "envelopes": sorted(envelopes, key=lambda e: e["path"]),
                               "shares": shares}}  # fmt: skip

    def _envelope(self, store, name, path, kind, label, recipient, text, digest, written):
        armored = crypt.wrap(text, recipient)
        entry = _store_plain(store, name, path, [armored], written)
        return {"path": path, "kind": kind, "label": label, "recipient": recipient.strip(),
                "share_digest": digest, **entry}  # fmt: skip


def _model_signing(store: Store, name: str, doc: dict, key, written: list[str]) -> dict:
    """An OpenSSF model-signing signature over the digests this seal computed, kept with the
    record, so a restored model verifies with `model_signing verify key` as well."""
    import tempfile

    from weightvault.record import oms

    sig = oms.sign_files([(f["path"], f["sha256"], f["size"]) for f in doc["files"]], key,
                         model_name=name)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="weightvault-oms-") as d:
        p = Path(d) / oms.default_signature_name()
        p.write_bytes(sig)
        return _store_record_file(store, name, "model-signing", p,
                                  f"record/{oms.default_signature_name()}", written)  # fmt: skip


def _epoch() -> int | None:
    """$SOURCE_DATE_EPOCH (reproducible-builds.org) pins the seal time: two seals of the same
    source are then byte-identical, signature included (Ed25519 is deterministic)."""
    v = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not v:
        return None
    if not v.isdigit():
        raise InputError(f"SOURCE_DATE_EPOCH={v!r}: expected whole seconds since 1970")
    return int(v)


def _manifest_doc(name, src, files, jobs, results, digests, opts, reuse, prev,
                  b3_hex: dict[int, str]) -> dict:  # fmt: skip
    entries = [
        reuse.get(i) or
        {"path": f.path, "size": f.size, "mode": f.mode & 0o777, "sha256": "", "chunks": []}
        for i, f in enumerate(files)
    ]
    objects: dict[str, dict] = {}
    old_objects = prev.manifest.objects if reuse else {}
    for e in reuse.values():
        for c in e["chunks"]:
            o = old_objects[c["object"]]
            objects[o["name"]] = {"name": o["name"], "size": o["size"]}
    b3: dict[int, list[str]] = {}  # file index -> its chunks' BLAKE3, in order
    for job, r in zip(jobs, results, strict=True):
        e = entries[job.file]
        e["chunks"].append(r["chunk"])
        if r.get("blake3"):
            b3.setdefault(job.file, []).append(r["blake3"])
        if not job.multi:
            e["sha256"] = r["file_sha256"]
        objects[r["chunk"]["object"]] = {"name": r["chunk"]["object"], "size": r["size"]}
    for i, e in enumerate(entries):
        if e["size"] == 0:
            e["sha256"] = hashlib.sha256(b"").hexdigest()
        elif not e["sha256"]:
            e["sha256"] = digests[i]
        if opts.chunk_digests and i not in reuse:
            e["chunks_blake3"] = b3_hex.pop(i, None) or "".join(b3.pop(i, ()))
    prov = dict(src.provenance)
    if opts.excludes:
        prov["excluded"] = list(opts.excludes)
    checked = sum(1 for f in files if f.expected_sha256)
    if checked:
        prov["verified_against"] = src.expected_from
        prov["verified_files"] = checked
    return {
        "format": "weightvault-manifest",
        "format_version": FORMAT_VERSION if opts.chunk_digests else POOLED,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_epoch())),
        "tool": {"name": "weightvault", "version": __version__},
        "source": prov,
        "chunking": {"target_size": opts.chunk_size, "piece_size": codec.PIECE},
        "files": entries,
        "objects": [objects[k] for k in sorted(objects)],
        "encryption": None,
        "record": [],
        "spec": [],
        "supersedes": {"bundle": prev.bundle_id, "name": prev.name} if prev else None,
        "bag_info": {},
    }
