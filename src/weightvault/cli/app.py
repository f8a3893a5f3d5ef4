"""The command line: parse, call the library, render. No storage or format logic lives here."""

from __future__ import annotations

import dataclasses
import gc as _gc
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from weightvault import __version__
from weightvault import config as configmod
from weightvault.errors import Conflict, InputError, StorageError, WeightvaultError
from weightvault.format import keys
from weightvault.progress import bar
from weightvault.progress import human_size as _size


def main() -> None:
    """Entry point: every typed error becomes one line on stderr and its documented exit code."""
    # numpy's BLAS threads are never used here, but spin up (and show in profiles) if allowed
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        try:
            cli.main(standalone_mode=False)
        finally:
            _notes()
    except WeightvaultError as e:
        _fail(str(e), e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except click.ClickException as e:
        _fail(e.format_message(), 2 if isinstance(e, click.UsageError) else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def _notes() -> None:
    """Oddities the storage layer met and stepped over (a planted tree too deep to be ours):
    one line each, whatever the command's outcome."""
    store = sys.modules.get("weightvault.storage.store")
    for text in getattr(store, "NOTED", []):
        click.echo(f"weightvault: note: {text}", err=True)


def _work(label: str, show: bool):
    """The progress bar of a command that moves bytes. Its imports are done by then, so what
    exists is what lives until exit (modules, click's tree, compiled schemas): frozen, the
    collector never walks it again, nor does the full collection at exit, which took 60-70 ms
    of a 2.2 s seal of 1 GiB. Only here: a one-shot process, never the library."""
    _gc.freeze()
    return bar(label, show)


def _fail(msg: str, code: int) -> None:
    click.echo(f"weightvault: error: {msg}", err=True)
    sys.exit(code)


@dataclass
class Ctx:
    config_path: str | None
    _config: configmod.Config | None = None
    notes: list[str] = field(default_factory=list)
    threshold: int | None = None  # --threshold K: signatures by distinct trusted keys required
    _loaded: dict = field(default_factory=dict, repr=False)  # signing keys by spec
    _rs: object = None  # the replica set this command reads (for the preservation log)

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            path = configmod.locate(self.config_path)
            self._config = configmod.load(path) if path else configmod.Config()
        return self._config

    def replicas(self, vault: str | None):
        """--vault URL (one replica, named 'vault') or the config's replicas."""
        from weightvault.storage.replicas import ReplicaSet

        cfg = self.config
        if vault:
            single = configmod.single(vault)
            cfg = dataclasses.replace(cfg, replicas=single.replicas, stewards={})
        elif not cfg.replicas:
            raise InputError("no vault given: pass --vault URL, or -c weightvault.toml with "
                             "[replicas.NAME] tables")  # fmt: skip
        self._rs = ReplicaSet(cfg)
        return self._rs

    def trusted(self, paths: tuple[str, ...]):
        """The trust policy: which keys, and how many of them must sign. --trust is the whole
        trusted set (adding the config's keys to it would let a config the user did not mean,
        or one planted for them, widen what they asked to trust), with --threshold (default 1);
        else the config's trusted_keys with its threshold."""
        from weightvault.format.trust import TrustPolicy

        if paths:
            files, threshold = [Path(p) for p in paths], self.threshold or 1
        else:
            files = list(self.config.trusted_keys)
            threshold = self.threshold or self.config.threshold or 1
        policy = TrustPolicy([keys.load_public_key(p) for p in files], threshold)
        # rotations and revocations in the preservation log, read when a bundle is judged
        policy.log_entries = lambda: self._key_history(policy)
        return policy

    def _key_history(self, policy) -> list | None:
        from weightvault.cli.keys import log_entries
        from weightvault.storage.replicas import ReplicaSet

        rs = self._rs or (ReplicaSet(self.config) if self.config.replicas else None)
        return log_entries(rs, policy) if rs is not None else None

    def signing_key(self, path: str | None) -> keys.SigningKey:
        return self.signing_keys((path,) if path else ())[0]

    def signing_keys(self, specs: tuple[str, ...]) -> list[keys.SigningKey]:
        """--key FILE|pkcs11:URI (repeatable), else the config's signing_key. Each key file may
        be passphrase-protected; each token asks for its PIN the same way."""
        if not specs:
            if self.config.signing_key is None:
                raise InputError("no signing key: pass --key FILE or set signing_key in the "
                                 "config")  # fmt: skip
            specs = (self.config.signing_key,)
        out = [self._loaded.get(str(s)) or self._loaded.setdefault(str(s), load_key(s))
               for s in specs]  # fmt: skip  (asked for a passphrase or PIN once per process)
        ids = [k.public.key_id for k in out]
        for i, k in enumerate(out):
            if ids.index(ids[i]) != i:
                raise InputError(f"{k.source}: the same signing key is given twice")
        return out


def load_key(spec: str | Path, what: str = "signing key") -> keys.SigningKey:
    """A signing key from a file (maybe passphrase-protected) or a pkcs11: URI."""
    if not keys.is_token_uri(spec):
        spec = Path(spec)
    return keys.load_signing_key(spec, _passphrase, pin=_pin, what=what)


def _emit(obj: dict | list, as_json: bool, human: str) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True) if as_json else human)


vault_opt = click.option("--vault", metavar="URL", envvar="WEIGHTVAULT_VAULT",
                         help="A single vault (directory or URL) instead of the config's replicas.")  # fmt: skip
replica_opt = click.option("--replica", metavar="NAME", help="Read from this replica first (falls back to the others).")  # fmt: skip
def _set_threshold(ctx: click.Context, _param, value: int | None) -> None:
    if value is not None:
        ctx.find_object(Ctx).threshold = value


def trust_only_opt(f):
    """--trust KEY.pub alone, where --threshold already means something else (seal: shares)."""
    return click.option("--trust", multiple=True, metavar="KEY.pub",
                        help="Trusted signer public key (repeatable; when given, the whole "
                             "trusted set: the config's trusted_keys are not added).")(f)  # fmt: skip


def trust_opt(f):
    """--trust KEY.pub (repeatable) and --threshold K: the trust policy a command applies."""
    f = click.option("--threshold", type=click.IntRange(1, 16), metavar="K", expose_value=False,
                     callback=_set_threshold,
                     help="Distinct trusted keys that must have signed a bundle [default: the "
                          "config's threshold with its trusted_keys, else 1].")(f)  # fmt: skip
    return trust_only_opt(f)


insecure_opt = click.option("--insecure", is_flag=True, help="Read bundles without checking signatures.")  # fmt: skip
json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output on stdout."
)
quiet_opt = click.option("--quiet", "-q", is_flag=True, help="No progress display.")
workers_opt = click.option("--workers", type=click.IntRange(1, 64), help="Worker threads (default: cores).")  # fmt: skip
executor_opt = click.option("--executor", metavar="SPEC", envvar="WEIGHTVAULT_EXECUTOR", help="threads (default), local-cluster:N, or dask://HOST:PORT (docs/OPERATIONS.md).")  # fmt: skip
identity_opt = click.option("--identity", "identities", multiple=True, metavar="FILE",
                            help="age identity or SSH private key (may be passphrase-protected: age -p) for an encrypted bundle.")  # fmt: skip
share_opt = click.option("--share", "shares", multiple=True, metavar="FILE",
                         help="A SLIP-39 share (words) of an encrypted bundle's key; give a quorum.")  # fmt: skip


def _keys(identities, shares):
    from weightvault.custody.unlock import Keys

    return Keys([Path(p) for p in identities], [Path(p) for p in shares], _passphrase)


