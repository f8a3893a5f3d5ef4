"""--executor and --source-option values, parsed for the commands that take them."""

from __future__ import annotations

from weightvault.errors import InputError


def executor_of(spec: str | None):
    """The executor a command was given, None for threads. A LocalCluster starts now, in the
    background: call this first, so its start overlaps the command's own preparation."""
    from weightvault.executors import parse

    ex = parse(spec)
    if not ex.distributed:
        return None
    ex.start()
    return ex


def source_options_of(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values true/false/integers become what fsspec expects."""
    out: dict = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise InputError(f"--source-option {p!r}: expected KEY=VALUE")
        val: object = v
        if v.lower() in ("true", "false"):
            val = v.lower() == "true"
        elif v.isdigit():
            val = int(v)
        out[k.strip()] = val
    return out


def running(ex):
    """One cluster for the whole command (a LocalCluster starts once, not per replica)."""
    import contextlib

    return ex.session() if ex is not None else contextlib.nullcontext()
