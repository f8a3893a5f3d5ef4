"""Versions of a model: export, diff, amend (library: archive/versions.py)."""

from __future__ import annotations

import click

from weightvault.cli.app import (
    Ctx,
    _emit,
    cli,
    json_opt,
    replica_opt,
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
@trust_opt
@json_opt
@click.pass_obj
def amend(ctx: Ctx, bundle, vault, key_path, name, report, interviews, record_toml, attachments,
          trust, as_json) -> None:  # fmt: skip
    """Seal a new version of BUNDLE that names the same weight objects and adds (or replaces)
    retirement-record files, without reading the weights back. Written to the first replica;
    replicate it to the others as usual."""
    from weightvault.archive.versions import amend as do_amend
    from weightvault.record.retirement import build_record

    key = ctx.signing_key(key_path)
    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust) or [key.public]
    plan = build_record(record_toml, report, list(interviews), list(attachments))
    try:
        for w in plan.warnings:
            click.echo(f"weightvault: warning: {w}", err=True)
        where, r = rs.first(lambda _n, st: do_amend(st, bundle, key, trusted, plan.files,
                                                    name=name), None)  # fmt: skip
    finally:
        plan.close()
    _emit({**r.as_dict(), "replica": where}, as_json,
          f"amended {bundle} as {r.name} (bundle {r.bundle}) on {where}: {r.record_files} "
          f"record files, {_size(r.bytes_added)} added; supersedes {r.supersedes[:16]}")  # fmt: skip
