"""`weightvault log ...`: the preservation log (C2SP transparency log) from the command line,
and `record()`, the one call other commands make to append their statements."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from weightvault.cli.app import Ctx, _emit, _state, cli, json_opt, trust_opt, vault_opt
from weightvault.errors import Conflict, InputError, StorageError, WeightvaultError


def _pub(path: str):
    from weightvault.format import keys

    return keys.load_public_key(Path(path)).raw


def _open_url(url: str, *, create: bool = False, ctx: Ctx | None = None):
    """A log copy anywhere: a replica named in the config (with its storage options), a
    vault, a published directory (no tmp/ needed to read), a URL."""
    from weightvault.storage.opener import is_local, open_store
    from weightvault.storage.store import LocalStore

    if ctx is not None and "/" not in url and url in ctx.config.replicas:
        return ctx.config.replica(url).open(create=create)
    if is_local(url) and not create:
        p = Path(url.removeprefix("file://"))
        if not p.is_dir():
            raise InputError(f"{url}: no such directory")
        return LocalStore(p)
    return open_store(url, create=create)


def _plog(ctx: Ctx, vault, log_key: str | None, *, key=None, state_dir=None):
    from weightvault.log.archive import PreservationLog

    rs = ctx.replicas(vault)
    if log_key:
        public = _pub(log_key)
    elif key is not None:
        public = key.public.raw
    elif ctx.config.signing_key:
        public = ctx.signing_key(None).public.raw
    else:
        raise InputError("no log key: pass --log-key LAB.pub (or set signing_key in the config)")
    return PreservationLog(rs, public, key=key, state_dir=state_dir)


def record(ctx: Ctx, rs, *entries: bytes, key=None, mirror_to: list[str] | None = None) -> None:
    """Append statements to the lab's preservation log (the lab's signing key: `key`, else the
    config's signing_key). Without a signing key the log is left alone, said on stderr; a
    replica whose copy could not be updated is named (it catches up at the next append)."""
    from weightvault.log.archive import PreservationLog

    if key is None:
        if not ctx.config.signing_key:
            from weightvault.log.store import CHECKPOINT

            if any((s := rs.try_store(n)) is not None and s.exists(CHECKPOINT) for n in rs.names):
                click.echo("weightvault: note: preservation log not updated (no signing_key in "
                           "the config)", err=True)  # fmt: skip
            return
        key = ctx.signing_key(None)
    state = _state(ctx, None)
    plog = PreservationLog(rs, key.public.raw, key=key, state_dir=state)
    if _foreign(plog):
        return  # a steward's replica holds its depositor's log: not ours to append to
    plog.append(*entries, mirror_to=mirror_to)
    for name, why in plog.errors.items():
        click.echo(f"weightvault: note: replica {name}: log copy not updated ({why})", err=True)


def _quietly(what: str, fn) -> None:
    """The operation itself is done: a log that cannot be appended to is said, not fatal."""
    try:
        fn()
    except WeightvaultError as e:
        click.echo(f"weightvault: note: preservation log not updated after {what}: {e}", err=True)


def log_key_for(ctx: Ctx, rs, candidates: list):
    """The key to append with: the one (among `candidates`, then the config's signing_key)
    whose log the replicas already hold; with no log yet, the config's signing_key, else the
    first candidate. A bundle may be signed by keys other than the log's (docs/KEYS.md)."""
    from weightvault.log.store import origin_for

    origin = next((o for n in rs.names if (o := _origin_on(rs.try_store(n)))), None)
    for k in candidates:
        if origin is not None and origin_for(k.public.raw).encode() == origin:
            return k
    return ctx.signing_key(None) if ctx.config.signing_key else candidates[0]


def log_seal(ctx: Ctx, rs, r, keys_: list, encrypted: bool, held: list[str]) -> None:
    from weightvault.log import statements as st

    def go() -> None:
        stmts = [st.sealed(r.bundle, r.name, r.bytes_stored, keys_[0].public.key_id,
                           r.format_version, encrypted)]  # fmt: skip
        stmts += [st.replicated(r.bundle, r.name, n) for n in held]
        record(ctx, rs, *stmts, key=log_key_for(ctx, rs, keys_))

    _quietly("seal", go)


def log_replicated(ctx: Ctx, rs, bundle: str, name: str, replica: str) -> None:
    from weightvault.log import statements as st

    if replica in rs.names:
        _quietly("replicate", lambda: record(ctx, rs, st.replicated(bundle, name, replica)))


def _record_digest(rec: dict) -> str | None:
    import hashlib

    from weightvault.format import canon

    return hashlib.sha256(canon.canonical(rec)).hexdigest() if rec else None


def log_audits(ctx: Ctx, rs, level: str, done, unreachable: dict) -> None:
    """One `audited` statement per replica audited (or unreachable), naming the digest of the
    signed audit record, so deleting or editing that record shows against the log."""
    from weightvault.archive.auditlog import bundles_total, failures_by_kind
    from weightvault.log import statements as st

    def go() -> None:
        stmts = []
        for a in done:
            r = a.record
            kinds = failures_by_kind(r) if r else {}  # every failure, not the record's first
            result = "ok" if a.outcome == "pass" else (
                "lost" if any("missing" in k or "loss" in k for k in kinds) else "damaged")
            stmts.append(st.audited(a.replica, level, result, bundles_total(r) if r else 0,
                                    r.get("objects_checked", 0), r.get("bytes_read", 0),
                                    sum(kinds.values()), _record_digest(r)))  # fmt: skip
        for n in unreachable:
            stmts.append(st.audited(n, level, "unreachable", 0, 0, 0, 0, None))
        if stmts:
            record(ctx, rs, *stmts)

    _quietly("audit", go)


def log_repairs(ctx: Ctx, rs, results) -> None:
    from weightvault.log import statements as st
    from weightvault.storage.vault import Vault

    def go() -> None:
        stmts = []
        for r in results:
            for name, n in r.repaired.items():  # every object, not the record's first
                bid = Vault(rs.store(r.replica)).bundle_id_of(name)
                stmts.append(st.repaired(bid, name, r.replica, n))
        if stmts:
            record(ctx, rs, *stmts)

    _quietly("repair", go)


def log_custody(ctx: Ctx, r, key) -> None:
    """A custody event the lab signed (handover, transfer, challenge, result), anchored by the
    digest of its custody record."""
    from weightvault.log import statements as st
    from weightvault.storage.replicas import ReplicaSet

    event = st.CHAIN_EVENTS.get(r.event)
    if event is None:
        return
    steward = str((r.detail or {}).get("steward", "")) or "steward"

    def go() -> None:
        record(ctx, ReplicaSet(ctx.config), st.custody(event, r.bundle, r.name, steward[:200],
                                                       r.digest), key=key)  # fmt: skip

    _quietly(f"escrow {event}", go)


def _origin_on(store) -> bytes | None:
    """The origin line of the log checkpoint a store holds (unverified: only to pick the key
    that will verify it), or None."""
    from weightvault.log import note
    from weightvault.log.store import CHECKPOINT

    if store is None or not store.exists(CHECKPOINT):
        return None
    try:
        return note.parse(store.read_bytes(CHECKPOINT, note.MAX_NOTE)).text.split(b"\n")[0]
    except (note.NoteError, WeightvaultError):
        return None


def _foreign(plog) -> bool:
    """Does the primary hold a log of another key (origin)? (A damaged one: let the append
    say so.)"""
    origin = _origin_on(plog.replicas.try_store(plog.primary))
    return origin is not None and origin != plog.origin.encode()


def _log_public(ctx: Ctx, rs) -> bytes | None:
    """The key of the log the replicas hold, if it is ours or one we trust (a steward's
    config trusts the depositor's key: its audits then take the depositor's log's word)."""
    from weightvault.log.store import origin_for

    keys_ = [ctx.signing_key(None).public.raw] if ctx.config.signing_key else []
    keys_ += [k.raw for k in ctx.trusted(())]
    for n in rs.names:
        origin = _origin_on(rs.try_store(n))
        for k in keys_ if origin else ():
            if origin_for(k).encode() == origin:
                return k
    return None


def check_custody_anchors(ctx: Ctx, bundle_id: str | None, digests: set[str]) -> None:
    """Every custody record the preservation log names for this bundle must still be in its
    chain: a chain cut short on every replica (its tail deleted) is exit 1, naming the record."""
    from weightvault.errors import IntegrityError
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.replicas import ReplicaSet

    if not bundle_id:
        return
    rs = ReplicaSet(ctx.config)
    try:
        public = _log_public(ctx, rs)
        stmts = PreservationLog(rs, public).statements() if public else []
    except WeightvaultError as e:
        click.echo(f"weightvault: note: preservation log not read ({e})", err=True)
        return
    for i, d in stmts:
        if d["kind"] == "custody" and d["bundle"] == bundle_id and d["record"] not in digests:
            raise IntegrityError(f"custody log of {d['name']}: the {d['event']} record "
                                 f"{d['record'][:16]} named by preservation log entry {i} is "
                                 "missing (the chain was cut or rewritten)")  # fmt: skip


def check_audit_anchors(ctx: Ctx, rs, replica: str, store) -> list[str]:
    """Problems: audit records of `replica` that the preservation log names (by the digest of
    the record's canonical body) and that the replica no longer holds. Catches a trail whose
    tail, or whole, was deleted even when the local state went with it."""
    import hashlib

    from weightvault.archive.auditlog import MAX_RECORD, parse
    from weightvault.format import canon
    from weightvault.log.archive import PreservationLog

    if store is None:
        return []
    try:
        public = _log_public(ctx, rs)
        stmts = PreservationLog(rs, public).statements() if public else []
    except WeightvaultError as e:
        return [f"preservation log not read ({e})"]
    named = [(i, d) for i, d in stmts if d["kind"] == "audited" and d["replica"] == replica
             and d["record"]]  # fmt: skip
    if not named:
        return []
    held = set()
    try:
        listing = store.list("audits")
    except (StorageError, FileNotFoundError):
        listing = {}
    for key in listing:
        if not key.rsplit("/", 1)[-1].removesuffix(".json").isdigit():
            continue  # a record's list file (FORMAT.md 8.1), not a record: never read whole
        try:
            env = parse(store.read_bytes(key, MAX_RECORD), store.describe(key))
            held.add(hashlib.sha256(canon.canonical(env["record"])).hexdigest())
        except (WeightvaultError, KeyError, TypeError):
            continue  # the chain check names damaged records
    return [f"audit record {d['record'][:16]} of {d['time']} named by preservation log entry "
            f"{i} is missing from the replica" for i, d in named if d["record"] not in held]  # fmt: skip


def inventory(ctx: Ctx, rs) -> dict[str, dict[str, str]]:
    """{replica: {bundle name: bundle id}} the preservation log says each replica must hold;
    {} where there is no log (or no key to name it)."""
    from weightvault.log.archive import PreservationLog, inventory_of

    try:
        public = _log_public(ctx, rs)
        if public is None:
            return {}
        stmts = PreservationLog(rs, public).statements()
    except WeightvaultError as e:
        click.echo(f"weightvault: note: preservation log not read ({e})", err=True)
        return {}
    return {n: {name: bid for bid, name in inventory_of(stmts, n).items()} for n in rs.names}


@cli.group("log")
def log_group() -> None:
    """The preservation log: a witnessed, append-only record of every preservation event."""


key_pub_opt = click.option("--key", "key_pub", required=True, metavar="LAB.pub",
                           help="The log's public key (the lab's signing key).")  # fmt: skip
witness_opt = click.option("--witness", "witnesses", multiple=True, metavar="PUB",
                           help="A witness (steward) public key whose cosignatures to check (repeatable).")  # fmt: skip
log_key_opt = click.option("--log-key", metavar="LAB.pub",
                           help="The log's public key [default: the config's signing_key].")  # fmt: skip


def _witnesses(paths) -> tuple:
    from weightvault.log.store import witness_verifier

    return tuple(witness_verifier(_pub(p)) for p in paths)


@log_group.command("verify")
@click.argument("url", required=False, metavar="[URL|DIR|REPLICA]")
@vault_opt
@key_pub_opt
@witness_opt
@click.option("--since", metavar="CHECKPOINT", type=click.Path(dir_okay=False),
              help="A checkpoint seen before: the log must extend it (else exit 1, naming both sizes).")  # fmt: skip
@click.option("--require-witness", is_flag=True,
              help="Fail unless every --witness has cosigned some checkpoint.")  # fmt: skip
@json_opt
@click.pass_obj
def log_verify(ctx: Ctx, url, vault, key_pub, witnesses, since, require_witness,
               as_json) -> None:  # fmt: skip
    """Check a whole log copy (URL, directory, or the vault): every entry, tile, checkpoint
    signature and cosignature. Exit 1: damage or rollback; 4: wrong or unknown key."""
    from weightvault.errors import TrustError
    from weightvault.log import check, statements
    from weightvault.log.store import LogStore, log_verifier

    if url:
        store = _open_url(url, ctx=ctx)
    else:
        rs = ctx.replicas(vault)
        store = rs.store(rs.names[0])
    log = LogStore(store, log_verifier(_pub(key_pub)))
    ws = _witnesses(witnesses)

    def entry(i: int, e: bytes) -> None:
        statements.parse(e, log.describe(f"log entry {i}"))

    trusted = None
    if since:
        from weightvault.log.store import open_note

        try:
            data = Path(since).read_bytes()[:1 << 16]
        except OSError as e:
            raise InputError(f"{since}: cannot read ({e.strerror})") from None
        trusted = open_note(data, since, log.verifier)[0]
    rep = check.verify(log, ws, trusted=trusted, check_entry=entry)
    if require_witness:
        missing = [w.name for w in ws if w.name not in rep.cosignatures]
        if missing:
            raise TrustError(f"{log.describe('log')}: no cosignature by {', '.join(missing)}")
    cos = ", ".join(f"{n} at size {s}" for n, s in rep.cosignatures.items()) or "none"
    _emit(rep.as_dict(), as_json,
          f"log {rep.origin}: {rep.size} entries, root {rep.root}, {rep.tiles} tiles and "
          f"{rep.checkpoints} checkpoints checked; cosigned: {cos}")  # fmt: skip


def _find(stmts, bundle: str) -> list[tuple[int, dict]]:
    ref = bundle.lower()
    hits = [(i, d) for i, d in stmts if "bundle" in d and (d.get("name") == bundle or (
        len(ref) >= 4 and d["bundle"].startswith(ref)))]  # fmt: skip
    ids = {d["bundle"] for _, d in hits}
    if not hits:
        raise InputError(f"{bundle}: no statement about this bundle in the preservation log")
    if len(ids) > 1:
        raise InputError(f"{bundle}: names {len(ids)} bundles in the log; give more of the id")
    return hits


@log_group.command("prove")
@click.argument("bundle")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write the proof.")
@click.option("--kind", default="sealed", show_default=True,
              type=click.Choice(["sealed", "replicated", "audited", "repaired", "custody",
                                 "retired"]),
              help="Prove the latest statement of this kind about the bundle.")  # fmt: skip
@vault_opt
@log_key_opt
@witness_opt
@json_opt
@click.pass_obj
def log_prove(ctx: Ctx, bundle, output, kind, vault, log_key, witnesses, as_json) -> None:
    """Write a tlog-proof (c2sp.org/tlog-proof@v1) of one statement about BUNDLE: checkable
    offline with `log check`, carrying the witnesses' cosignatures where they have any."""
    from weightvault.log import check

    plog = _plog(ctx, vault, log_key)
    src = plog.source()
    if src is None:
        raise InputError("the preservation log is empty")
    head = src.head()
    stmts = plog.statements()
    hits = [h for h in _find(stmts, bundle) if h[1]["kind"] == kind]
    if not hits:
        raise InputError(f"{bundle}: no {kind} statement about this bundle in the log")
    index, doc = hits[-1]
    entry = next(e for i, e in enumerate(src.read_all(head.size)) if i == index)
    copies = []
    for n in plog.replicas.names:
        try:
            copies.append(plog.copy(n))
        except StorageError:
            continue
    cp = check.best_checkpoint(src, index, head, _witnesses(witnesses), tuple(copies))
    data = check.make_proof(src, index, entry, cp)
    out = Path(output)
    if out.exists():
        raise InputError(f"{out}: already exists")
    out.write_bytes(data)
    _emit({"index": index, "size": cp.size, "statement": doc, "proof": str(out)}, as_json,
          f"{out}: proof of entry {index} ({kind}) in the tree of size {cp.size}")  # fmt: skip


@log_group.command("check")
@click.argument("proof", type=click.Path(dir_okay=False))
@key_pub_opt
@witness_opt
@json_opt
def log_check(proof, key_pub, witnesses, as_json) -> None:
    """Verify a tlog-proof offline with only public keys; print the statement it proves."""
    from weightvault.errors import TrustError
    from weightvault.log import check, statements
    from weightvault.log.store import log_verifier

    p = Path(proof)
    try:
        data = p.read_bytes()[: check.MAX_PROOF + 1]
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    ws = _witnesses(witnesses)
    res = check.check_proof(data, str(p), log_verifier(_pub(key_pub)), ws)
    missing = [w.name for w in ws if w not in res.witnesses]
    if missing:
        raise TrustError(f"{p}: not cosigned by {', '.join(missing)}")
    doc = statements.parse(res.entry, f"{p}: statement")
    _emit({"index": res.index, "size": res.head.size, "statement": doc,
           "cosigned_by": sorted(w.name for w in res.witnesses)}, as_json,
          f"{p}: OK: entry {res.index} of {res.head.checkpoint.origin} at tree size "
          f"{res.head.size}: {doc['kind']} {doc.get('name', doc.get('replica', ''))}")  # fmt: skip


@log_group.command("cosign")
@click.argument("url", metavar="URL|DIR|REPLICA")
@click.option("--log-key", required=True, metavar="LAB.pub", help="The lab's log public key.")
@click.option("--key", "key_path", required=True, metavar="FILE", help="The steward's signing key.")
@click.option("--state-dir", metavar="DIR", help="The steward's state [default: as audit].")
@json_opt
@click.pass_obj
def log_cosign(ctx: Ctx, url, log_key, key_path, state_dir, as_json) -> None:
    """As a steward (witness): check the log on your replica URL against its tiles and the last
    checkpoint you cosigned, then write your cosignature there."""
    from weightvault.format import keys
    from weightvault.log import check
    from weightvault.log.store import LogStore, State, log_verifier, witness_name

    key = keys.load_signing_key(Path(key_path))
    log = LogStore(_open_url(url, create=True, ctx=ctx), log_verifier(_pub(log_key)))
    name = witness_name(key.public.raw)
    import hashlib

    tag = hashlib.sha256(url.encode()).hexdigest()[:16]
    state = State.load(_state(ctx, state_dir), f"{name}@{log.verifier.name}@{tag}")
    head = check.cosign(log, key, state)
    _emit({"witness": name, "size": head.size,
           "root": base64.b64encode(head.root).decode()}, as_json,
          f"cosigned {head.checkpoint.origin} at tree size {head.size} as {name}")  # fmt: skip


@log_group.command("publish")
@click.argument("url")
@vault_opt
@log_key_opt
@json_opt
@click.pass_obj
def log_publish(ctx: Ctx, url, vault, log_key, as_json) -> None:
    """Copy the log (tiles, entry bundles, checkpoints, cosignatures; nothing else) to URL, a
    place the lab makes public."""
    import shutil

    from weightvault.log.archive import mirror
    from weightvault.log.store import COSIGNED, LogStore
    from weightvault.storage.store import TMP, LocalStore

    plog = _plog(ctx, vault, log_key)
    src = plog.source()
    if src is None:
        raise InputError("the preservation log is empty: nothing to publish")
    dst = LogStore(_open_url(url, create=True), src.verifier)
    head = mirror(src, dst)
    if head is None:
        raise InputError("the preservation log is empty: nothing to publish")
    copied = 0
    for n in plog.replicas.names:
        try:
            store = plog.replicas.store(n)
            for key in store.list(COSIGNED):
                if dst.put_once(key, store.read_bytes(key, 1 << 16)):
                    copied += 1
        except StorageError:
            continue
    if isinstance(dst.store, LocalStore):
        shutil.rmtree(dst.store.root / TMP, ignore_errors=True)
    _emit({"url": url, "size": head.size, "cosignatures": copied}, as_json,
          f"published the log at tree size {head.size} to {url}")


@log_group.command("add-sealed")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--key", "key_path", metavar="FILE",
              help="The lab's log signing key [default: the config's signing_key].")
