"""Access without restore: in-place reads of sealed bundles (bundle.py), the mapping of bundles
to Hugging Face repo ids and the Hub cache layout (hub.py), and a read-only Hub-compatible HTTP
server (server.py). docs/ACCESS.md describes all three."""

from weightvault.access.bundle import BundleFile, BundleReader, FileInfo, open_bundle

__all__ = ["BundleFile", "BundleReader", "FileInfo", "open_bundle"]
