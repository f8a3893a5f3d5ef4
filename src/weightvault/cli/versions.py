"""Versions of a model: export, diff, amend, retire (library: archive/versions.py, retire.py)."""

from __future__ import annotations

import sys

import click

from weightvault.cli.app import (
    Ctx,
    _emit,
    _keys,
    cli,
    identity_opt,
    json_opt,
    replica_opt,
    share_opt,
    state_opt,
    trust_opt,
    vault_opt,
)
from weightvault.progress import human_size as _size


@cli.command()
@click.argument("bundle")
@click.argument("dest", type=click.Path(file_okay=False))
@vault_opt
@replica_opt
@trust_opt
@json_opt
@click.pass_obj
def export(ctx: Ctx, bundle, dest, vault, replica, trust, as_json) -> None:
    """Write BUNDLE as one standalone BagIt bag into DEST (new or empty), with every object it
    names: what a steward receiving one version needs, valid for `bagit.py --validate`."""
    from weightvault.archive.versions import export as do_export
    from weightvault.storage.vault import Vault

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    where, r = rs.first(lambda _n, st: do_export(st, Vault(st).load(bundle, trusted), dest),
                        replica)  # fmt: skip
    _emit({**r.as_dict(), "replica": where}, as_json,
          f"exported {r.name} ({r.bundle[:16]}) from {where}: {r.files} files, "
          f"{_size(r.bytes)} into {r.dest}")  # fmt: skip


@cli.command()
@click.argument("a")
@click.argument("b")
@vault_opt
@replica_opt
@trust_opt
@json_opt
@click.pass_obj
def diff(ctx: Ctx, a, b, vault, replica, trust, as_json) -> None:
    """List the files, tensors and record files added, removed and changed from bundle A to
    bundle B, with sizes (both signatures verified first). Reads only the chunks holding
    safetensors headers and the chunks that differ between the two."""
    from weightvault.archive.versions import diff as do_diff
    from weightvault.storage.vault import Vault

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)

    def run(_n, st):
        v = Vault(st)
        return do_diff(st, v.load(a, trusted), v.load(b, trusted))

    _where, d = rs.first(run, replica)
    lines = [f"{d.a} -> {d.b}: {len(d.added)} added, {len(d.removed)} removed, "
             f"{len(d.changed)} changed, {d.same} unchanged files; "
             f"{_size(d.bytes_new)} of objects {d.b} adds"]  # fmt: skip
    lines += [f"  + {f['path']} ({_size(f['size'])})" for f in d.added]
    lines += [f"  - {f['path']} ({_size(f['size'])})" for f in d.removed]
    for f in d.changed:
        lines.append(f"  ~ {f['path']} ({_size(f['size_a'])} -> {_size(f['size_b'])})")
        t = f.get("tensors") or {}
        lines += [f"      + {x['name']} {x['dtype']} {x['shape']} ({_size(x['bytes'])})"
                  for x in t.get("added", [])]  # fmt: skip
        lines += [f"      - {x['name']} {x['dtype']} {x['shape']} ({_size(x['bytes'])})"
                  for x in t.get("removed", [])]  # fmt: skip
        lines += [f"      ~ {x['name']} {x['dtype']} {x['shape']} ({_size(x['bytes'])})"
                  for x in t.get("changed", [])]  # fmt: skip
    for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
        lines += [f"  {mark} {r['path']} (record)" for r in d.record[kind]]
    _emit(d.as_dict(), as_json, "\n".join(lines))


@cli.command()
@click.argument("bundle")
@vault_opt
@click.option("--key", "key_path", metavar="FILE", help="Signing key [default: config signing_key].")
@click.option("--name", help="Name of the new version (default: BUNDLE.2, .3, ...).")
@click.option("--report", metavar="FILE.md", help="Post-deployment report (Markdown).")
@click.option("--interview", "interviews", multiple=True, metavar="FILE.jsonl",
              help="Interview transcript (repeatable).")  # fmt: skip
