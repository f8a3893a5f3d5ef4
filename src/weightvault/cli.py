"""The command line: parse, call the library, render. No storage or format logic lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__, keys
from .errors import InputError, WeightvaultError
from .progress import bar


def _fail(msg: str, code: int) -> None:
    click.echo(f"weightvault: error: {msg}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: every typed error becomes one line on stderr and its documented exit code."""
    try:
        cli.main(standalone_mode=False)
    except WeightvaultError as e:
        _fail(str(e), e.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except click.ClickException as e:
        click.echo(f"weightvault: error: {e.format_message()}", err=True)
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def _emit(obj: dict, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True))
    else:
        click.echo(human)


def _store(vault: str | None, create: bool = False):
    from .store import open_store

    url = vault or os.environ.get("WEIGHTVAULT_VAULT")
    if not url:
        raise InputError("no vault given: pass --vault URL (or set WEIGHTVAULT_VAULT)")
    return open_store(url, create=create)


def _trusted(paths: tuple[str, ...]) -> list[keys.PublicKey]:
    return [keys.load_public_key(Path(p)) for p in paths]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


vault_opt = click.option(
    "--vault", metavar="URL", help="Vault directory or URL [env: WEIGHTVAULT_VAULT]."
)
trust_opt = click.option(
    "--trust", multiple=True, metavar="KEY.pub", help="Trusted signer public key (repeatable)."
)
insecure_opt = click.option(
    "--insecure", is_flag=True, help="Read bundles without checking signatures."
)
json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output on stdout."
)
quiet_opt = click.option("--quiet", "-q", is_flag=True, help="No progress display.")
workers_opt = click.option(
    "--workers", type=click.IntRange(1, 64), help="Worker threads (default: cores)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightvault")
