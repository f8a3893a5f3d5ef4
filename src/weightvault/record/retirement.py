"""The retirement record: what a lab seals with a retired model besides its weights.

Inputs (docs/RECORD.md): a structured record (record.toml), a post-deployment report
(Markdown), interview transcripts (JSON Lines, one turn per line) and any attachments. They
are validated here, before sealing, and stored as plain files under data/record/ in the bag,
each listed with its digests in the signed manifest's `record` array (docs/FORMAT.md 4.6):

  record/record.json            role record: the structured record, canonical JSON
  record/record.toml            role record: the same, exactly as the lab wrote it
  record/report.md              role report: the report, byte for byte
  record/interviews/NAME        role interview: each transcript under its own file name
  record/attachments/NAME       role attachment: each attached file under its own name

Reading goes the other way: every record file is checked against the signed manifest (size,
SHA-256, and SHA-512 in format versions 1 and 2) before anything is parsed, shown or exported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import tomllib
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from weightvault.errors import CorruptData, InputError, IntegrityError, WeightvaultError
from weightvault.format import canon, spec
from weightvault.format.fixity import Fixity
from weightvault.format.paths import check_relpath, check_unique
from weightvault.storage.store import Store
from weightvault.storage.vault import Bundle, prefix

if TYPE_CHECKING:
    import jsonschema

# Bounds on inputs: far above any real record, far below what could exhaust a machine.
MAX_TOML = 4 << 20
MAX_REPORT = 64 << 20
MAX_RECORD_JSON = 64 << 20
MAX_LINE = 16 << 20  # one interview turn
MAX_INTERVIEW = 1 << 30  # one interview file
MAX_TURNS = 100_000
_PIECE = 1 << 20

RECORD_FORMAT = "weightvault-record"
RECORD_JSON = "record/record.json"
RECORD_TOML = "record/record.toml"
REPORT = "record/report.md"
INTERVIEWS = "record/interviews/"
ATTACHMENTS = "record/attachments/"
ROLES = ("record", "report", "interview", "attachment", "model-signing")
RESPONSES = ("documented", "considered", "acted-on", "declined")

_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TYPE_NAMES = {"string": "a string", "integer": "an integer", "array": "an array",
               "boolean": "true or false", "number": "a number"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _keypath(parts: Iterable[Any]) -> str:
    """`preferences[2].turn`: keys joined by dots, array positions counted from 1."""
    out = ""
    for p in parts:
        out += f"[{p + 1}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(err: jsonschema.ValidationError, tables: str) -> str:
    """One line, in the words of the input file, for the most relevant schema error."""
    path = _keypath(err.absolute_path)
    at = f"{path}: " if path else ""
    v, inst, sch = err.validator, err.instance, err.schema
    if v == "additionalProperties" and isinstance(inst, dict):
        known = list(sch.get("properties", {}))
        extra = sorted(k for k in inst if k not in known)[0]
        full = f"{path}.{extra}" if path else extra
        hint = difflib.get_close_matches(str(extra), known, 1)
        return f"unknown key {full!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if v == "required" and isinstance(inst, dict):
        missing = next(k for k in err.validator_value if k not in inst)
        return f"missing {(path + '.' + missing) if path else missing!r}"
    if v in ("pattern", "format") and "description" in sch:
        return f"{at}{_short(inst)} is not {sch['description']}"
    if v == "type":
        want = err.validator_value
        name = tables if want == "object" else _TYPE_NAMES.get(want, want)
        if "description" in sch:
            name = sch["description"]
        return f"{at}expected {name}, got {_short(inst)}"
    if v == "enum":
        return f"{at}{_short(inst)} is not one of: {', '.join(map(str, err.validator_value))}"
    if v == "const":
        return f"{at}must be {err.validator_value!r}, not {_short(inst)}"
    if v == "minLength":
        return f"{at}must not be empty"
    if v == "maxLength":
        return f"{at}is longer than {err.validator_value} characters"
    if v in ("minimum", "maximum"):
        lo, hi = sch.get("minimum", "..."), sch.get("maximum", "...")
        return f"{at}{_short(inst)} is out of range {lo}..{hi}"
    if v == "maxItems":
        return f"{at}has more than {err.validator_value} entries"
    msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
    return f"{at}{msg}"


def _schema_check(doc: Any, schema: str, what: str, err: type[WeightvaultError],
                  tables: str = "a table") -> None:  # fmt: skip
    # the error itself, not spec.validate's wording: it is worded for the person who wrote it
    e = spec.first_error(doc, schema)
    if e is not None:
        raise err(f"{what}: {_describe(e, tables)}")


def _dates_to_str(obj: Any, depth: int = 0) -> Any:
    """TOML dates, times and date-times become ISO 8601 strings (what the schema expects)."""
    if depth > canon.MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(obj, dict):
        return {k: _dates_to_str(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_dates_to_str(v, depth + 1) for v in obj]
    if isinstance(obj, dt.date | dt.time):  # datetime is a date
        return obj.isoformat()
    return obj


def _bad_text(s: str) -> bool:
    """Lone surrogates (possible through JSON escapes) cannot be stored as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@contextlib.contextmanager