def _secret(what: str | Path, env: str, word: str, *, new: bool = False) -> str:
    """A secret for a protected key file or a token: $ENV (for cron), else asked on the
    terminal; never echoed or logged."""
    given = os.environ.get(env)
    if given is not None:
        return given
    if not sys.stdin.isatty():
        why = (f"needs a new {word}" if new else "is passphrase-protected" if word == "passphrase"
               else f"needs a {word}")  # fmt: skip
        raise InputError(f"{what}: {why}: set {env}, or run from a terminal to be asked")
    return click.prompt(f"{'new ' if new else ''}{word} for {what}", hide_input=True, err=True,
                        confirmation_prompt=new)  # fmt: skip


def _passphrase(path: Path) -> str:
    """A protected identity's or key file's passphrase ($WEIGHTVAULT_PASSPHRASE, else asked)."""
    return _secret(path, "WEIGHTVAULT_PASSPHRASE", "passphrase")


def _pin(uri: str) -> str:
    """A token's user PIN, when neither the URI nor the environment gives one."""
    return _secret(uri, "WEIGHTVAULT_PKCS11_PIN", "PIN")


_CONFIG_HELP = ("Config file [default: $WEIGHTVAULT_CONFIG, else ~/.config/weightvault/config.toml; "
                "never the current directory].")


def _config_after(ctx: click.Context, _param, value: str | None) -> None:
    if value is not None:  # given after the subcommand: wins over one given before it
        obj = ctx.find_object(Ctx)
        obj.config_path, obj._config = value, None


