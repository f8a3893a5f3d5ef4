"""The command line: a thin click layer over the library.

app.py holds the group, the shared options, the error-to-exit-code mapping and the core
commands; each further area registers its commands from a module of its own, imported here.
Those modules keep heavy imports inside their commands, so start-up stays fast.
"""

from weightvault.cli import keys as _keys  # noqa: F401 - registers key ...
from weightvault.cli import log as _log  # noqa: F401 - registers `weightvault log`
from weightvault.cli import serve as _serve  # noqa: F401 - registers serve, cat
from weightvault.cli import versions as _versions  # noqa: F401 - registers its commands
from weightvault.cli.app import cli, main

__all__ = ["cli", "main"]