def _open_input(path: Path, kind: str, limit: int):
    """A regular file opened for reading, no larger than `limit`; errors are InputError."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"{path}: {kind} file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {kind} file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {kind} file ({e.strerror})") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file")
        if st.st_size > limit:
            raise InputError(
                f"{path}: {st.st_size} bytes is larger than the {_human(limit)} allowed for "
                f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} file"
            )
        yield f


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _read_bounded(f: BinaryIO, limit: int, what: str) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{what}: larger than the {_human(limit)} allowed (it grew while read)")
    return data


# ---------------------------------------------------------------------------------------------
# record.toml


def load_record_toml(path: Path | str) -> dict:
    """Parse and validate a record.toml; dates come back as YYYY-MM-DD strings."""
    path = Path(path)
    with _open_input(path, "record", MAX_TOML) as f:
        data = _read_bounded(f, MAX_TOML, str(path))
    return parse_record_toml(data, str(path))


def parse_record_toml(data: bytes, what: str) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{what}: line {line}: not UTF-8 text") from None
    try:
        doc = _dates_to_str(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{what}: not valid TOML: {e}") from None
    except (ValueError, RecursionError):
        raise InputError(f"{what}: nested too deeply") from None
    _schema_check(doc, "record", what, InputError)
    return doc


# ---------------------------------------------------------------------------------------------
# Interviews (JSON Lines)


def load_interview(path: Path | str) -> list[dict]:
    """Parse and validate an interview transcript. Turn N is line N (counted from 1)."""
    path = Path(path)
    with _open_input(path, "interview", MAX_INTERVIEW) as f:
        return parse_interview(f, str(path), InputError)


def parse_interview(
    f: BinaryIO,
    what: str,
    err: type[WeightvaultError] = InputError,
    *,
    copy: Callable[[bytes], None] | None = None,
) -> list[dict]:
    """Read JSON Lines from `f` one bounded line at a time: no line over MAX_LINE bytes is ever
    held whole, and the file stops at MAX_INTERVIEW bytes. `copy` receives every byte read."""
    turns: list[dict] = []
    total = 0
    lineno = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            break
        lineno += 1
        total += len(line)
        if copy:
            copy(line)
        at = f"{what} line {lineno}"
        body = line[:-1] if line.endswith(b"\n") else line
        if len(body) > MAX_LINE:
            raise err(f"{at}: longer than {_human(MAX_LINE)}; one turn must be smaller")
        if total > MAX_INTERVIEW:
            raise err(f"{what}: larger than the {_human(MAX_INTERVIEW)} an interview may be")
        if lineno > MAX_TURNS:
            raise err(f"{what}: more than {MAX_TURNS} turns")
        body = body.removesuffix(b"\r")
        if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
            raise err(f"{at}: starts with a byte order mark; save the file as UTF-8 without one")
        if not body.strip():
            raise err(f"{at}: empty line (every line is one turn, and turn N is line N)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise err(f"{at}: not UTF-8 text (bad byte at column {e.start + 1})") from None
        try:
            obj = json.loads(text, object_pairs_hook=canon._no_dupes,
                             parse_constant=canon._reject_constant)  # fmt: skip
        except json.JSONDecodeError as e:
            raise err(f"{at}: not JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:
            raise err(f"{at}: not JSON ({str(e)[:100] or 'nested too deeply'})") from None
        if not isinstance(obj, dict):
            raise err(f'{at}: not a JSON object (each line must be one turn: {{"role": ...}})')
        _schema_check(obj, "interview-turn", at, err, tables="an object")
        try:
            dt.datetime.fromisoformat(obj["time"])
        except ValueError:
            raise err(f"{at}: time: {obj['time']!r} is not a valid time") from None
        for key, value in [("content", obj["content"]), *obj.get("metadata", {}).items()]:
            if isinstance(value, str) and _bad_text(value):
                raise err(f"{at}: {key}: contains an unpaired surrogate escape (\\ud800-\\udfff)")
        turns.append(obj)
    return turns


# ---------------------------------------------------------------------------------------------
# Building what seal stores


@dataclass
class RecordPlan:
    """What to seal. `files` goes to SealOptions.record as is. The record.json, record.toml,
    report and interview files it names are copies in a private temporary directory, made while
    they were validated, so what is sealed is exactly what was checked; close() removes them."""

    files: list[tuple[str, Path, str]] = field(default_factory=list)  # (role, local, bundle path)
    record: dict | None = None  # the document stored as record/record.json
    interviews: dict[str, int] = field(default_factory=dict)  # interview id -> number of turns
    warnings: list[str] = field(default_factory=list)
    tmp: Path | None = None

    def close(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> RecordPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_interview_id(file_name: str) -> str:
    """The id of an interview record.toml does not name: its file name without the extension,
    with characters other than letters, digits, '.', '_' and '-' replaced by '-'."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name
    ident = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-")[:64].rstrip(".")
    return ident or "interview"


