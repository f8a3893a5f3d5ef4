"""--executor and --source-option values, parsed for the commands that take them."""

from __future__ import annotations

from weightvault.errors import InputError


def executor_of(spec: str | None):
    from weightvault.executors import parse

    ex = parse(spec)
    return ex if ex.distributed else None


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

    return ex.cluster() if ex is not None else contextlib.nullcontext()
