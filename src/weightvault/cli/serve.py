"""Access without restore: `serve` (a read-only Hub-compatible HTTP server), `cat` (one file
or one tensor of a bundle, read in place) and the --hf-cache form of `restore`."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from weightvault.cli.app import (
    Ctx,
    _emit,
    _keys,
    _work,
    cli,
    identity_opt,
    insecure_opt,
    replica_opt,
    share_opt,
    trust_opt,
    vault_opt,
)
from weightvault.errors import InputError, StorageError
from weightvault.progress import human_size as _size

DEFAULT_BIND = "127.0.0.1:8765"


def _parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. {DEFAULT_BIND}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _store_of(rs, replica):
    """The first reachable replica (the preferred one first), with its name."""
    return rs.first(lambda _n, store: (store.list_dirs("bundles"), store)[1], replica)


@cli.command()
@vault_opt
@replica_opt
@trust_opt
@identity_opt
@share_opt
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              help="Where to listen (port 0: any free port).")  # fmt: skip
@click.option("--allow-non-loopback", is_flag=True,
              help="Allow --bind on an address other machines can reach (no authentication, "
                   "no TLS: read docs/ACCESS.md).")  # fmt: skip
@click.pass_obj
def serve(ctx: Ctx, vault, replica, trust, identities, shares, bind, allow_non_loopback) -> None:
    """Serve the vault's trusted bundles read-only to Hugging Face clients
    (HF_ENDPOINT=http://HOST:PORT). Never writes to the vault."""
    import logging

    from weightvault.access.server import check_bind
    from weightvault.access.server import serve as make_server

    host, port = _parse_bind(bind)
    loopback = check_bind(host, allow_non_loopback)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    if not trusted:
        raise InputError("no trusted public key given: pass --trust KEY.pub (serve never "
                         "serves unsigned bundles)")  # fmt: skip
    where, store = _store_of(rs, replica)
    keys = _keys(identities, shares)
    server = make_server(store, trusted, keys or None, host=host, port=port,
                         allow_non_loopback=allow_non_loopback)  # fmt: skip
    if not loopback:
        click.echo(f"weightvault: warning: serving on {host}, which other machines can reach: "
                   "anyone who can connect can download every bundle served, "
                   "without authentication or TLS", err=True)  # fmt: skip
    repos = server.catalog.repos
    click.echo(f"serving {sum(len(r.by_commit) for r in repos.values())} bundles from {where} "
               f"read-only at {server.url}  (export HF_ENDPOINT={server.url})")  # fmt: skip
    for repo in repos.values():
        for commit, r in repo.by_commit.items():
            refs = sorted(k for k, v in repo.refs.items() if v == commit)
            click.echo(f"  {repo.repo_id}@{commit}  ({', '.join(refs) or 'no refs'}; "
                       f"bundle {r.name}, {r.bundle_id[:16]})")  # fmt: skip
    for name, why in server.catalog.skipped.items():
        click.echo(f"  not served: {name}: {why}", err=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@cli.command()
@click.argument("bundle")
@click.argument("file")
@vault_opt
@replica_opt
@trust_opt
@insecure_opt
@identity_opt
@share_opt
@click.option("--tensor", metavar="NAME", help="Only this tensor of a safetensors FILE (its raw "
              "little-endian bytes, or a .npy file with -o X.npy).")  # fmt: skip
@click.option("-o", "--output", metavar="OUT", help="Write to OUT (created; must not exist) "
              "instead of standard output.")  # fmt: skip
@click.pass_obj
def cat(ctx: Ctx, bundle, file, vault, replica, trust, insecure, identities, shares, tensor,
        output) -> None:  # fmt: skip
    """Write FILE of BUNDLE (or one --tensor of it), read in place: only the chunks it needs
    are fetched and each is verified before a byte is written."""
    from weightvault.access.bundle import BundleReader
    from weightvault.storage.vault import Vault

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    keys = _keys(identities, shares)

    def opened(_n, store):
        b = Vault(store).load(bundle, trusted, insecure=insecure)
        return BundleReader(store, b, keys)

    _where, reader = rs.first(opened, replica)
    out = Path(output) if output else None
    if out is not None and (out.exists() or out.is_symlink()):
        raise InputError(f"{out}: exists already (cat never overwrites)")
    with reader:
        if tensor:
            t = reader.tensors(file).get(tensor)
            if t is None:
                from weightvault.errors import NotFound

                raise NotFound(f"{tensor!r}: no such tensor in {file} of bundle {reader.name}")
            if out is not None and out.suffix == ".npy":
                import numpy as np

                arr = reader.tensor(file, tensor)
                _write_atomic(out, lambda f: np.save(f, arr, allow_pickle=False))
                return
            pieces = reader.iter_range(file, t.start, t.end, ahead=True)
        else:
            pieces = reader.iter_range(file, ahead=True)
        if out is None:
            dst = sys.stdout.buffer
            try:
                for p in pieces:
                    dst.write(p)
                dst.flush()
            except BrokenPipeError:
                # a reader like `head` left: not an error of ours
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return

        def write(f):
            for p in pieces:
                f.write(p)

        _write_atomic(out, write)


def _write_atomic(out: Path, fill) -> None:
    """Write `out` through a temporary sibling renamed at the end: a failed read leaves nothing."""
    tmp = out.parent / f".{out.name}.weightvault-{secrets.token_hex(4)}.partial"
    try:
        with open(tmp, "xb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, out)  # fails if `out` appeared meanwhile: never overwrite
    except FileExistsError:
        raise InputError(f"{out}: exists already (cat never overwrites)") from None
    except OSError as e:
        raise StorageError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def restore_hf_cache(rs, bundle, cache_dir, trusted, insecure, replica, keys, as_json,
                     quiet) -> None:  # fmt: skip
    """`restore BUNDLE --hf-cache DIR`: the bundle as a Hugging Face cache snapshot."""
    from weightvault.access.bundle import BundleReader
    from weightvault.access.hub import write_hf_cache
    from weightvault.storage.vault import Vault

    with _work("restoring", not (quiet or as_json)) as cb:

        def run(_n, store):
            b = Vault(store).load(bundle, trusted, insecure=insecure)
            with BundleReader(store, b, keys) as reader:
                if cb.on_start:
                    cb.on_start(reader.manifest.bytes_in)
                return write_hf_cache(reader, Path(cache_dir), on_bytes=cb.on_bytes)

        where, r = rs.first(run, replica)
    _emit({**r, "replica": where}, as_json,
          f"restored {bundle} from {where} into the Hugging Face cache {cache_dir} as "
          f"{r['repo_id']}@{r['commit']} ({r['files']} files, {_size(r['bytes_written'])} "
          f"written; every file digest verified); load it with revision={r['commit']!r}"
          if r else "")  # fmt: skip


__all__ = ["cat", "restore_hf_cache", "serve"]
