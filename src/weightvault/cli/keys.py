"""`weightvault key ...`: a signing key's id and public key, rotation and revocation
(docs/KEYS.md). Statements are signed documents (format/keystatement.py); where they are kept
and how readers apply them is docs/FORMAT.md section 13."""

from __future__ import annotations

import os
from pathlib import Path

import click

from weightvault.cli.app import Ctx, _emit, cli, json_opt, load_key, trust_opt, vault_opt
from weightvault.errors import InputError, TrustError
from weightvault.format import keys


@cli.group("key")
def key_group() -> None:
    """Signing keys: ids, public keys, rotation and revocation (docs/KEYS.md)."""


def _public_of(spec: str) -> keys.PublicKey:
    """A public key from a .pub file, or from a private key file or pkcs11: URI."""
    if not keys.is_token_uri(spec):
        data = Path(spec).read_bytes()[: keys.MAX_KEY_FILE] if Path(spec).is_file() else b""
        if b"PUBLIC KEY" in data:
            return keys.load_public_key(Path(spec))
    return load_key(spec).public


@key_group.command("id")
@click.argument("key", metavar="KEY.pub|KEY|pkcs11:URI")
def key_id(key: str) -> None:
    """Print a key's id (hex SHA-256 of its raw public key), as signatures name it."""
    click.echo(_public_of(key).key_id)


