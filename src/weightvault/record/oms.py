"""OpenSSF model signing (OMS) signatures, so a restored model verifies with an independent tool.

The signature is what ``model_signing sign key`` (PyPI ``model-signing`` 1.x) writes: a Sigstore
bundle (v0.3, compact JSON) holding a DSSE envelope whose payload is an in-toto Statement v1
with the predicate ``https://model_signing/signature/v1.0``: every file of the model directory
with its SHA-256 ("files" serialization), sorted the way the tool sorts them, plus the paths a
verifier must skip. The subject's digest is SHA-256 over the files' raw digests in that order.
The envelope is signed with ECDSA (P-256/SHA-256, P-384/SHA-384 or P-521/SHA-512, the only keys
``model_signing verify key`` accepts; not Ed25519) and names the key by the SHA-256 of its PEM.

Nothing here reads model files: the digests come from weightvault's signed manifest. Only
hashlib and cryptography are needed; ``model-signing`` itself is used by the tests alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from weightvault.errors import InputError
from weightvault.format.keys import load_private_pem

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# What the tool leaves out by default (--ignore-git-paths): top-level entries only.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
SIGNATURE_NAME = "model.sig"  # the tool's --signature default
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def default_signature_name() -> str:
    """The file name ``model_signing`` uses for a signature (its --signature default)."""
    return SIGNATURE_NAME


def load_ec_key(path: Path | str, passphrase=None) -> ec.EllipticCurvePrivateKey:
    """Read a PEM ECDSA private key on a curve ``model_signing`` accepts; an encrypted one is
    opened with `passphrase(path)`, as signing keys are."""
    path = Path(path)
    key = load_private_pem(path, "model-signing key", "EC", passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _HASHES:
        what = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise InputError(
            f"{path}: key is {what}; model signing needs ECDSA P-256, P-384 or P-521 "
            "(openssl ecparam -name prime256v1 -genkey -noout -out KEY)"
        )
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as the PEM file a verifier passes to ``--public_key``."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ignored(path: str, ignore_paths: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def _ecdsa(curve: str) -> ec.ECDSA:
    try:  # RFC 6979 (cryptography >= 44 on OpenSSL >= 3.2): same inputs, same bytes
        algo = ec.ECDSA(_HASHES[curve](), deterministic_signing=True)
    except (TypeError, UnsupportedAlgorithm):
        return ec.ECDSA(_HASHES[curve]())
    return algo


def sign_files(
    files: list[tuple[str, str, int]],
    key: ec.EllipticCurvePrivateKey,
    *,
    model_name: str,
    signature_name: str | None = SIGNATURE_NAME,
    ignore_git_paths: bool = True,
) -> bytes:
    """Return the bytes of an OMS signature over `files`: (relative POSIX path, sha256 hex,
    size) of every file of the model directory. Files the tool skips by default (top-level
    .git, .gitattributes, .github, .gitignore) are left out and listed as ignore paths, as is
    `signature_name`, so the signature may sit inside the directory it signs."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _HASHES:
        raise InputError("model signing needs an ECDSA P-256, P-384 or P-521 private key")
    if not isinstance(model_name, str) or not model_name:
        raise InputError("model signing: the model needs a name")
    ignore = set(GIT_PATHS) if ignore_git_paths else set()
    if signature_name:
        ignore.add(signature_name)
    digests: dict[str, str] = {}
    for path, sha256, _size in files:
        if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
            raise InputError(f"model signing: bad file path {path!r}")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise InputError(f"model signing: bad file path {path!r}")
        if not isinstance(sha256, str) or not _HEX64.match(sha256):
            raise InputError(f"model signing: {path}: sha256 {sha256!r} is not 64 hex digits")
        if path in digests:
            raise InputError(f"model signing: {path} is listed twice")
        if signature_name and path == signature_name:
            raise InputError(
                f"model signing: the model has its own {path}; pick another signature name"
            )
        if not _ignored(path, ignore):
            digests[path] = sha256
    if not digests:
        raise InputError("model signing: no files to sign")
    # The tool sorts pathlib paths, i.e. by their components ("a/b" before "a-b").
    names = sorted(digests, key=lambda p: p.split("/"))
    resources = [{"name": n, "algorithm": "sha256", "digest": digests[n]} for n in names]
    root = hashlib.sha256(b"".join(bytes.fromhex(digests[n]) for n in names)).hexdigest()
    serialization_args: dict = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
    if ignore:
        serialization_args["ignore_paths"] = sorted(ignore)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization_args, "resources": resources},
    }
    payload = json.dumps(statement, indent=2).encode()  # as protobuf's MessageToJson writes it
    pae = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)
    sig = key.sign(pae, _ecdsa(key.curve.name))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(public_pem(key)).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode()