@vault_opt
@trust_opt
@json_opt
@click.pass_obj
def log_add_sealed(ctx: Ctx, names, key_path, vault, trust, as_json) -> None:
    """Append the `sealed` (and `replicated`) statements of committed bundles the log lacks:
    after a seal whose log append failed (its `note: preservation log not updated`).

    Each bundle's manifest is verified against the trusted keys on every replica before a
    statement names it; what the log already says is not said again."""
    from weightvault.log import statements as st
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.vault import Vault

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    key = ctx.signing_key(key_path)
    if not trusted:
        raise InputError("no trusted public key given: pass --trust KEY.pub (a statement names "
                         "only a bundle whose signature verifies)")  # fmt: skip
    said = {(d["kind"], d.get("bundle"), d.get("replica"))
            for _, d in PreservationLog(rs, key.public.raw).statements()}  # fmt: skip
    stmts, out = [], []
    for name in names:
        held: dict[str, str] = {}  # replica -> bundle id, where the bundle verifies
        errors: dict[str, WeightvaultError] = {}
        first = None
        for n in rs.names:
            try:
                b = Vault(rs.store(n)).load_exact(name, trusted)
                held[n] = b.manifest.bundle_id
                first = first or b
            except WeightvaultError as e:
                errors[n] = e
        if not held:  # the first replica's reason decides the exit code (trust, integrity...)
            raise type(next(iter(errors.values())))(
                f"{name}: no replica holds a bundle of this name that verifies "
                f"({'; '.join(f'{n}: {e}' for n, e in errors.items())})")  # fmt: skip
        ids = set(held.values())
        if len(ids) > 1:
            raise Conflict(f"{name}: the replicas hold {len(ids)} different bundles of this "
                             f"name ({', '.join(sorted(ids))}); run `audit` first")  # fmt: skip
        m, new = first.manifest, []
        if ("sealed", m.bundle_id, None) not in said:
            new.append(st.sealed(m.bundle_id, m.name, m.bytes_stored, first.signer.key_id,
                                 m.version, m.encryption is not None))  # fmt: skip
        new += [st.replicated(m.bundle_id, m.name, n) for n in held
                if ("replicated", m.bundle_id, n) not in said]  # fmt: skip
        stmts += new
        out.append({"name": m.name, "bundle": m.bundle_id, "statements": len(new),
                    "held_on": sorted(held)})  # fmt: skip
    if stmts:
        record(ctx, rs, *stmts, key=key)
    _emit(out, as_json, "\n".join(
        f"{o['name']} {o['bundle'][:12]}: " + (f"{o['statements']} statements appended"
                                               if o["statements"] else "already in the log")
        for o in out))  # fmt: skip