@key_group.command("export")
@click.argument("key", metavar="KEY|pkcs11:URI")
@click.argument("out", type=click.Path(dir_okay=False))
def key_export(key: str, out: str) -> None:
    """Write the public key of a private key file or a token's key to OUT (a .pub file that
    --trust and trusted_keys take)."""
    pub = load_key(key).public
    _write_new(Path(out), pub.pem(), 0o644)
    click.echo(f"wrote {out}; key id {pub.key_id}")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data`, never over an existing file, durable before it is named."""
    if path.exists():
        raise InputError(f"{path}: already exists; refusing to overwrite it")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if `path` appeared meanwhile
    except FileExistsError:
        raise InputError(f"{path}: already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink()


def _open_log(ctx: Ctx, vault) -> None:
    """Judge against the log's history: the replicas the statement will be recorded on."""
    if vault or ctx.config.replicas:
        ctx.replicas(vault)


def _current(policy):
    """{key id: window} of the keys the policy trusts today (the log's history applied)."""
    h = policy.history
    if h is None:
        return {k.key_id: _window(k) for k in policy}
    return {i: w for i, w in h.windows.items() if w.end is None and w.revoked is None}


@key_group.command("history")
@vault_opt
@trust_opt
@json_opt
@click.pass_obj
def key_history(ctx: Ctx, vault, trust, as_json) -> None:
    """The trusted keys as the preservation log leaves them: rotations and revocations, in log
    order, as verify judges bundles (docs/FORMAT.md section 13)."""
    ctx.replicas(vault)
    policy = ctx.trusted(trust)
    if not policy:
        raise InputError("no trusted public key given: pass --trust KEY.pub or set trusted_keys")
    h = policy.history
    rows = []
    for w in (h.windows.values() if h else [_window(k) for k in policy]):
        rows.append({"key": w.key.key_id, "slot": w.slot, "from_entry": w.start if w.start >= 0
                     else None, "until_entry": w.end, "successor": w.successor,
                     "revoked_since": w.revoked[0] if w.revoked else None,
                     "revoked_at_entry": w.revoked[1] if w.revoked else None})  # fmt: skip
    out = {"threshold": policy.threshold, "log": h is not None, "keys": rows,
           "notes": h.notes if h else []}  # fmt: skip
    lines = [f"threshold {policy.threshold}; "
             f"{'preservation log read' if h else 'no preservation log under a trusted key'}"]
    for r in rows:
        when = (f"from entry {r['from_entry']}" if r["from_entry"] is not None else "trusted")
        if r["until_entry"] is not None:
            when += f", succeeded by {r['successor'][:16]} at entry {r['until_entry']}"
        if r["revoked_since"]:
            when += f", REVOKED since {r['revoked_since']} (entry {r['revoked_at_entry']})"
        lines.append(f"  {r['key'][:16]} (slot {r['slot'][:16]}): {when}")
    lines += [f"  note: {n}" for n in out["notes"]]
    _emit(out, as_json, "\n".join(lines))


def _window(k):
    from weightvault.format.trust import Window

    return Window(k, k.key_id)


out_opt = click.option("--out", metavar="FILE", help="Also write the signed statement here.")
reason_opt = click.option("--reason", default="", help="Why (kept in the statement, public).")


@key_group.command("rotate")
@click.option("--old", required=True, metavar="KEY|pkcs11:URI", help="The key being retired.")
@click.option("--new", required=True, metavar="KEY|pkcs11:URI", help="Its successor.")
@reason_opt
@out_opt
@vault_opt
@trust_opt
@json_opt
@click.pass_obj
def key_rotate(ctx: Ctx, old, new, reason, out, vault, trust, as_json) -> None:
    """Record, signed by both keys, that NEW succeeds OLD: readers that trust OLD accept
    bundles NEW signs after this point, without re-sealing anything."""
    from weightvault.format import keystatement

    old_k = load_key(old)
    new_k = load_key(new)
    _open_log(ctx, vault)
    live = _current(ctx.trusted(trust))
    if old_k.public.key_id not in live:
        raise TrustError(f"{old_k.source}: key {old_k.public.key_id[:16]} is not trusted now "
                         "(not in --trust/trusted_keys, or rotated or revoked in the log); "
                         "only a trusted key can name its successor")  # fmt: skip
    raw = keystatement.rotation(old_k, new_k, reason=reason)
    _record(ctx, vault, raw, out, as_json,
            f"{old_k.public.key_id[:16]} -> {new_k.public.key_id[:16]}", [old_k, new_k])  # fmt: skip


@key_group.command("revoke")
@click.argument("key", metavar="KEY.pub")
@click.option("--since", required=True, metavar="TIME",
              help="From when the key must not be trusted (ISO 8601, e.g. 2026-12-01T00:00:00Z "
                   "or 2026-12-01); bundles the log shows sealed before stay trusted.")  # fmt: skip
@click.option("--key", "signers", multiple=True, required=True, metavar="KEY|pkcs11:URI",
              help="Who signs the revocation: the revoked key itself, a key that named it in a "
                   "rotation, or trusted keys (as many as the threshold). Repeatable.")  # fmt: skip
@reason_opt
@out_opt
@vault_opt
@trust_opt
@json_opt
@click.pass_obj
def key_revoke(ctx: Ctx, key, since, signers, reason, out, vault, trust, as_json) -> None:
    """Record that KEY must not be trusted for anything signed from --since on."""
    from weightvault.format import keystatement

    target = _public_of(key)
    sks = [load_key(s) for s in signers]
    _open_log(ctx, vault)
    policy = ctx.trusted(trust)
    live = _current(policy)
    ids = {k.public.key_id for k in sks}
    h = policy.history
    own = {k.key_id for k in h.lineage(target.key_id)} if h else {target.key_id}
    if not ids & own:
        slots = {live[i].slot for i in ids if i in live}
        if len(slots) < policy.threshold:
            who = ", ".join(f"{k.source} ({k.public.key_id[:16]})" for k in sks
                            if k.public.key_id not in live)  # fmt: skip
            raise TrustError(f"revocation of {target.key_id[:16]} signed by "
                             f"{who or f'{len(slots)} trusted key(s)'}: "
                             f"{'not a trusted key' if who else 'too few'}; a revocation is "
                             "signed by the key itself, a key that named it in a rotation, or "
                             f"{policy.threshold} trusted key(s)")  # fmt: skip
    raw = keystatement.revocation(target, since, sks, reason=reason)
    _record(ctx, vault, raw, out, as_json, f"{target.key_id[:16]} revoked since "
                                           f"{keystatement.parse_time(since)}", sks)  # fmt: skip


def _record(ctx: Ctx, vault, raw: bytes, out: str | None, as_json: bool, what: str,
            signers: list) -> None:  # fmt: skip
    """Write the statement where readers find it: the preservation log (FORMAT.md section 13)
    and, with --out, a file to publish beside the lab's public keys."""
    import json

    from weightvault.format import keystatement

    st = keystatement.parse(raw, "the new statement")
    if out and Path(out).exists():
        raise InputError(f"{out}: already exists; refusing to overwrite it")
    where = _append_to_log(ctx, vault, raw, signers)
    if out:
        _write_new(Path(out), raw, 0o644)
        where.append(out)
    if not where:
        raise InputError("nowhere to record the statement: configure replicas (the "
                         "preservation log) or pass --out FILE")  # fmt: skip
    _emit({"statement": json.loads(raw), "recorded": where}, as_json,
          f"{st.kind}: {what}; recorded in {', '.join(where)}")


def _append_to_log(ctx: Ctx, vault, raw: bytes, signers: list) -> list[str]:
    """Append the statement to the lab's preservation log on every replica; [] when there are
    no replicas (no --vault, no config)."""
    from weightvault.cli.log import log_key_for, record
    from weightvault.log import statements

    if not vault and not ctx.config.replicas:
        return []
    from weightvault.cli.log import _origin_on
    from weightvault.log.store import origin_for

    rs = ctx.replicas(vault)
    key = log_key_for(ctx, rs, signers)
    theirs = {o for n in rs.names if (o := _origin_on(rs.try_store(n)))}
    if theirs - {origin_for(key.public.raw).encode()}:
        raise TrustError(f"the preservation log on {', '.join(rs.names)} is kept with another "
                         "key: run this where that key (the config's signing_key) is available")  # fmt: skip
    record(ctx, rs, statements.key(raw), key=key)
    return [f"the preservation log on {', '.join(rs.names)}"]


def log_entries(rs, policy) -> list | None:
    """The verified entries of the preservation log the replicas hold, if a key this policy
    trusts signs it (the lab's log key); None when there is no such log. A log that is there
    but does not verify is an error: its key statements cannot be ignored."""
    from weightvault.cli.log import _origin_on
    from weightvault.log.archive import PreservationLog
    from weightvault.log.store import origin_for

    origins = {o for n in rs.names if (o := _origin_on(rs.try_store(n)))}
    for k in policy:
        if origin_for(k.raw).encode() in origins:
            return PreservationLog(rs, k.raw).statements()
    return None
