"""The preservation log's entries: small canonical-JSON statements, one schema for all kinds
(manifests/log-statement.schema.json). Each names its kind, the time and the digests it is
about; none carries weights or file names (docs/FORMAT.md section 12 says what each reveals)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from weightvault.errors import CorruptData
from weightvault.format import canon, spec

SCHEMA = "log-statement"
KINDS = ("sealed", "replicated", "audited", "repaired", "custody", "retired", "key")
CUSTODY_EVENTS = ("handover", "accept", "challenge", "response", "result", "release", "transfer")
# the custody chain's event names (custody/chain.py) -> the log's
CHAIN_EVENTS = {"handover": "handover", "transfer": "transfer", "receipt": "accept",
                "challenge": "challenge", "response": "response", "challenge-result": "result",
                "release": "release"}  # fmt: skip
MAX = 4096  # bytes of one statement; the entry bundle format would allow 65,535


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make(kind: str, time: str | None = None, **fields: Any) -> bytes:
    """A statement's canonical bytes, checked against the schema and the size bound."""
    doc = {"v": 1, "kind": kind, "time": time or now(), **fields}
    spec.validate(doc, SCHEMA, f"{kind} statement")
    data = canon.canonical(doc)
    if len(data) > MAX:
        raise CorruptData(f"{kind} statement of {len(data)} bytes is over the {MAX} allowed")
    return data


def parse(entry: bytes, what: str) -> dict:
    """A statement read from the log: canonical, within bounds, valid."""
    if len(entry) > MAX:
        raise CorruptData(f"{what}: {len(entry)} bytes is over the {MAX} a statement may have")
    doc = canon.parse_canonical(entry, what, max_size=MAX)
    spec.validate(doc, SCHEMA, what)
    return doc


def sealed(bundle: str, name: str, nbytes: int, signer: str, fmt: int, encrypted: bool) -> bytes:
    return make("sealed", bundle=bundle, name=name, bytes=nbytes, signer=signer, format=fmt,
                encrypted=encrypted)  # fmt: skip


def replicated(bundle: str, name: str, replica: str) -> bytes:
    return make("replicated", bundle=bundle, name=name, replica=replica)


def audited(replica: str, level: str, result: str, bundles: int, objects: int, nbytes: int,
            damage: int, record: str | None) -> bytes:  # fmt: skip
    return make("audited", replica=replica, level=level, result=result, bundles=bundles,
                objects=objects, bytes=nbytes, damage=damage, record=record)  # fmt: skip


def repaired(bundle: str, name: str, replica: str, objects: int) -> bytes:
    return make("repaired", bundle=bundle, name=name, replica=replica, objects=objects)


def custody(event: str, bundle: str, name: str, steward: str, record: str) -> bytes:
    return make("custody", event=event, bundle=bundle, name=name, steward=steward, record=record)


def retired(bundle: str, name: str, replica: str | None, reason: str) -> bytes:
    return make("retired", bundle=bundle, name=name, replica=replica, reason=reason)


def key(envelope: bytes) -> bytes:
    """A rotation or revocation (format/keystatement.py), its envelope's members inline."""
    import json

    env = json.loads(envelope)
    return make("key", statement=env["statement"], signatures=env["signatures"])