@log_group.command("show")
@click.argument("bundle", required=False)
@vault_opt
@log_key_opt
@json_opt
@click.pass_obj
def log_show(ctx: Ctx, bundle, vault, log_key, as_json) -> None:
    """The latest statement of each kind per bundle (and each replica's latest audit)."""
    from weightvault.log.archive import latest_of, summary_of

    plog = _plog(ctx, vault, log_key)
    everything = plog.statements()
    stmts = _find(everything, bundle) if bundle else everything
    latest = latest_of(stmts)
    if as_json:
        _emit(latest, True, "")
        return
    lines = []
    if bundle:
        s = summary_of(everything, stmts[0][1]["bundle"])
        line = f"held on {len(s['held_on'])} replicas ({', '.join(s['held_on']) or 'none'})"
        if s["last_full_audit"]:
            line += f", last full audit {s['last_full_audit'][:10]}"
        if s["retired"]:
            line += f", retired {s['retired']['time'][:10]}"
        lines.append(line)
    for bid, kinds in latest.items():
        title = "audits" if bid == "*" else f"{next(iter(kinds.values())).get('name')} {bid[:12]}"
        lines.append(title)
        for k, d in sorted(kinds.items()):
            extra = d.get("result") or d.get("event") or ""
            lines.append(f"  {k:<24} {d['time']}  entry {d['index']}  {extra}".rstrip())
    click.echo("\n".join(lines) or "the preservation log is empty")


