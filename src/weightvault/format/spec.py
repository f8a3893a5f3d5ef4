"""The specification files that travel with the code: JSON Schemas and docs/FORMAT.md.

In a wheel they live in weightvault/_spec (copied from the repo's manifests/ and docs/ at build
time); in a source checkout they are read from the repo itself, so there is one copy of each.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from weightvault.errors import CorruptData

if TYPE_CHECKING:
    import jsonschema

_HERE = Path(__file__).resolve().parent.parent  # the weightvault package


@functools.cache
def spec_dir() -> Path:
    packaged = _HERE / "_spec"
    if (packaged / "FORMAT.md").is_file():
        return packaged
    repo = _HERE.parent.parent
    if (repo / "docs" / "FORMAT.md").is_file():
        return repo
    raise RuntimeError("weightvault is installed without its specification files")


def _path(name: str) -> Path:
    root = spec_dir()
    if name == "FORMAT.md":
        return root / "FORMAT.md" if (root / "FORMAT.md").is_file() else root / "docs" / "FORMAT.md"
    return root / "manifests" / name


@functools.cache
def format_md() -> bytes:
    return _path("FORMAT.md").read_bytes()


@functools.cache
def _validator(schema: str) -> jsonschema.protocols.Validator:
    import jsonschema  # noqa: PLC0415 - about 75 ms: only for commands that validate

    doc = json.loads(_path(f"{schema}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def first_error(doc: object, schema: str) -> jsonschema.ValidationError | None:
    """The most relevant way `doc` breaks `schema` (jsonschema's best match), or None."""
    import jsonschema  # noqa: PLC0415

    return jsonschema.exceptions.best_match(_validator(schema).iter_errors(doc))


def validate(doc: object, schema: str, what: str) -> None:
    err = first_error(doc, schema)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
        raise CorruptData(f"{what}: does not match the {schema} schema at {where}: {msg}")


# What a reader of a format version 4 bundle needs besides FORMAT.md: the schemas FORMAT.md
# calls normative where its prose is silent, and the BagIt profile (issue 20). Frozen schemas
# of older versions stay out: a version 4 bundle never needs them.
SPEC_COPIES = (
    "audit-record.schema.json", "bagit-profile.json", "custody-record.schema.json",
    "interview-turn.schema.json", "manifest.schema.json", "private.schema.json",
    "record.schema.json", "signature.schema.json",
)  # fmt: skip


@functools.cache
def spec_files() -> tuple[tuple[str, bytes], ...]:
    """(path under a bundle's data/, bytes) of every specification copy a version 4 bundle
    carries, sorted by path: FORMAT.md, then spec/NAME for each of SPEC_COPIES."""
    out = [("FORMAT.md", format_md())]
    out += [(f"spec/{n}", _path(n).read_bytes()) for n in SPEC_COPIES]
    return tuple(sorted(out))
