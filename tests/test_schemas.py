"""The published schemas are valid, the examples match them, and the example signature signs
the example manifest: manifests/ cannot drift from what the code writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest

from weightvault.format import canon
from weightvault.format.keys import PublicKey
from weightvault.format.manifest import PAYLOAD_TYPE, Manifest

ROOT = Path(__file__).resolve().parents[1] / "manifests"


@pytest.mark.parametrize("schema", sorted(p.name for p in ROOT.glob("*.schema.json")))
def test_schema_is_valid(schema):
    doc = json.loads((ROOT / schema).read_text())
    jsonschema.validators.validator_for(doc).check_schema(doc)


@pytest.mark.parametrize("example,schema", [
    ("manifest.json", "manifest"), ("signature.json", "signature"),
    ("manifest-encrypted.json", "manifest"), ("signature-encrypted.json", "signature"),
    ("private.json", "private"), ("audit-record.json", "audit-record"),
    ("audit-record-v2.json", "audit-record"), ("audit-record-v3.json", "audit-record"),
    # version 3, as written until weightvault 0.4, against its frozen schema
    ("v3/manifest.json", "manifest-v3"), ("v3/signature.json", "signature"),
    ("v3/manifest-encrypted.json", "manifest-v3"), ("v3/signature-encrypted.json", "signature"),
    ("v3/private.json", "private"),
    # versions 1 and 2, as written until weightvault 0.3, against their frozen schemas
    ("v1/manifest.json", "manifest-v1"), ("v1/signature.json", "signature"),
    ("v1/manifest-encrypted.json", "manifest-v1"), ("v1/signature-encrypted.json", "signature"),
    ("v1/private.json", "private-v2"),
    *[(p.name, "custody-record") for p in sorted((ROOT / "examples").glob("custody-*.json"))],
])  # fmt: skip
def test_example_matches_schema(example, schema):
    doc = json.loads((ROOT / "examples" / example).read_text())
    jsonschema.validate(doc, json.loads((ROOT / f"{schema}.schema.json").read_text()))


@pytest.mark.parametrize("which", ["", "-encrypted", "v3/", "v3/-encrypted", "v1/",
                                   "v1/-encrypted"])  # fmt: skip
def test_example_signature_signs_example_manifest(which):
    sub, _, which = which.rpartition("/")
    sub = f"{sub}/" if sub else ""
    m = json.loads((ROOT / f"examples/{sub}manifest{which}.json").read_text())
    raw = canon.canonical(m)
    Manifest.parse(raw, "example")
    sig = json.loads((ROOT / f"examples/{sub}signature{which}.json").read_text())
    s = sig["signatures"][0]
    key = PublicKey(base64.b64decode(s["public_key"]))
    assert sig["payload_sha256"] == Manifest.parse(raw, "example").bundle_id
    assert key.verify(PAYLOAD_TYPE, raw, base64.b64decode(s["sig"]))


@pytest.mark.parametrize("sub", ["", "v3/", "v1/"])
def test_example_private_section_opens_into_the_example_manifest(sub):
    m = Manifest.parse(canon.canonical(json.loads((ROOT / f"examples/{sub}manifest-encrypted.json")
                                                  .read_text())), "example")  # fmt: skip
    opened = m.opened(json.loads((ROOT / f"examples/{sub}private.json").read_text()), "example")
    assert opened.bundle_id == m.bundle_id and len(opened.files) == 13
