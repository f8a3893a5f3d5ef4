"""A fake Hugging Face Hub on 127.0.0.1 serving one local directory as a model repo.

Only what huggingface_hub 2.x calls for ``snapshot_download``, ``hf_hub_download`` and
``HfApi().model_info`` / ``repo_info`` / ``list_repo_tree`` (read from its source):

    GET       /api/models/{repo}[/revision/{rev}]   ?blobs=true adds size, blobId, lfs
    GET       /api/models/{repo}/tree/{rev}[/{dir}] ?recursive=true
    HEAD, GET /{repo}/resolve/{rev}/{path}          X-Repo-Commit, ETag, X-Linked-*, Range

``rev`` is ``main`` or the server's 40-hex commit. ``*.safetensors`` and files over 1 MiB are
LFS files: their ETag and ``lfs.sha256`` are the content's sha256 (``lfs_sha_override`` makes the
server lie about it) and their blob id is that of the LFS pointer; other files' ETag is their git
blob id. Errors carry the Hub's ``X-Error-Code`` so the client raises RepositoryNotFoundError,
RevisionNotFoundError or RemoteEntryNotFoundError.

Pointing huggingface_hub at the server. ``huggingface_hub.constants`` reads HF_ENDPOINT,
HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY... once, at import, and ``huggingface_hub.hf_api.api``
(behind the top-level ``huggingface_hub.model_info`` & co.) freezes its endpoint then too.
So setting ``os.environ`` after the import does nothing. Two reliable ways:

* a subprocess with ``env=hub_env(server)``: the child imports huggingface_hub afresh;
* in-process, ``patch_hub_endpoint(monkeypatch, server.url)``: patches the constants the client
  reads at call time (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, the flags) plus the module-level
  ``api`` object, and sets the same variables in os.environ for any subprocess the code spawns.
  Code under test that did ``from huggingface_hub.constants import ENDPOINT`` escapes the
  patch; code that passes ``endpoint=`` to every client call needs neither.

Other client habits worth knowing: ``snapshot_download(local_dir=...)`` leaves
``local_dir/.cache/huggingface/`` (metadata, locks, tree listing) and, for a branch revision,
still writes ``refs/<branch>`` under ``cache_dir`` (default: $HF_HOME/hub), so always pass a
``cache_dir`` in tests. The client never checks a download against the announced sha256: with
``lfs_sha_override`` the real bytes land in ``blobs/<fake sha>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .model import sha256_file

if TYPE_CHECKING:
    import pytest

DEFAULT_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_COMMIT = "c0ffee00" * 5  # fixed, obviously fake
LFS_THRESHOLD = 1 << 20
_CHUNK = 1 << 20
_SKIP_DIRS = {".git", ".cache"}  # .cache/huggingface is what a local_dir download leaves behind


@dataclass(frozen=True)
class RepoEntry:
    path: str  # posix, relative to the repo root
    file: Path
    size: int
    blob_id: str  # git blob id of the content, or of the LFS pointer for LFS files
    lfs_sha256: str | None = None
    lfs_pointer_size: int | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id

    def lfs(self, oid_key: str) -> dict[str, Any]:
        # The model-info API names the sha256 "sha256", the tree API "oid".
        return {oid_key: self.lfs_sha256, "size": self.size, "pointerSize": self.lfs_pointer_size}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return text.encode()


def scan_repo(root: Path, lfs_sha_override: dict[str, str] | None = None) -> dict[str, RepoEntry]:
    """Describe every file under ``root`` the way the Hub would."""
    override = dict(lfs_sha_override or {})
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            file = Path(dirpath, name)
            rel = file.relative_to(root).as_posix()
            size = file.stat().st_size
            if name.endswith(".safetensors") or size > LFS_THRESHOLD:
                sha = override.pop(rel, None) or sha256_file(file)
                pointer = lfs_pointer(sha, size)
                entries[rel] = RepoEntry(rel, file, size, git_blob_id(pointer), sha, len(pointer))
            else:
                entries[rel] = RepoEntry(rel, file, size, git_blob_id(file.read_bytes()))
    if override:
        raise ValueError(f"lfs_sha_override names no LFS file: {sorted(override)}")
    return entries


class HubServer:
    """Serve ``model_dir`` as Hub model repo ``repo_id`` at commit ``commit`` (branch ``main``).

    ``with HubServer(model_dir) as hub: ...`` then point the client at ``hub.url``.
    ``requests`` records ``(method, path)`` of every request, for assertions.
    """

    def __init__(
        self,
        model_dir: Path,
        repo_id: str = DEFAULT_REPO_ID,
        commit: str = DEFAULT_COMMIT,
        *,
        lfs_sha_override: dict[str, str] | None = None,
    ) -> None:
        if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
            raise ValueError(f"commit must be 40 lowercase hex digits, got {commit!r}")
        self.model_dir = Path(model_dir)
        self.repo_id = repo_id
        self.commit = commit
        self.entries = scan_repo(self.model_dir, lfs_sha_override)
        self.requests: list[tuple[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def model_info(self, files_metadata: bool) -> dict[str, Any]:
        siblings = []
        for e in self.entries.values():
            sibling: dict[str, Any] = {"rfilename": e.path}
            if files_metadata:
                sibling |= {"size": e.size, "blobId": e.blob_id}
                if e.lfs_sha256:
                    sibling["lfs"] = e.lfs("sha256")
            siblings.append(sibling)
        return {
            "_id": self.commit[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "siblings": siblings,
        }

    def tree(self, prefix: str, recursive: bool) -> list[dict[str, Any]] | None:
        """Hub tree listing under ``prefix`` ('' for the root); None if no such folder."""
        base = f"{prefix}/" if prefix else ""
        dirs = {p.rsplit("/", i)[0] for p in self.entries for i in range(1, p.count("/") + 1)}
        if prefix and prefix not in dirs:
            return None
        out: list[dict[str, Any]] = []
        for d in sorted(dirs):
            if d.startswith(base) and (recursive or "/" not in d[len(base) :]):
                # A real tree id would hash the folder's git tree; nothing in the client reads it.
                oid = hashlib.sha1(f"tree {d}".encode()).hexdigest()
                out.append({"type": "directory", "oid": oid, "path": d})
        for e in self.entries.values():
            if e.path.startswith(base) and (recursive or "/" not in e.path[len(base) :]):
                item = {"type": "file", "path": e.path, "oid": e.blob_id, "size": e.size}
                if e.lfs_sha256:
                    item["lfs"] = e.lfs("oid")
                out.append(item)
        return out


class _HubError(Exception):
    def __init__(self, code: str, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no keep-alive thread outlives stop().
    protocol_version = "HTTP/1.0"
    server_version = "weightvault-fake-hub"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet; see HubServer.requests instead

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        self.hub.requests.append((self.command, self.path))
        split = urlsplit(self.path)
        # Split before unquoting: the client sends revisions with '/' encoded as %2F.
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2:], query, head)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts, head)
            else:
                raise _HubError("", f"no route for {split.path}")
        except _HubError as err:
            self._error(err, head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up mid-body; nothing to answer

    def _check(self, repo_id: str, revision: str) -> None:
        if repo_id != self.hub.repo_id:
            raise _HubError("RepoNotFound", f"Repository {repo_id} not found")
        if revision not in ("main", self.hub.commit):
            raise _HubError("RevisionNotFound", f"Invalid rev id: {revision}")

    def _api(self, parts: list[str], query: dict[str, str], head: bool) -> None:
        repo_id, rest = "/".join(parts[:2]), parts[2:]
        if not rest:
            rest = ["revision", "main"]
        if rest[0] == "revision" and len(rest) == 2:
            self._check(repo_id, rest[1])
            body = self.hub.model_info(files_metadata=_truthy(query.get("blobs")))
        elif rest[0] == "tree" and len(rest) >= 2:
            self._check(repo_id, rest[1])
            body = self.hub.tree("/".join(rest[2:]), _truthy(query.get("recursive")))
            if body is None:
                raise _HubError("EntryNotFound", f"{'/'.join(rest[2:])} does not exist")
        else:
            raise _HubError("", f"no route for /api/models/{'/'.join(parts)}")
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", self.hub.commit)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _resolve(self, parts: list[str], head: bool) -> None:
        self._check("/".join(parts[:2]), parts[3])
        entry = self.hub.entries.get("/".join(parts[4:]))
        if entry is None:
            raise _HubError("EntryNotFound", f"{'/'.join(parts[4:])} does not exist")
        start, end = 0, entry.size  # [start, end)
        status = 200
        if (spec := self.headers.get("Range")) is not None:
            start, end = _parse_range(spec, entry.size)
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("X-Repo-Commit", self.hub.commit)
        if entry.lfs_sha256:
            # What the Hub puts on its redirect to the CDN; the client prefers these to ETag.
            self.send_header("X-Linked-Etag", f'"{entry.lfs_sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{entry.size}")
        self.end_headers()
        if head:
            return
        with open(entry.file, "rb") as f:
            f.seek(start)
            left = end - start
            while left and (chunk := f.read(min(_CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def _error(self, err: _HubError, head: bool) -> None:
        data = json.dumps({"error": str(err)}).encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if err.code:
            self.send_header("X-Error-Code", err.code)
            self.send_header("X-Error-Message", str(err))
        if err.code == "EntryNotFound":
            self.send_header("X-Repo-Commit", self.hub.commit)  # lets the client cache the miss
        self.end_headers()
        if not head:
            self.wfile.write(data)


def _parse_range(spec: str, size: int) -> tuple[int, int]:
    """One ``bytes=`` range as [start, end); 416 if unsatisfiable. Multi-range is not supported."""
    unit, _, rng = spec.partition("=")
    first, _, last = rng.strip().partition("-")
    try:
        if unit.strip() != "bytes" or "," in rng:
            raise ValueError(spec)
        if first:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        else:  # suffix range: the last N bytes
            start, end = max(size - int(last), 0), size
    except ValueError:
        raise _HubError("", f"bad Range {spec!r}", status=416) from None
    if start >= end:
        raise _HubError("", f"unsatisfiable Range {spec!r} for {size} bytes", status=416)
    return start, end


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def hub_env_vars(url: str) -> dict[str, str]:
    """The variables that send huggingface_hub to ``url`` and nowhere else."""
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    return {
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",  # also stops the agent-registry fetch in the User-Agent
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",  # never hand a developer's token to the fake
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


def hub_env(server: HubServer | str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment for a subprocess whose huggingface_hub must talk to ``server``."""
    url = server if isinstance(server, str) else server.url
    return {**(os.environ if base is None else base), **hub_env_vars(url)}


def patch_hub_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point the already-imported huggingface_hub at ``url`` for one test (undone by monkeypatch)."""
    from huggingface_hub import constants, hf_api

    for name, value in hub_env_vars(url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
