"""Verify a bundle in place: signature, schema, BagIt tag files, every stored digest and, with
deep=True, every chunk decoded and every file's digest recomputed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from weightvault.archive.pipeline import Emit, FileDigests, default_workers, run
from weightvault.archive.restore import _Job, chunk_digest, chunk_jobs, file_digest_mismatches
from weightvault.errors import CorruptData, InputError, IntegrityError, StorageError
from weightvault.format import bag
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import MANIFEST_KEY, SIGNATURE_KEY
from weightvault.storage.chunkio import Problem, check_object, decode_chunk
from weightvault.storage.store import Store
from weightvault.storage.vault import FORMAT_KEY, OBJECTS, Bundle, Vault, object_key, prefix

# Paths a bag manifest lists beyond the signed manifest's, each reported (then only a count)
MAX_UNKNOWN = 100


@dataclass
class VerifyReport:
    bundle: str
    name: str
    signer: str | None
    deep: bool
    objects: int
    bytes_checked: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    signers: list[str] = field(default_factory=list)  # every trusted key that signed (ids)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["ok"] = self.ok
        d["problems"] = [p.as_dict() for p in self.problems]
        return d


def verify(
    store: Store,
    ref: str,
    trusted: list[PublicKey],
    *,
    insecure: bool = False,
    deep: bool = False,
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    keys=None,
    executor=None,
) -> VerifyReport:
    """`keys` (unlock.Keys) opens an encrypted bundle for deep=True; without them a deep
    verify of an encrypted bundle is refused (its stored digests verify without any key)."""
    from weightvault.custody.unlock import Keys, prepare

    t0 = time.monotonic()
    vault = Vault(store)
    b = vault.load(ref, trusted, insecure=insecure)
    m = b.manifest
    opened = None
    if deep:
        m, opened = prepare(store, b, keys or Keys())
    report = VerifyReport(m.bundle_id, m.name, b.signer.key_id if b.signer else None, deep,
                          len(m.doc["objects"]), 0, signers=[k.key_id for k in b.signers])  # fmt: skip
    report.problems += check_bag(vault, b)
    before = store.counters.bytes_read
    if on_start:
        on_start(m.bytes_in if deep else m.bytes_stored)
    objects = m.objects
    if deep:
        files = m.files

        def work(job: _Job, emit: Emit) -> Problem | None:
            c = job.chunk
            key = object_key(m, c["object"])
            try:
                decode_chunk(store, key, objects[c["object"]], c, file_path=files[job.file]["path"],
                             emit=emit if job.multi else None, on_bytes=on_bytes,
                             expect=chunk_digest(files[job.file], c), blake3=job.blake3,
                             cipher=opened.cipher(c["object"]) if opened else None)  # fmt: skip
            except IntegrityError as e:
                return _problem(store, key, e)
            return None

        lane = FileDigests()
        workers = workers or default_workers()
        if executor is not None and executor.distributed:
            if opened:
                raise InputError(f"--executor {executor.spec} cannot verify an encrypted bundle "
                                 "deeply: workers would need the data key")  # fmt: skip
            from weightvault.archive.distributed import verify_on_cluster

            found, lane.done = verify_on_cluster(executor, store,
                                                 None if m.pooled else m.name, files, objects,
                                                 workers, on_bytes)  # fmt: skip
        else:
            found = run(chunk_jobs(files), work, lane=lane, needs_lane=lambda j: j.multi,
                        workers=workers)  # fmt: skip

        report.problems += _unique(p for p in found if p)
        if not any(p.kind in ("missing", "damaged") for p in report.problems):
            for f, got in file_digest_mismatches(files, lane.done):
                report.problems.append(Problem("file", f["path"], f"whole-file sha256 {got} "
                                               f"differs from the manifest's {f['sha256']}"))  # fmt: skip
    else:

        def check(name: str, _emit: Emit) -> Problem | None:
            key = object_key(m, name)
            try:
                check_object(store, key, objects[name])
                if on_bytes:
                    on_bytes(objects[name]["size"])
            except IntegrityError as e:
                return _problem(store, key, e)
            return None

        found = run(sorted(objects), check, workers=workers)
        report.problems += [p for p in found if p]
    for r in m.plain_files:
        key = f"{prefix(m.name)}/data/{r['path']}"
        try:
            check_object(store, key, {"name": r["sha256"], **r})
        except IntegrityError as e:
            report.problems.append(_problem(store, key, e))
    report.bytes_checked = store.counters.bytes_read - before
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def _problem(store: Store, key: str, e: Exception) -> Problem:
    msg = str(e)
    where = store.describe(key)
    detail = msg[len(where) + 2 :] if msg.startswith(where + ": ") else msg
    kind = "missing" if detail == "missing" else "damaged"
    return Problem(kind, where, detail)


def _unique(problems) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.where, p.detail) not in seen:
            seen.add((p.where, p.detail))
            out.append(p)
    return out


def check_bag(vault: Vault, b: Bundle) -> list[Problem]:
    """The BagIt side: tag files present and consistent with the signed manifest."""
    if b.manifest.pooled:
        return check_bag_fixed(vault, b)
    st, m = vault.store, b.manifest
    p = prefix(m.name)
    problems: list[Problem] = []
    algs = bag.algs(m.doc["format_version"])
    tag_files = bag.tag_files(algs)

    def where(key: str) -> str:
        return st.describe(f"{p}/{key}")

    def unreadable(key: str, e: Exception) -> None:
        problems.append(Problem("tag", where(key), str(e).split(": ")[-1]))

    def read(key: str, limit: int) -> bytes | None:
        try:
            return st.read_bytes(f"{p}/{key}", limit)
        except (StorageError, CorruptData) as e:
            unreadable(key, e)
            return None

    def open_tag(key: str):
        try:
            return st.open_read(f"{p}/{key}")
        except (StorageError, CorruptData) as e:
            unreadable(key, e)
            return None

    # Tag files are read as streams, a line or a buffer at a time: they are not signed, so
    # their size (up to bag.MAX_TAG_FILE each) must not decide how much memory verify takes.
    hashed: dict[str, tuple | Exception] = {}

    def digests(key: str) -> tuple | None:
        """(size, *digests in `algs` order) of a tag file, hashed once; None (and a problem) if
        unreadable."""
        if key not in hashed:
            try:
                with st.open_read(f"{p}/{key}") as f:
                    hashed[key] = bag.file_digests(f, where(key), algs=algs)
            except (StorageError, CorruptData) as e:
                hashed[key] = e
        got = hashed[key]
        if isinstance(got, Exception):
            unreadable(key, got)
            return None
        return got

    if (txt := read("bagit.txt", 4096)) is not None and txt != bag.BAGIT_TXT:
        problems.append(Problem("tag", where("bagit.txt"), "not a BagIt 1.0 declaration"))
    expected: dict[str, tuple] = {  # path -> (size, *digests in `algs` order)
        f"{OBJECTS}/{o['name']}": (o["size"], o["name"], *(o[a] for a in algs[1:]))
        for o in m.doc["objects"]
    }
    for r in m.plain_files:
        expected[f"data/{r['path']}"] = (r["size"], *(r[a] for a in algs))
    expected[MANIFEST_KEY] = (len(m.raw), *bag.digests(m.raw, algs))
    if (got := digests(FORMAT_KEY)) is not None:
        expected[FORMAT_KEY] = got
        if not known_format_text(got[1], m.version):
            problems.append(Problem("damaged", where(FORMAT_KEY), "not a text of FORMAT.md that "
                                    f"any weightvault wrote into a version {m.version} bundle "
                                    "(FORMAT.md section 9.2)"))  # fmt: skip
    for i, alg in enumerate(algs):
        key = f"manifest-{alg}.txt"
        f = open_tag(key)
        if f is None:
            continue
        listed: dict[str, str] = {}  # only the paths expected: bounded by the signed manifest
        unknown: list[str] = []  # the first few others, by path
        n_unknown = 0
        try:
            with f:
                for n, path, digest in bag.iter_manifest(f, where(key)):
                    if path not in expected:
                        n_unknown += 1
                        unknown.append(path)
                        if len(unknown) > 2 * MAX_UNKNOWN:
                            unknown = sorted(set(unknown))[:MAX_UNKNOWN]
                    elif path in listed:
                        raise CorruptData(f"{where(key)}: line {n} lists {path!r} twice")
                    else:
                        listed[path] = digest
        except CorruptData as e:
            problems.append(Problem("tag", where(key), str(e)))
            continue
        for path, (_size, *digs) in expected.items():
            if path not in listed:
                problems.append(Problem("tag", where(key), f"does not list {path}"))
            elif listed[path] != digs[i] and path in (MANIFEST_KEY, FORMAT_KEY):
                problems.append(Problem("damaged", where(path), f"{alg} differs from {key}"))
            elif listed[path] != digs[i]:
                problems.append(Problem("tag", where(key),
                                        f"{path}: {alg} differs from the signed manifest"))  # fmt: skip
        unknown = sorted(set(unknown))[:MAX_UNKNOWN]
        for path in unknown:
            problems.append(Problem("tag", where(key),
                                    f"lists {path}, which the signed manifest does not"))  # fmt: skip
        if n_unknown > len(unknown):
            problems.append(Problem("tag", where(key), f"and {n_unknown - len(unknown)} more "
                                    "lines naming paths the signed manifest does not list"))  # fmt: skip
    info = open_tag("bag-info.txt")
    if info is not None:
        any_field, fields = False, {}
        try:
            with info:
                for label, value in bag.iter_info(info, where("bag-info.txt")):
                    any_field = True
                    if label in ("Payload-Oxum", "External-Identifier"):
                        fields[label] = value
        except CorruptData as e:
            problems.append(Problem("tag", where("bag-info.txt"), str(e)))
            any_field = False
        oxum = f"{sum(v[0] for v in expected.values())}.{len(expected)}"
        if any_field and fields.get("Payload-Oxum") != oxum:
            problems.append(Problem("tag", where("bag-info.txt"),
                                    f"Payload-Oxum {fields.get('Payload-Oxum')} should be {oxum}"))  # fmt: skip
        if any_field and fields.get("External-Identifier") != f"weightvault:bundle:{m.bundle_id}":
            problems.append(Problem("tag", where("bag-info.txt"),
                                    "External-Identifier does not name this bundle"))  # fmt: skip
    for i, alg in enumerate(algs):
        key = f"tagmanifest-{alg}.txt"
        f = open_tag(key)
        if f is None:
            continue
        listed = {}
        try:
            with f:
                for n, path, digest in bag.iter_manifest(f, where(key)):
                    if path in listed:
                        raise CorruptData(f"{where(key)}: line {n} lists {path!r} twice")
                    if path in tag_files:
                        listed[path] = digest
        except CorruptData as e:
            problems.append(Problem("tag", where(key), str(e)))
            continue
        for tag in tag_files:
            got = digests(tag)
            if got is not None and listed.get(tag) != got[1 + i]:
                problems.append(Problem("tag", where(tag), f"{alg} differs from {key}"))
    present = set(st.list(p))
    for key in sorted(k for k in present - {f"{p}/{k}" for k in expected}
                      if k.startswith(f"{p}/data/")):  # fmt: skip
        problems.append(Problem("extra", st.describe(key), "file in the bag's payload that no "
                                "manifest lists"))  # fmt: skip
    # A manifest for an algorithm this version does not use is unsigned data a BagIt tool
    # would still check: in a version 3 bag, a planted manifest-sha512.txt is damage.
    ours = {f"{p}/{k}" for k in (*tag_files, *(f"tagmanifest-{a}.txt" for a in algs))}
    for key in sorted(k for k in present - ours
                      if "/" not in k[len(p) + 1 :] and "manifest-" in k):  # fmt: skip
        problems.append(Problem("extra", st.describe(key), "a BagIt manifest that format "
                                f"version {m.doc['format_version']} does not have"))  # fmt: skip
    return problems


def known_format_text(sha256: str, version: int) -> bool:
    """Bundles of format versions 1 to 3 carry a FORMAT.md that their signed manifest does not
    name: it is proven by being one of the texts weightvault shipped for that version."""
    from weightvault.format.known_spec import KNOWN_FORMAT_TEXTS

    top = KNOWN_FORMAT_TEXTS.get(sha256)
    return top is not None and version <= top


def check_bag_fixed(vault: Vault, b: Bundle) -> list[Problem]:
    """Format version 4 and later: every tag file is a function of the signed manifest and the
    signature (FORMAT.md section 3), so each is compared byte for byte with what they fix,
    and every payload file in the bag must be one the manifest names (plain files are hashed
    by the caller, objects live in the pool)."""
    from weightvault.storage.vault import MAX_SIG, commit_files

    st, m = vault.store, b.manifest
    p = prefix(m.name)
    problems: list[Problem] = []
    try:
        sig_raw = st.read_bytes(f"{p}/{SIGNATURE_KEY}", MAX_SIG)
    except (StorageError, CorruptData) as e:
        return [Problem("tag", st.describe(f"{p}/{SIGNATURE_KEY}"), str(e).split(": ")[-1])]
    fixed = dict(commit_files(m, sig_raw))
    for key, want in fixed.items():
        if key in (MANIFEST_KEY, SIGNATURE_KEY):
            continue  # checked when the bundle was loaded
        where = st.describe(f"{p}/{key}")
        try:
            got = st.read_bytes(f"{p}/{key}", len(want))
        except CorruptData:
            got = None
        except StorageError as e:
            problems.append(Problem("tag", where, "missing" if st.size(f"{p}/{key}") is None
                                    else str(e).split(": ")[-1]))  # fmt: skip
            continue
        if got != want:
            problems.append(Problem("tag", where, "differs from the bytes the signed manifest "
                                    "fixes (FORMAT.md section 3)"))  # fmt: skip
    ours = {f"{p}/{k}" for k in fixed} | {f"{p}/data/{r['path']}" for r in m.plain_files}
    for key in sorted(set(st.list(p)) - ours):
        problems.append(Problem("extra", st.describe(key), "file in the bag that the signed "
                                "manifest does not name"))  # fmt: skip
    return problems
