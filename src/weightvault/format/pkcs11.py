"""Ed25519 keys on a PKCS#11 token (an HSM, a smart card, SoftHSM2), named by RFC 7512 URIs.

    pkcs11:token=lab-archive;object=seal-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin

The private key never enters this process: signing is C_Sign with CKM_EDDSA (PKCS#11 3.0,
pure Ed25519, no parameters). The module comes from the URI's `module-path`, else
$WEIGHTVAULT_PKCS11_MODULE; the PIN from `pin-value`, `pin-source` (a file), else
$WEIGHTVAULT_PKCS11_PIN, else the `pin` callback (the CLI asks on a terminal). A loaded key has
signed and verified a probe message, so a token that will not sign fails before anything is
written. URIs shown anywhere have their pin-value removed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from weightvault.errors import InputError

MODULE_ENV = "WEIGHTVAULT_PKCS11_MODULE"
PIN_ENV = "WEIGHTVAULT_PKCS11_PIN"
# RFC 7512 section 2.3: path attributes (which token, which object) and query attributes
PATH_ATTRS = {"token", "manufacturer", "serial", "model", "library-manufacturer",
              "library-description", "library-version", "object", "type", "id",
              "slot-description", "slot-manufacturer", "slot-id"}  # fmt: skip
QUERY_ATTRS = {"pin-source", "pin-value", "module-name", "module-path"}
# CKA_EC_PARAMS naming Ed25519: the OID 1.3.101.112, or PrintableString "edwards25519"
ED25519_PARAMS = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")
PROBE = b"weightvault pkcs11 probe: this token signs with the key it names"
MAX_PIN_FILE = 4096


@dataclass(frozen=True)
class Uri:
    path: dict[str, bytes]
    query: dict[str, bytes]
    shown: str  # the URI without its pin-value, for messages

    def text(self, name: str) -> str | None:
        v = self.path.get(name, self.query.get(name))
        return None if v is None else v.decode("utf-8", "replace")


def parse(uri: str) -> Uri:
    """RFC 7512: `pkcs11:` path attributes separated by ';', then '?' and query attributes
    separated by '&'; values percent-encoded (an object id is arbitrary bytes)."""
    shown = redact(uri)
    if not uri.startswith("pkcs11:"):
        raise InputError(f"{shown}: not a PKCS#11 URI (pkcs11:token=...;object=...)")
    body = uri[len("pkcs11:"):]
    path_part, _, query_part = body.partition("?")
    out: dict[str, dict[str, bytes]] = {"path": {}, "query": {}}
    for where, part, sep, allowed in (("path", path_part, ";", PATH_ATTRS),
                                      ("query", query_part, "&", QUERY_ATTRS)):  # fmt: skip
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            if not eq:
                raise InputError(f"{shown}: attribute {name!r} has no value")
            if name not in allowed and not name.startswith("x-"):
                hint = (" (put it after '?': it is a query attribute)" if name in QUERY_ATTRS
                        else "")  # fmt: skip
                raise InputError(f"{shown}: unknown {where} attribute {name!r}{hint}")
            if name in out[where]:
                raise InputError(f"{shown}: attribute {name!r} given twice")
            out[where][name] = unquote(value, "latin-1").encode("latin-1")
    if "object" not in out["path"] and "id" not in out["path"]:
        raise InputError(f"{shown}: names no key: add object=LABEL (or id=%XX...)")
    if out["path"].get("type", b"private") != b"private":
        raise InputError(f"{shown}: type must be 'private' (the signing key)")
    return Uri(out["path"], out["query"], shown)


def redact(uri: str) -> str:
    head, sep, query = uri.partition("?")
    if not sep:
        return uri
    kept = [q for q in query.split("&") if not q.startswith("pin-value=")]
    return head + (("?" + "&".join(kept)) if kept else "")


def _module(u: Uri) -> str:
    if "module-name" in u.query and "module-path" not in u.query:
        raise InputError(f"{u.shown}: module-name is not supported; give module-path=FILE")
    path = u.text("module-path") or os.environ.get(MODULE_ENV)
    if not path:
        raise InputError(f"{u.shown}: no PKCS#11 module: add module-path=FILE to the URI or set "
                         f"${MODULE_ENV}")  # fmt: skip
    if not Path(path).is_file():
        raise InputError(f"{u.shown}: PKCS#11 module {path} not found")
    return path


def _pin(u: Uri, ask: Callable[[str], str] | None) -> str | None:
    if "pin-value" in u.query:
        return u.query["pin-value"].decode("utf-8")
    if "pin-source" in u.query:
        src = u.query["pin-source"].decode("utf-8")
        p = Path(urlparse(src).path if src.startswith("file:") else src)
        try:
            with open(p, "rb") as f:
                data = f.read(MAX_PIN_FILE)
        except OSError as e:
            raise InputError(f"{u.shown}: cannot read pin-source {p} ({e.strerror})") from None
        return data.decode("utf-8").rstrip("\r\n")
    if os.environ.get(PIN_ENV) is not None:
        return os.environ[PIN_ENV]
    return ask(u.shown) if ask else None


@dataclass
class TokenKey:
    """A private key on a token, with the two methods SigningKey needs of a key."""

    session: object = field(repr=False)
    handle: object = field(repr=False)
    public_raw: bytes
    shown: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sign(self, message: bytes) -> bytes:
        from pkcs11 import Mechanism, PKCS11Error

        try:
            with self._lock:  # one operation at a time per session (PKCS#11 section 5.6)
                return bytes(self.handle.sign(bytes(message), mechanism=Mechanism.EDDSA))
        except PKCS11Error as e:
            raise InputError(f"{self.shown}: the token refused to sign "
                             f"({type(e).__name__})") from None  # fmt: skip

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_raw)


def load(uri: str, pin: Callable[[str], str] | None = None):
    """The SigningKey that a PKCS#11 URI names, checked by signing a probe."""
    from weightvault.format.keys import SigningKey

    try:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass, PKCS11Error
    except ImportError:
        raise InputError(f"{redact(uri)}: PKCS#11 keys need python-pkcs11 "
                         "(pip install 'weightvault[pkcs11]')") from None  # fmt: skip
    u = parse(uri)
    module = _module(u)
    try:
        lib = pkcs11.lib(module)
    except (RuntimeError, OSError, PKCS11Error) as e:
        raise InputError(f"{u.shown}: cannot load PKCS#11 module {module} ({e})") from None
    token = _token(lib, u)
    secret = _pin(u, pin)
    from pkcs11 import TokenFlag

    if secret is None and token.flags & TokenFlag.LOGIN_REQUIRED:
        raise InputError(f"{u.shown}: token {token.label!r} needs a PIN: add pin-source=FILE "
                         f"or set ${PIN_ENV}")  # fmt: skip
    try:
        session = token.open(user_pin=secret)
    except pkcs11.exceptions.PinIncorrect:
        raise InputError(f"{u.shown}: token {token.label!r} refused the PIN (PIN incorrect; "
                         "repeated tries lock the token)") from None  # fmt: skip
    except pkcs11.exceptions.PinLocked:
        raise InputError(f"{u.shown}: token {token.label!r} has locked its PIN") from None
    except PKCS11Error as e:
        raise InputError(f"{u.shown}: cannot log in to token {token.label!r} "
                         f"({type(e).__name__})") from None  # fmt: skip
    try:
        attrs = {Attribute.KEY_TYPE: KeyType.EC_EDWARDS}
        if "object" in u.path:
            attrs[Attribute.LABEL] = u.path["object"].decode("utf-8")
        if "id" in u.path:
            attrs[Attribute.ID] = u.path["id"]
        priv = list(session.get_objects({**attrs, Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        if not priv:
            raise InputError(f"{u.shown}: token {token.label!r} holds no Ed25519 private key "
                             "with that object/id")  # fmt: skip
        if len(priv) > 1:
            raise InputError(f"{u.shown}: {len(priv)} private keys match; add id=... to pick one")
        if not hasattr(priv[0], "sign"):  # python-pkcs11 offers sign() only when CKA_SIGN
            raise InputError(f"{u.shown}: the token refused to sign: the key's CKA_SIGN is false")
        raw = _public_raw(session, priv[0], attrs, u)
        key = TokenKey(session, priv[0], raw, u.shown)
        try:
            key.public_key().verify(key.sign(PROBE), PROBE)
        except InvalidSignature:
            raise InputError(f"{u.shown}: the token's signature does not verify with its public "
                             "key object (a mismatched pair)") from None  # fmt: skip
    except BaseException:
        session.close()
        raise
    return SigningKey(key, u.shown)


def _token(lib, u: Uri):
    from pkcs11 import PKCS11Error

    want = {k: u.text(k) for k in ("token", "manufacturer", "serial", "model") if k in u.path}
    slot_id = u.text("slot-id")
    found, seen = [], []
    try:
        for slot in lib.get_slots(token_present=True):
            tok = slot.get_token()
            seen.append(tok.label)
            have = {"token": tok.label, "manufacturer": tok.manufacturer_id,
                    "serial": tok.serial.decode("ascii", "replace")
                    if isinstance(tok.serial, bytes) else tok.serial, "model": tok.model}  # fmt: skip
            if all((have[k] or "").strip() == v for k, v in want.items()) and (
                slot_id is None or str(slot.slot_id) == slot_id
            ):
                found.append(tok)
    except PKCS11Error as e:
        raise InputError(f"{u.shown}: cannot list tokens ({type(e).__name__})") from None
    if not found:
        raise InputError(f"{u.shown}: no such token (tokens present: "
                         f"{', '.join(repr(s) for s in seen) or 'none'})")  # fmt: skip
    if len(found) > 1:
        raise InputError(f"{u.shown}: {len(found)} tokens match; add serial=... to pick one")
    return found[0]


def _public_raw(session, priv, attrs: dict, u: Uri) -> bytes:
    """The key's 32 public bytes: from the private key's CKA_EC_POINT where the token exposes
    it, else from the public key object with the same label/id."""
    from pkcs11 import Attribute, ObjectClass, PKCS11Error

    for obj in (priv, *session.get_objects({**attrs, Attribute.CLASS: ObjectClass.PUBLIC_KEY})):
        try:
            params, point = bytes(obj[Attribute.EC_PARAMS]), bytes(obj[Attribute.EC_POINT])
        except (PKCS11Error, KeyError):
            continue
        if params not in ED25519_PARAMS:
            raise InputError(f"{u.shown}: the key is not Ed25519 (CKA_EC_PARAMS {params.hex()})")
        # CKA_EC_POINT is a DER OCTET STRING (04 20 ...) on most tokens, raw 32 bytes on some
        if len(point) == 34 and point[:2] == b"\x04\x20":
            return point[2:]
        if len(point) == 32:
            return point
        raise InputError(f"{u.shown}: unreadable CKA_EC_POINT ({len(point)} bytes)")
    raise InputError(f"{u.shown}: the token holds no public key for this object (import the "
                     "public key with the same label and id)")  # fmt: skip