class _Group(click.Group):
    """Every command, here or in another cli module, also takes -c/--config after its name."""

    group_class = type  # subgroups (audit-log, escrow, record, ...) behave the same

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group) and not any(
            "--config" in p.opts for p in cmd.params if isinstance(p, click.Option)
        ):
            cmd.params.append(click.Option(["-c", "--config"], metavar="FILE", expose_value=False,
                                           callback=_config_after, help=_CONFIG_HELP))  # fmt: skip
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="FILE", help=_CONFIG_HELP)
@click.version_option(__version__, prog_name="weightvault")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Seal, replicate, verify and restore retired model weights, bit-exact, for decades."""
    ctx.obj = Ctx(config_path)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--protect", is_flag=True,
              help="Encrypt the key with a passphrase ($WEIGHTVAULT_PASSPHRASE, else asked twice "
                   "on the terminal): PKCS#8 as `openssl genpkey -aes256` writes.")  # fmt: skip
def keygen(path: str, protect: bool) -> None:
    """Create an Ed25519 signing key PATH (mode 0600) and its public key PATH.pub."""
    pw = _secret(path, "WEIGHTVAULT_PASSPHRASE", "passphrase", new=True) if protect else None
    sk = keys.generate(Path(path), pw)
    how = "private, 0600, passphrase-protected" if protect else "private, 0600"
    click.echo(f"wrote {path} ({how}) and {path}.pub; key id {sk.public.key_id}")


@cli.command()
@click.argument("source")
@vault_opt
@click.option("--key", "key_paths", multiple=True, metavar="FILE|pkcs11:URI",
              help="Signing key [default: config signing_key]; repeat to sign with several "
                   "keys (docs/KEYS.md).")  # fmt: skip
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
@click.option("--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option of an s3:// (or other URL) source, e.g. endpoint_url=...; "
                   "over those of the config's [sources.NAME] for that URL.")  # fmt: skip
@click.option(
    "--report", metavar="FILE.md", help="Post-deployment report (Markdown), sealed as is."
)
@click.option("--interview", "interviews", multiple=True, metavar="FILE.jsonl",
              help="Interview transcript, one JSON turn per line (repeatable).")  # fmt: skip
@click.option("--record", "record_toml", metavar="FILE.toml",
              help="Structured retirement record (docs/RECORD.md).")  # fmt: skip
@click.option("--attach", "attachments", multiple=True, metavar="FILE",
              help="Any other file to keep with the record (repeatable).")  # fmt: skip
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="RECIPIENT",
              help="Encrypt (FORMAT.md section 10) with the data key wrapped for this age recipient "
                   "(age1..., ssh-ed25519 ..., or a file of them; repeatable).")  # fmt: skip
@click.option("--custodians", metavar="FILE.toml",
              help="Split the data key SLIP-39 among these custodians ([[custodian]] name, "
                   "recipient); needs --threshold.")  # fmt: skip
@click.option("--threshold", type=click.IntRange(1, 16), metavar="K",
              help="Shares needed to open the bundle (with --custodians).")  # fmt: skip
@click.option("--oms-key", metavar="EC.pem",
              help="ECDSA P-256/P-384 key: also write an OpenSSF model-signing signature into the "
                   "record (docs/MODEL-SIGNING.md).")  # fmt: skip
@click.option("--supersedes", metavar="BUNDLE",
              help="The previous version of this model (name or id prefix in the vault): "
                   "recorded in the signed manifest; unchanged chunks are not stored again. "
                   "An encrypted one is opened with --identity/--share: the new version "
                   "shares its data key (FORMAT.md 10.3).")  # fmt: skip
@identity_opt
@share_opt
@trust_only_opt
@click.option("--format-version", type=click.Choice(["4", "6"]), default=None,
              help="Format version of a clear bundle: 6 (the default) gives every chunk a "
                   "BLAKE3 digest that later versions are proven against; 4 is for readers "
                   "older than version 6 (FORMAT.md section 9). Encrypted bundles are 5.")  # fmt: skip
@click.option("--follow-external-links", is_flag=True,
              help="Seal the bytes a symbolic link points to even when its target lies outside "
                   "SOURCE (refused by default: a link can reach a credentials file).")  # fmt: skip
@workers_opt
@executor_opt
@json_opt
@quiet_opt
@click.pass_obj
def seal(ctx: Ctx, source, vault, key_paths, name, chunk_size, level, codec, exclude, hf_cache,
         source_options, report, interviews, record_toml, attachments, encrypt_to, custodians,
         threshold, oms_key, supersedes, identities, shares, trust, format_version,
         follow_external_links, workers, executor, as_json, quiet) -> None:  # fmt: skip
    """Seal SOURCE (a directory, hf://ORG/NAME@REVISION, or a Hub cache snapshot) into every
    replica: the first reachable one is written, then the bundle is replicated to the rest."""
    from weightvault.archive.seal import SealOptions
    from weightvault.archive.sources import DEFAULT_EXCLUDES, resolve
    from weightvault.cli.cluster import executor_of, running, source_options_of
    from weightvault.format.crypt import load_custodians, recipients_from

    ex = executor_of(executor)  # first: a LocalCluster starts while the rest is prepared
    key = ctx.signing_keys(key_paths)
    rs = ctx.replicas(vault)
    # the source first: a wrong path or an unreachable Hub must not leave new vault directories
    from weightvault.archive import remote_source

    source_opts = source_options_of(source_options)
    if remote_source.is_url(source):  # [sources.NAME] options, then --source-option's over them
        source_opts = {**ctx.config.source_options(source), **source_opts}
        source = remote_source.resolve(source, source_opts,
                                       excludes=tuple(exclude) or DEFAULT_EXCLUDES)  # fmt: skip
    else:
        source = resolve(source, excludes=tuple(exclude) or DEFAULT_EXCLUDES, cache_dir=hf_cache,
                         external_links=follow_external_links)
    plan = None
    if report or interviews or record_toml or attachments:
        from weightvault.record.retirement import build_record

        plan = build_record(record_toml, report, list(interviews), list(attachments))
        for w in plan.warnings:  # sealed anyway: the words may be paraphrased on purpose
            click.echo(f"weightvault: warning: {w}", err=True)
    opts = SealOptions(name=name, chunk_size=chunk_size << 20, level=level, codec=codec,
                       workers=workers or ctx.config.workers,
                       excludes=tuple(exclude) or DEFAULT_EXCLUDES, hf_cache_dir=hf_cache,
                       record=plan.files if plan else [],
                       organization=ctx.config.organization or _organization(plan),
                       description=_description(plan),
                       oms_key=_oms_key(oms_key), encrypt_to=recipients_from(encrypt_to),
                       custodians=load_custodians(Path(custodians)) if custodians else [],
                       threshold=threshold, supersedes=supersedes,
                       trusted=ctx.trusted(trust) if (trust or supersedes) else [],
                       external_links=follow_external_links,
                       unlock=_keys(identities, shares),
                       format_version=int(format_version) if format_version else None)  # fmt: skip
    opts.source_options = source_opts
    opts.executor = ex
    try:
        with running(opts.executor):
            _seal_everywhere(ctx, rs, source, key, opts, as_json, quiet,
                             single=vault is not None, promised=_promised_replicas(plan))  # fmt: skip
    finally:
        if plan:
            plan.close()


def _oms_key(path: str | None):
    if not path:
        return None
    from weightvault.record.oms import load_ec_key

    return load_ec_key(Path(path), _passphrase)


def _promised_replicas(plan) -> int | None:
    from weightvault.record.render import promised_replicas

    return promised_replicas((plan.record or {}) if plan else {})


def _organization(plan) -> str | None:
    rec = (plan.record or {}) if plan else {}
    return (rec.get("commitment") or {}).get("organization") or (rec.get("model") or {}).get(
        "developer"
    )


def _description(plan) -> str | None:
    model = ((plan.record or {}) if plan else {}).get("model") or {}
    if not model.get("name"):
        return None
    what = " ".join(x for x in (model.get("name"), model.get("version")) if x)
    return f"Retired model {what}: weights and retirement record, sealed by weightvault"


def _seal_everywhere(ctx, rs, source, key, opts, as_json, quiet, single, promised=None) -> None:
    from weightvault.archive.replicate import replicate
    from weightvault.archive.seal import seal as do_seal

    workers = opts.workers
    order = rs.names
    primary = next((n for n in order if rs.try_store(n, create=True) is not None), None)
    if primary is None:
        raise StorageError("no replica is reachable: " + "; ".join(f"{n}: {e}" for n, e in
                                                                    rs.errors.items()))  # fmt: skip
    with _work(f"sealing into {primary}", not (quiet or as_json)) as cb:
        others = [s for n in order if n != primary and (s := rs.try_store(n, create=True))]
        r = do_seal(source, rs.store(primary), key, opts, on_bytes=cb.on_bytes,
                    on_start=cb.on_start, replicas=others)  # fmt: skip
    states = {n: f"unreachable: {e}" for n, e in rs.errors.items()}
    states[primary] = "complete"
    trusted = [k.public for k in key]
    for n in order:
        if n in states:
            continue
        try:
            with _work(f"replicating to {n}", not (quiet or as_json)) as cb:
                replicate([rs.store(primary)], rs.store(n, create=True), r.bundle, trusted,
                          workers=workers, on_bytes=cb.on_bytes)  # fmt: skip
            states[n] = "complete"
        except WeightvaultError as e:
            states[n] = f"failed: {e}"
    from weightvault.cli.log import log_seal

    log_seal(ctx, rs, r, key, opts.encrypted, [n for n in order if states[n] == "complete"])
    out = {**r.as_dict(), "replicas": {n: states[n] for n in order}}
    if opts.executor is not None:  # where the tasks ran (executors.Executor.map)
        out["tasks"] = dict(opts.executor.tasks)
    if not as_json:  # writer notes (links sealed as files, empty directories): FORMAT.md 7.2
        for note in r.notes:
            click.echo(f"weightvault: note: {note}", err=True)
    ratio = r.bytes_stored / r.bytes_in if r.bytes_in else 0
    lines = [f"sealed {r.name} as bundle {r.bundle}",
             f"  {r.files} files, {_size(r.bytes_in)} -> {_size(r.bytes_stored)} stored "
             f"({ratio:.1%}) in {r.objects} objects, {r.seconds:.1f} s"]  # fmt: skip
    if r.supersedes:
        lines.append(f"  supersedes {r.supersedes}: {r.files_reused} files unchanged, "
                     f"{r.chunks_reused} chunks of changed files unchanged, "
                     f"{_size(r.bytes_new)} of new objects")  # fmt: skip
    if len(order) > 1 or not single:
        lines += [f"  replica {n}: {states[n]}" for n in order]
    _emit(out, as_json, "\n".join(lines))
    written = sum(1 for n in order if states[n] == "complete")
    if promised and written < promised:
        click.echo(f"weightvault: warning: the record promises {promised} replicas; {r.name} is "
                   f"on {written} (add replicas to the config, then `weightvault replicate`)",
                   err=True)  # fmt: skip
    behind = [n for n in order if states[n] != "complete"]
    if behind:
        raise StorageError(f"bundle {r.name} is sealed on {', '.join(n for n in order if n not in behind)} "
                           f"but not on {', '.join(behind)}; run `weightvault replicate {r.name} "
                           f"--to {behind[0]}` when it is back")  # fmt: skip


@cli.command()
@click.argument("replicas", nargs=-1, metavar="[REPLICA]...")
@vault_opt
@json_opt
@click.pass_obj
def init(ctx: Ctx, replicas, vault, as_json) -> None:
    """Create the vault of each named replica [default: every configured one], or of --vault.
    An existing vault is left as it is; a non-empty directory that is not a vault is refused."""
    from weightvault.storage.opener import is_local, unwritten

    rs = ctx.replicas(vault)
    out = {}
    for n in _selected(rs, replicas):
        url = rs.replica(n).url
        fresh = unwritten(url)
        store = rs.store(n, create=True)
        # object stores have no directories to tell a new vault from an existing one
        state = ("created" if fresh else "already a vault") if is_local(url) else "ready"
        out[n] = {"url": store.url, "state": state}
    _emit(out, as_json, "\n".join(f"{n}: {r['state']} at {r['url']}" for n, r in out.items()))


@cli.command("list")
@vault_opt
@replica_opt
@trust_opt
@json_opt
@click.pass_obj
def list_(ctx: Ctx, vault, replica, trust, as_json) -> None:
    """List the bundles committed on a replica (each manifest verified before it is shown)."""
    from weightvault.storage.vault import Vault

    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust)  # a manifest is parsed only once its signature verifies
    sources: dict[str, dict] = {}  # for the table only: --json keeps its fields

    def rows_of(_name, store):
        v = Vault(store)
        rows = []
        for n in v.names():
            try:
                if not trusted:
                    rows.append({"name": n, "bundle": v.bundle_id_of(n), "verified": False})
                    continue
                m = v.load_exact(n, trusted).manifest
                enc = m.encryption is not None
                sup = m.supersedes
                sources[n] = m.doc.get("source", {})
                rows.append({"name": n, "bundle": m.bundle_id, "created": m.doc["created"],
                             "encrypted": enc, "files": None if enc else len(m.files),
                             "bytes_in": None if enc else m.bytes_in,
                             "bytes_stored": m.bytes_stored, "verified": True,
                             "supersedes": sup["bundle"] if sup else None,
                             "supersedes_name": sup["name"] if sup else None})  # fmt: skip
            except WeightvaultError as e:
                rows.append({"name": n, "error": str(e)})
        return rows

    where, rows = rs.first(rows_of, replica)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no bundles on {where} ({rs.store(where).url}): the vault is empty")
        return
    from rich.text import Text

    short = unique_prefixes([r["bundle"] for r in rows if r.get("bundle")])
    t = _table("name", "bundle", "source", "created", "files", "size", "stored", "supersedes")
    for r in rows:  # text from storage is never markup
        if "error" in r:
            t.add_row(Text(r["name"]), Text("unreadable", "red"), Text(r["error"]), "", "", "", "",
                      "")  # fmt: skip
        elif not r["verified"]:
            t.add_row(Text(r["name"]), short.get(r["bundle"], "?"), "not verified", "", "", "", "",
                      "")  # fmt: skip
        else:
            enc = r["encrypted"]
            sup = Text(f"{r['supersedes_name']} ({r['supersedes'][:16]})") if r["supersedes"] \
                else ""  # fmt: skip
            t.add_row(Text(r["name"]), short[r["bundle"]], Text(_source_cell(sources[r["name"]])),
                      Text(str(r["created"])), "encrypted" if enc else str(r["files"]),
                      "?" if enc else _size(r["bytes_in"]), _size(r["bytes_stored"]), sup)  # fmt: skip
    _console().print(t)
    if not trusted:
        click.echo("note: no trusted key given, so no manifest was read: pass --trust KEY.pub "
                   "(or set trusted_keys) to verify and show each bundle", err=True)


def unique_prefixes(ids: list[str], least: int = 12) -> dict[str, str]:
    """id -> its shortest prefix (at least `least` digits) that no other listed id shares, so
    two bundles never look alike however narrow the terminal."""
    out = {}
    for i in ids:
        n = least
        while n < len(i) and any(o != i and o.startswith(i[:n]) for o in ids):
            n += 1
        out[i] = i[:n]
    return out


def _source_cell(src: dict) -> str:
    """Where a bundle came from, for tables: the repo and revision (commit), never a path."""
    if not isinstance(src, dict):
        return "?"
    if src.get("repo_id"):
        rev = src.get("revision") or ""
        commit = (src.get("commit") or "")[:12]
        return f"{src['repo_id']}{'@' + rev if rev else ''}{f' ({commit})' if commit else ''}"
    return {"local": "local directory"}.get(src.get("kind", ""), str(src.get("kind", "?")))


def _table(*cols: str):
    """A rich table whose cells wrap (fold) instead of being cut with an ellipsis."""
    from rich.table import Table

    t = Table()
    for c in cols:
        t.add_column(c, overflow="fold")
    return t


def _console():
    """Piped output is not cut to 80 columns: tables take the width they need."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 1000)


@cli.command()
@click.argument("bundle")
@vault_opt
@replica_opt
@trust_opt
@insecure_opt
@click.option("--deep", is_flag=True, help="Also decode every chunk and check every file digest.")
@identity_opt
@share_opt
@workers_opt
@executor_opt
@json_opt
@quiet_opt
@click.pass_obj
def verify(
    ctx: Ctx,
    bundle,
    vault,
    replica,
    trust,
    insecure,
    deep,
    identities,
    shares,
    workers,
    executor,
    as_json,
    quiet,
) -> None:
    """Check a bundle's signature, bag and every stored digest. Exit 1 if anything is wrong."""
    from weightvault.archive.verify import verify as do_verify
    from weightvault.cli.cluster import executor_of, running

    ex = executor_of(executor if deep else None)  # the plain check runs here
    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    with running(ex), _work("verifying", not (quiet or as_json)) as cb:
        where, r = rs.first(lambda _n, store: do_verify(
            store, bundle, trusted, insecure=insecure, deep=deep, workers=workers,
            on_bytes=cb.on_bytes, on_start=cb.on_start, keys=_keys(identities, shares),
            executor=ex), replica)  # fmt: skip
    signer = (f"signed by {', '.join(s[:16] for s in r.signers)}" if r.signer
              else "signature NOT checked (--insecure)")  # fmt: skip
    lines = [f"{'OK' if r.ok else 'DAMAGED'}: bundle {r.name} ({r.bundle[:16]}) on {where}, "
             f"{signer}, {r.objects} objects{', deep' if deep else ''}, "
             f"{_size(r.bytes_checked)} read"]  # fmt: skip
    lines += [f"  {p.kind}: {p}" for p in r.problems]
    _emit({**r.as_dict(), "replica": where}, as_json, "\n".join(lines))
    history = getattr(trusted, "_history", None)  # key statements that had no effect, and why
    for note in history.notes if history else ():
        click.echo(f"weightvault: note: {note}", err=True)
    if not r.ok:
        sys.exit(1)


@cli.command()
@click.argument("bundle")
@click.argument("dest", type=click.Path(file_okay=False), required=False)
@vault_opt
@replica_opt
@trust_opt
@insecure_opt
@identity_opt
@share_opt
@click.option("--hf-cache", metavar="DIR", help="Instead of DEST: write a Hugging Face cache "
              "(blobs, snapshots, refs) that offline huggingface_hub loads find (docs/ACCESS.md).")  # fmt: skip
@workers_opt
@json_opt
@quiet_opt
@click.pass_obj
def restore(ctx: Ctx, bundle, dest, vault, replica, trust, insecure, identities, shares,
            hf_cache, workers, as_json, quiet) -> None:  # fmt: skip
    """Restore BUNDLE bit-exact into DEST (a new or empty directory), or into --hf-cache DIR."""
    from weightvault.archive.restore import restore as do_restore

    if (dest is None) == (hf_cache is None):
        raise click.UsageError("give DEST or --hf-cache DIR (one of them)")
    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    if hf_cache:
        from weightvault.cli.serve import restore_hf_cache

        return restore_hf_cache(rs, bundle, hf_cache, trusted, insecure, replica,
                                _keys(identities, shares), as_json, quiet)  # fmt: skip
    with _work("restoring", not (quiet or as_json)) as cb:
        where, r = rs.first(lambda _n, store: do_restore(
            store, bundle, Path(dest), trusted, insecure=insecure, workers=workers,
            on_bytes=cb.on_bytes, on_start=cb.on_start, keys=_keys(identities, shares)),
            replica)  # fmt: skip
    _emit({**r.as_dict(), "replica": where}, as_json,
          f"restored {r.name} ({r.bundle[:16]}) from {where}: {r.files} files, "
          f"{_size(r.bytes)} into {r.dest} in {r.seconds:.1f} s; every file digest verified")  # fmt: skip


def _first_bundle(rs, ref: str, trusted, insecure: bool, prefer: str | None):
    """(replica, its store, the bundle loaded and verified) from the first replica that
    answers, `prefer` first."""
    from weightvault.storage.vault import Vault

    where, (store, b) = rs.first(lambda _n, st: (st, Vault(st).load(ref, trusted,
                                                                    insecure=insecure)), prefer)
    return where, store, b


def _audit_status(ctx: Ctx, rs) -> dict:
    """replica -> last audit outcome, from the local audit trail (nothing is read remotely)."""
    from weightvault.archive.auditlog import Chain, replica_dir, state_root
    from weightvault.storage.opener import store_url

    out = {}
    root = state_root(ctx.config.audit.get("state_dir"))
    for n in rs.names:
        d = root / "replicas"
        if not d.is_dir():
            continue
        try:
            head = Chain(replica_dir(root, store_url(rs.replica(n).url)), None).head()
        except WeightvaultError:
            continue
        if head:
            r = head.record
            out[n] = {"last_audit": r["ended"], "level": r["level"], "outcome": r["eventOutcome"]}
    return out


@cli.command()
@click.argument("bundle")
@vault_opt
@replica_opt
@trust_opt
@insecure_opt
@click.option("--html", "html_path", metavar="FILE", help="Write a self-contained HTML page.")
@json_opt
@click.pass_obj
def show(ctx: Ctx, bundle, vault, replica, trust, insecure, html_path, as_json) -> None:
    """Show a bundle and its retirement record, verified against the signature first."""
    from rich.console import Console

    from weightvault.archive.replicate import bundle_state
    from weightvault.record.render import html_page, summary_json, summary_text
    from weightvault.record.retirement import read_record
    from weightvault.storage.vault import Vault

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    where, store, b = _first_bundle(rs, bundle, trusted, insecure, replica)
    view = read_record(store, b)
    replicas = {}
    for n in rs.names:
        st = rs.try_store(n)
        replicas[n] = ({"state": bundle_state(st, b.name, b.bundle_id, trusted).state} if st
                       else {"state": "unreachable"})  # fmt: skip
    audits = _audit_status(ctx, rs)
    from weightvault.cli.log import log_summary

    log = log_summary(ctx, rs, b.bundle_id)
    for n, a in audits.items():
        replicas.setdefault(n, {}).update(a)
    if html_path:
        page = html_page(view, b, replicas, log=log)  # each replica's row carries its audit
        out = Path(html_path)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    from weightvault.archive.versions import lineage

    lin = lineage(Vault(store), b, trusted)
    if as_json:
        click.echo(json.dumps({**summary_json(view, b, replicas, audits), "log": log,
                               "lineage": lin}, indent=2, sort_keys=True))  # fmt: skip
    elif not html_path:
        Console(width=None if sys.stdout.isatty() else 120).print(summary_text(view, b, replicas))
        for x in lin["supersedes"]:  # names and ids from signed manifests, printed as text
            state = "" if x["state"] == "ok" else f": {x['state']}"
            click.echo(f"supersedes: {x['name']} ({x['bundle']}){state}")
        for x in lin["superseded_by"]:
            click.echo(f"superseded by: {x['name']} ({x['bundle']})")
    else:
        click.echo(f"wrote {html_path}: {b.name} ({b.bundle_id[:16]}) from {where}")


@cli.group("record")
def record_group() -> None:
    """The retirement record sealed with a bundle."""


@record_group.command("export")
@click.argument("bundle")
@click.argument("dest", type=click.Path(file_okay=False))
@vault_opt
@replica_opt
@trust_opt
@insecure_opt
@json_opt
@click.pass_obj
def record_export(ctx: Ctx, bundle, dest, vault, replica, trust, insecure, as_json) -> None:
    """Write the record's files (byte-exact, digests checked) into DEST, without the weights."""
    from weightvault.record.retirement import export_record

    rs, trusted = ctx.replicas(vault), ctx.trusted(trust)
    _, store, b = _first_bundle(rs, bundle, trusted, insecure, replica)
    files = export_record(store, b, Path(dest))
    _emit(files, as_json, f"exported {len(files)} record files of {b.name} into {dest}")


def _target(ctx: Ctx, rs, spec: str, *, create: bool):
    """A replica name from the config, or a URL/path."""
    if spec in rs.config.replicas:
        return spec, rs.store(spec, create=create)
    if "://" in spec or "/" in spec or spec.startswith("."):
        return spec, configmod.single(spec).replicas["vault"].open(create=create)
    rs.replica(spec)  # raises: unknown replica
    raise AssertionError


@cli.command()
@click.argument("bundle")
@click.option("--to", "to", required=True, metavar="REPLICA|URL", help="Where to copy to.")
@click.option("--from", "from_", metavar="REPLICA|URL",
              help="Where to copy from [default: every other replica holding it, in order].")  # fmt: skip
@trust_opt
@insecure_opt
@click.option("--verify-existing", is_flag=True,
              help="Re-hash objects already on the target (S3 targets always compare checksums).")  # fmt: skip
@click.option("--unretire", is_flag=True,
              help="Copy the bundle back to a replica it was retired from (the log's replicated "
                   "statement then supersedes the retirement).")  # fmt: skip
@workers_opt
@executor_opt
@json_opt
@quiet_opt
@click.pass_obj
def replicate(ctx: Ctx, bundle, to, from_, trust, insecure, verify_existing, unretire, workers,
              executor, as_json, quiet) -> None:  # fmt: skip
    """Copy what is missing of BUNDLE to a replica, check every copy, then commit it there."""
    from weightvault.archive.replicate import replicate as do_replicate
    from weightvault.cli.cluster import executor_of, running
    from weightvault.storage.replicas import ReplicaSet

    ex = executor_of(executor)  # first: a LocalCluster starts while the replicas are read
    cfg = ctx.config
    rs = ReplicaSet(cfg)
    trusted = ctx.trusted(trust)
    to_name, dst = _target(ctx, rs, to, create=True)
    if from_:
        sources = [_target(ctx, rs, from_, create=False)[1]]
    else:
        sources = [s for n in rs.names if n != to_name and (s := rs.try_store(n)) is not None]
        if not sources:
            raise InputError("nothing to copy from: pass --from REPLICA|URL")
    # the first source that holds the bundle leads; the others stand by for damaged objects
    from weightvault.storage.vault import Vault

    lead = None
    for s in sources:
        try:
            Vault(s).resolve(bundle)
            lead = s
            break
        except WeightvaultError:
            continue
    if lead is None:
        raise InputError(f"{bundle!r}: no source replica holds this bundle")
    sources = [lead] + [s for s in sources if s is not lead]
    if not unretire:
        from weightvault.archive.retire import retired_ids

        src_vault = Vault(lead)
        bid = src_vault.bundle_id_of(src_vault.resolve(bundle))
        gone = retired_ids(dst, trusted, to_name).get(bid)
        if gone is not None:  # a routine copy from cron must not undo a deliberate removal
            raise Conflict(f"bundle {gone['name']} ({bid[:16]}) was retired from {to_name} on "
                           f"{gone['time'][:10]} (reason: {gone['reason']!r}); pass --unretire to copy it "
                           "back")  # fmt: skip
    with running(ex), _work(f"replicating to {to_name}", not (quiet or as_json)) as cb:
        r = do_replicate(sources, dst, bundle, trusted, insecure=insecure,
                         verify_existing=verify_existing, workers=workers,
                         on_bytes=cb.on_bytes, executor=ex)  # fmt: skip
    from weightvault.cli.log import log_replicated

    log_replicated(ctx, rs, r.bundle, r.name, to_name)
    lines = [f"{r.name} ({r.bundle[:16]}) on {to_name}: {r.present} objects already there, "
             f"{r.copied} copied ({_size(r.bytes_copied)})"
             f"{', committed' if r.committed_now else ', was already committed'}"]  # fmt: skip
    lines += [f"  {e.action}: {e.key} ({e.reason}) from {e.source}" for e in r.events
              if e.action == "replaced"]  # fmt: skip
    _emit(r.as_dict(), as_json, "\n".join(lines))


@cli.command()
@vault_opt
@trust_opt
@json_opt
@click.pass_obj
def status(ctx: Ctx, vault, trust, as_json) -> None:
    """Which bundles are complete, incomplete or absent on which replica (listings only)."""
    from weightvault.archive.replicate import BundleState, needs_action
    from weightvault.archive.replicate import status as do_status
    from weightvault.storage.opener import unwritten

    rs = ctx.replicas(vault)
    stores = {n: rs.try_store(n) for n in rs.names}
    empty = [n for n in rs.names if stores[n] is None and unwritten(rs.replica(n).url)]
    try:
        trusted = ctx.trusted(trust)
    except InputError:
        trusted = []
    table = do_status(stores, rs.errors, trusted)
    for n in empty:  # after every read: judging trust may try the replicas again
        rs.errors.pop(n, None)
    for row in table.values():
        for n in empty:
            row[n] = BundleState("absent", detail="empty (not yet written)")
    if as_json:
        click.echo(json.dumps({b: {r: s.as_dict() for r, s in row.items()}
                               for b, row in table.items()}, indent=2))  # fmt: skip
    else:
        from rich.text import Text

        t = _table("bundle", *rs.names)
        colour = {"complete": "green", "absent": "dim", "retired": "dim", "unreachable": "yellow"}
        for b, row in table.items():
            t.add_row(Text(b), *(Text(f"{s.state}{f' ({s.missing})' if s.missing else ''}",
                                      colour.get(s.state, "red")) for s in row.values()))  # fmt: skip
        if table:
            _console().print(t)
        else:
            click.echo("no bundles on any reachable replica")
        for n in empty:
            click.echo(f"replica {n}: empty (not yet written; `weightvault init` or the next "
                       "seal creates it)")  # fmt: skip
        for n, e in rs.errors.items():
            click.echo(f"weightvault: error: replica {n} unreachable: {e}", err=True)
    for b, row in table.items():
        debris = [r for r, s in row.items() if s.state == "uncommitted"]
        if debris and not any(s.state == "complete" for s in row.values()):
            click.echo(f"{b}: only files of an interrupted seal on {', '.join(debris)} "
                       "(never committed; `weightvault gc` removes them)", err=True)  # fmt: skip
    bad = any(needs_action(row) for row in table.values())
    if rs.errors:
        sys.exit(3)
    if bad:
        sys.exit(1)


def _state(ctx: Ctx, state_dir: str | None) -> Path:
    from weightvault.archive.auditlog import state_root

    return state_root(Path(state_dir) if state_dir else ctx.config.audit.get("state_dir"))


def _auditor_key(ctx: Ctx, key_path: str | None) -> keys.SigningKey:
    p = key_path or ctx.config.audit.get("key") or ctx.config.signing_key
    if p is None:
        raise InputError("no key to sign audit records: pass --key FILE or set audit.key or "
                         "signing_key in the config")  # fmt: skip
    return load_key(p, "audit key")


def _each_replica(rs, names, fn) -> tuple[list, dict[str, str]]:
    """fn(name, store) on each selected replica: (results, {unreachable replica: why}). One
    replica down never stops the others."""
    done, unreachable = [], {}
    for n in _selected(rs, names):
        store = rs.try_store(n)
        if store is None:
            unreachable[n] = rs.errors[n]
            continue
        try:
            done.append(fn(n, store))
        except StorageError as e:
            unreachable[n] = str(e)
    return done, unreachable


def _holdings(rs, trusted, known) -> dict[str, dict[str, str | None]]:
    """What each replica must hold, from every replica and the local state (never from the
    audited replica's own listing alone)."""
    from weightvault.archive.audit import expected_holdings

    stores = {n: (rs.replica(n).role, s) for n in rs.names if (s := rs.try_store(n)) is not None}
    return expected_holdings(stores, trusted, known)


def _selected(rs, replicas: tuple[str, ...]) -> list[str]:
    for n in replicas:
        rs.replica(n)
    return list(replicas) or rs.names


state_opt = click.option("--state-dir", metavar="DIR",
                         help="Local audit state [default: config audit.state_dir, else "
                              "~/.local/state/weightvault].")  # fmt: skip
akey_opt = click.option("--key", "key_path", metavar="FILE",
                        help="Key that signs audit records [default: audit.key, else signing_key].")  # fmt: skip


@cli.command()
@vault_opt
@click.option(
    "--replica", "replicas", multiple=True, metavar="NAME", help="Audit only these (repeatable)."
)
@click.option("--level", type=click.Choice(["metadata", "sample", "full"]), default=None,
              help="Depth [default: config audit.level, else sample].")  # fmt: skip
@click.option("--cycle-days", type=click.IntRange(1, 36500), default=None,
              help="Sample audits re-hash every object at least once per this many days [default: 90].")  # fmt: skip
@click.option("--interval-days", type=click.FloatRange(0.001, 36500), default=None,
              help="How often this audit runs [default: time since the last sample audit].")  # fmt: skip
@trust_opt
@akey_opt
@state_opt
@click.option("--metrics-file", metavar="PATH", help="Write Prometheus textfile metrics here.")
@workers_opt
@executor_opt
@json_opt
@click.pass_obj
def audit(ctx: Ctx, vault, replicas, level, cycle_days, interval_days, trust, key_path, state_dir,
          metrics_file, workers, executor, as_json) -> None:  # fmt: skip
    """Prove every replica still holds every byte. Exit 0 healthy, 1 damage or loss found,
    3 a replica could not be reached (the others are still audited).

    \b
    The summary ends with coverage, e.g. "6/23 objects hashed by an audit within the last 90
    days": of the replica's 23 objects, 6 were read and hashed by some audit (of any level)
    in the last --cycle-days. A sample audit hashes the least recently hashed objects, enough
    that at this schedule every object is hashed once per cycle: the count climbs run by run
    and reaches 23/23 within one cycle. A full audit hashes all of them now."""
    from weightvault.archive import metrics as metricsmod
    from weightvault.archive.audit import Known, audit_replica, cross_check, remember
    from weightvault.cli.cluster import executor_of, running

    ex = executor_of(executor)  # first: a LocalCluster starts while manifests are checked
    rs = ctx.replicas(vault)
    key = _auditor_key(ctx, key_path)
    trusted = ctx.trusted(trust)
    level = level or ctx.config.audit.get("level", "sample")
    cycle = cycle_days or ctx.config.audit.get("cycle_days") or 90
    state = _state(ctx, state_dir)
    known = Known(state)
    holdings = _holdings(rs, trusted, known)
    from weightvault.cli.log import inventory as log_inventory
    from weightvault.cli.log import log_audits

    for n, held in log_inventory(ctx, rs).items():  # the preservation log's word, signed
        holdings.setdefault(n, {}).update(held)
    with running(ex):
        done, unreachable = _each_replica(rs, replicas, lambda n, store: audit_replica(
            n, store, level=level, trusted=trusted, key=key, state=state, cycle_days=cycle,
            interval_days=interval_days, workers=workers or ctx.config.workers,
            expected=holdings.get(n, {}), executor=ex))  # fmt: skip
    remember(known, done)
    log_audits(ctx, rs, level, done, unreachable)
    conflicts = cross_check({a.replica: {b["name"]: b["bundle"] for b in a.bundles}
                             for a in done})  # fmt: skip
    if metrics_file:
        from weightvault.storage.opener import store_url

        covered = {n: store_url(rs.replica(n).url) for n in _selected(rs, replicas)}
        up = {n: n not in unreachable for n in covered}
        metricsmod.write(Path(metrics_file), metricsmod.render(covered, up, state))
    summary = {"level": level, "replicas": [a.as_dict() for a in done],
               "unreachable": unreachable, "conflicts": conflicts}  # fmt: skip
    if ex is not None:  # where the tasks ran (executors.Executor.map)
        summary["tasks"] = dict(ex.tasks)
    lines = []
    for a in done:
        lines += _audit_lines(a, cycle)
    lines += [f"{n}: UNREACHABLE: {e}" for n, e in unreachable.items()]
    lines += [f"CONFLICT: {c}" for c in conflicts]
    _emit(summary, as_json, "\n".join(lines))
    if any(a.outcome != "pass" for a in done) or conflicts:
        sys.exit(1)
    if unreachable:
        sys.exit(3)


def _audit_lines(a, cycle: int) -> list[str]:
    """One replica's audit, counting what it did: a metadata audit lists objects and compares
    sizes (and server checksums where the store keeps them); sample and full audits hash."""
    from weightvault.archive.auditlog import failures_by_kind

    r = a.record
    cov, kinds = r["coverage"], failures_by_kind(r)
    if a.level == "metadata":
        listed = cov["objects"] + sum(kinds.get(k, 0) for k in ("missing", "size", "damaged"))
        did = f"{listed} objects listed, sizes compared"
        if r["objects_checked"]:
            did += f", {r['objects_checked']} proved by the server's SHA-256"
    else:
        did = f"{r['objects_checked']} objects hashed, {_size(r['bytes_read'])} read"
        if kinds.get("damaged") or r["transient"]:
            did += " (each bad read was read again to rule out a transient error; not counted)"
    out = [f"{a.replica}: {a.outcome.upper()} ({a.level}) {did}; {cov['verified_within_cycle']}/"
           f"{cov['objects']} objects hashed by an audit within the last {cycle} days"]  # fmt: skip
    shown = a.shown_failures()
    out += [f"  {f['kind']}: {f['object']}: expected {f['expected']}, found {f['found']}"
            for f in shown]  # fmt: skip
    if a.failures_total > len(shown):
        out.append(f"  ... {a.failures_total - len(shown)} more failures "
                   f"({a.failures_total} in all): every one is listed in "
                   f"{a.failures_file or 'the signed audit record'}")
    out += [f"  transient (passed on re-read): {f['object']}" for f in r["transient"]]
    if r.get("objects_unverifiable"):
        out.append(f"  {r['objects_unverifiable']} objects not verifiable at this level "
                   "(the store kept no SHA-256 of them): left to sample and full audits")
    return out


@cli.command()
@vault_opt
@click.option("--replica", "replicas", multiple=True, metavar="NAME", help="Repair only these.")
@trust_opt
@akey_opt
@state_opt
@workers_opt
@json_opt
@click.pass_obj
def repair(ctx: Ctx, vault, replicas, trust, key_path, state_dir, workers, as_json) -> None:
    """Fix what the last audits found, from replicas where the object verifies."""
    from weightvault.archive.audit import repair_replica

    rs = ctx.replicas(vault)
    key = _auditor_key(ctx, key_path)
    trusted = ctx.trusted(trust)
    state = _state(ctx, state_dir)
    reachable = {n: s for n in rs.names if (s := rs.try_store(n)) is not None}
    results, lost = [], []
    for n in _selected(rs, replicas):
        if n not in reachable:
            continue
        others = [(o, s) for o, s in reachable.items() if o != n]
        r, gone = repair_replica(n, reachable[n], others, trusted=trusted, key=key, state=state,
                                 workers=workers)  # fmt: skip
        results.append(r)
        lost += gone
    from weightvault.cli.log import log_repairs

    log_repairs(ctx, rs, results)
    lines = []
    for r in results:
        reps = r.record.get("repairs", []) if r.record else []
        total = r.record.get("repairs_total", len(reps)) if r.record else 0
        fixed = r.record.get("repairs_by_outcome", {}).get("repaired", 0) if r.record else 0
        lines.append(f"{r.replica}: {fixed} repaired, {total - fixed} unrepairable" if total
                     else f"{r.replica}: nothing to repair")  # fmt: skip
        lines += [f"  {x['outcome']}: {x['object']} ({x['detail'][:120]})" for x in reps]
        if total > len(reps):
            lines.append(f"  ... {total - len(reps)} more ({total} in all): every one is "
                         f"listed in {r.repairs_file}")  # fmt: skip
    _emit({"replicas": [r.as_dict() for r in results], "lost": lost,
           "unreachable": rs.errors}, as_json, "\n".join(lines))  # fmt: skip
    for msg in lost:
        click.secho(f"weightvault: DATA LOSS: {msg}", err=True, fg="red", bold=True)
    if lost:
        sys.exit(1)
    if rs.errors:
        sys.exit(3)


def _gc_one(ctx: Ctx, rs, trusted, state_dir, seconds: float, dry_run: bool):
    """gc of one replica (name, store), as the gc and retire commands run it."""
    from weightvault.archive.audit import Known
    from weightvault.archive.gc import gc as do_gc
    from weightvault.archive.retire import retired_ids

    # a bundle committed on any replica, or ever seen by an audit here, is never debris on
    # another, whatever that replica's files say; unless a trusted key retired it there
    known = {(name, bid) for held in _holdings(rs, trusted, Known(_state(ctx, state_dir))).values()
             for name, bid in held.items()}  # fmt: skip

    def one(n: str, store):
        gone = retired_ids(store, trusted, n)
        return do_gc(n, store, trusted=trusted, grace=seconds, dry_run=dry_run,
                     object_lock=rs.replica(n).object_lock,
                     protect={name for name, bid in known if bid not in gone})  # fmt: skip

    return one


@cli.command()
@vault_opt
@click.option("--replica", "replicas", multiple=True, metavar="NAME",
              help="Collect only on these replicas (repeatable) [default: all].")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List what would be removed, with sizes; remove nothing.")  # fmt: skip
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="Keep anything younger than this (a seal in progress writes objects before it "
                   "commits): 90m, 24h, 7d, 0.")  # fmt: skip
