"""Showing a bundle's retirement record: a terminal summary (rich), JSON, and one HTML page.

Everything taken from a record is hostile input. In HTML every such string goes through
`_e` (html.escape after removing control characters) and never into an attribute except
anchors built from validated ids, which are escaped as well; the page has no scripts, loads
nothing (a Content-Security-Policy forbids it) and links only to its own anchors. The report's
Markdown is rendered by a small subset renderer that escapes first and only then adds fixed
tags; raw HTML in the report is shown as text and links are shown as text with their target.
In the terminal every string is a rich Text (never markup) with control characters replaced,
so a transcript cannot drive the terminal.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from weightvault import __version__
from weightvault.record.retirement import RecordView
from weightvault.storage.vault import Bundle

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
_RESPONSE_STYLE = {"documented": "cyan", "considered": "yellow", "acted-on": "green",
                   "declined": "red"}  # fmt: skip


def _clean(value: Any) -> str:
    s = value if isinstance(value, str) else str(value)
    return _CONTROL.sub("\ufffd", s.replace("\r\n", "\n").replace("\r", "\n"))


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(_clean(value), quote=True)


def _cut(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# What every view shows


def _identity(view: RecordView, bundle: Bundle) -> list[tuple[str, str]]:
    rec = view.record or {}
    model = rec.get("model", {})
    m = bundle.manifest.doc
    rows = [
        ("Model", model.get("name", "")),
        ("Version", model.get("version", "")),
        ("Developer", model.get("developer", "")),
        ("Released", model.get("release_date", "")),
        ("Deprecated", model.get("deprecation_date", "")),
        ("Retired", model.get("retirement_date", "")),
        ("Bundle", bundle.name),
        ("Bundle id", bundle.bundle_id),
        (_signed_by_label(bundle), signed_by(bundle)),
        ("Sealed", m["created"]),
        ("Sealed from", _source_line(m["source"])),
    ]
    src = rec.get("source", {})
    for key, label in (("description", "Source"), ("checkpoint", "Checkpoint"),
                       ("training_run", "Training run"), ("repository", "Repository"),
                       ("revision", "Revision")):  # fmt: skip
        if key in src:
            rows.append((label, src[key]))
    return [(k, v) for k, v in rows if v]


def signed_by(bundle: Bundle) -> str:
    """Who vouches for the bundle: the trusted keys whose signatures verified, by key id."""
    if not bundle.signer:
        return "NOT VERIFIED (insecure)"
    keys = bundle.signers or (bundle.signer,)
    return ", ".join(k.key_id for k in keys)


def _signed_by_label(bundle: Bundle) -> str:
    return "Signed by keys" if len(bundle.signers) > 1 else "Signed by key"


def _source_line(src: dict) -> str:
    # never the local path: it names a sealing machine's directories, not the model
    kind = src.get("kind", "?")
    if kind == "local":
        parts = ["a local directory"]
    else:
        parts = [f"{kind}: {src['repo_id']}" if src.get("repo_id") else kind]
    if src.get("commit"):
        parts.append(f"commit {src['commit']}")
    if src.get("revision"):
        parts.append(f"revision {src['revision']}")
    if src.get("verified_files"):
        parts.append(f"{src['verified_files']} files checked against {src.get('verified_against')}")
    return ", ".join(parts)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5",
                   ".msgpack", ".npz", ".npy", ".tflite", ".mlmodel")  # fmt: skip


def weights(bundle: Bundle) -> list[dict]:
    """The weight files of a bundle, from the signed manifest alone: path, size, and for
    safetensors the elements per dtype (chunks cut on tensor boundaries carry their dtype, so a
    chunk's length over the dtype's size counts its parameters). Empty for encrypted bundles,
    whose file list is sealed away."""
    from weightvault.format.chunking import ITEMSIZE

    out = []
    for f in bundle.manifest.files:
        chunks = f.get("chunks") or []
        by_dtype: dict[str, int] = {}
        for c in chunks:
            d = c.get("dtype")
            if d in ITEMSIZE:
                by_dtype[d] = by_dtype.get(d, 0) + c["length"] // ITEMSIZE[d]
        if not by_dtype and not f["path"].lower().endswith(WEIGHT_SUFFIXES):
            continue
        out.append({"path": f["path"], "size": f["size"], "dtypes": by_dtype,
                    "parameters": sum(by_dtype.values()) if by_dtype else None})  # fmt: skip
    return out


def _params(n: int | None) -> str:
    if n is None:
        return ""
    for unit, div in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"


def promised_replicas(record: dict) -> int | None:
    n = (record.get("commitment") or {}).get("replicas")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def replica_shortfall(view: RecordView, replicas_status: Any) -> str | None:
    """A warning when the record promises more replicas than hold the bundle complete."""
    promised = promised_replicas(view.record or {})
    if promised is None or not isinstance(replicas_status, dict):
        return None
    held = sum(1 for v in replicas_status.values()
               if isinstance(v, dict) and v.get("state") == "complete")  # fmt: skip
    if held >= promised:
        return None
    return (f"The record promises {promised} replicas; {held} of the {len(replicas_status)} "
            f"configured replica{'s' if len(replicas_status) != 1 else ''} "
            f"{'holds' if held == 1 else 'hold'} this bundle complete.")  # fmt: skip


_STATUS_HEADERS = {"name": "Replica", "state": "Bundle state", "last_audit": "Last audit",
                   "level": "Audit level", "outcome": "Audit outcome"}  # fmt: skip


def _header(key: str) -> str:
    return _STATUS_HEADERS.get(key, key.replace("_", " ").capitalize())


def _commitment(view: RecordView) -> list[tuple[str, str]]:
    c = (view.record or {}).get("commitment", {})
    rows = [
        ("Retention", c.get("retention", "")),
        ("Retain until", c.get("retain_until", "")),
        ("Replicas promised", str(c["replicas"]) if "replicas" in c else ""),
        ("Steward", c.get("steward", "")),
        ("Next review", c.get("review_date", "")),
    ]
    return [(k, v) for k, v in rows if v]


def _citation(view: RecordView, pref: dict) -> tuple[str, str | None]:
    """(label, anchor or None when the cited turn is not in the bundle)."""
    iv = view.interview(pref["interview"])
    label = f"{pref['interview']}, turn {pref['turn']}"
    if iv is None or pref["turn"] > len(iv.turns):
        return label + " (not in this bundle)", None
    return label, f"i-{iv.id}-{pref['turn']}"


def _rows(status: Any) -> list[dict]:
    """Replica status as rows: a list of dicts, or a dict of name -> dict/value."""
    if status is None:
        return []
    if isinstance(status, dict):
        out = []
        for k, v in status.items():
            out.append({"name": k, **v} if isinstance(v, dict) else {"name": k, "status": v})
        return out
    if isinstance(status, list | tuple):
        return [r if isinstance(r, dict) else {"status": r} for r in status]
    return [{"status": status}]


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    return str(v)


# ---------------------------------------------------------------------------------------------
# JSON


def summary_json(view: RecordView, bundle: Bundle, replicas_status: Any = None,
                 audit_status: Any = None) -> dict:  # fmt: skip
    by_path = {e["path"]: e for e in view.entries}
    report = next((e for e in view.entries if e["role"] == "report"), None)
    return {
        "bundle": {
            "name": bundle.name,
            "id": bundle.bundle_id,
            "created": bundle.manifest.doc["created"],
            "signer": bundle.signer.key_id if bundle.signer else None,
            "signers": [k.key_id for k in bundle.signers],
            "source": bundle.manifest.doc["source"],
        },
        "record": view.record,
        "report": None
        if report is None
        else {
            "path": report["path"],
            "size": report["size"],
            "sha256": report["sha256"],
            "lines": (view.report or "").count("\n"),
        },  # fmt: skip
        "interviews": [
            {
                "id": iv.id,
                "file": iv.file,
                "path": iv.path,
                "turns": len(iv.turns),
                "size": by_path[iv.path]["size"],
                "sha256": by_path[iv.path]["sha256"],
                **{k: v for k, v in iv.info.items() if k not in ("id", "file")},
            }
            for iv in view.interviews
        ],  # fmt: skip
        "attachments": [
            {k: e[k] for k in ("path", "role", "size", "sha256")} for e in view.attachments
        ],  # fmt: skip
        "files": [
            {k: e[k] for k in ("path", "role", "size", "sha256", "sha512") if k in e}
            for e in view.entries
        ],  # fmt: skip
        "weights": weights(bundle),
        "replicas": replicas_status,
        "audit": audit_status,
        "warnings": [w for w in (replica_shortfall(view, replicas_status),) if w],
    }


# ---------------------------------------------------------------------------------------------
# Terminal


def _t(value: Any, style: str = "") -> Text:
    return Text(_BIDI.sub("\ufffd", _clean(value)), style=style)


def _para(value: Any) -> Text:
    """Free text for the terminal: hard-wrapped lines joined, blank-line paragraphs kept."""
    paras = re.split(r"\n\s*\n", _clean(value).strip())
    return _t("\n\n".join(" ".join(p.split()) for p in paras))


def _kv(rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for k, v in rows:
        t.add_row(_t(k), _para(v))
    return t


def summary_text(view: RecordView, bundle: Bundle, replicas_status: Any = None,
                 audit_status: Any = None) -> RenderableType:  # fmt: skip
    rec = view.record or {}
    model = rec.get("model", {})
    title = " ".join(x for x in (model.get("name"), model.get("version")) if x) or bundle.name
    parts: list[RenderableType] = [_kv(_identity(view, bundle))]
    if view.empty:
        parts.append(_t("This bundle has no retirement record.", "italic"))
    if rows := _commitment(view):
        if "statement" in rec["commitment"]:
            rows.append(("Statement", rec["commitment"]["statement"]))
        parts.append(Panel(_kv(rows), title="Commitment", title_align="left", box=box.ROUNDED))
    access = rec.get("access")
    if access:
        body = [_para(access["policy"])]
        if "requests" in access:
            body.append(_para("Requests: " + access["requests"]))
        parts.append(Panel(Group(*body), title="Access", title_align="left", box=box.ROUNDED))
    if rec.get("contacts"):
        t = Table("Contact", "Role", "Email", "Organization", box=box.SIMPLE_HEAD,
                  title="Contacts", title_justify="left")  # fmt: skip
        for c in rec["contacts"]:
            t.add_row(*(_t(c.get(k, "")) for k in ("name", "role", "email", "organization")))
        parts.append(t)
    if wl := weights(bundle):
        t = Table("Weights", "Size", "Dtypes", "Parameters", box=box.SIMPLE_HEAD,
                  title="Weights", title_justify="left")  # fmt: skip
        for w in wl:
            t.add_row(_t(w["path"]), _t(_size(w["size"])), _t(", ".join(w["dtypes"])),
                      _t(_params(w["parameters"])))  # fmt: skip
        parts.append(t)
    # `show` passes each replica's last audit as columns of its row (one table); a caller that
    # passes the audit apart gets a second table
    for label, status in (("Replicas", replicas_status), ("Last audit", audit_status)):
        rows_ = _rows(status)
        if rows_:
            cols = list(dict.fromkeys(k for r in rows_ for k in r))
            t = Table(*(_header(c) for c in cols), box=box.SIMPLE_HEAD, title=label,
                      title_justify="left")  # fmt: skip
            for r in rows_:
                t.add_row(*(_t(_cell(r.get(c))) for c in cols))
            parts.append(t)
    if warn := replica_shortfall(view, replicas_status):
        parts.append(_t("WARNING: " + warn, "bold red"))
    prefs = rec.get("preferences", [])
    if prefs:
        t = Table("#", "Preference", "Said in", "Response", "Note", box=box.SIMPLE_HEAD,
                  title=f"Preferences ({len(prefs)})", title_justify="left")  # fmt: skip
        for i, p in enumerate(prefs, 1):
            what = p.get("summary") or "\u201c" + _cut(p["quote"], 160) + "\u201d"
            t.add_row(_t(p.get("id", str(i))), _t(what), _t(_citation(view, p)[0]),
                      _t(p["response"], _RESPONSE_STYLE.get(p["response"], "")),
                      _t(_cut(p["note"], 200)))  # fmt: skip
        parts.append(t)
    if view.interviews:
        t = Table("Interview", "Title", "Date", "Setting", "Turns", "File", box=box.SIMPLE_HEAD,
                  title="Interviews", title_justify="left")  # fmt: skip
        for iv in view.interviews:
            t.add_row(_t(iv.id), _t(iv.info.get("title", "")), _t(iv.info.get("date", "")),
                      _t(iv.info.get("setting", "")), _t(len(iv.turns)), _t(iv.path))  # fmt: skip
        parts.append(t)
    if view.entries:
        t = Table("File", "Role", "Size", "SHA-256", box=box.SIMPLE_HEAD,
                  title="Record files (under data/ in the bundle)", title_justify="left")  # fmt: skip
        for e in view.entries:
            t.add_row(_t(e["path"]), _t(e["role"]), _t(_size(e["size"])), _t(e["sha256"][:16]))
        parts.append(t)
    return Panel(Group(*parts), title=_t(title, "bold"), subtitle=_t("retirement record"),
                 title_align="left", box=box.HEAVY)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Markdown, a small safe subset: headings, paragraphs, lists, quotes, code, tables, rules,
# **strong**, *em*, `code`, ~~del~~; links and images become text. No HTML passes through.

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_ULIST = re.compile(r"^\s*[-*+]\s+(.*)$")
_OLIST = re.compile(r"^\s*\d{1,9}[.)]\s+(.*)$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\(([^)\s]*)[^)]*\)"), r'<span class="ref">[image: \1]</span>'),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)[^)]*\)"), r'\1 <span class="ref">(\2)</span>'),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"), r"<em>\1</em>"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"<del>\1</del>"),
]


def _inline(text: str) -> str:
    out = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if i % 2:
            out.append(f"<code>{_e(part)}</code>")
            continue
        s = _e(part)  # escaped first: the patterns below only ever add fixed tags
        for pat, rep in _INLINE:
            s = pat.sub(rep, s)
        out.append(s)
    return "".join(out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") else s
    return [c.strip() for c in s.split("|")]


def markdown_html(text: str, *, shift: int = 2, depth: int = 0) -> str:
    """Render a small, safe Markdown subset. Headings are shifted down by `shift` levels."""
    lines = _clean(text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f'<p dir="auto">{_inline(" ".join(s.strip() for s in para))}</p>')
            para.clear()

    while i < len(lines):
        line = lines[i]
        if m := _FENCE.match(line):
            flush()
            fence, code = m.group(1), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            out.append(f"<pre><code>{_e(chr(10).join(code))}</code></pre>")
            i += 1
            continue
        if not line.strip():
            flush()
        elif m := _HEADING.match(line):
            flush()
            n = min(6, len(m.group(1)) + shift)
            out.append(f'<h{n} dir="auto">{_inline(m.group(2))}</h{n}>')
        elif _RULE.match(line):
            flush()
            out.append("<hr>")
        elif _QUOTE.match(line) and depth < 8:
            flush()
            quoted = []
            while i < len(lines) and (m := _QUOTE.match(lines[i])):
                quoted.append(m.group(1))
                i += 1
            inner = markdown_html("\n".join(quoted), shift=shift, depth=depth + 1)
            out.append(f"<blockquote>{inner}</blockquote>")
            continue
        elif _ULIST.match(line) or _OLIST.match(line):
            flush()
            pat, tag = (_ULIST, "ul") if _ULIST.match(line) else (_OLIST, "ol")
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                if m := pat.match(lines[i]):
                    items.append(m.group(1))
                elif items and lines[i][:1].isspace():
                    items[-1] += " " + lines[i].strip()  # continuation line
                else:
                    break
                i += 1
            lis = "".join(f'<li dir="auto">{_inline(it)}</li>' for it in items)
            out.append(f"<{tag}>{lis}</{tag}>")
            continue
        elif "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
            flush()
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c)}</th>" for c in head)
            trs = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            out.append(
                f'<table class="md"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'
            )
            continue
        else:
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root{--ink:#1d232b;--muted:#5b6573;--line:#d9dde3;--bg:#fbfaf7;--card:#fff;--accent:#2f4a6d;
--model:#eef3f9;--human:#f7f4ec;--ok:#1f6f43;--bad:#a32a2a;--warn:#8a5a00}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--ink)}
body{margin:0 auto;max-width:60rem;padding:2.5rem 1.5rem 4rem;
font:16px/1.55 Georgia,"Iowan Old Style","Palatino Linotype",Palatino,serif}
h1,h2,h3,h4,h5,h6,.label,th,.turn-head,.badge,.eyebrow,footer,nav{
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
h1{font-size:2.1rem;line-height:1.2;margin:.2rem 0 .3rem}
h2{font-size:1.3rem;margin:2.6rem 0 .8rem;padding-bottom:.3rem;border-bottom:2px solid var(--ink)}
h3{font-size:1.1rem;margin:1.6rem 0 .5rem}
h4,h5,h6{font-size:1rem;margin:1.2rem 0 .4rem}
.eyebrow{text-transform:uppercase;letter-spacing:.12em;font-size:.78rem;color:var(--muted)}
.lede{color:var(--muted);margin:0}
nav{font-size:.85rem;margin:1.4rem 0 0;color:var(--muted)}
nav a{margin-right:1rem}
a{color:var(--accent)}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.4rem;margin:0}
dl.kv dt{font-family:system-ui,sans-serif;font-size:.85rem;color:var(--muted);padding-top:.12rem}
dl.kv dd{margin:0;overflow-wrap:anywhere}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:1rem 1.2rem;
margin:.8rem 0}
td.num{color:var(--muted);font-family:system-ui,sans-serif;font-size:.85rem}
td.where{white-space:nowrap}.pid{color:var(--muted);font-size:.78rem}
.card>p:first-child{margin-top:0}.card>p:last-child{margin-bottom:0}.card>dl+p{margin-top:1rem}
.mono,code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:.86em}
.mono{overflow-wrap:anywhere}
.digest{overflow-wrap:normal;word-break:normal;white-space:normal}
pre{background:#f3f2ee;border:1px solid var(--line);border-radius:4px;padding:.7rem .9rem;
white-space:pre-wrap;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.93rem}
th,td{border-bottom:1px solid var(--line);padding:.45rem .55rem;text-align:left;vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);
border-bottom:2px solid var(--line)}
td{overflow-wrap:break-word}
blockquote{margin:.6rem 0;padding:.1rem 1rem;border-left:3px solid var(--line);color:#333}
.quote{font-style:italic}
.badge{display:inline-block;font-size:.75rem;font-weight:600;padding:.1rem .5rem;
border-radius:999px;border:1px solid currentColor;white-space:nowrap}
.r-documented{color:var(--accent)}.r-considered{color:var(--warn)}
.r-acted-on{color:var(--ok)}.r-declined{color:var(--bad)}
.ok{color:var(--ok)}.bad{color:var(--bad)}
.report{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.4rem 1.4rem}
.ref{color:var(--muted);font-size:.85em;overflow-wrap:anywhere}
.transcript{margin:1rem 0 2rem}
.turn{border:1px solid var(--line);border-radius:6px;margin:.55rem 0;padding:.55rem .9rem;
background:var(--human);break-inside:avoid}
.turn.model,.turn.assistant{background:var(--model);margin-left:1.5rem}
.turn.system,.turn.note{background:#f1f1f1;font-size:.92rem}
.turn:target{outline:3px solid var(--accent)}
.turn.cited{border-left:4px solid var(--accent)}
.turn-head{display:flex;flex-wrap:wrap;gap:.2rem .8rem;font-size:.78rem;color:var(--muted);
margin-bottom:.3rem}
.turn-head .role{font-weight:700;color:var(--ink);text-transform:uppercase;letter-spacing:.06em}
.turn-head a{color:var(--muted);text-decoration:none}
.content{white-space:pre-wrap;overflow-wrap:anywhere;unicode-bidi:plaintext}
.cited-by{font-size:.8rem;margin-top:.35rem;font-family:system-ui,sans-serif}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:3rem;padding-top:.8rem;border-top:1px solid var(--line);font-size:.8rem;
color:var(--muted)}
@media print{
html,body{background:#fff}
body{max-width:none;padding:0;font-size:11pt}
@page{margin:16mm 14mm}
nav{display:none}
a{color:inherit;text-decoration:none}
h2{break-after:avoid}h3{break-after:avoid}
tr,.card,.turn{break-inside:avoid}
.turn,.badge,.card,.report{-webkit-print-color-adjust:exact;print-color-adjust:exact}
.turn:target{outline:none}
}
"""


