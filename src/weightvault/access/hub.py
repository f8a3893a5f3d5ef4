"""Bundles as Hugging Face model repos: the repo id and revision of a bundle, the catalog of
the trusted bundles of a vault, and the Hub cache layout (restore --hf-cache).

Mapping (docs/ACCESS.md): a bundle sealed from the Hub (source kind hf-hub or hf-cache, repo
type model) is its provenance repo id at its provenance commit; any other bundle is
`weightvault/<bundle name>` at the first 40 hex digits of its bundle id. Every file is shown
as a Git LFS file whose oid (and ETag) is the file's SHA-256 from the signed manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.access.bundle import BundleReader
from weightvault.errors import Conflict, InputError, WeightvaultError
from weightvault.storage.store import Store
from weightvault.storage.vault import Vault

log = logging.getLogger("weightvault.serve")

NAMESPACE = "weightvault"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
# huggingface_hub's own validate_repo_id, so every id the catalog shows is one the client takes
_REPO_ID = re.compile(r"^(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


def repo_id_ok(repo_id: object) -> bool:
    return (isinstance(repo_id, str) and len(repo_id) <= 96 and bool(_REPO_ID.match(repo_id))
            and "--" not in repo_id and ".." not in repo_id)  # fmt: skip


@dataclass(frozen=True)
class HubName:
    repo_id: str
    commit: str  # 40 hex
    refs: tuple[str, ...]  # branch or tag names that point at this commit (besides main)


def hub_name(reader: BundleReader) -> HubName:
    """The repo id and revision a bundle is served and cached as."""
    src = reader.source
    if (src.get("kind") in ("hf-hub", "hf-cache") and src.get("repo_type", "model") == "model"
            and repo_id_ok(src.get("repo_id")) and _HEX40.match(str(src.get("commit", "")))):  # fmt: skip
        refs = [src.get("revision")] if src["kind"] == "hf-hub" else list(src.get("refs") or [])
        refs = tuple(r for r in refs if isinstance(r, str) and _REF.match(r) and ".." not in r
                     and r != src["commit"])  # fmt: skip
        return HubName(src["repo_id"], src["commit"], refs)
    repo = f"{NAMESPACE}/{reader.name}"
    if not repo_id_ok(repo):
        repo = f"{NAMESPACE}/bundle-{reader.bundle_id[:16]}"
    return HubName(repo, reader.bundle_id[:40], ())


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob id of a file's Git LFS pointer: what the Hub lists as an LFS file's oid."""
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    by_commit: dict[str, BundleReader] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # ref name -> commit

    def resolve(self, revision: str) -> tuple[str, BundleReader] | None:
        commit = self.refs.get(revision, revision)
        r = self.by_commit.get(commit)
        return (commit, r) if r is not None else None


class Catalog:
    """The trusted bundles of one store, by repo id. Bundles whose signature does not verify
    against the trusted keys, and encrypted bundles the keys do not open, are left out (each
    with one log line saying why)."""

    def __init__(self, store: Store, trusted, keys=None, *, fetchers=None):
        if not trusted:
            raise InputError("no trusted public key given: pass --trust KEY.pub (unsigned or "
                             "unverified bundles are never served)")  # fmt: skip
        self.store = store
        self.repos: dict[str, Repo] = {}
        self.skipped: dict[str, str] = {}
        vault = Vault(store)
        readers: list[tuple[str, HubName, BundleReader]] = []
        for name in vault.names():
            try:
                b = vault.load(name, trusted)
                if b.manifest.encryption is not None and not keys:
                    raise InputError("encrypted; start the server with --identity or --share "
                                     "to serve it")  # fmt: skip
                r = BundleReader(store, b, keys, fetchers=fetchers)
            except WeightvaultError as e:
                self.skipped[name] = str(e)
                log.warning("not serving bundle %s: %s", name, e)
                continue
            readers.append((r.manifest.doc["created"], hub_name(r), r))
        # oldest first, so the newest seal of a repo and commit wins and becomes main
        for _created, hn, r in sorted(readers, key=lambda t: (t[0], t[2].name)):
            repo = self.repos.setdefault(hn.repo_id, Repo(hn.repo_id))
            if hn.commit in repo.by_commit:
                log.warning("bundle %s shadows bundle %s as %s@%s", r.name,
                            repo.by_commit[hn.commit].name, hn.repo_id, hn.commit)  # fmt: skip
            repo.by_commit[hn.commit] = r
            repo.refs["main"] = hn.commit
            for ref in hn.refs:
                repo.refs[ref] = hn.commit

    def readers(self) -> list[BundleReader]:
        return [r for repo in self.repos.values() for r in repo.by_commit.values()]


def write_hf_cache(reader: BundleReader, cache_dir: Path, *,
                   on_bytes: Callable[[int], None] | None = None) -> dict:  # fmt: skip
    """Write the bundle into a Hugging Face cache (the layout huggingface_hub itself writes):
    models--ORG--NAME/blobs/<sha256>, snapshots/<commit>/<path> as relative symlinks to the
    blobs, refs/main (and the provenance refs) holding the commit. Each blob is written under a
    temporary name and renamed only once its whole-file digest matched; blobs already present
    are kept (named by their digest, they hold the same bytes). A snapshot that exists already
    is refused, so nothing of an existing cache is overwritten."""
    from weightvault.archive.pipeline import keep_freed_memory

    keep_freed_memory()
    hn = hub_name(reader)
    cache_dir = Path(cache_dir).absolute()
    repo_dir = cache_dir / f"models--{hn.repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / hn.commit
    if snap.exists():
        raise Conflict(f"{snap}: snapshot exists already in the cache")
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    _cachedir_tag(cache_dir)
    moved = 0
    tmp_snap = repo_dir / "snapshots" / f".{hn.commit}.weightvault-{secrets.token_hex(4)}"
    tmp_snap.mkdir(parents=True)
    try:
        for f in reader.files():
            blob = blobs / f.sha256
            if not blob.exists():
                tmp = blobs / f".{f.sha256}.weightvault-{secrets.token_hex(4)}.incomplete"
                try:
                    with open(tmp, "xb") as out:
                        for piece in reader.iter_range(f.path, ahead=True):
                            out.write(piece)
                            if on_bytes:
                                on_bytes(len(piece))
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, blob)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                moved += f.size
            link = tmp_snap / f.path
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
        os.rename(tmp_snap, snap)
    except BaseException:
        _remove_links(tmp_snap)
        raise
    refs = repo_dir / "refs"
    refs.mkdir(exist_ok=True)
    for ref in ("main", *hn.refs):
        target = refs / ref
        if target.exists():
            continue  # a ref the cache already has stays as it is
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(hn.commit)
    return {"repo_id": hn.repo_id, "commit": hn.commit, "refs": ["main", *hn.refs],
            "snapshot": str(snap), "files": len(reader.files()), "bytes_written": moved}  # fmt: skip


def _cachedir_tag(cache_dir: Path) -> None:
    tag = cache_dir / "CACHEDIR.TAG"
    if not tag.exists():
        tag.write_text("Signature: 8a477f597d28d172789f06886806bc55\n"
                       "# This file is a cache directory tag created by weightvault.\n")  # fmt: skip


def _remove_links(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    if root.exists():
        os.rmdir(root)
