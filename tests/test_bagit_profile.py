"""Every bundle is a bag that satisfies the published BagIt profile
(manifests/bagit-profile.json, urn:weightvault:bagit-profile:1), checked with the Library of
Congress bagit and the bagit-profile validator, for a clear and an encrypted bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bagit
import bagit_profile
import pytest
from conftest import wv
from pyrage import x25519

PROFILE = Path(__file__).resolve().parents[1] / "manifests" / "bagit-profile.json"


def profile() -> bagit_profile.Profile:
    doc = json.loads(PROFILE.read_text())
    return bagit_profile.Profile(doc["BagIt-Profile-Info"]["BagIt-Profile-Identifier"], profile=doc)


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, minilm_dir, lab_key) -> Path:
    v = tmp_path_factory.mktemp("enc") / "vault"
    r = wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "enc", "--quiet",
           "--encrypt-to", str(x25519.Identity.generate().to_public()))  # fmt: skip
    assert r.code == 0, r.err
    return v / "bundles" / "enc"


def test_clear_bundle_satisfies_the_profile(sealed_minilm):
    bag = bagit.Bag(str(sealed_minilm / "bundles" / "minilm"))
    assert bag.is_valid()
    assert profile().validate(bag)


def test_encrypted_bundle_satisfies_the_profile(encrypted):
    bag = bagit.Bag(str(encrypted))
    assert bag.is_valid()
    assert profile().validate(bag)


def test_a_bag_claiming_another_profile_fails(sealed_minilm, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(sealed_minilm / "bundles" / "minilm", b)
    info = b / "bag-info.txt"
    info.write_text(info.read_text().replace("urn:weightvault:bagit-profile:1", "urn:other:1"))
    assert not profile().validate(bagit.Bag(str(b)))