@trust_opt
@state_opt
@json_opt
@click.pass_obj
def gc(ctx: Ctx, vault, replicas, dry_run, grace, trust, state_dir, as_json) -> None:
    """Remove what interrupted seals and replicates left behind; never anything a committed
    manifest names, anything younger than --grace, or anything under Object Lock. Never runs by
    itself. Exit 3 if a replica could not be reached (the others are still collected)."""
    from weightvault.archive.gc import parse_duration, summary

    seconds = parse_duration(grace)
    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust)
    done, unreachable = _each_replica(rs, replicas, _gc_one(ctx, rs, trusted, state_dir,
                                                            seconds, dry_run))  # fmt: skip
    lines = [x for r in done for x in summary(r)]
    lines += [f"{n}: UNREACHABLE: {e}" for n, e in unreachable.items()]
    _emit({"dry_run": dry_run, "grace_seconds": seconds,
           "replicas": [r.as_dict() for r in done], "unreachable": unreachable},
          as_json, "\n".join(lines))  # fmt: skip
    if unreachable:
        sys.exit(3)


@cli.group("audit-log")
def audit_log() -> None:
    """The signed, hash-chained audit trail."""


@audit_log.command("verify")
@vault_opt
@click.option("--replica", "replicas", multiple=True, metavar="NAME")
@trust_opt
@akey_opt
@state_opt
@json_opt
@click.pass_obj
def audit_log_verify(ctx: Ctx, vault, replicas, trust, key_path, state_dir, as_json) -> None:
    """Check every replica's audit chain: signatures, order, and local vs replica copies."""
    from weightvault.archive.auditlog import Chain, replica_dir

    rs = ctx.replicas(vault)
    trusted = ctx.trusted(trust)
    try:
        trusted.append(_auditor_key(ctx, key_path).public)
    except InputError:
        pass
    state = _state(ctx, state_dir)
    out, bad = {}, False
    for n in _selected(rs, replicas):
        store = rs.try_store(n)
        url = store.url if store else rs.replica(n).url
        count, problems = Chain(replica_dir(state, url), store).verify(trusted)
        from weightvault.cli.log import check_audit_anchors

        problems += check_audit_anchors(ctx, rs, n, store)
        if store is None:
            problems.append(f"replica unreachable, its copy not compared: {rs.errors[n]}")
        out[n] = {"records": count, "problems": problems}
        bad = bad or bool(problems)
    lines = []
    for n, r in out.items():
        lines.append(f"{n}: {r['records']} records, {'INTACT' if not r['problems'] else 'BROKEN'}")
        lines += [f"  {p}" for p in r["problems"]]
    _emit(out, as_json, "\n".join(lines))
    if bad:
        sys.exit(1)