def cli() -> None:
    """Seal, verify and restore retired model weights, bit-exact, for decades."""


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Create an Ed25519 signing key PATH (mode 0600) and its public key PATH.pub."""
    sk = keys.generate(Path(path))
    click.echo(f"wrote {path} (private, 0600) and {path}.pub; key id {sk.public.key_id}")


@cli.command()
@click.argument("source")
@vault_opt
@click.option("--key", "key_path", required=True, metavar="FILE", help="Signing key (from keygen).")
@click.option("--name", help="Bundle name (default: the source's name).")
@click.option("--chunk-size", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Target chunk size in MiB.")  # fmt: skip
@click.option(
    "--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level."
)
@click.option("--codec", type=click.Choice(["auto", "zstd", "raw", "fsplit"]), default="auto",
              show_default=True, help="Chunk codec; auto picks per chunk.")  # fmt: skip
@click.option("--exclude", multiple=True, metavar="PATH",
              help="Relative path to leave out (default: .git and .cache/huggingface).")  # fmt: skip
@click.option("--hf-cache", metavar="DIR", help="Hugging Face cache for hf:// sources.")
@workers_opt
@json_opt
@quiet_opt
def seal(source, vault, key_path, name, chunk_size, level, codec, exclude, hf_cache, workers,
         as_json, quiet) -> None:  # fmt: skip
    """Seal SOURCE (a directory, hf://ORG/NAME@REVISION, or a Hub cache snapshot) into a vault."""
    from .seal import SealOptions
    from .seal import seal as do_seal
    from .sources import DEFAULT_EXCLUDES

    key = keys.load_signing_key(Path(key_path))
    store = _store(vault, create=True)
    opts = SealOptions(name=name, chunk_size=chunk_size << 20, level=level, codec=codec,
                       workers=workers, excludes=tuple(exclude) or DEFAULT_EXCLUDES,
                       hf_cache_dir=hf_cache)  # fmt: skip
    with bar("sealing", not (quiet or as_json)) as cb:
        r = do_seal(source, store, key, opts, on_bytes=cb.on_bytes, on_start=cb.on_start)
    ratio = r.bytes_stored / r.bytes_in if r.bytes_in else 0
    _emit(r.as_dict(), as_json,
          f"sealed {r.name} as bundle {r.bundle}\n  {r.files} files, {_size(r.bytes_in)} -> "
          f"{_size(r.bytes_stored)} stored ({ratio:.1%}) in {r.objects} objects, {r.seconds:.1f} s")  # fmt: skip


@cli.command("list")
@vault_opt
@json_opt
def list_(vault, as_json) -> None:
    """List the bundles committed in a vault (manifests are shown unverified; use verify)."""
    from .manifest import Manifest
    from .vault import MANIFEST_KEY, Vault, prefix

    v = Vault(_store(vault))
    rows = []
    for name in v.names():
        key = f"{prefix(name)}/{MANIFEST_KEY}"
        try:
            m = Manifest.parse(v.store.read_bytes(key, 256 << 20), v.describe(key))
            rows.append({"name": name, "bundle": m.bundle_id, "created": m.doc["created"],
                         "files": len(m.files), "bytes_in": m.bytes_in,
                         "bytes_stored": m.bytes_stored})  # fmt: skip
        except WeightvaultError as e:
            rows.append({"name": name, "error": str(e)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "bundle", "created", "files", "size", "stored")
    for r in rows:
        if "error" in r:
            t.add_row(r["name"], "[red]unreadable[/red]", r["error"], "", "", "")
        else:
            t.add_row(r["name"], r["bundle"][:16], r["created"], str(r["files"]),
                      _size(r["bytes_in"]), _size(r["bytes_stored"]))  # fmt: skip
    Console().print(t)


@cli.command()
@click.argument("bundle")
@vault_opt
@trust_opt
@insecure_opt
@click.option("--deep", is_flag=True, help="Also decode every chunk and check every file digest.")
@workers_opt
@json_opt
@quiet_opt
def verify(bundle, vault, trust, insecure, deep, workers, as_json, quiet) -> None:
    """Check a bundle's signature, bag and every stored digest. Exit 1 if anything is wrong."""
    from .verify import verify as do_verify

    store = _store(vault)
    with bar("verifying", not (quiet or as_json)) as cb:
        r = do_verify(store, bundle, _trusted(trust), insecure=insecure, deep=deep,
                      workers=workers, on_bytes=cb.on_bytes, on_start=cb.on_start)  # fmt: skip
    signer = f"signed by {r.signer[:16]}" if r.signer else "signature NOT checked (--insecure)"
    lines = [f"{'OK' if r.ok else 'DAMAGED'}: bundle {r.name} ({r.bundle[:16]}), {signer}, "
             f"{r.objects} objects{', deep' if deep else ''}, {_size(r.bytes_checked)} read"]  # fmt: skip
    lines += [f"  {p.kind}: {p}" for p in r.problems]
    _emit(r.as_dict(), as_json, "\n".join(lines))
    if not r.ok:
        sys.exit(1)


@cli.command()
@click.argument("bundle")
@click.argument("dest", type=click.Path(file_okay=False))
@vault_opt
@trust_opt
@insecure_opt
@workers_opt
@json_opt
@quiet_opt
def restore(bundle, dest, vault, trust, insecure, workers, as_json, quiet) -> None:
    """Restore BUNDLE bit-exact into DEST (a new or empty directory)."""
    from .restore import restore as do_restore

    store = _store(vault)
    with bar("restoring", not (quiet or as_json)) as cb:
        r = do_restore(store, bundle, Path(dest), _trusted(trust), insecure=insecure,
                       workers=workers, on_bytes=cb.on_bytes, on_start=cb.on_start)  # fmt: skip
    _emit(r.as_dict(), as_json,
          f"restored {r.name} ({r.bundle[:16]}): {r.files} files, {_size(r.bytes)} into {r.dest} "
          f"in {r.seconds:.1f} s; every file digest verified")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    main()