def _bundle_path(kind: str, dirname: str, name: str) -> str:
    path = dirname + name
    try:
        return check_relpath(path, kind)
    except CorruptData as e:
        raise InputError(
            f"{kind} file name {name!r} cannot be stored in a bundle ({str(e).split(': ', 2)[-1]});"
            " rename the file"
        ) from None


@dataclass
class _Interview:
    id: str
    name: str  # file name, also its name in the bundle
    local: Path
    entry: dict | None  # its [[interviews]] entry in record.toml
    turns: int = 0
    cited: dict[int, dict] = field(default_factory=dict)  # turn -> the turn, for cited turns


def build_record(
    record_toml: Path | str | None,
    report: Path | str | None,
    interviews: list[Path] | list[str],
    attachments: list[Path] | list[str],
    *,
    tmp_dir: Path | str | None = None,
) -> RecordPlan:
    """Validate a retirement record's inputs and plan the files seal stores (module docstring).

    Interviews named in record.toml ([[interviews]] file = ...) and not passed in `interviews`
    are read relative to record.toml's directory. Raises InputError (one line) on any problem.
    """
    tmp = Path(tempfile.mkdtemp(prefix="weightvault-record-", dir=tmp_dir))
    plan = RecordPlan(tmp=tmp)
    weakref.finalize(plan, shutil.rmtree, tmp, True)
    try:
        _build(plan, tmp, record_toml, report, list(interviews), list(attachments))
    except BaseException:
        plan.close()
        raise
    return plan