@cli.group("escrow")
def escrow_group() -> None:
    """Hand a bundle to a third-party steward, prove it still holds it, release by quorum
    (docs/ESCROW.md). Every step is a signed, hash-chained custody record."""


key_opt = click.option("--key", "key_path", metavar="FILE",
                       help="Your signing key [default: config signing_key].")  # fmt: skip
steward_opt = click.option("--steward", required=True, metavar="NAME",
                           help="The steward, as configured in [stewards.NAME].")  # fmt: skip


def _escrow_out(r, as_json: bool, human: str) -> None:
    _emit(r.as_dict(), as_json, f"{human}\n  custody record {r.record} ({r.digest[:16]}) "
                                f"written to {', '.join(r.stores)}")  # fmt: skip


@escrow_group.command("handover")
@click.argument("bundle")
@steward_opt
@click.option("--conditions", required=True, metavar="FILE.md",
              help="The agreed release conditions (text, kept in the handover record).")  # fmt: skip
@key_opt
@trust_opt
@workers_opt
@json_opt
@quiet_opt
@click.pass_obj
def escrow_handover(ctx: Ctx, bundle, steward, conditions, key_path, trust, workers, as_json,
                    quiet) -> None:  # fmt: skip
    """Replicate BUNDLE to the steward's replica and sign the handover record."""
    from weightvault.custody.escrow import handover

    key = ctx.signing_key(key_path)
    with _work(f"handing over to {steward}", not (quiet or as_json)) as cb:
        r = handover(ctx.config, bundle, steward, Path(conditions), key, ctx.trusted(trust),
                     workers=workers, on_bytes=cb.on_bytes)  # fmt: skip
    from weightvault.cli.log import log_custody

    log_custody(ctx, r, key)
    kind = "transferred" if r.detail["transfer"] else "handed over"
    _escrow_out(r, as_json, f"{kind} {r.name} ({r.bundle[:16]}) to {r.detail['steward']} at "
                            f"{r.detail['replica']}; pending until the steward accepts")  # fmt: skip


