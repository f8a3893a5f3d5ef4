"""Progress display kept apart from the work: the library takes plain callbacks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass
class Callbacks:
    on_start: Callable[[int], None] | None = None
    on_bytes: Callable[[int], None] | None = None


@contextlib.contextmanager
def bar(label: str, enabled: bool) -> Iterator[Callbacks]:
    if not enabled or not sys.stderr.isatty():
        yield Callbacks()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as p:
        task = p.add_task(label, total=None)
        yield Callbacks(
            on_start=lambda total: p.update(task, total=total),
            on_bytes=lambda n: p.advance(task, n),
        )


def human_size(n: float) -> str:
    """Bytes in binary units, as every command prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