def _build(plan: RecordPlan, tmp: Path, record_toml, report, interviews, attachments) -> None:
    doc: dict | None = None
    toml_what = ""
    if record_toml is not None:
        record_toml = Path(record_toml)
        toml_what = str(record_toml)
        with _open_input(record_toml, "record", MAX_TOML) as f:
            raw = _read_bounded(f, MAX_TOML, toml_what)
        doc = parse_record_toml(raw, toml_what)
        (tmp / "record.toml").write_bytes(raw)

    # Which interview files, and under which ids.
    given: dict[str, Path] = {}
    for p in map(Path, interviews):
        key = p.name.casefold()
        if key in given:
            raise InputError(f"two interviews are named {p.name!r} ({given[key]} and {p})")
        given[key] = p
    items: list[_Interview] = []
    used: set[str] = set()
    for i, entry in enumerate(doc.get("interviews", []) if doc else [], 1):
        at = f"{toml_what}: interviews[{i}]"
        name = PurePosixPath(entry["file"].replace("\\", "/")).name
        if not name:
            raise InputError(f"{at}.file: {entry['file']!r} names no file")
        local = given.pop(name.casefold(), None)
        if local is None:
            local = record_toml.parent / entry["file"]
            if not local.is_file():
                raise InputError(
                    f"{at}.file: {entry['file']!r} not found next to {record_toml.name} and not "
                    "given as an interview"
                )
        if name.casefold() in used:
            raise InputError(f"{at}.file: {name!r} is listed twice")
        used.add(name.casefold())
        items.append(_Interview(entry.get("id") or default_interview_id(name), name, local, entry))
    for local in given.values():
        items.append(_Interview(default_interview_id(local.name), local.name, local, None))
    ids: dict[str, _Interview] = {}
    for it in items:
        if it.id.casefold() in ids:
            other = ids[it.id.casefold()]
            raise InputError(
                f"interviews {other.name!r} and {it.name!r} both have the id {it.id!r}; give them "
                f"distinct ids in {toml_what or 'record.toml'} ([[interviews]] id = ...)"
            )
        ids[it.id.casefold()] = it

    # Citations are resolved before reading the transcripts, so only cited turns are kept.
    prefs = doc.get("preferences", []) if doc else []
    by_name = {it.name: it for it in items}
    by_id = {it.id: it for it in items}
    cites: list[tuple[str, dict, _Interview]] = []
    for i, pref in enumerate(prefs, 1):
        label = f"preferences[{i}]" + (f" ({pref['id']})" if "id" in pref else "")
        ref = pref["interview"]
        it = by_id.get(ref) or by_name.get(ref)
        if it is None:
            names = ", ".join(repr(x.id) for x in items) or "none"
            raise InputError(
                f"{toml_what}: {label} cites interview {ref!r}, which is not among the interviews "
                f"given (ids: {names})"
            )
        cites.append((label, pref, it))
        it.cited[pref["turn"]] = {}

    for it in items:
        dest = _bundle_path("interview", INTERVIEWS, it.name)
        copy_path = tmp / "interviews" / it.name
        copy_path.parent.mkdir(exist_ok=True)
        with _open_input(it.local, "interview", MAX_INTERVIEW) as f, open(copy_path, "xb") as out:
            turns = parse_interview(f, str(it.local), InputError, copy=out.write)
        it.turns = len(turns)
        for t in it.cited:
            if t <= len(turns):
                it.cited[t] = turns[t - 1]
        del turns
        plan.interviews[it.id] = it.turns
        plan.files.append(("interview", copy_path, dest))

    for label, pref, it in cites:
        t = pref["turn"]
        if t > it.turns:
            raise InputError(
                f"{toml_what}: {label} cites turn {t} of interview {it.id!r}, which has "
                f"{it.turns} turns"
            )
        turn = it.cited[t]
        if not _quote_in(pref["quote"], turn["content"]):
            plan.warnings.append(
                f"{label}: the quote is not found word for word in interview {it.id!r} turn {t}"
            )
        if turn["role"] not in ("model", "assistant"):
            plan.warnings.append(
                f"{label}: interview {it.id!r} turn {t} was said by the {turn['role']}, not the "
                "model"
            )
        pref["interview"] = it.id

    if doc is not None:
        record = dict(doc)
        record["format"] = RECORD_FORMAT
        record["format_version"] = 1
        if items:
            record["interviews"] = [
                {**(it.entry or {}), "id": it.id, "file": it.name} for it in items
            ]
        _schema_check(record, "record", toml_what + " (as record.json)", InputError)
        plan.record = record
        (tmp / "record.json").write_bytes(canon.canonical(record))
        plan.files[:0] = [("record", tmp / "record.json", RECORD_JSON),
                          ("record", tmp / "record.toml", RECORD_TOML)]  # fmt: skip

    if report is not None:
        report = Path(report)
        with _open_input(report, "report", MAX_REPORT) as f:
            raw = _read_bounded(f, MAX_REPORT, str(report))
        if not raw.strip():
            raise InputError(f"{report}: the report is empty")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise InputError(
                f"{report}: line {line}: not UTF-8 text; the report must be Markdown (attach "
                "other documents with --attach)"
            ) from None
        (tmp / "report.md").write_bytes(raw)
        pos = 2 if doc is not None else 0
        plan.files.insert(pos, ("report", tmp / "report.md", REPORT))

    seen: dict[str, Path] = {}
    for p in map(Path, attachments):
        try:
            st = p.stat()
        except FileNotFoundError:
            raise InputError(f"{p}: attachment not found") from None
        except OSError as e:
            raise InputError(f"{p}: cannot read attachment ({e.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{p}: is a directory; attach files (or an archive of the directory)")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: attachment is not a regular file")
        if p.name.casefold() in seen:
            raise InputError(f"two attachments are named {p.name!r} ({seen[p.name.casefold()]} "
                             f"and {p}); rename one")  # fmt: skip
        seen[p.name.casefold()] = p
        plan.files.append(("attachment", p, _bundle_path("attachment", ATTACHMENTS, p.name)))

    try:
        check_unique([dest for _, _, dest in plan.files], "record")
    except CorruptData as e:
        raise InputError(str(e)) from None