@click.option("--record", "record_toml", metavar="FILE.toml", help="Structured retirement record.")
@click.option("--attach", "attachments", multiple=True, metavar="FILE", help="Other file.")
@identity_opt
@share_opt
@trust_opt
@json_opt
@click.pass_obj
def amend(ctx: Ctx, bundle, vault, key_path, name, report, interviews, record_toml, attachments,
          identities, shares, trust, as_json) -> None:  # fmt: skip
    """Seal a new version of BUNDLE that names the same weight objects and adds (or replaces)
    retirement-record files, without reading the weights back. An encrypted BUNDLE is opened
    with --identity or a quorum of --share (its key check run): the new version keeps its data
    key, wrapped anew for the same recipients and custodians (docs/FORMAT.md 10.8). Written to
    the first replica; replicate it to the others as usual."""
    from weightvault.archive.versions import amend as do_amend
    from weightvault.record.retirement import build_record

    key = ctx.signing_key(key_path)
    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust) or [key.public]
    plan = build_record(record_toml, report, list(interviews), list(attachments))
    try:
        for w in plan.warnings:
            click.echo(f"weightvault: warning: {w}", err=True)
        unlock = _keys(identities, shares)
        where, r = rs.first(lambda _n, st: do_amend(st, bundle, key, trusted, plan.files,
                                                    name=name, unlock=unlock), None)  # fmt: skip
    finally:
        plan.close()
    _emit({**r.as_dict(), "replica": where}, as_json,
          f"amended {bundle} as {r.name} (bundle {r.bundle}) on {where}: {r.record_files} "
          f"record files, {_size(r.bytes_added)} added; supersedes {r.supersedes[:16]}")  # fmt: skip


@cli.command()
@click.argument("bundle")
@vault_opt
@click.option("--replica", "replicas", multiple=True, metavar="NAME",
              help="Retire only on these replicas (repeatable) [default: every primary and "
                   "mirror replica; an escrow replica only when named].")  # fmt: skip
