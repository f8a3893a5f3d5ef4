"""The on-disk sets (archive/spill.py) that keep gc and repair flat in memory at any scale."""

from __future__ import annotations

import tracemalloc

from weightvault.archive.spill import Groups, KeySet


def test_groups_come_back_one_bundle_at_a_time_with_flat_memory():
    """Repair's failing objects, grouped by bundle: 150,000 of them (a replica gone wholesale)
    given in any order come back grouped, each group whole and sorted by name, duplicates
    once, and only one group is ever held."""
    with Groups() as g:
        tracemalloc.start()
        for rnd in range(3):  # interleaved bundles, as a pool shared by versions gives them
            g.add_all((f"b{i % 1500:04d}", f"objects/{i:064x}")
                      for i in range(rnd * 50_000, (rnd + 1) * 50_000))  # fmt: skip
        g.add_all([("b0000", f"objects/{0:064x}")])  # again: once
        seen, total = [], 0
        for name, members in g:
            seen.append(name)
            total += len(members)
            assert len(members) == 100
            assert all(int(m[8:], 16) % 1500 == int(name[1:]) for m in members)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seen == sorted(seen) and len(seen) == 1500 and total == 150_000
    assert peak < 2 << 20, peak  # as a dict of sets: about 20 MB


def test_an_empty_groups_and_keyset():
    with Groups() as g, KeySet() as k:
        assert list(g) == [] and len(k) == 0 and "x" not in k
        k.update(["x", "x", "y"])
        assert len(k) == 2 and "x" in k and "z" not in k


def test_a_full_temporary_directory_is_one_storage_error():
    """The temporary database cannot grow (its directory full, here a page limit): one line
    naming the temporary directory and what to do, exit 3, never a SQLite traceback."""
    import pytest

    from weightvault.errors import StorageError

    for kind in (KeySet, Groups):
        with kind() as s:
            s.db.execute("PRAGMA max_page_count = 4")
            with pytest.raises(StorageError, match=r"^temporary database in .*: database or "
                               r"disk is full \(set TMPDIR to a directory with room") as e:  # fmt: skip
                if kind is KeySet:
                    s.update(f"objects/{i:064x}" for i in range(10_000))
                else:
                    s.add_all(("b", f"objects/{i:064x}") for i in range(10_000))
            assert e.value.exit_code == 3 and "\n" not in str(e.value)


def test_an_audit_whose_state_database_fails_is_one_line(vault_copy, lab_key, tmp_path):
    """The audit's verified.db cannot be opened (here a directory stands in its place; a full
    disk fails the same way): one line naming it, exit 3, never a SQLite traceback."""
    from pathlib import Path

    import pytest

    from weightvault.archive import audit
    from weightvault.archive.auditlog import replica_dir
    from weightvault.errors import StorageError
    from weightvault.format import keys
    from weightvault.storage.store import LocalStore

    store = LocalStore(vault_copy)
    (replica_dir(tmp_path / "state", store.url) / "verified.db").mkdir()
    with pytest.raises(StorageError, match=r"verified\.db \(or the audit's temporary work "
                                           r"tables\): unable to open database file$") as e:  # fmt: skip
        audit.audit_replica("v", store, level="metadata",
                            trusted=[keys.load_public_key(Path(f"{lab_key}.pub"))],
                            key=keys.generate(tmp_path / "a.key"), state=tmp_path / "state")  # fmt: skip
    assert e.value.exit_code == 3
