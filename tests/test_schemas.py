"""The published schemas are valid, the examples match them, and the example signature signs
the example manifest: manifests/ cannot drift from what the code writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest

from weightvault import canon
from weightvault.keys import PublicKey
from weightvault.manifest import PAYLOAD_TYPE, Manifest

ROOT = Path(__file__).resolve().parents[1] / "manifests"


@pytest.mark.parametrize("schema", sorted(p.name for p in ROOT.glob("*.schema.json")))
def test_schema_is_valid(schema):
    doc = json.loads((ROOT / schema).read_text())
    jsonschema.validators.validator_for(doc).check_schema(doc)


@pytest.mark.parametrize("example,schema", [
    ("manifest.json", "manifest"), ("signature.json", "signature"),
    ("audit-record.json", "audit-record"),
])  # fmt: skip
def test_example_matches_schema(example, schema):
    doc = json.loads((ROOT / "examples" / example).read_text())
    jsonschema.validate(doc, json.loads((ROOT / f"{schema}.schema.json").read_text()))


def test_example_signature_signs_example_manifest():
    m = json.loads((ROOT / "examples/manifest.json").read_text())
    raw = canon.canonical(m)
    Manifest.parse(raw, "example")
    sig = json.loads((ROOT / "examples/signature.json").read_text())
    s = sig["signatures"][0]
    key = PublicKey(base64.b64decode(s["public_key"]))
    assert sig["payload_sha256"] == Manifest.parse(raw, "example").bundle_id
    assert key.verify(PAYLOAD_TYPE, raw, base64.b64decode(s["sig"]))
