"""Checks on relative paths read from manifests: the only gate between a hostile bundle and
the restore destination. Everything here is pure string logic, testable without a filesystem."""

from __future__ import annotations

import re
import unicodedata

from weightvault.errors import CorruptData

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
# Names Windows reserves whatever the extension; refusing them keeps a bundle restorable everywhere.
_DEVICE = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$) *(\..*)?$", re.I)
_NONPORTABLE = set('<>:"|?*')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_relpath(path: object, what: str) -> str:
    """Return `path` if it is a safe, portable, relative POSIX path; else raise CorruptData."""
    if not isinstance(path, str) or not path:
        raise CorruptData(f"{what}: path {path!r} is empty or not a string")
    problem = _path_problem(path)
    if problem:
        raise CorruptData(f"{what}: unsafe path {path!r}: {problem}")
    return path


def _path_problem(path: str) -> str | None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return "too long"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        return "contains a control character or NUL"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute"
    if re.match(r"^[A-Za-z]:", path):
        return "starts with a drive letter"
    if bad := sorted(set(path) & _NONPORTABLE):
        return f"contains {bad[0]!r}, which some filesystems cannot store"
    if unicodedata.normalize("NFC", path) != path:
        return "is not in Unicode NFC form"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part or 'empty'!r} component"
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            return "has a component longer than 255 bytes"
        if _DEVICE.match(part):
            return f"component {part!r} is a reserved device name"
        if part[-1] in " .":
            return f"component {part!r} ends with a space or dot"
    return None


def check_unique(paths: list[str], what: str) -> None:
    """Refuse duplicates, names equal but for case, and a file that is also a directory."""
    seen: dict[str, str] = {}
    for p in paths:
        key = p.casefold()
        if key in seen:
            other = seen[key]
            kind = "duplicate path" if other == p else "paths differ only in case"
            raise CorruptData(f"{what}: {kind}: {other!r} and {p!r}")
        seen[key] = p
    for p in paths:
        parts = p.casefold().split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise CorruptData(f"{what}: {seen[parent]!r} is a file and a directory of {p!r}")


def check_name(name: str, what: str = "bundle name") -> str:
    from weightvault.errors import InputError

    if not isinstance(name, str) or not _NAME.match(name) or _DEVICE.match(name):
        raise InputError(
            f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def name_ok(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME.match(name)) and not _DEVICE.match(name)
