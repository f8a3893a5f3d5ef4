"""Sets too large for memory at archive scale, kept on local disk instead.

At 1 PB a replica holds about 15 million objects; whatever a command must know about each of
them (gc: which ones signed manifests name; repair: which ones the last audit found failing)
lives in a private temporary SQLite database (SQLite's own temporary file, in TMPDIR, removed
when the connection closes) rather than in Python sets of several GB. The audit's work tables
(audit.py) do the same in the connection of its verified.db.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator

from weightvault.errors import StorageError


@contextlib.contextmanager
def guard(where: str | None = None):
    """SQLite's failures (its disk full, above all) as one line naming the database, exit 3.
    `where`: the database; by default a temporary one of this module."""
    try:
        yield
    except sqlite3.Error as e:
        if where is not None:
            raise StorageError(f"{where}: {e}") from None
        tmp = os.environ.get("SQLITE_TMPDIR") or os.environ.get("TMPDIR") or "/var/tmp"
        raise StorageError(f"temporary database in {tmp}: {e} (set TMPDIR to a directory "
                           "with room: about 100 bytes an object)") from None  # fmt: skip


class _Temp:
    def __init__(self, schema: str) -> None:
        with guard():
            self.db = sqlite3.connect("")  # "": a private temporary database on disk
            self.db.execute(schema)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class KeySet(_Temp):
    """A set of strings: about 90 bytes of temporary disk each, a few MB of memory in all."""

    def __init__(self) -> None:
        super().__init__("CREATE TABLE k (key TEXT PRIMARY KEY) WITHOUT ROWID")

    def update(self, keys: Iterable[str]) -> None:
        with guard():
            self.db.executemany("INSERT OR IGNORE INTO k VALUES (?)", ((k,) for k in keys))

    def __contains__(self, key: str) -> bool:
        with guard():
            return self.db.execute("SELECT 1 FROM k WHERE key = ?", (key,)).fetchone() \
                is not None  # fmt: skip

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM k").fetchone()[0]


class Groups(_Temp):
    """(group, member) pairs, given in any order, read back one group at a time: only the
    largest group is ever in memory (repair: a bundle's failing objects, which replicate
    takes as a set, bounded by the bundle's own manifest)."""

    def __init__(self) -> None:
        super().__init__("CREATE TABLE g (grp TEXT, member TEXT, PRIMARY KEY (grp, member)) "
                         "WITHOUT ROWID")  # fmt: skip

    def add_all(self, pairs: Iterable[tuple[str, str]]) -> None:
        with guard():
            self.db.executemany("INSERT OR IGNORE INTO g VALUES (?, ?)", pairs)

    def __iter__(self) -> Iterator[tuple[str, set[str]]]:
        """(group, its members), groups in sorted order."""
        grp, members = None, set()
        with guard():
            rows = self.db.execute("SELECT grp, member FROM g ORDER BY grp, member")
        for g, m in rows:
            if g != grp and grp is not None:
                yield grp, members
                members = set()
            grp = g
            members.add(m)
        if grp is not None:
            yield grp, members