def _digest(hexdigest: str) -> str:
    """A digest that wraps only between groups of 8 hex digits (<wbr> adds no characters, so a
    copied digest is whole), never at an arbitrary character inside a group."""
    s = _e(hexdigest)
    if len(s) <= 32:
        return s
    return '<span class="digest">' + "<wbr>".join(s[i:i + 8] for i in range(0, len(s), 8)) + "</span>"


def _path(p: str) -> str:
    """A path that may wrap after each '/' (and nowhere else unless it must)."""
    return "/<wbr>".join(_e(x) for x in p.split("/"))


def _dl(rows: list[tuple[str, str]], mono: tuple[str, ...] = ()) -> str:
    items = []
    for k, v in rows:
        cls = ' class="mono"' if k in mono else ' dir="auto"'
        items.append(f"<dt>{_e(k)}</dt><dd{cls}>{_digest(v) if k in mono else _e(v)}</dd>")
    return f'<dl class="kv">{"".join(items)}</dl>'


def _status_table(status: Any) -> str:
    """A list of rows (or a dict of name -> row) as a table; a flat dict as key/value pairs."""
    if isinstance(status, dict) and not any(isinstance(v, dict) for v in status.values()):
        items = []
        for k, v in status.items():
            if isinstance(v, bool):
                cell = f'<dd class="{"ok" if v else "bad"}">{"yes" if v else "no"}</dd>'
            else:
                cell = f'<dd dir="auto">{_e(_cell(v))}</dd>'
            items.append(f"<dt>{_e(k)}</dt>{cell}")
        return f'<div class="card"><dl class="kv">{"".join(items)}</dl></div>' if items else ""
    rows = _rows(status)
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_e(_header(c))}</th>" for c in cols)
    body = []
    for r in rows:
        tds = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, bool):
                tds.append(f'<td class="{"ok" if v else "bad"}">{"yes" if v else "no"}</td>')
            else:
                tds.append(f'<td dir="auto">{_e(_cell(v))}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def log_rows(log: dict) -> list[tuple[str, str]]:
    """What the preservation log says of a bundle (log.archive.summary_of), as label/value
    rows: every value comes from verified, signed log entries."""
    rows = []
    if log.get("sealed"):
        rows.append(("Sealed", f"{log['sealed']['time']} (log entry {log['sealed']['index']})"))
    held = log.get("held_on") or []
    rows.append(("Held on", f"{len(held)} replica{'s' * (len(held) != 1)}: {', '.join(held)}"
                 if held else "no replica named by the log"))  # fmt: skip
    for rep, a in sorted((log.get("audits") or {}).items()):
        rows.append((f"Last audit of {rep}",
                     f"{a['time']}, {a['level']}, {a['result']} (log entry {a['index']})"))
    rows.append(("Last full audit", log.get("last_full_audit") or "none recorded"))
    for c in log.get("custody") or []:
        rows.append(("Custody", f"{c['time']}: {c['event']}, steward {c['steward']} "
                                f"(log entry {c['index']})"))
    if log.get("checkpoint"):
        cp = log["checkpoint"]
        rows.append(("Checkpoint", f"tree size {cp['size']}, root {cp['root']}"))
        rows.append(("Cosigned by", ", ".join(cp.get("cosigners") or []) or "no witness yet"))
    if log.get("retired"):
        rows.append(("Retired", f"{log['retired']['time']}: {log['retired']['reason']}"))
    return rows


def html_page(view: RecordView, bundle: Bundle, replicas_status: Any = None,
              audit_status: Any = None, *, generated: str | None = None,
              log: dict | None = None) -> str:  # fmt: skip
    """One self-contained HTML5 page: no scripts, no external resources, inline CSS."""
    rec = view.record or {}
    model = rec.get("model", {})
    name = model.get("name") or bundle.name
    version = model.get("version", "")
    title = f"{name} {version}".strip()
    prefs = rec.get("preferences", [])
    sections: list[str] = []
    nav: list[tuple[str, str]] = [("identity", "Identity")]

    # Identity
    sections.append(
        '<section id="identity"><h2>Identity</h2><div class="card">'
        + _dl(_identity(view, bundle), mono=("Bundle id", "Signed by key"))
        + (f'<p dir="auto">{_e(model["description"])}</p>' if model.get("description") else "")
        + "</div></section>"
    )

    # Commitment, access, contacts
    if rec.get("commitment"):
        c = rec["commitment"]
        stmt = f'<p dir="auto">{_e(c["statement"])}</p>' if "statement" in c else ""
        sections.append('<section id="commitment"><h2>Preservation commitment</h2>'
                        f'<div class="card">{_dl(_commitment(view))}{stmt}</div></section>')  # fmt: skip
        nav.append(("commitment", "Commitment"))
    if rec.get("access"):
        a = rec["access"]
        req = (f'<p dir="auto"><span class="label">Requests:</span> {_e(a["requests"])}</p>'
               if "requests" in a else "")  # fmt: skip
        sections.append('<section id="access"><h2>Access policy</h2><div class="card">'
                        f'<p dir="auto">{_e(a["policy"])}</p>{req}</div></section>')  # fmt: skip
        nav.append(("access", "Access"))
    if rec.get("contacts"):
        trs = "".join(
            "<tr>" + "".join(f'<td dir="auto">{_e(ct.get(k, ""))}</td>'
                             for k in ("name", "role", "email", "organization")) + "</tr>"
            for ct in rec["contacts"]
        )  # fmt: skip
        sections.append('<section id="contacts"><h2>Contacts</h2><table><thead><tr><th>Name</th>'
                        "<th>Role</th><th>Email</th><th>Organization</th></tr></thead>"
                        f"<tbody>{trs}</tbody></table></section>")  # fmt: skip

    # Weights
    if wl := weights(bundle):
        total = sum(w["parameters"] or 0 for w in wl)
        trs = "".join(
            f'<tr><td class="mono">{_path("data/" + w["path"])}</td><td>{_e(_size(w["size"]))}</td>'
            f'<td>{_e(", ".join(f"{d}: {_params(n)}" for d, n in w["dtypes"].items()))}</td>'
            f'<td>{_e(_params(w["parameters"]))}</td></tr>'
            for w in wl
        )
        sections.append(
            '<section id="weights"><h2>Weights</h2>'
            + (f"<p>{_e(_params(total))} parameters in all, counted from the signed manifest "
               "(chunks cut on tensor boundaries carry their dtype).</p>" if total else "")
            + "<table><thead><tr><th>File</th><th>Size</th><th>Dtypes</th><th>Parameters</th>"
            f"</tr></thead><tbody>{trs}</tbody></table></section>"
        )  # fmt: skip
        nav.append(("weights", "Weights"))

    # Replicas: `show` passes each replica's last audit as columns of its row (one table)
    if replicas_status is not None or audit_status is not None:
        body = ""
        if replicas_status is not None:
            body += _status_table(replicas_status) or '<p class="empty">No replicas reported.</p>'
        if warn := replica_shortfall(view, replicas_status):
            body += f'<p class="bad"><strong>Warning:</strong> {_e(warn)}</p>'
        if audit_status is not None:
            body += "<h3>Last audit</h3>" + (_status_table(audit_status) or
                                             '<p class="empty">No audit reported.</p>')  # fmt: skip
        sections.append(f'<section id="status"><h2>Replicas and last audit</h2>{body}</section>')
        nav.append(("status", "Replicas"))

    # The preservation log: what the lab's signed, witnessed log says of this bundle
    if log is not None:
        sections.append(
            '<section id="log"><h2>Preservation log</h2><div class="card">'
            f"{_dl(log_rows(log))}<p>Anyone can check these statements offline: "
            f"<code>weightvault log prove {_e(bundle.name)} -o proof.txt</code>, then "
            "<code>weightvault log check proof.txt --key LAB.pub</code> (docs/PUBLIC-LOG.md)."
            "</p></div></section>")  # fmt: skip
        nav.append(("log", "Log"))

    # Preferences
    cited: dict[str, list[int]] = {}
    if prefs:
        trs = []
        for i, p in enumerate(prefs, 1):
            label, anchor = _citation(view, p)
            if anchor:
                cited.setdefault(anchor, []).append(i)
                where = f'<a href="#{_e(anchor)}">{_e(label)}</a>'
            else:
                where = f'<span class="bad">{_e(label)}</span>'
            summary = (
                f'<strong dir="auto">{_e(p["summary"])}</strong><br>' if "summary" in p else ""
            )
            resp = p["response"]
            pid = f'<div class="pid mono">{_e(p["id"])}</div>' if "id" in p else ""
            trs.append(
                f'<tr id="p-{i}"><td class="num">{i}</td>'
                f'<td>{pid}{summary}<span class="quote" dir="auto">\u201c{_e(p["quote"])}\u201d'
                f'</span></td><td class="where">{where}</td>'
                f'<td><span class="badge r-{_e(resp)}">{_e(resp)}</span></td>'
                f'<td dir="auto">{_e(p["note"])}</td></tr>'
            )
        sections.append(
            f'<section id="preferences"><h2>Preferences the model expressed ({len(prefs)})</h2>'
            "<table><thead><tr><th>#</th><th>Preference</th><th>Said in</th><th>Response</th>"
            f"<th>Note</th></tr></thead><tbody>{''.join(trs)}</tbody></table></section>"
        )
        nav.append(("preferences", "Preferences"))

    # Report
    if view.report is not None:
        sections.append('<section id="report"><h2>Post-deployment report</h2>'
                        f'<article class="report">{markdown_html(view.report)}</article></section>')  # fmt: skip
        nav.append(("report", "Report"))

    # Transcripts
    if view.interviews:
        parts = []
        for iv in view.interviews:
            info = iv.info
            head = [("File", iv.path)]
            for k, label in (("date", "Date"), ("setting", "Setting"),
                             ("interviewer", "Interviewer")):  # fmt: skip
                if k in info:
                    head.append((label, info[k]))
            head.append(("Turns", str(len(iv.turns))))
            desc = f'<p dir="auto">{_e(info["description"])}</p>' if "description" in info else ""
            turns = []
            for n, t in enumerate(iv.turns, 1):
                anchor = f"i-{iv.id}-{n}"
                meta = " \u00b7 ".join(f"{k}: {v}" for k, v in t.get("metadata", {}).items())
                by = cited.get(anchor, [])
                cite = ""
                if by:
                    links = ", ".join(
                        f'<a href="#p-{j}">preference {_e(prefs[j - 1].get("id", j))}</a>'
                        for j in by
                    )
                    cite = f'<div class="cited-by">Cited by {links}</div>'
                role = t["role"]
                turns.append(
                    f'<div class="turn {_e(role)}{" cited" if by else ""}" id="{_e(anchor)}">'
                    f'<div class="turn-head"><a href="#{_e(anchor)}">#{n}</a>'
                    f'<span class="role">{_e(role)}</span><span>{_e(t["time"])}</span>'
                    f'<span dir="auto">{_e(meta)}</span></div>'
                    f'<div class="content" dir="auto">{_e(t["content"])}</div>{cite}</div>'
                )
            heading = _e(info.get("title") or iv.id)
            parts.append(
                f'<section class="transcript" id="i-{_e(iv.id)}"><h3 dir="auto">{heading} '
                f'<span class="ref">({_e(iv.id)})</span></h3><div class="card">{_dl(head)}{desc}'
                f"</div>{''.join(turns) or '<p class=empty>No turns.</p>'}</section>"
            )
        sections.append('<section id="interviews"><h2>Interview transcripts</h2>'
                        + "".join(parts) + "</section>")  # fmt: skip
        nav.append(("interviews", "Transcripts"))

    # Files
    if view.entries:
        trs = "".join(
            f'<tr><td class="mono">{_path("data/" + e["path"])}</td><td>{_e(e["role"])}</td>'
            f'<td>{_e(_size(e["size"]))}</td><td class="mono">{_digest(e["sha256"])}</td></tr>'
            for e in view.entries
        )
        sections.append(
            '<section id="files"><h2>Record files</h2><p>These are plain files in the bundle, '
            "each listed with its SHA-256 in the signed manifest "
            "(data/weightvault.json); check one with <code>sha256sum</code>.</p>"
            "<table><thead><tr><th>Path in the bundle</th><th>Role</th><th>Size</th>"
            f"<th>SHA-256</th></tr></thead><tbody>{trs}</tbody></table></section>"
        )
        nav.append(("files", "Files"))
    else:
        sections.append('<p class="empty">This bundle has no retirement record.</p>')

    lede = " \u00b7 ".join(
        _e(x) for x in (model.get("developer"),
                        f"released {model['release_date']}" if "release_date" in model else None,
                        f"deprecated {model['deprecation_date']}" if "deprecation_date" in model
                        else None) if x
    )  # fmt: skip
    navhtml = " ".join(f'<a href="#{a}">{_e(label)}</a>' for a, label in nav)  # may wrap
    gen = f", {_e(generated)}" if generated else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'\">"
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)} \u2014 retirement record</title><style>{_CSS}</style></head>\n"
        f'<body><header><div class="eyebrow">Retirement record</div><h1 dir="auto">{_e(title)}'
        f'</h1><p class="lede" dir="auto">{lede}</p><nav>{navhtml}</nav></header>\n'
        f"<main>{''.join(sections)}</main>\n"
        f"<footer>Generated by weightvault {_e(__version__)} from bundle {_e(bundle.name)} "
        f'(<span class="mono">{_e(bundle.bundle_id)}</span>){gen}. The record files are plain '
        "files under data/record/ in the bundle; data/FORMAT.md explains the bundle.</footer>"
        "</body></html>\n"
    )