@click.option("--reason", required=True, help="Why: kept in the signed notice and the log.")
@click.option("--key", "key_path", metavar="FILE", help="Signing key [default: config signing_key].")
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="gc's grace period for the pool objects no bundle names any more.")
@click.option("--yes", is_flag=True, help="Confirm: the bundle's files are deleted for good.")
@trust_opt
@state_opt
@json_opt
@click.pass_obj
def retire(ctx: Ctx, bundle, vault, replicas, reason, key_path, grace, yes, trust, state_dir,
           as_json) -> None:  # fmt: skip
    """Deliberately remove BUNDLE from replicas: the one deletion an audit accepts. A
    `retired` statement goes into the preservation log and a notice signed by --key onto each
    replica before anything is deleted; then the bundle's files go (signature first) and gc
    collects the pool objects no other committed bundle names. Exit 2 without --yes, 5 on a
    replica under Object Lock, 3 if a replica could not be reached."""
    from weightvault.archive.audit import HOLDS_ALL, Known
    from weightvault.archive.gc import parse_duration
    from weightvault.archive.gc import summary as gc_summary
    from weightvault.archive.retire import finish, retired_ids, summary
    from weightvault.archive.retire import retire as do_retire
    from weightvault.cli.app import _gc_one, _state
    from weightvault.cli.log import log_key_for, record
    from weightvault.errors import (
        Conflict,
        InputError,
        MissingSignature,
        NotFound,
        StorageError,
        WeightvaultError,
    )
    from weightvault.log import statements as st
    from weightvault.storage.vault import Vault

    seconds = parse_duration(grace)
    key = ctx.signing_key(key_path)
    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust) or [key.public]
    if key.public.key_id not in {k.key_id for k in trusted}:
        raise InputError("--key is not among the trusted keys: auditors trusting only those "
                         "would not accept its retirement notices")  # fmt: skip
    for n in replicas:
        rs.replica(n)
    targets = list(replicas) or [n for n in rs.names if rs.replica(n).role in HOLDS_ALL]
    held: dict[str, tuple[str, str]] = {}  # replica -> (name, bundle id)
    unfinished: dict[str, tuple[str, str]] = {}
    unreachable: dict[str, str] = {}
    for n in targets:
        store = rs.try_store(n)
        if store is None:
            unreachable[n] = rs.errors[n]
            continue
        try:
            b = Vault(store).load(bundle, trusted)
        except NotFound:
            continue
        except MissingSignature:
            # a retirement killed after it took the signature away: its notice says so
            ours = [(d["name"], bid) for bid, d in retired_ids(store, trusted, n).items()
                    if d["name"] == bundle]  # fmt: skip
            if not ours:
                raise
            unfinished[n] = ours[0]
            continue
        held[n] = (b.name, b.bundle_id)
    if (held or unfinished) and not yes:
        name, bid = next(iter({**unfinished, **held}.values()))
        raise InputError(f"retire deletes bundle {name} ({bid[:16]}) from "
                         f"{', '.join({**unfinished, **held})} for good; pass --yes to do it "
                         "(nothing was changed)")  # fmt: skip
    done = [finish(n, rs.store(n), *unfinished[n]) for n in unfinished]
    if not held and done:
        _emit({"bundle": done[0].bundle, "name": done[0].name, "reason": None,
               "replicas": [r.as_dict() for r in done], "gc": [], "unreachable": unreachable},
              as_json, "\n".join(summary(r) for r in done))  # fmt: skip
        sys.exit(3 if unreachable else 0)
    if not held:
        raise NotFound(f"no bundle {bundle} on {', '.join(targets)}"
                       + (" (some replicas could not be reached)" if unreachable else ""))
    if len(set(held.values())) > 1:
        raise Conflict(f"{bundle} names different bundles on different replicas ("
                       + ", ".join(f"{n}: {bid[:16]}" for n, (_, bid) in held.items())
                       + "); retire one replica at a time")  # fmt: skip
    name, bid = next(iter(held.values()))
    for n in held:
        if rs.replica(n).object_lock is not None:
            raise Conflict(f"replica {n}: under Object Lock; bundle {name} cannot be removed "
                           "before its retention ends (nothing was changed)")  # fmt: skip
    stmts = {n: st.retired(bid, name, n, reason) for n in held}
    try:  # said in the log first: a deletion the log does not show is a loss
        record(ctx, rs, *stmts.values(), key=log_key_for(ctx, rs, [key]))
    except WeightvaultError as e:
        raise type(e)(f"preservation log not updated, so nothing was removed: {e}") from None
    known = Known(_state(ctx, state_dir))
    for n in held:
        try:
            done.append(do_retire(n, rs.store(n), bid, statement=stmts[n], signers=key,
                                  trusted=trusted, object_lock=rs.replica(n).object_lock))  # fmt: skip
            known.forget(rs.store(n).url, bid)
        except StorageError as e:
            unreachable[n] = str(e)
    known.save()
    gc_one = _gc_one(ctx, rs, trusted, state_dir, seconds, False)
    collected = []
    for r in done:
        try:
            collected.append(gc_one(r.replica, rs.store(r.replica)))
        except StorageError as e:
            unreachable[r.replica] = f"gc after retiring: {e}"
    escrow = [n for n in rs.names if n not in targets and rs.replica(n).role not in HOLDS_ALL]
    lines = [summary(r) for r in done]
    lines += [x for g in collected for x in gc_summary(g)]
    lines += [f"note: escrow replica {n} is not touched unless named with --replica" for n in escrow]
    lines += [f"{n}: UNREACHABLE: {e}" for n, e in unreachable.items()]
    _emit({"bundle": bid, "name": name, "reason": reason,
           "replicas": [r.as_dict() for r in done], "gc": [g.as_dict() for g in collected],
           "unreachable": unreachable}, as_json, "\n".join(lines))  # fmt: skip
    if unreachable:
        sys.exit(3)