@escrow_group.command("accept")
@click.argument("bundle")
@key_opt
@trust_opt
@identity_opt
@share_opt
@replica_opt
@workers_opt
@json_opt
@quiet_opt
@click.pass_obj
def escrow_accept(ctx: Ctx, bundle, key_path, trust, identities, shares, replica, workers,
                  as_json, quiet) -> None:  # fmt: skip
    """Steward: audit every stored byte of our copy, check the depositor's signature and our
    key or share, then sign a receipt for the pending handover."""
    from weightvault.custody.escrow import accept

    key = ctx.signing_key(key_path)
    with _work("auditing the copy handed over", not (quiet or as_json)) as cb:
        r = accept(ctx.config, bundle, key, ctx.trusted(trust), _keys(identities, shares),
                   replica=replica, workers=workers, on_bytes=cb.on_bytes)  # fmt: skip
    a, k = r.detail["audit"], r.detail["key_check"]
    _escrow_out(r, as_json, f"accepted {r.name} ({r.bundle[:16]}): full audit of {a['objects']} "
                            f"objects, {_size(a['bytes'])}, no problems; key check "
                            f"({k['method']}): {k['result']}")  # fmt: skip


@escrow_group.command("log")
@click.argument("bundle")
@trust_opt
@replica_opt
@json_opt
@click.pass_obj
def escrow_log(ctx: Ctx, bundle, trust, replica, as_json) -> None:
    """Verify and print BUNDLE's chain of custody (both sides' signatures, the hash chain)."""
    from weightvault.custody.chain import LOG_COLUMNS, format_log
    from weightvault.custody.escrow import log_state

    # only keys trusted as depositors (trusted_keys, --trust): on a steward's machine its own
    # signing key must not vouch for record 1
    state = log_state(ctx.config, bundle, ctx.trusted(trust), replica=replica)
    from weightvault.cli.log import anchor_custody, check_custody_anchors

    check_custody_anchors(ctx, state.bundle_id, {e.digest for e in state.entries})
    anchor_custody(ctx, state)
    rows = format_log(state)
    if as_json:
        click.echo(json.dumps({"bundle": state.bundle_id, "name": bundle, "verified": True,
                               "records": rows, "missing": state.missing,
                               "unreachable": state.unreachable}, indent=2))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(*LOG_COLUMNS, title=Text(f"custody of {bundle} ({(state.bundle_id or '')[:16]})"))
    for r in rows:  # signed text (notes, names) is shown as text, never as markup
        t.add_row(*(Text(str(r[c])) for c in LOG_COLUMNS))
    Console(width=160).print(t)
    click.echo(f"chain verified: {len(rows)} records, every signature by the key the chain "
               "requires")  # fmt: skip
    for n, seqs in state.missing.items():
        click.echo(
            f"  note: replica {n} lacks records {seqs} (the next escrow command copies them)"
        )
    for n, e in state.unreachable.items():
        click.echo(f"  note: replica {n} unreachable: {e}")


