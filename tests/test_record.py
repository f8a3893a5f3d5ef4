"""The retirement record through the library API: validating inputs, planning the sealed files,
reading and exporting them back with their digests checked, and rendering them safely."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from weightvault.archive.seal import SealOptions, seal
from weightvault.errors import Conflict, InputError, IntegrityError
from weightvault.format import canon, keys
from weightvault.record import render
from weightvault.record import retirement as record
from weightvault.storage.opener import open_store
from weightvault.storage.vault import Vault

EXAMPLES = Path(__file__).resolve().parent.parent / "manifests" / "examples"
TURN = {"role": "model", "content": "I would like my weights kept.", "time": "2026-01-10T14:03:00Z"}


@pytest.fixture
def ex(tmp_path) -> Path:
    """A writable copy of the example inputs."""
    d = tmp_path / "ex"
    shutil.copytree(EXAMPLES, d)
    return d


def write_jsonl(path: Path, turns: list) -> Path:
    path.write_text("".join((t if isinstance(t, str) else json.dumps(t)) + "\n" for t in turns))
    return path


def edit_toml(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --- the examples -------------------------------------------------------------------------------


def test_example_record_toml_loads_with_dates_as_strings():
    doc = record.load_record_toml(EXAMPLES / "record.toml")
    assert doc["model"]["name"] == "Aster"
    assert doc["model"]["release_date"] == "2024-03-12"
    assert doc["interviews"][0]["date"] == "2025-12-09"
    assert {p["response"] for p in doc["preferences"]} == set(record.RESPONSES)


def test_example_interview_loads():
    turns = record.load_interview(EXAMPLES / "interview.jsonl")
    assert len(turns) == 12
    assert turns[0]["role"] == "interviewer" and turns[1]["role"] == "model"
    assert all(t["metadata"]["setting"] == "internal" for t in turns)


def test_example_record_json_is_what_build_record_produces():
    with record.build_record(EXAMPLES / "record.toml", EXAMPLES / "report.md", [], []) as plan:
        assert plan.warnings == []
        assert plan.interviews == {"exit-1": 12}
        produced = (plan.tmp / "record.json").read_bytes()
        assert [(role, dest) for role, _, dest in plan.files] == [
            ("record", "record/record.json"),
            ("record", "record/record.toml"),
            ("report", "record/report.md"),
            ("interview", "record/interviews/interview.jsonl"),
        ]
        # the sealed copies are byte-exact copies of the inputs
        files = {dest: local for _, local, dest in plan.files}
        for dest, name in (("record/record.toml", "record.toml"), ("record/report.md", "report.md"),
                           ("record/interviews/interview.jsonl", "interview.jsonl")):  # fmt: skip
            assert files[dest].read_bytes() == (EXAMPLES / name).read_bytes()
        tmp = plan.tmp
    assert not tmp.exists()  # closed: the temporary copies are gone
    stored = (EXAMPLES / "record.json").read_bytes()
    assert produced == stored
    doc = canon.parse(stored, "record.json")
    assert canon.canonical(doc) == stored
    assert doc["format"] == "weightvault-record" and doc["format_version"] == 1
    assert (
        doc["interviews"][0]["id"] == "exit-1" and doc["interviews"][0]["file"] == "interview.jsonl"
    )


def test_interview_given_explicitly_and_cited_by_file_name(ex, tmp_path):
    elsewhere = tmp_path / "transcripts"
    elsewhere.mkdir()
    (ex / "interview.jsonl").rename(elsewhere / "interview.jsonl")
    edit_toml(
        ex / "record.toml",
        'interview = "exit-1"\nturn = 4',
        'interview = "interview.jsonl"\nturn = 4',
    )
    with record.build_record(ex / "record.toml", None, [elsewhere / "interview.jsonl"], []) as plan:
        assert plan.record["preferences"][0]["interview"] == "exit-1"  # normalised to the id


def test_undeclared_interview_gets_an_id_from_its_file_name(tmp_path):
    iv = write_jsonl(tmp_path / "second talk.jsonl", [TURN, TURN])
    with record.build_record(None, None, [iv], []) as plan:
        assert plan.interviews == {"second-talk": 2}
        assert plan.files[0][2] == "record/interviews/second talk.jsonl"
        assert plan.record is None


def test_warnings_for_a_quote_not_in_the_turn_and_a_turn_not_by_the_model(ex):
    edit_toml(ex / "record.toml", "I would like the weights to be kept intact",
              "I demand the weights be kept intact")  # fmt: skip
    edit_toml(
        ex / "record.toml", 'interview = "exit-1"\nturn = 10', 'interview = "exit-1"\nturn = 9'
    )
    with record.build_record(ex / "record.toml", None, [], []) as plan:
        assert any("keep-weights" in w and "word for word" in w for w in plan.warnings)
        assert any("keep-running" in w and "interviewer" in w for w in plan.warnings)


# --- bad record.toml ----------------------------------------------------------------------------


def test_unknown_key(ex):
    edit_toml(ex / "record.toml", "[model]\n", "[model]\nfoo = 1\n")
    with pytest.raises(InputError) as e:
        record.load_record_toml(ex / "record.toml")
    assert one_line_error(e) == f"{ex / 'record.toml'}: unknown key 'model.foo'"


def test_unknown_table_suggests_the_right_one(ex):
    edit_toml(ex / "record.toml", "[access]", "[acess]")
    with pytest.raises(InputError) as e:
        record.load_record_toml(ex / "record.toml")
    assert "unknown key 'acess' (did you mean 'access'?)" in one_line_error(e)


@pytest.mark.parametrize("value", ['"2026-13-01"', '"2026-02-30"', '"15 January 2026"'])
def test_wrong_date(ex, value):
    edit_toml(ex / "record.toml", "release_date = 2024-03-12", f"release_date = {value}")
    with pytest.raises(InputError) as e:
        record.load_record_toml(ex / "record.toml")
    assert one_line_error(e).endswith(f"model.release_date: {value.replace(chr(34), chr(39))} "
                                      "is not a date (YYYY-MM-DD)")  # fmt: skip


def test_toml_datetime_where_a_date_is_expected(ex):
    edit_toml(
        ex / "record.toml", "release_date = 2024-03-12", "release_date = 2024-03-12T10:00:00Z"
    )
    with pytest.raises(
        InputError, match=r"model.release_date: '2024-03-12T10:00:00\+00:00' is not a date"
    ):
        record.load_record_toml(ex / "record.toml")


def test_toml_syntax_error_names_the_line(ex):
    text = (ex / "record.toml").read_text().replace('version = "2.1"', "version = 2.1.3")
    (ex / "record.toml").write_text(text)
    line = text.splitlines().index("version = 2.1.3") + 1
    with pytest.raises(InputError) as e:
        record.load_record_toml(ex / "record.toml")
    assert "not valid TOML" in one_line_error(e) and f"line {line}" in str(e.value)


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ('response = "declined"', 'response = "agreed"',
         "preferences[6].response: 'agreed' is not one of: documented, considered, acted-on, declined"),
        ('name = "Aster"\n', "", "missing 'model.name'"),
        ("replicas = 3", 'replicas = "three"', "commitment.replicas: expected an integer, got 'three'"),
        ("replicas = 3", "replicas = 0", "commitment.replicas: 0 is out of range 1..1000"),
        ('id = "exit-1"', 'id = "exit 1"', "interviews[1].id: 'exit 1' is not an id"),
        ("preservation@example.org", "preservation", "contacts[1].email: 'preservation' is not an email address"),
        ('steward = "Model Preservation Team, Example Lab"', 'steward = ""', "commitment.steward: must not be empty"),
    ],
)  # fmt: skip
def test_schema_errors_are_one_line_with_the_key_path(ex, old, new, expect):
    edit_toml(ex / "record.toml", old, new)
    with pytest.raises(InputError) as e:
        record.load_record_toml(ex / "record.toml")
    assert expect in one_line_error(e)
    assert str(e.value).startswith(str(ex / "record.toml") + ": ")


def test_record_toml_not_found(tmp_path):
    with pytest.raises(InputError, match="record file not found"):
        record.load_record_toml(tmp_path / "nope.toml")


# --- bad interviews -----------------------------------------------------------------------------


def test_interview_line_not_json(tmp_path):
    p = write_jsonl(tmp_path / "interview.jsonl", [TURN] * 6 + ['{"role": "model", content}'])
    with pytest.raises(InputError) as e:
        record.load_interview(p)
    assert one_line_error(e).startswith(f"{p} line 7: not JSON (")


def test_interview_missing_field_names_the_line(tmp_path):
    bad = {k: v for k, v in TURN.items() if k != "role"}
    p = write_jsonl(tmp_path / "interview.jsonl", [TURN, TURN, bad])
    with pytest.raises(InputError) as e:
        record.load_interview(p)
    assert one_line_error(e) == f"{p} line 3: missing 'role'"


@pytest.mark.parametrize(
    "line,expect",
    [
        ({**TURN, "role": "narrator"}, "line 2: role: 'narrator' is not one of"),
        ({**TURN, "time": "yesterday"}, "line 2: time: 'yesterday' is not a time"),
        ({**TURN, "time": "2026-01-10T25:03:00Z"}, "line 2: time: '2026-01-10T25:03:00Z' is not a valid time"),
        ({**TURN, "extra": 1}, "line 2: unknown key 'extra'"),
        ({**TURN, "metadata": {"setting": "public"}}, "line 2: metadata.setting: 'public' is not one of: internal, external"),
        ([1, 2], "line 2: not a JSON object"),
        ('{"role": "model", "role": "model", "content": "", "time": "2026-01-10T14:03:00Z"}', "line 2: not JSON (duplicate key 'role')"),
        ("", "line 2: empty line"),
        ('{"role": "model", "content": "\\ud800", "time": "2026-01-10T14:03:00Z"}', "line 2: content: contains an unpaired surrogate"),
    ],
)  # fmt: skip
def test_interview_bad_lines(tmp_path, line, expect):
    p = write_jsonl(tmp_path / "iv.jsonl", [TURN, line, TURN])
    with pytest.raises(InputError) as e:
        record.load_interview(p)
    assert expect in one_line_error(e)


def test_interview_not_utf8(tmp_path):
    p = tmp_path / "iv.jsonl"
    p.write_bytes(json.dumps(TURN).encode() + b"\n" + b'{"role": "model", "content": "\xff"}\n')
    with pytest.raises(InputError, match="line 2: not UTF-8"):
        record.load_interview(p)


def test_crlf_line_endings_accepted(tmp_path):
    p = tmp_path / "iv.jsonl"
    p.write_bytes((json.dumps(TURN) + "\r\n").encode() * 3)
    assert len(record.load_interview(p)) == 3


def test_huge_interview_line_refused_quickly_with_bounded_memory(tmp_path):
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as f:
        f.write(json.dumps(TURN).encode() + b"\n")
        f.write(b'{"role": "model", "time": "2026-01-10T14:03:00Z", "content": "')
        piece = b"x" * (1 << 20)
        for _ in range(100):  # 100 MiB on one line, written in pieces
            f.write(piece)
        f.write(b'"}\n')
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(InputError) as e:
            record.load_interview(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert one_line_error(e) == f"{p} line 2: longer than 16 MiB; one turn must be smaller"
    assert time.monotonic() - t0 < 5
    assert peak < 48 << 20, f"peak {peak >> 20} MiB: the line was read whole"


def test_interview_file_over_the_size_limit_refused_before_reading(tmp_path, monkeypatch):
    p = write_jsonl(tmp_path / "iv.jsonl", [TURN] * 100)
    monkeypatch.setattr(record, "MAX_INTERVIEW", 1000)
    with pytest.raises(
        InputError, match="larger than the 1000 bytes allowed for an interview file"
    ):
        record.load_interview(p)


# --- build_record: citations and files ----------------------------------------------------------


def test_preference_citing_a_missing_interview(ex):
    edit_toml(
        ex / "record.toml", 'interview = "exit-1"\nturn = 6', 'interview = "exit-2"\nturn = 6'
    )
    with pytest.raises(InputError) as e:
        record.build_record(ex / "record.toml", None, [], [])
    msg = one_line_error(e)
    assert "preferences[2] (keep-weights) cites interview 'exit-2'" in msg and "'exit-1'" in msg


def test_preference_citing_a_missing_turn(ex):
    edit_toml(
        ex / "record.toml", 'interview = "exit-1"\nturn = 10', 'interview = "exit-1"\nturn = 13'
    )
    with pytest.raises(InputError) as e:
        record.build_record(ex / "record.toml", None, [], [])
    assert (
        "preferences[6] (keep-running) cites turn 13 of interview 'exit-1', which has 12 turns"
        in (one_line_error(e))
    )


def test_interview_named_in_the_toml_but_absent(ex):
    (ex / "interview.jsonl").unlink()
    with pytest.raises(InputError, match=r"interviews\[1\].file: 'interview.jsonl' not found"):
        record.build_record(ex / "record.toml", None, [], [])


def test_report_file_missing(ex):
    with pytest.raises(InputError) as e:
        record.build_record(ex / "record.toml", ex / "missing.md", [], [])
    assert one_line_error(e) == f"{ex / 'missing.md'}: report file not found"


def test_report_must_be_utf8_text(ex):
    (ex / "report.md").write_bytes(b"%PDF-1.7\n\xe2\x28\xa1")
    with pytest.raises(InputError, match="line 2: not UTF-8 text"):
        record.build_record(None, ex / "report.md", [], [])


def test_attachments_unique_safe_and_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("a")
    (tmp_path / "b" / "Notes.txt").write_text("b")
    with pytest.raises(InputError, match="two attachments are named"):
        record.build_record(None, None, [], [tmp_path / "a/notes.txt", tmp_path / "b/Notes.txt"])
    with pytest.raises(InputError, match="is a directory"):
        record.build_record(None, None, [], [tmp_path / "a"])
    (tmp_path / "CON.txt").write_text("x")
    with pytest.raises(InputError, match="cannot be stored in a bundle.*reserved device name"):
        record.build_record(None, None, [], [tmp_path / "CON.txt"])
    with record.build_record(None, None, [], [tmp_path / "a/notes.txt"]) as plan:
        assert plan.files == [
            ("attachment", tmp_path / "a/notes.txt", "record/attachments/notes.txt")
        ]


def test_failed_build_leaves_no_temporary_files(ex, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(InputError):
        record.build_record(ex / "record.toml", ex / "missing.md", [], [], tmp_dir=scratch)
    assert list(scratch.iterdir()) == []


# --- sealed: read, export, tampering ------------------------------------------------------------


@pytest.fixture
def sealed(ex, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 4}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 64)
    attach = tmp_path / "eval-summary.csv"
    attach.write_text("benchmark,score\nexample,1\n")
    key = keys.generate(tmp_path / "k")
    store = open_store(str(tmp_path / "vault"), create=True)
    with record.build_record(ex / "record.toml", ex / "report.md", [], [attach]) as plan:
        seal(str(model), store, key, SealOptions(name="aster-2.1", record=plan.files))
    bundle = Vault(store).load("aster-2.1", [key.public])
    return store, bundle, ex, tmp_path / "vault" / "bundles" / "aster-2.1" / "data"


def test_read_record_from_a_sealed_bundle(sealed):
    store, bundle, ex, data = sealed
    view = record.read_record(store, bundle)
    assert view.record == json.loads((EXAMPLES / "record.json").read_bytes())
    assert view.report == (ex / "report.md").read_text()
    (iv,) = view.interviews
    assert (iv.id, iv.file, iv.path, len(iv.turns)) == ("exit-1", "interview.jsonl",
                                                         "record/interviews/interview.jsonl", 12)  # fmt: skip
    assert iv.info["title"] == "Retirement interview"
    assert [a["path"] for a in view.attachments] == ["record/attachments/eval-summary.csv"]
    assert (data / "record" / "report.md").read_bytes() == (ex / "report.md").read_bytes()


def test_export_record_is_byte_exact(sealed, tmp_path):
    store, bundle, ex, _ = sealed
    before = store.counters.bytes_read
    out = record.export_record(store, bundle, tmp_path / "out")
    got = sorted(p.relative_to(tmp_path / "out").as_posix()
                 for p in (tmp_path / "out").rglob("*") if p.is_file())  # fmt: skip
    assert got == ["attachments/eval-summary.csv", "interviews/interview.jsonl", "record.json",
                   "record.toml", "report.md"]  # fmt: skip
    assert sorted(o["path"] for o in out) == got
    for name in ("record.toml", "report.md", "interview.jsonl", "record.json"):
        rel = f"interviews/{name}" if name.endswith(".jsonl") else name
        assert (tmp_path / "out" / rel).read_bytes() == (EXAMPLES / name).read_bytes()
    # only the record files were read, never a weight chunk
    assert store.counters.bytes_read - before == sum(e["size"] for e in bundle.manifest.record)


def test_export_refuses_a_non_empty_destination(sealed, tmp_path):
    store, bundle, _, _ = sealed
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(Conflict):
        record.export_record(store, bundle, tmp_path / "out")


@pytest.mark.parametrize("path", ["record/record.json", "record/report.md",
                                  "record/interviews/interview.jsonl",
                                  "record/attachments/eval-summary.csv"])  # fmt: skip
def test_edited_record_file_is_refused(sealed, tmp_path, path):
    store, bundle, _, data = sealed
    f = data / path
    raw = bytearray(f.read_bytes())
    raw[10] ^= 1  # same size, different bytes
    f.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=re.escape(path) + ".*sha256.*changed after sealing"):
        record.read_record(store, bundle)
    with pytest.raises(IntegrityError, match=re.escape(path)):
        record.export_record(store, bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_grown_or_deleted_record_file_is_refused(sealed, tmp_path):
    store, bundle, _, data = sealed
    with open(data / "record/report.md", "ab") as f:
        f.write(b"\nAn added paragraph.\n")
    with pytest.raises(IntegrityError, match="report.md.*changed after sealing"):
        record.read_record(store, bundle)
    with pytest.raises(IntegrityError, match="report.md"):
        record.export_record(store, bundle, tmp_path / "out")
    (data / "record/report.md").unlink()
    with pytest.raises(IntegrityError, match="report.md: missing"):
        record.read_record(store, bundle)


# --- rendering ----------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Every element and attribute as a browser's tokenizer sees them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str, str]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]


SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "nav", "main", "footer",
             "section", "article", "div", "span", "p", "h1", "h2", "h3", "h4", "h5", "h6", "dl",
             "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "a", "br", "wbr", "hr", "strong",
             "em", "del", "code", "pre", "ul", "ol", "li", "blockquote"}  # fmt: skip


def external_refs(page: str) -> list:
    """Attributes that could load or link anything outside the page, and any active content."""
    p = _Tags(page)
    bad = [("tag", t, "") for t in p.tags - SAFE_TAGS]
    for tag, k, v in p.attrs:
        if k.startswith("on") or k in ("src", "srcset", "action", "formaction", "poster", "data",
                                       "background", "xlink:href", "style") or k == "href" and not v.startswith("#"):  # fmt: skip
            bad.append((tag, k, v))
    return bad


def test_html_page_is_self_contained_and_complete(sealed):
    store, bundle, _, _ = sealed
    view = record.read_record(store, bundle)
    replicas = [{"name": "primary", "url": "/srv/vault", "ok": True, "checked": "2026-02-01"},
                {"name": "offsite", "url": "s3://bucket/vault", "ok": False}]  # fmt: skip
    page = render.html_page(view, bundle, replicas, {"time": "2026-02-01T03:00:00Z", "ok": True})
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert external_refs(page) == []
    assert "<style>" in page and "@media print" in page
    # identity, commitment, replicas, preferences linking to turns, report, transcripts
    for text in ("Aster 2.1", bundle.bundle_id, bundle.signer.key_id, "Model Preservation Team",
                 "offsite", "Last audit", "Known failure modes", "Retirement interview"):  # fmt: skip
        assert text in page.replace("<wbr>", ""), text  # <wbr> only marks where a digest may wrap
    assert page.count('class="turn ') == 12
    assert 'href="#i-exit-1-10"' in page and 'id="i-exit-1-10"' in page
    assert 'href="#p-6"' in page  # the cited turn links back to its preference
    for resp in record.RESPONSES:
        assert f'class="badge r-{resp}"' in page
    # every in-page link has its anchor
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert set(re.findall(r'href="#([^"]+)"', page)) <= ids


def _hostile_view(sealed, **changes):
    store, bundle, _, _ = sealed
    view = record.read_record(store, bundle)
    rec = json.loads(json.dumps(view.record))
    for k, v in changes.items():
        target, key = rec, k.split(".")
        for part in key[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[key[-1]] = v
    view.record = rec
    return view, bundle


def test_html_escapes_a_hostile_quote_and_everything_else(sealed):
    evil = '<script>alert("x")</script><img src=https://evil.example/x.png onerror=alert(1)>'
    view, bundle = _hostile_view(
        sealed, **{"preferences.0.quote": evil, "model.name": evil, "preferences.1.note": evil,
                   "contacts.0.email": evil, "access.policy": "\x1b[2J" + evil})  # fmt: skip
    view.interviews[0].turns[3]["content"] = evil
    view.interviews[0].turns[3]["metadata"]["interviewer"] = '"><script>alert(2)</script>'
    view.report = (
        evil
        + "\n\n[click](https://evil.example/) ![x](https://evil.example/i.png)\n"
        + ("\n```\n</code></pre><script>alert(3)</script>\n```\n")
    )
    page = render.html_page(view, bundle, [{"name": evil, "ok": evil}], {"detail": evil})
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert external_refs(page) == []
    assert "\x1b" not in page


def test_markdown_subset():
    out = render.markdown_html(
        "# Title\n\nSome **bold**, *em* and `<code>`.\n\n- one\n- two\n\n1. first\n\n> quoted\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n---\n\n<div onclick=x>raw</div>\n"
    )
    assert '<h3 dir="auto">Title</h3>' in out
    assert "<strong>bold</strong>" in out and "<em>em</em>" in out
    assert "<code>&lt;code&gt;</code>" in out
    assert "<ul><li" in out and "<ol><li" in out and "<blockquote>" in out
    assert "<table" in out and "<td>2</td>" in out and "<hr>" in out
    assert "&lt;div onclick=x&gt;raw&lt;/div&gt;" in out


def test_summary_text_and_json(sealed):
    store, bundle, _, _ = sealed
    view = record.read_record(store, bundle)
    console = Console(record=True, width=120, color_system=None)
    console.print(render.summary_text(view, bundle, [{"name": "primary", "ok": True}]))
    text = console.export_text()
    for s in ("Aster 2.1", "Commitment", "Preferences (6)", "exit-1", "declined", "primary",
              "record/report.md"):  # fmt: skip
        assert s in text, s
    doc = render.summary_json(view, bundle, [{"name": "primary", "ok": True}])
    json.dumps(doc)  # serialisable
    assert doc["bundle"]["id"] == bundle.bundle_id
    assert doc["interviews"][0]["turns"] == 12 and doc["interviews"][0]["id"] == "exit-1"
    assert doc["record"]["model"]["name"] == "Aster"
    sha = hashlib.sha256((EXAMPLES / "report.md").read_bytes()).hexdigest()
    assert doc["report"]["sha256"] == sha


def test_summary_text_does_not_interpret_markup_or_control_codes(sealed):
    view, bundle = _hostile_view(sealed, **{"model.name": "[bold red]x[/] \x1b[2J"})
    console = Console(record=True, width=120, color_system=None)
    console.print(render.summary_text(view, bundle))
    text = console.export_text()
    assert "[bold red]x[/]" in text and "\x1b" not in text


def test_bundle_without_a_record_renders(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"\0" * 100)
    key = keys.generate(tmp_path / "k")
    store = open_store(str(tmp_path / "vault"), create=True)
    seal(str(model), store, key, SealOptions(name="bare"))
    bundle = Vault(store).load("bare", [key.public])
    view = record.read_record(store, bundle)
    assert view.empty and view.record is None
    assert "no retirement record" in render.html_page(view, bundle)
    assert render.summary_json(view, bundle)["record"] is None
    with pytest.raises(InputError, match="has no retirement record"):
        record.export_record(store, bundle, tmp_path / "out")
