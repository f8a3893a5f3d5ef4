"""weightvault.toml: signing key, trusted keys and replicas, described once per lab.

Found as -c/--config, else $WEIGHTVAULT_CONFIG, else the user's config directory
($XDG_CONFIG_HOME/weightvault/config.toml, by default ~/.config/weightvault/config.toml). Never
from the current directory: a config adds trusted keys and replicas, and a directory someone
hands you (a vault, a copy of a replica) must not be able to add either. Relative paths in it
are relative to the file. Credentials are not kept here: S3 reads the usual AWS variables and
profiles, SFTP the ssh keys and agent (an `identity` file may be named).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from weightvault.errors import InputError
from weightvault.format.paths import name_ok

ENV = "WEIGHTVAULT_CONFIG"
TOP_KEYS = {"signing_key", "trusted_keys", "threshold", "replicas", "organization", "audit",
            "workers", "stewards", "sources"}  # fmt: skip
SOURCE_KEYS = {"url", "storage_options"}
STEWARD_KEYS = {"replica", "public_key", "name", "recipient"}
REPLICA_KEYS = {"url", "storage_options", "object_lock", "role", "host_key", "known_hosts",
                "identity"}  # fmt: skip
ROLES = {"primary", "mirror", "escrow"}
AUDIT_KEYS = {"state_dir", "cycle_days", "level", "key"}


@dataclass(frozen=True)
class ObjectLock:
    mode: str  # COMPLIANCE | GOVERNANCE
    days: int


@dataclass
class Replica:
    name: str
    url: str
    storage_options: dict = field(default_factory=dict)
    object_lock: ObjectLock | None = None
    role: str = "mirror"

    @property
    def is_local(self) -> bool:
        return urlparse(self.url).scheme in ("", "file")

    def open(self, *, create: bool = False):
        from weightvault.storage.opener import open_store

        return open_store(self.url, self.storage_options, create=create,
                          object_lock=self.object_lock)  # fmt: skip


@dataclass
class StewardConfig:
    """An escrow steward as the depositor knows it: which replica is its, and its keys."""

    name: str  # the configured name
    replica: str  # the replica it holds
    public_key: Path  # its Ed25519 signing key (receipts, responses, releases)
    display: str  # its full name for the records
    recipient: str | None = None  # its age recipient, if bundles are encrypted to it


@dataclass
class Config:
    path: Path | None = None
    signing_key: Path | str | None = None  # a key file, or a pkcs11: URI (kept as text)
    trusted_keys: list[Path] = field(default_factory=list)
    replicas: dict[str, Replica] = field(default_factory=dict)
    organization: str | None = None
    audit: dict = field(default_factory=dict)
    workers: int | None = None
    stewards: dict[str, StewardConfig] = field(default_factory=dict)
    threshold: int | None = None  # signatures by distinct trusted_keys a bundle needs
    # [sources.NAME]: storage options of sources in object storage, by URL prefix
    sources: dict[str, tuple[str, dict]] = field(default_factory=dict)

    def source_options(self, url: str) -> dict:
        """The storage options configured for a source URL: those of the [sources.NAME] whose
        url is the longest prefix of it (at a '/' boundary), else none."""
        best, opts = -1, {}
        for prefix, o in self.sources.values():
            p = prefix.rstrip("/")
            if (url == p or url.startswith(p + "/")) and len(p) > best:
                best, opts = len(p), o
        return dict(opts)

    def steward(self, name: str) -> StewardConfig:
        if name not in self.stewards:
            known = ", ".join(self.stewards) or "none"
            where = f" in {self.path}" if self.path else ""
            raise InputError(f"unknown steward {name!r}{where} (configured [stewards.NAME]: "
                             f"{known})")  # fmt: skip
        return self.stewards[name]

    def replica(self, name: str) -> Replica:
        if name not in self.replicas:
            known = ", ".join(self.replicas) or "none"
            where = f" in {self.path}" if self.path else ""
            raise InputError(f"unknown replica {name!r}{where} (configured: {known})")
        return self.replicas[name]


def locate(explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise InputError(f"{p}: config file not found")
        return p
    if os.environ.get(ENV):
        p = Path(os.environ[ENV])
        if not p.is_file():
            raise InputError(f"{p}: config file not found (from ${ENV})")
        return p
    p = user_config()
    return p if p.is_file() else None


def user_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "weightvault" / "config.toml"


def _inside_vault(path: Path) -> Path | None:
    """The vault or replica directory that holds `path`, if any: a config found there could
    have been planted by whoever wrote that storage."""
    for d in path.absolute().parents:
        if (d / "bundles").is_dir() and (d / "tmp").is_dir():
            return d
    return None


def single(url: str, storage_options: dict | None = None) -> Config:
    """A config with one replica, for --vault URL."""
    return Config(replicas={"vault": Replica("vault", url, storage_options or {}, None, "primary")})


def load(path: Path) -> Config:
    path = Path(path)
    if (vault := _inside_vault(path)) is not None:
        raise InputError(f"{path}: refusing a config that lies inside the vault {vault} (anyone "
                         "who can write the vault could have put it there)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read config ({e})") from None
    base = path.parent.absolute()

    def bad(key: str, why: str) -> InputError:
        return InputError(f"{path}: {key}: {why}")

    def unknown(keys, allowed, where: str) -> None:
        for k in keys:
            if k not in allowed:
                raise InputError(f"{path}: unknown key {where + k!r} (allowed: "
                                 f"{', '.join(sorted(allowed))})")  # fmt: skip

    def rel(v, key: str) -> Path:
        if not isinstance(v, str) or not v:
            raise bad(key, "expected a path string")
        if v.startswith("pkcs11:") and key in ("signing_key", "audit.key"):
            return v  # a key on a token, not a file
        p = Path(os.path.expanduser(v))
        return p if p.is_absolute() else base / p

    unknown(data, TOP_KEYS, "")
    cfg = Config(path=path)
    if "signing_key" in data:
        cfg.signing_key = rel(data["signing_key"], "signing_key")
    tk = data.get("trusted_keys", [])
    if not isinstance(tk, list):
        raise bad("trusted_keys", "expected a list of public key files")
    cfg.trusted_keys = [rel(v, f"trusted_keys[{i}]") for i, v in enumerate(tk)]
    if "threshold" in data:
        t = data["threshold"]
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= max(1, len(tk)):
            raise bad("threshold", f"expected a whole number 1..{max(1, len(tk))} (how many of "
                                   "trusted_keys must sign a bundle)")  # fmt: skip
        cfg.threshold = t
    if "organization" in data:
        if not isinstance(data["organization"], str):
            raise bad("organization", "expected a string")
        cfg.organization = data["organization"]
    if "workers" in data:
        if not isinstance(data["workers"], int) or not 1 <= data["workers"] <= 64:
            raise bad("workers", "expected an integer 1..64")
        cfg.workers = data["workers"]
    audit = data.get("audit", {})
    if not isinstance(audit, dict):
        raise bad("audit", "expected a table")
    unknown(audit, AUDIT_KEYS, "audit.")
    if "state_dir" in audit:
        audit["state_dir"] = rel(audit["state_dir"], "audit.state_dir")
    if "key" in audit:
        audit["key"] = rel(audit["key"], "audit.key")
    if "cycle_days" in audit and (not isinstance(audit["cycle_days"], int)
                                  or audit["cycle_days"] < 1):  # fmt: skip
        raise bad("audit.cycle_days", "expected a whole number of days >= 1")
    cfg.audit = audit
    reps = data.get("replicas", {})
    if not isinstance(reps, dict):
        raise bad("replicas", "expected tables [replicas.NAME]")
    for name, r in reps.items():
        where = f"replicas.{name}"
        if not name_ok(name):
            raise bad(where, "replica names use letters, digits, '.', '_' and '-'")
        if not isinstance(r, dict):
            raise bad(where, "expected a table")
        unknown(r, REPLICA_KEYS, where + ".")
        url = r.get("url")
        if not isinstance(url, str) or not url:
            raise bad(f"{where}.url", "missing (a directory, file://, s3://, sftp:// URL)")
        scheme = urlparse(url).scheme
        if scheme in ("", "file"):
            p = Path(urlparse(url).path if scheme == "file" else url)
            url = str(p if p.is_absolute() else base / p)
        opts = r.get("storage_options", {})
        if not isinstance(opts, dict):
            raise bad(f"{where}.storage_options", "expected a table")
        opts = dict(opts)
        for k in ("host_key", "known_hosts", "identity"):
            if k in r:
                if scheme not in ("sftp", "ssh"):
                    raise bad(f"{where}.{k}", "only applies to sftp:// replicas")
                opts[k] = str(rel(r[k], f"{where}.{k}")) if k != "host_key" else r[k]
        lock = None
        if "object_lock" in r:
            ol = r["object_lock"]
            if not isinstance(ol, dict) or set(ol) - {"mode", "days"}:
                raise bad(f"{where}.object_lock", "expected { mode = ..., days = N }")
            if ol.get("mode") not in ("COMPLIANCE", "GOVERNANCE"):
                raise bad(f"{where}.object_lock.mode", "expected COMPLIANCE or GOVERNANCE")
            if not isinstance(ol.get("days"), int) or ol["days"] < 1:
                raise bad(f"{where}.object_lock.days", "expected a whole number of days >= 1")
            if scheme not in ("s3", "s3a"):
                raise bad(f"{where}.object_lock", "only s3:// replicas support Object Lock")
            lock = ObjectLock(ol["mode"], ol["days"])
        role = r.get("role", "mirror")
        if role not in ROLES:
            raise bad(f"{where}.role", f"expected one of {', '.join(sorted(ROLES))}")
        cfg.replicas[name] = Replica(name, url, opts, lock, role)
    def named(table: str, allowed: set[str]):
        """(name, table, where) of each [TABLE.NAME], its name and keys checked."""
        tables = data.get(table, {})
        if not isinstance(tables, dict):
            raise bad(table, f"expected tables [{table}.NAME]")
        for name, t in tables.items():
            where = f"{table}.{name}"
            if not name_ok(name) or not isinstance(t, dict):
                raise bad(where, "expected a table named with letters, digits, '.', '_' and '-'")
            unknown(t, allowed, where + ".")
            yield name, t, where

    for name, src, where in named("sources", SOURCE_KEYS):
        url = src.get("url")
        if not isinstance(url, str) or urlparse(url).scheme in ("", "file"):
            raise bad(f"{where}.url", "expected the URL (prefix) of sources in object storage, "
                                      "such as s3://bucket/checkpoints/")  # fmt: skip
        opts = src.get("storage_options", {})
        if not isinstance(opts, dict):
            raise bad(f"{where}.storage_options", "expected a table")
        cfg.sources[name] = (url, dict(opts))
    for name, s, where in named("stewards", STEWARD_KEYS):
        replica = s.get("replica", name)
        if replica not in cfg.replicas:
            raise bad(f"{where}.replica", f"no replica {replica!r} is configured")
        if "public_key" not in s:
            raise bad(f"{where}.public_key", "missing (the steward's Ed25519 public key file)")
        for k in ("name", "recipient"):
            if k in s and not isinstance(s[k], str):
                raise bad(f"{where}.{k}", "expected a string")
        cfg.stewards[name] = StewardConfig(name, replica, rel(s["public_key"], f"{where}.public_key"),
                                           s.get("name", name), s.get("recipient"))  # fmt: skip
    return cfg