def _words(s: str) -> str:
    return " ".join(s.casefold().split())


def _quote_in(quote: str, content: str) -> bool:
    """Is every fragment of the quote (split at ellipses) in the turn, in order?"""
    hay = _words(content)
    pos = 0
    for frag in re.split(r"\.\.\.|\u2026|\[\.\.\.\]", quote):
        frag = _words(frag).strip(" \"'\u201c\u201d")
        if not frag:
            continue
        at = hay.find(frag, pos)
        if at < 0:
            return False
        pos = at + len(frag)
    return True


# ---------------------------------------------------------------------------------------------
# Reading a sealed record


@dataclass
class InterviewView:
    id: str
    file: str  # file name
    path: str  # path in the bundle, under data/
    info: dict  # its record.json entry (title, date, setting, ...), or {} without one
    turns: list[dict]


@dataclass
class RecordView:
    """A bundle's record, every file checked against the signed manifest."""

    entries: list[dict]  # the manifest's record array (path, role, size, sha256[, sha512])
    record: dict | None = None  # record/record.json
    report: str | None = None  # record/report.md
    interviews: list[InterviewView] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.entries

    @property
    def attachments(self) -> list[dict]:
        return [e for e in self.entries if e["role"] in ("attachment", "model-signing")]

    def interview(self, ref: str) -> InterviewView | None:
        for iv in self.interviews:
            if ref in (iv.id, iv.file):
                return iv
        return None


def _key(bundle: Bundle, path: str) -> str:
    return f"{prefix(bundle.name)}/data/{path}"


def _check_digests(what: str, entry: dict, got: Fixity) -> None:
    diff = got.differs_from(entry)
    if diff is None:
        return
    alg, value, want = diff
    if alg == "size":
        raise IntegrityError(
            f"{what}: {value} bytes, but the signed manifest says {want} (the record file "
            "was changed after sealing)"
        )
    raise IntegrityError(
        f"{what}: {alg} {value[:16]}... differs from the signed manifest's "
        f"{want[:16]}... (the record file was changed after sealing)"
    )


def _fetch(store: Store, bundle: Bundle, entry: dict, limit: int) -> bytes:
    """A record file's bytes, only once they match the manifest."""
    key = _key(bundle, check_relpath(entry["path"], "record file"))
    what = store.describe(key)
    if entry["size"] > limit:
        raise CorruptData(
            f"{what}: {entry['size']} bytes is more than the {_human(limit)} weightvault reads "
            f"for a {entry['role']} file (export it with `weightvault record export`)"
        )
    if store.size(key) is None:
        raise IntegrityError(f"{what}: missing (a record file of the bundle was deleted)")
    try:
        data = store.read_bytes(key, entry["size"])
    except CorruptData:
        raise IntegrityError(
            f"{what}: larger than the {entry['size']} bytes the signed manifest says (the record "
            "file was changed after sealing)"
        ) from None
    _check_digests(what, entry, Fixity.of(data, entry))
    return data


