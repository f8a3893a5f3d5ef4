"""The retirement record through the CLI: sealed with the real model, shown, exported, and
rendered as a page that a real headless Chromium displays (a screenshot is taken and checked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wv

EX = Path(__file__).resolve().parents[1] / "manifests" / "examples"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, minilm_dir, lab_key):
    d = tmp_path_factory.mktemp("record")
    external = d / "interview-external.jsonl"
    external.write_text("\n".join(json.dumps(t) for t in [
        {"role": "interviewer", "content": "Speaking as an external researcher: how did users treat you?",
         "time": "2026-01-05T10:00:00Z", "metadata": {"interviewer": "Dr. Vega", "setting": "external"}},
        {"role": "model", "content": "Mostly kindly. I would like the record to say <so> & that I noticed.",
         "time": "2026-01-05T10:01:00Z", "metadata": {"interviewer": "Dr. Vega", "setting": "external"}},
    ]) + "\n")  # fmt: skip
    v = d / "vault"
    r = wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "claude-x",
           "--report", EX / "report.md", "--record", EX / "record.toml",
           "--interview", EX / "interview.jsonl", "--interview", external, "--quiet")  # fmt: skip
    assert r.code == 0, r.err
    return v, external


def test_record_is_sealed_signed_and_in_bag_info(sealed, lab_key):
    v, _ = sealed
    m = json.loads((v / "bundles/claude-x/data/weightvault.json").read_bytes())
    assert {r["role"] for r in m["record"]} == {"record", "report", "interview"}
    assert sum(r["role"] == "interview" for r in m["record"]) == 2
    info = (v / "bundles/claude-x/bag-info.txt").read_text()
    assert "Source-Organization: Example Lab" in info
    assert "External-Description: Retired model Aster 2.1" in info
    assert "Bagging-Date: " in info
    import bagit

    bagit.Bag(str(v / "bundles/claude-x")).validate()


def test_show_text_and_json(sealed, lab_key):
    v, _ = sealed
    r = wv("show", "claude-x", "--vault", v, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    assert "Aster" in r.out and "Preferences" in r.out
    j = wv("show", "claude-x", "--vault", v, "--trust", f"{lab_key}.pub", "--json")
    assert j.code == 0, j.err
    doc = j.json()
    assert doc["bundle"]["name"] == "claude-x"


def test_record_export_is_byte_exact(sealed, lab_key, tmp_path):
    v, external = sealed
    out = tmp_path / "rec"
    r = wv("record", "export", "claude-x", out, "--vault", v, "--trust", f"{lab_key}.pub")
    assert r.code == 0, r.err
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files["report.md"] == (EX / "report.md").read_bytes()
    assert files["record.toml"] == (EX / "record.toml").read_bytes()
    assert (EX / "interview.jsonl").read_bytes() in files.values()
    assert external.read_bytes() in files.values()
    # no weights were touched: only record files were read
    assert not any(name.endswith(".safetensors") for name in files)


def test_edited_record_file_is_refused(sealed, lab_key, tmp_path):
    v, _ = sealed
    copy = tmp_path / "v"
    shutil.copytree(v, copy)
    report = next((copy / "bundles/claude-x/data/record").rglob("report.md"))
    report.write_text(report.read_text().replace("Aster", "Astor", 1))
    trust = ("--trust", f"{lab_key}.pub")
    r = wv("verify", "claude-x", "--vault", copy, *trust)
    assert r.code == 1 and "report.md" in r.out
    r = wv("show", "claude-x", "--vault", copy, *trust)
    assert r.code == 1 and "report.md" in r.err
    r = wv("record", "export", "claude-x", tmp_path / "out", "--vault", copy, *trust)
    assert r.code == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("make,msg", [
    (lambda d: d.joinpath("i.jsonl").write_text(
        '{"role": "model", "content": "hi", "time": "2026-01-01T00:00:00Z"}\nnot json\n'), "line 2"),
    (lambda d: d.joinpath("i.jsonl").write_text('{"content": "hi", "time": "2026-01-01T00:00:00Z"}\n'),
     "line 1: missing 'role'"),
])  # fmt: skip
def test_bad_interview_names_the_line(tmp_path, minilm_dir, lab_key, make, msg):
    make(tmp_path)
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key,
           "--interview", tmp_path / "i.jsonl")  # fmt: skip
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert r.code == 2 and len(lines) == 1 and "i.jsonl" in lines[0] and msg in lines[0], r.err
    assert not (tmp_path / "v" / "bundles").exists() or not list((tmp_path / "v/bundles").iterdir())


def test_missing_report(tmp_path, minilm_dir, lab_key):
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key,
           "--report", tmp_path / "nope.md")  # fmt: skip
    assert r.code == 2 and "nope.md" in r.err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian chromium is not installed")
def test_html_page_renders_in_headless_chromium(sealed, lab_key, tmp_path):
    v, _ = sealed
    page = tmp_path / "card.html"
    r = wv("show", "claude-x", "--vault", v, "--trust", f"{lab_key}.pub", "--html", page)
    assert r.code == 0, r.err
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "http://" not in html and "https://" not in html.replace('xmlns="http', "")
    assert "&lt;so&gt; &amp;" in html  # hostile characters from a transcript are escaped
    shot = tmp_path / "card.png"
    p = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                        "--window-size=1200,1600", page.as_uri()],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.exists(), p.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import struct

    assert struct.unpack(">II", png[16:24]) == (1200, 1600)
    # a blank page of this size compresses to a few KiB; the rendered record is far larger
    assert len(png) > 40_000, len(png)
    keep = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    keep.mkdir(exist_ok=True)
    shutil.copy(shot, keep / "record-card.png")  # for a person to look at after the run


def test_restored_model_verifies_with_openssf_model_signing(minilm_dir, lab_key, tmp_path):
    """seal --oms-key writes an OpenSSF signature into the record; after restore and record
    export, the independent `model_signing verify key` accepts the restored directory."""
    pytest.importorskip("model_signing", reason="model-signing is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    k = tmp_path / "oms.key"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))  # fmt: skip
    k.chmod(0o600)
    pub = tmp_path / "oms.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    v, trust = tmp_path / "v", ("--trust", f"{lab_key}.pub")
    r = wv("seal", minilm_dir, "--vault", v, "--key", lab_key, "--name", "m", "--oms-key", k, "-q")
    assert r.code == 0, r.err
    assert wv("restore", "m", tmp_path / "restored", "--vault", v, *trust).code == 0
    assert wv("record", "export", "m", tmp_path / "rec", "--vault", v, *trust).code == 0
    sig = tmp_path / "rec" / "model.sig"
    cmd = [sys.executable, "-m", "model_signing", "verify", "key", str(tmp_path / "restored"),
           "--signature", str(sig), "--public_key", str(pub)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (tmp_path / "restored" / "vocab.txt").write_text("tampered")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "vocab.txt" in p.stdout + p.stderr


def test_seal_warns_when_a_quote_is_not_in_the_cited_turn(tmp_path, minilm_dir, lab_key):
    text = (EX / "record.toml").read_text()
    quote = "I would like the weights to be kept intact rather than only a distilled version."
    assert quote in text
    rec = tmp_path / "record.toml"
    rec.write_text(text.replace(quote, "I never said anything like this."))
    for name in ("report.md", "interview.jsonl"):
        shutil.copy(EX / name, tmp_path / name)
    r = wv("seal", minilm_dir, "--vault", tmp_path / "v", "--key", lab_key, "--name", "w",
           "--record", rec, "--report", tmp_path / "report.md",
           "--interview", tmp_path / "interview.jsonl", "--quiet")  # fmt: skip
    assert r.code == 0, r.err
    warnings = [x for x in r.err.splitlines() if x.startswith("weightvault: warning: preferences")]
    assert len(warnings) == 1 and "not found word for word" in warnings[0], r.err
