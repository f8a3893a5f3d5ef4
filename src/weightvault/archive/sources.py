"""What gets sealed: a local directory, a Hub cache snapshot, or a Hub repo at a revision.

Each source resolves to a sorted list of regular files plus provenance for the manifest.
Hub digests (LFS sha256) are kept as `expected` so seal can cross-check them against the
digests it computes itself.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.errors import CorruptData, InputError, StorageError
from weightvault.format.paths import check_relpath, check_unique

DEFAULT_EXCLUDES = (".git", ".cache/huggingface")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative POSIX path inside the bundle
    abspath: Path  # where to read it (symlinks already resolved)
    size: int
    mode: int
    mtime_ns: int
    expected_sha256: str | None = None  # from the Hub or the cache layout, checked after sealing


@dataclass
class Source:
    files: list[SourceFile]
    provenance: dict
    root: Path
    expected_from: str = ""
    notes: list[str] = field(default_factory=list)


def resolve(spec: str, *, excludes: tuple[str, ...] = DEFAULT_EXCLUDES, cache_dir=None,
            external_links: bool = False) -> Source:
    if spec.startswith("hf://"):
        return hub_source(spec[5:], excludes=excludes, cache_dir=cache_dir)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{spec}: source not found")
    if not path.is_dir():
        raise InputError(f"{spec}: source is not a directory")
    cache = parse_cache_snapshot(path)
    if cache:
        return cache_source(path, *cache, excludes=excludes)
    snap = cache_repo_snapshot(path)
    if snap is not None:
        return cache_source(snap, *parse_cache_snapshot(snap), excludes=excludes)
    notes: list[str] = []
    files = walk(path, excludes, external_links=external_links, notes=notes)
    return Source(files, {"kind": "local", "path": str(path.absolute())}, path, notes=notes)


def walk(root: Path, excludes: tuple[str, ...], *, links_within: Path | None = None,
         external_links: bool = False, notes: list[str] | None = None) -> list[SourceFile]:
    """The regular files under `root`, by the writer rules of FORMAT.md section 7.2: a
    symbolic link to a file inside `links_within` (default: `root`) is sealed as a regular
    file with its target's bytes, and noted; one pointing outside it (a credentials file,
    say) is refused unless `external_links`; a link to a directory is refused; an empty
    directory is not sealed, and noted; set-id and sticky mode bits are not sealed. Walked
    with an explicit stack, never recursion."""
    out: list[SourceFile] = []
    root = root.absolute()
    within = (links_within or root).resolve()
    notes = notes if notes is not None else []
    stack = [root]
    while stack:
        dirpath = stack.pop()
        rel_dir = dirpath.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        try:
            entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
        except OSError as e:
            raise InputError(f"{dirpath}: cannot read ({e.strerror})") from None
        kept = 0
        subdirs = []
        for entry in entries:
            rel = rel_dir + entry.name
            if rel in excludes:
                continue
            full = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(full)
                kept += 1
                continue
            if entry.is_symlink():
                target = os.readlink(full)
                if full.is_dir():
                    raise InputError(f"{full}: symbolic link to a directory ({target})")
                resolved = full.resolve()
                if not resolved.is_relative_to(within) and not external_links:
                    raise InputError(f"{full}: symbolic link to {target}, outside the source "
                                     "(pass --follow-external-links to seal its target's bytes)")
                notes.append(f"{rel}: symbolic link to {target}, sealed as a regular file "
                             "with its target's bytes")
            try:
                st = full.stat()  # follows symlinks: a Hub snapshot is links into blobs/
            except FileNotFoundError:
                raise InputError(f"{full}: broken symbolic link") from None
            except OSError as e:
                raise InputError(f"{full}: cannot read ({e.strerror})") from None
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{full}: not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o7000:
                notes.append(f"{rel}: set-user-id, set-group-id or sticky bit not sealed "
                             f"(mode {stat.S_IMODE(st.st_mode):04o} sealed as "
                             f"{stat.S_IMODE(st.st_mode) & 0o777:04o})")
            try:
                check_relpath(rel, str(root))
            except CorruptData as e:
                raise InputError(str(e)) from None
            kept += 1
            out.append(
                SourceFile(
                    rel, full.resolve(), st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns
                )
            )
        if not kept and rel_dir:
            notes.append(f"{rel_dir}: empty directory, not sealed (a bundle holds files only)")
        stack.extend(reversed(subdirs))
    if not out:
        raise InputError(f"{root}: source is empty (no files to seal)")
    out.sort(key=lambda f: f.path)
    try:
        check_unique([f.path for f in out], str(root))
    except CorruptData as e:
        raise InputError(str(e)) from None
    return out


def parse_cache_snapshot(path: Path) -> tuple[str, str, str] | None:
    """(repo_type, repo_id, commit) if `path` is .../models--ORG--NAME/snapshots/<commit>."""
    p = path.absolute()
    if p.parent.name != "snapshots" or not _HEX40.match(p.name):
        return None
    repo_dir = p.parent.parent.name
    kind, _, rest = repo_dir.partition("--")
    if kind not in ("models", "datasets", "spaces") or not rest:
        return None
    return kind[:-1], rest.replace("--", "/"), p.name


def cache_repo_snapshot(path: Path) -> Path | None:
    """The snapshot `refs/main` names if `path` is a Hub cache repo folder (models--ORG--NAME
    with refs/ and snapshots/): sealing the folder itself would seal blobs/ and every snapshot
    as plain files. A folder without refs/main names its snapshots and asks for one."""
    p = path.absolute()
    kind, _, rest = p.name.partition("--")
    if kind not in ("models", "datasets", "spaces") or not rest or not (p / "snapshots").is_dir():
        return None
    main = p / "refs" / "main"
    commit = main.read_text().strip() if main.is_file() else ""
    if _HEX40.match(commit) and (p / "snapshots" / commit).is_dir():
        return p / "snapshots" / commit
    snaps = sorted(d.name for d in (p / "snapshots").iterdir() if _HEX40.match(d.name))
    if not snaps:
        raise InputError(f"{path}: a Hub cache folder with no snapshot in it")
    raise InputError(f"{path}: a Hub cache folder without refs/main; seal one snapshot: "
                     + ", ".join(f"{path}/snapshots/{c}" for c in snaps[:5]))  # fmt: skip


def cache_source(path: Path, repo_type: str, repo_id: str, commit: str, *, excludes) -> Source:
    repo_dir = path.absolute().parent.parent
    # a snapshot's files are links into the repo's blobs/: the cache layout, not a surprise
    files = walk(path, excludes, links_within=repo_dir)
    refs = []
    for ref in sorted((repo_dir / "refs").glob("**/*")):
        if ref.is_file() and ref.read_text().strip() == commit:
            refs.append(ref.relative_to(repo_dir / "refs").as_posix())
    checked = []
    for i, f in enumerate(files):
        # In the cache, an LFS file's blob is named by its sha256: a free second opinion.
        link = path / f.path
        if link.is_symlink() and _HEX64.match(f.abspath.name):
            files[i] = SourceFile(**{**f.__dict__, "expected_sha256": f.abspath.name})
            checked.append(f.path)
    prov = {
        "kind": "hf-cache",
        "repo_type": repo_type,
        "repo_id": repo_id,
        "commit": commit,
        "refs": refs,
        "path": str(path.absolute()),
    }
    return Source(files, prov, path, expected_from="Hub cache blob name")


def hub_source(spec: str, *, excludes, cache_dir=None) -> Source:
    """hf://ORG/NAME@REVISION. The revision is required: a preservation copy names what it
    asked for (a branch, tag or commit); the commit it resolved to is what gets sealed. With
    HF_HUB_OFFLINE=1 the revision is looked up in the local Hub cache instead of on the Hub."""
    repo_id, at, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or not at or not revision:
        raise InputError(f"hf://{spec}: expected hf://ORG/NAME@REVISION (a branch, tag or "
                         "commit, e.g. @main)")  # fmt: skip
    try:
        from huggingface_hub import HfApi, constants, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - a required dependency
        raise InputError(f"huggingface_hub is not usable: {e}") from None
    if constants.HF_HUB_OFFLINE:
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                          repo_type="model"))  # fmt: skip
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            where = cache_dir or constants.HF_HUB_CACHE
            raise InputError(f"hf://{spec}: not in the Hub cache {where} (HF_HUB_OFFLINE=1 "
                             "forbids downloading)") from None  # fmt: skip
        parsed = parse_cache_snapshot(snap)
        if parsed is None:  # pragma: no cover - the client always returns snapshots/<commit>
            raise InputError(f"hf://{spec}: the cache returned {snap}, not a snapshot")
        src = cache_source(snap, *parsed, excludes=excludes)
        src.provenance["revision"] = revision
        return src
    api = HfApi()
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        commit = info.sha
        if not commit or not _HEX40.match(commit):
            raise InputError(f"hf://{spec}: the Hub returned no commit for revision {revision!r}")
        snap = Path(
            snapshot_download(repo_id, revision=commit, cache_dir=cache_dir, repo_type="model")
        )
    except RevisionNotFoundError:
        raise InputError(f"hf://{spec}: revision {revision!r} not found on the Hub") from None
    except RepositoryNotFoundError:
        raise InputError(f"hf://{spec}: repository {repo_id!r} not found on the Hub") from None
    except HfHubHTTPError as e:
        raise InputError(f"hf://{spec}: the Hub refused the request ({_first_line(e)})") from None
    except InputError:
        raise
    except Exception as e:
        # the client's transport errors (connection refused, DNS, timeouts, TLS) have no
        # common public base class across its versions: everything else raised while talking
        # to the Hub is "could not reach it", one line, exit 3
        raise StorageError(f"hf://{spec}: cannot reach the Hub at {constants.ENDPOINT} "
                           f"({_first_line(e)}); to seal from the local cache instead, set "
                           "HF_HUB_OFFLINE=1") from None  # fmt: skip
    lfs = {s.rfilename: s.lfs.sha256 for s in (info.siblings or []) if s.lfs is not None}
    files = walk(snap, excludes, links_within=snap.parent.parent)  # links into blobs/
    files = [
        SourceFile(**{**f.__dict__, "expected_sha256": lfs.get(f.path)}) if f.path in lfs else f
        for f in files
    ]
    missing = sorted(set(lfs) - {f.path for f in files})
    if missing:
        raise InputError(f"hf://{spec}: Hub lists {missing[0]!r} but the download lacks it")
    prov = {
        "kind": "hf-hub",
        "repo_type": "model",
        "repo_id": repo_id,
        "revision": revision,
        "commit": commit,
        "endpoint": constants.ENDPOINT,
    }
    return Source(files, prov, snap, expected_from="Hub LFS sha256")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
