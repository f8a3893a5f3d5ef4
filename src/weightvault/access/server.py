"""A read-only HTTP server speaking the part of the Hugging Face Hub API that huggingface_hub
uses to download (read from the client's own code, 0.24 to 2.x):

    GET       /api/models/{repo}[/revision/{rev}]      model info: sha, siblings (?blobs=true)
    GET       /api/models/{repo}/tree/{rev}[/{dir}]    ?recursive=true, pages linked by Link
    POST      /api/models/{repo}/paths-info/{rev}      form: paths=..., expand=... (HfFileSystem)
    HEAD, GET /{repo}/resolve/{rev}/{path}             X-Repo-Commit, ETag, X-Linked-*, Range

Missing things answer 404 with the Hub's X-Error-Code (RepoNotFound, RevisionNotFound,
EntryNotFound), so the client raises its own typed errors. Xet is never advertised (no
xetHash, no X-Xet-* headers): the client then downloads over plain HTTP from this server.

Every byte sent is proved first (access/bundle.py). A chunk that fails its check ends the
response early: the connection closes before the declared Content-Length, so the client
sees a broken transfer, never wrong bytes, and the log names the object.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from weightvault.access.hub import Catalog, Repo, lfs_pointer_oid
from weightvault.errors import InputError, WeightvaultError

log = logging.getLogger("weightvault.serve")

PAGE = 1000  # tree entries per page, as the Hub
MAX_BODY = 1 << 20  # largest paths-info request body read
STREAMS = 8  # bodies streamed at once; more wait (bounds the server's memory)


class HubError(Exception):
    def __init__(self, code: str, message: str, status: int = 404, commit: str | None = None,
                 size: int | None = None):  # fmt: skip
        super().__init__(message)
        self.code, self.status, self.commit, self.size = code, status, commit, size


def check_bind(host: str, allow_non_loopback: bool) -> bool:
    """True if `host` is a loopback address; InputError for any other unless allowed."""
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop and not allow_non_loopback:
        raise InputError(f"{host}: not a loopback address; serving beyond this machine needs "
                         "--allow-non-loopback (read docs/ACCESS.md first)")  # fmt: skip
    return loop


class HubServer:
    """Serve a Catalog. `with HubServer(catalog, "127.0.0.1", 0) as s: s.url`."""

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0, *,
                 allow_non_loopback: bool = False, page: int = PAGE):  # fmt: skip
        check_bind(host, allow_non_loopback)
        self.catalog = catalog
        self.page = page
        self.streams = threading.BoundedSemaphore(STREAMS)
        self.requests: list[tuple[str, str]] = []
        self._httpd = _Server((host, port), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.25)

    def close(self) -> None:
        self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lookups
    def repo(self, repo_id: str) -> Repo:
        repo = self.catalog.repos.get(repo_id)
        if repo is None:
            raise HubError("RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def revision(self, repo_id: str, revision: str):
        got = self.repo(repo_id).resolve(revision)
        if got is None:
            raise HubError("RevisionNotFound", f"Invalid rev id: {revision}")
        return got


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()


def _file_entry(f, tree: bool) -> dict[str, Any]:
    ptr = lfs_pointer_oid(f.sha256, f.size)
    n = len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.sha256}\n"
             f"size {f.size}\n")  # fmt: skip
    if tree:
        return {"type": "file", "oid": ptr, "size": f.size, "path": f.path,
                "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": n}}  # fmt: skip
    return {"rfilename": f.path, "size": f.size, "blobId": ptr,
            "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": n}}  # fmt: skip


def _dirs(paths: list[str]) -> list[str]:
    return sorted({p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)})


def _dir_entry(d: str) -> dict[str, Any]:
    import hashlib

    return {"type": "directory", "oid": hashlib.sha1(f"tree {d}".encode()).hexdigest(),
            "size": 0, "path": d}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the client pools connections
    server_version = "weightvault"
    timeout = 120  # a client that stops reading for this long is dropped

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), _printable(format % args, 2000))

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        self._dispatch(head=False, post=True)

    def _refuse(self) -> None:
        self._error(HubError("", "read-only server", status=405), head=False)

    do_PUT = do_DELETE = do_PATCH = _refuse

    def _dispatch(self, head: bool, post: bool = False) -> None:
        self.hub.requests.append((self.command, self.path))
        split = urlsplit(self.path)
        # split before unquoting: the client sends a revision's '/' as %2F
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            if post:
                body = self._body()
                if parts[:2] == ["api", "models"] and "paths-info" in parts:
                    repo_id, rest = self._split_repo(parts[2:], "paths-info")
                    self._paths_info(repo_id, rest, parse_qs(body.decode("utf-8", "replace")))
                    return
                raise HubError("", f"no route for POST {split.path}")
            if parts[:2] == ["api", "models"] and len(parts) >= 3:
                self._api(parts[2:], query, head, split.path)
            elif "resolve" in parts:
                repo_id, rest = self._split_repo(parts, "resolve")
                self._resolve(repo_id, rest, head)
            else:
                raise HubError("", f"no route for {split.path}")
        except HubError as err:
            self._error(err, head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up mid-body

    def _body(self) -> bytes:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            raise HubError("", "request body missing or too large", status=413)
        return self.rfile.read(n)

    def _split_repo(self, parts: list[str], word: str) -> tuple[str, list[str]]:
        """(repo id, what follows `word`): a repo id is one or two segments before it."""
        for n in (2, 1):
            if len(parts) > n and parts[n] == word:
                return "/".join(parts[:n]), parts[n + 1 :]
        raise HubError("", f"no route for /{'/'.join(parts)}")

    # -- /api/models/...
    def _api(self, parts: list[str], query: dict[str, str], head: bool, path: str) -> None:
        for word in ("revision", "tree"):
            for n in (2, 1):
                if len(parts) > n + 1 and parts[n] == word:
                    repo_id, rest = "/".join(parts[:n]), parts[n + 1 :]
                    if word == "revision" and len(rest) == 1:
                        return self._model_info(repo_id, rest[0], query, head)
                    if word == "tree":
                        return self._tree(repo_id, rest[0], "/".join(rest[1:]), query, head, path)
        if 1 <= len(parts) <= 2:
            return self._model_info("/".join(parts), "main", query, head)
        raise HubError("", f"no route for /api/models/{'/'.join(parts)}")

    def _model_info(self, repo_id: str, revision: str, query: dict, head: bool) -> None:
        commit, r = self.hub.revision(repo_id, revision)
        blobs = _truthy(query.get("blobs"))
        siblings = [_file_entry(f, tree=False) if blobs else {"rfilename": f.path}
                    for f in r.files()]  # fmt: skip
        created = _hub_time(r.manifest.doc["created"])
        body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit,
                "private": False, "gated": False, "disabled": False, "downloads": 0,
                "likes": 0, "tags": ["weightvault"], "createdAt": created,
                "lastModified": created, "siblings": siblings,
                "cardData": {"weightvault": {"bundle": r.bundle_id, "name": r.name,
                                             "signer": r.signer}}}  # fmt: skip
        self._json(body, head, commit)

    def _tree(self, repo_id: str, revision: str, prefix: str, query: dict, head: bool,
              path: str) -> None:  # fmt: skip
        commit, r = self.hub.revision(repo_id, revision)
        recursive = _truthy(query.get("recursive"))
        files = r.files()
        dirs = _dirs([f.path for f in files])
        base = f"{prefix}/" if prefix else ""
        if prefix and prefix not in dirs:
            raise HubError("EntryNotFound", f"{prefix} does not exist on {revision}",
                           commit=commit)  # fmt: skip

        def under(p: str) -> bool:
            return p.startswith(base) and (recursive or "/" not in p[len(base) :])

        entries = [_dir_entry(d) for d in dirs if under(d)]
        entries += [_file_entry(f, tree=True) for f in files if under(f.path)]
        try:
            cursor = int(query.get("cursor", "0"))
        except ValueError:
            cursor = -1
        if not 0 <= cursor <= len(entries):
            raise HubError("", f"bad cursor {query.get('cursor')!r}", status=400)
        page = entries[cursor : cursor + self.hub.page]
        link = None
        if cursor + self.hub.page < len(entries):
            q = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items() if k != "cursor")
            host = self.headers.get("Host") or self.hub.url.split("//", 1)[1]
            nxt = f"http://{host}{quote(path)}?{q + '&' if q else ''}cursor={cursor + self.hub.page}"
            link = f'<{nxt}>; rel="next"'
        self._json(page, head, commit, link)

    def _paths_info(self, repo_id: str, rest: list[str], form: dict[str, list[str]]) -> None:
        if not rest:
            raise HubError("", "paths-info needs a revision", status=400)
        commit, r = self.hub.revision(repo_id, "/".join(rest))
        files = {f.path: f for f in r.files()}
        dirs = set(_dirs(list(files)))
        out = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in files:
                out.append(_file_entry(files[p], tree=True))
            elif p in dirs:
                out.append(_dir_entry(p))
        self._json(out, False, commit)

    # -- /{repo}/resolve/{rev}/{path}
    def _resolve(self, repo_id: str, rest: list[str], head: bool) -> None:
        if len(rest) < 2:
            raise HubError("", "resolve needs a revision and a path", status=400)
        commit, r = self.hub.revision(repo_id, rest[0])
        path = "/".join(rest[1:])
        try:
            f = r.file(path)
        except WeightvaultError:
            raise HubError("EntryNotFound", f"{path} does not exist on {rest[0]}",
                           commit=commit) from None  # fmt: skip
        start, end, status = 0, f.size, 200
        spec = self.headers.get("Range")
        if spec is not None:
            start, end = _parse_range(spec, f.size)
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.sha256}"')
        self.send_header("X-Linked-Etag", f'"{f.sha256}"')
        self.send_header("X-Linked-Size", str(f.size))
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if head or end == start:
            return
        self._stream(r, path, start, end)

    def _stream(self, r, path: str, start: int, end: int) -> None:
        sent = 0
        with self.hub.streams:
            pieces = r.iter_range(path, start, end, ahead=True)
            try:
                for piece in pieces:
                    self.wfile.write(piece)
                    sent += len(piece)
            except WeightvaultError as e:
                # the declared length is not reached: the client sees a broken transfer
                log.error("bundle %s: %s: response ended after %d of %d bytes: %s",
                          r.name, path, sent, end - start, e)  # fmt: skip
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            finally:
                pieces.close()

    # -- answers
    def _json(self, body: Any, head: bool, commit: str | None = None,
              link: str | None = None) -> None:  # fmt: skip
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if commit:
            self.send_header("X-Repo-Commit", commit)
        if link:
            self.send_header("Link", link)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, err: HubError, head: bool) -> None:
        data = json.dumps({"error": str(err)}).encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if err.code:
            self.send_header("X-Error-Code", err.code)
            # the message quotes the request's path: no control character may split the header
            self.send_header("X-Error-Message", _printable(str(err), 300))
        if err.commit:
            self.send_header("X-Repo-Commit", err.commit)  # lets the client cache the miss
        if err.status == 416 and err.size is not None:
            self.send_header("Content-Range", f"bytes */{err.size}")
        self.end_headers()
        if not head:
            self.wfile.write(data)


def _parse_range(spec: str, size: int) -> tuple[int, int]:
    """One `bytes=` range as [start, end); HubError 416 if unsatisfiable or not one range."""
    unit, _, rng = spec.partition("=")
    first, _, last = rng.strip().partition("-")
    try:
        if unit.strip().lower() != "bytes" or "," in rng:
            raise ValueError(spec)
        if first:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
            if last and int(last) < start:
                raise ValueError(spec)
        else:  # the last N bytes
            n = int(last)
            if n <= 0:
                raise ValueError(spec)
            start, end = max(size - n, 0), size
    except ValueError:
        raise HubError("", f"bad Range {spec[:100]!r}", status=416, size=size) from None
    if start < 0 or start >= size:
        raise HubError("", f"Range {spec[:100]!r} starts past the end ({size} bytes)",
                       status=416, size=size)  # fmt: skip
    return start, end


def _hub_time(created: object) -> str:
    """The Hub's timestamp form, milliseconds included: huggingface_hub 0.24 parses only
    that (`%Y-%m-%dT%H:%M:%S.%fZ`) and fails the whole snapshot_download otherwise."""
    text = str(created)
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", text)
    if not m:
        return "1970-01-01T00:00:00.000Z"
    return f"{m.group(1)}{(m.group(2) or '.000')[:4].ljust(4, '0')}Z"


def _printable(text: str, limit: int) -> str:
    """`text` safe for a header or a log line: no control characters, ASCII, bounded."""
    return "".join(c if " " <= c < "\x7f" else "?" for c in text[:limit])


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def serve(store, trusted, keys=None, *, host: str = "127.0.0.1", port: int = 0,
          allow_non_loopback: bool = False) -> HubServer:  # fmt: skip
    """A HubServer (not started) over every trusted bundle of `store`."""
    from weightvault.archive.pipeline import keep_freed_memory

    check_bind(host, allow_non_loopback)
    keep_freed_memory()  # piece buffers are recycled, not faulted in afresh for every piece
    fetchers = ThreadPoolExecutor(2, thread_name_prefix="weightvault-fetch")
    catalog = Catalog(store, trusted, keys, fetchers=fetchers)
    return HubServer(catalog, host, port, allow_non_loopback=allow_non_loopback)
