"""Open a store by URL: a local directory here, anything else through remote.py.

Kept apart from store.py so that store.py (the local store and the fsspec base) never imports
remote.py, which builds on it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from weightvault.errors import InputError, StorageError
from weightvault.storage.store import TMP, LocalStore, Store


def is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def open_store(url: str, storage_options: dict | None = None, *, create: bool = False,
               object_lock=None) -> Store:  # fmt: skip
    if is_local(url):
        parsed = urlparse(url)
        path = Path(parsed.path if parsed.scheme == "file" else url)
        if object_lock:
            raise InputError(f"{url}: object_lock is only available on s3:// replicas")
        if not create and not (path / TMP).is_dir():
            raise StorageError(f"{path}: not a weightvault vault (no {TMP}/ directory)")
        store: Store = LocalStore(path, create=create)
    else:
        from weightvault.storage.remote import open_remote

        store = open_remote(url, storage_options, object_lock=object_lock, create=create)
    # how a cluster worker opens the same store (executors.StoreSpec)
    store.open_args = (url, dict(storage_options or {}), object_lock)  # type: ignore[attr-defined]
    return store


def unwritten(url: str) -> bool:
    """A local replica that nothing has been written to yet: its directory is absent or empty.
    (Remote stores open without a listing and show such a replica as holding no bundles.)"""
    if not is_local(url):
        return False
    parsed = urlparse(url)
    path = Path(parsed.path if parsed.scheme == "file" else url)
    try:
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    except OSError:
        return False


def store_url(url: str) -> str:
    """The URL a store opened from `url` reports as its own (`Store.url`), without opening it:
    the key of the replica's local audit state, also while the replica is unreachable."""
    if is_local(url):
        parsed = urlparse(url)
        return str(Path(parsed.path if parsed.scheme == "file" else url).absolute())
    return url.rstrip("/")