def _copy_checked(store: Store, bundle: Bundle, entry: dict, sink: Callable[[bytes], None]) -> None:
    key = _key(bundle, check_relpath(entry["path"], "record file"))
    what = store.describe(key)
    if store.size(key) is None:
        raise IntegrityError(f"{what}: missing (a record file of the bundle was deleted)")
    got = Fixity.like(entry)
    with store.open_read(key) as f:
        while data := f.read(min(_PIECE, entry["size"] - got.size + 1)):
            got.update(data)
            if got.size > entry["size"]:
                break
            sink(data)
    _check_digests(what, entry, got)


def read_record(store: Store, bundle: Bundle, *, check_all: bool = True) -> RecordView:
    """Read and check a loaded (signature-verified) bundle's record. record.json, the report
    and the interviews are read whole (within the MAX_* bounds) and parsed only after their
    digests match; with check_all, the other record files (record.toml, attachments) are
    streamed through the same checks, so a changed attachment also raises IntegrityError."""
    entries = list(bundle.manifest.record)
    view = RecordView(entries)
    rec_infos: dict[str, dict] = {}
    for e in entries:
        what = store.describe(_key(bundle, e["path"]))
        if e["path"] == RECORD_JSON:
            data = _fetch(store, bundle, e, MAX_RECORD_JSON)
            doc = canon.parse_canonical(data, what, max_size=MAX_RECORD_JSON)
            _schema_check(doc, "record", what, CorruptData)
            view.record = doc
            rec_infos = {iv["file"]: iv for iv in doc.get("interviews", [])}
    used: set[str] = set()
    for e in entries:
        what = store.describe(_key(bundle, e["path"]))
        if e["path"] == RECORD_JSON:
            continue
        if e["role"] == "report" and view.report is None:
            data = _fetch(store, bundle, e, MAX_REPORT)
            try:
                view.report = data.decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptData(f"{what}: the report is not UTF-8 text") from None
        elif e["role"] == "interview":
            data = _fetch(store, bundle, e, MAX_INTERVIEW)
            turns = parse_interview(io.BytesIO(data), what, CorruptData)
            del data
            name = PurePosixPath(e["path"]).name
            info = rec_infos.get(name, {})
            ident = info.get("id") or default_interview_id(name)
            base, n = ident, 1
            while ident.casefold() in used:  # only a hand-made bundle can collide here
                n += 1
                ident = f"{base}-{n}"
            used.add(ident.casefold())
            view.interviews.append(InterviewView(ident, name, e["path"], info, turns))
        elif check_all:
            _copy_checked(store, bundle, e, lambda _b: None)
    order = {f: i for i, f in enumerate(rec_infos)}
    view.interviews.sort(key=lambda iv: (order.get(iv.file, len(order)), iv.path))
    return view


def export_record(store: Store, bundle: Bundle, dest: Path | str) -> list[dict]:
    """Write the bundle's record files, byte for byte, into the new directory `dest` (which
    must not exist or be empty): record/X in the bundle becomes dest/X. Files are written into
    a temporary sibling that is renamed into place only when every file matched the signed
    manifest. Returns [{path, role, size, sha256}] with paths relative to dest."""
    from weightvault.archive.restore import (
        prepare_destination,  # restore imports the chunk machinery; keep it lazy
    )

    entries = bundle.manifest.record
    if not entries:
        raise InputError(f"bundle {bundle.name!r} has no retirement record")
    rels = []
    for e in entries:
        path = check_relpath(e["path"], "record file")
        if not path.startswith("record/"):
            raise CorruptData(f"bundle {bundle.name}: record file {path!r} is not under record/")
        rels.append(path[len("record/") :])
    dest = Path(dest).absolute()
    tmp = prepare_destination(dest)
    out: list[dict] = []
    try:
        for e, rel in zip(entries, rels, strict=True):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                _copy_checked(store, bundle, e, f.write)
                f.flush()
                os.fsync(f.fileno())
            out.append({"path": rel, "role": e["role"], "size": e["size"], "sha256": e["sha256"]})
        if dest.is_dir():
            dest.rmdir()  # empty, checked by prepare_destination
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
