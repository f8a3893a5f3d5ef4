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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    # rich's download and speed columns count in MB (10^6); every summary says MiB: one system
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as p:
        task = p.add_task(label, total=None, done="", speed="")

        def advance(n: int) -> None:
            p.advance(task, n)
            t = next(x for x in p.tasks if x.id == task)
            total = f"/{human_size(t.total)}" if t.total else ""
            p.update(task, done=human_size(t.completed) + total,
                     speed=f"{human_size(t.speed)}/s" if t.speed else "")  # fmt: skip

        yield Callbacks(on_start=lambda total: p.update(task, total=total), on_bytes=advance)


def human_size(n: float) -> str:
    """Bytes in binary units, as every command prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