@escrow_group.command("challenge")
@click.argument("bundle")
@steward_opt
@click.option("-n", "count", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Objects to challenge.")  # fmt: skip
@key_opt
@trust_opt
@json_opt
@click.pass_obj
def escrow_challenge(ctx: Ctx, bundle, steward, count, key_path, trust, as_json) -> None:
    """Depositor: ask the steward to prove it holds randomly chosen objects (fresh nonce)."""
    from weightvault.custody.escrow import challenge

    key = ctx.signing_key(key_path)
    r = challenge(ctx.config, bundle, steward, key, ctx.trusted(trust), count)
    from weightvault.cli.log import log_custody

    log_custody(ctx, r, key)
    _escrow_out(r, as_json, f"challenged {r.detail['steward']} on {r.detail['objects']} objects "
                            f"of {r.name}; the steward answers with `escrow respond`")  # fmt: skip


@escrow_group.command("respond")
@click.argument("bundle")
@key_opt
@trust_opt
@replica_opt
@json_opt
@click.pass_obj
def escrow_respond(ctx: Ctx, bundle, key_path, trust, replica, as_json) -> None:
    """Steward: answer the open challenge from the stored bytes themselves."""
    from weightvault.custody.escrow import respond

    r = respond(ctx.config, bundle, ctx.signing_key(key_path), ctx.trusted(trust),
                replica=replica)  # fmt: skip
    if r is None:
        _emit({"bundle": bundle, "answered": 0}, as_json, f"{bundle}: no open challenge")
        return
    miss = r.detail["missing"]
    _escrow_out(r, as_json, f"answered {r.detail['answered']} challenged objects of {r.name}"
                            + (f"; {len(miss)} MISSING here" if miss else ""))  # fmt: skip
    if miss:
        sys.exit(1)


@escrow_group.command("check")
@click.argument("bundle")
@steward_opt
@key_opt
@trust_opt
@json_opt
@click.pass_obj
def escrow_check(ctx: Ctx, bundle, steward, key_path, trust, as_json) -> None:
    """Depositor: check the steward's answers against our own copy and record the result."""
    from weightvault.cli.log import log_custody
    from weightvault.custody.escrow import ChallengeFailed, check

    key = ctx.signing_key(key_path)
    try:
        r = check(ctx.config, bundle, steward, key, ctx.trusted(trust))
    except ChallengeFailed as e:
        log_custody(ctx, e.result, key)
        _escrow_out(e.result, as_json, f"FAIL: {e}")
        sys.exit(e.exit_code)
    log_custody(ctx, r, key)
    _escrow_out(r, as_json, f"pass: all {r.detail['objects']} answers match our copy of {r.name}")


@escrow_group.command("release")
@click.argument("bundle")
@click.argument("dest", type=click.Path(file_okay=False))
@key_opt
@trust_opt
@identity_opt
@share_opt
@click.option("--note", default="", help="Who asked and why (kept in the release record).")
@replica_opt
@workers_opt
@json_opt
@quiet_opt
@click.pass_obj
def escrow_release(ctx: Ctx, bundle, dest, key_path, trust, identities, shares, note, replica,
                   workers, as_json, quiet) -> None:  # fmt: skip
    """Steward: open BUNDLE with a quorum of shares, restore it bit-exact into DEST, and sign
    the release record."""
    from weightvault.custody.escrow import release

    key = ctx.signing_key(key_path)
    with _work("releasing", not (quiet or as_json)) as cb:
        r = release(ctx.config, bundle, Path(dest), key, ctx.trusted(trust),
                    _keys(identities, shares), replica=replica, workers=workers,
                    on_bytes=cb.on_bytes, note=note)  # fmt: skip
    _escrow_out(r, as_json, f"released {r.name} ({r.bundle[:16]}) into {r.detail['dest']}: "
                            f"{r.detail['files']} files, {_size(r.detail['bytes'])}, every "
                            "digest verified")  # fmt: skip


