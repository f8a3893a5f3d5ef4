"""Every bundle is a bag that satisfies the published BagIt profile of its format version
(manifests/bagit-profile.json, urn:weightvault:bagit-profile:2, for version 3;
bagit-profile-1.json for versions 1 and 2), checked with the Library of Congress bagit and the
bagit-profile validator, for a clear and an encrypted bundle and for the golden old ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bagit
import bagit_profile
import pytest
from conftest import wv
from pyrage import x25519

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
GOLDEN = Path(__file__).resolve().parent / "golden"


def profile(name: str = "bagit-profile.json") -> bagit_profile.Profile:
    doc = json.loads((MANIFESTS / name).read_text())
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
    info.write_text(info.read_text().replace("urn:weightvault:bagit-profile:3", "urn:other:1"))
    assert not profile().validate(bagit.Bag(str(b)))


@pytest.mark.parametrize("bundle", ["v1/bundles/golden", "v2/bundles/golden-enc"])
def test_golden_bundles_satisfy_profile_1_and_not_2(bundle):
    bag = bagit.Bag(str(GOLDEN / bundle))
    assert bag.is_valid()
    assert profile("bagit-profile-1.json").validate(bag)
    assert not profile().validate(bag)


def test_a_version_3_bag_with_a_sha512_manifest_fails_profile_2(sealed_minilm, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(sealed_minilm / "bundles" / "minilm", b)
    (b / "manifest-sha512.txt").write_text("")
    assert not profile().validate(bagit.Bag(str(b)))