__all__ = ["record", "log_group", "WeightvaultError"]


def log_summary(ctx: Ctx, rs, bundle_id: str) -> dict | None:
    """What the preservation log says of one bundle, for `show` and its card: summary_of plus
    the checkpoint it was read at and the configured stewards whose cosignatures of a tree at
    least that far along verify. None when there is no log (or no key to name it)."""
    import base64

    from weightvault.format import keys as keysmod
    from weightvault.log.archive import PreservationLog, summary_of
    from weightvault.log.store import COSIGNED, open_note, witness_verifier

    try:
        public = _log_public(ctx, rs)
        if public is None:
            return None
        plog = PreservationLog(rs, public)
        src = plog.source()
        head = src.head() if src else None
        if src is None or head is None:
            return None
        out = summary_of(plog.statements(), bundle_id)
    except WeightvaultError as e:
        click.echo(f"weightvault: note: preservation log not read ({e})", err=True)
        return None
    cosigners = []
    for sc in ctx.config.stewards.values():
        try:
            w = witness_verifier(keysmod.load_public_key(sc.public_key).raw)
            st = rs.try_store(sc.replica)
            sizes = [int(k.rsplit("/", 1)[1]) for k in (st.list(f"{COSIGNED}/{w.id.hex()}")
                     if st else {}) if k.rsplit("/", 1)[1].isdigit()]  # fmt: skip
            best = max((s for s in sizes if s <= head.size), default=None)
            if best is None:
                continue
            key = f"{COSIGNED}/{w.id.hex()}/{best}"
            _, ok = open_note(st.read_bytes(key, 1 << 16), st.describe(key), src.verifier, (w,))
            if w in ok:
                cosigners.append(f"{sc.display} (tree size {best})")
        except (WeightvaultError, OSError, ValueError):
            continue
    out["checkpoint"] = {"size": head.size, "root": base64.b64encode(head.root).decode(),
                         "cosigners": cosigners}  # fmt: skip
    return out


def anchor_custody(ctx: Ctx, state) -> None:
    """The lab anchors in its log every custody record it sees that the log does not name yet,
    the steward's too (accept, response, release): the steward never writes the lab's log, so
    this is how its events get there. A steward's config (whose replica holds its depositor's
    log) appends nothing."""
    from weightvault.log import statements as st
    from weightvault.log.archive import PreservationLog
    from weightvault.storage.replicas import ReplicaSet

    if not ctx.config.signing_key or not state.bundle_id:
        return

    def go() -> None:
        rs = ReplicaSet(ctx.config)
        key = ctx.signing_key(None)
        plog = PreservationLog(rs, key.public.raw)
        if _foreign(plog):
            return
        named = {d["record"] for _, d in plog.statements()
                 if d["kind"] == "custody" and d["bundle"] == state.bundle_id}  # fmt: skip
        steward = state.steward.name if state.steward else "steward"
        stmts = [st.custody(st.CHAIN_EVENTS[e.event], state.bundle_id, state.bundle_name,
                            steward[:200], e.digest)
                 for e in state.entries
                 if e.digest not in named and e.event in st.CHAIN_EVENTS]  # fmt: skip
        if stmts:
            record(ctx, rs, *stmts, key=key)

    _quietly("escrow log", go)
