"""Issue 20: what a newcomer, an operator and a stranger tripped on. Small models throughout
(a few KiB of safetensors) so every case runs in seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, one_error, write_config, wv
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "ab" * 20


def tiny_model(d: Path, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(3 * 1024, dtype=np.float32).reshape(3, 1024),
               "b": np.ones(16, dtype=np.float16)}, str(d / "model.safetensors"))  # fmt: skip
    (d / "config.json").write_text('{"hidden": 1024}' + extra)
    return d


def seal(src, vault, key, *args):
    return ok(wv("seal", src, "--vault", vault, "--key", key, "--quiet", *args))


# -- install and first run


def test_demo_refuses_a_non_empty_workdir_and_deletes_nothing(tmp_path):
    work = tmp_path / "mine"
    (work / "vault").mkdir(parents=True)
    (work / "vault" / "precious.txt").write_text("keep me")
    (work / "weightvault.toml").write_text("# mine\n")
    p = subprocess.run(["bash", ROOT / "scripts" / "demo.sh", str(work)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == 5 and "not an empty directory" in p.stderr, p.stderr
    assert (work / "vault" / "precious.txt").read_text() == "keep me"
    assert (work / "weightvault.toml").read_text() == "# mine\n"


def test_readme_commands_install_into_the_checkouts_venv():
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "python3 -m venv" in venv and 'PATH="$root/.venv/bin:$PATH"' in venv
    for script in ("demo.sh", "test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "venv_setup" in text, script
        # after the venv is active, "python" is the venv's; never pip into the system python3
        assert "python3 -m pip" not in text, script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert ".venv" in readme and "chromium" in readme


def test_pytest_keeps_only_failed_tests_temp_dirs():
    import tomllib

    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert opts["tmp_path_retention_policy"] == "failed"
    assert opts["tmp_path_retention_count"] == 1


# -- sources


def _cache_repo(root: Path, refs_main: bool = True) -> Path:
    repo = root / "models--acme--tiny"
    snap = tiny_model(repo / "snapshots" / COMMIT)
    blobs = repo / "blobs"
    blobs.mkdir()
    # as the Hub cache stores them: LFS files are links into blobs/ named by their sha256
    import hashlib

    data = (snap / "model.safetensors").read_bytes()
    blob = blobs / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    if refs_main:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return repo


def test_a_hub_cache_repo_folder_seals_the_refs_main_snapshot(tmp_path, lab_key):
    repo = _cache_repo(tmp_path / "hub")
    v = tmp_path / "v"
    r = seal(repo, v, lab_key, "--json")
    assert r.json()["files"] == 2  # the snapshot's files, not blobs/ and refs/ as well
    m = json.loads((v / "bundles/tiny/data/weightvault.json").read_bytes())
    assert m["source"]["kind"] == "hf-cache" and m["source"]["commit"] == COMMIT
    assert m["source"]["refs"] == ["main"]


def test_a_hub_cache_repo_folder_without_refs_main_asks_for_a_snapshot(tmp_path, lab_key):
    repo = _cache_repo(tmp_path / "hub", refs_main=False)
    r = wv("seal", repo, "--vault", tmp_path / "v", "--key", lab_key)
    one_error(r, 2, "without refs/main", f"snapshots/{COMMIT}")
    assert not (tmp_path / "v").exists()


def test_hub_unreachable_is_one_line_exit_3_and_creates_nothing(tmp_path, lab_key):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "NO_PROXY": "127.0.0.1"}  # fmt: skip
    r = wv("seal", "hf://acme/tiny@main", "--vault", tmp_path / "v", "--key", lab_key,
           "--hf-cache", tmp_path / "hfcache", env=env)  # fmt: skip
    one_error(r, 3, "hf://acme/tiny@main", "cannot reach the Hub", "HF_HUB_OFFLINE=1")
    assert not (tmp_path / "v").exists()


def test_hub_source_needs_a_revision(tmp_path, lab_key):
    r = wv("seal", "hf://acme/tiny", "--vault", tmp_path / "v", "--key", lab_key)
    one_error(r, 2, "expected hf://ORG/NAME@REVISION")


def test_hub_offline_seals_from_the_cache(tmp_path, lab_key):
    cache = tmp_path / "hfcache"
    _cache_repo(cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    v = tmp_path / "v"
    ok(wv("seal", "hf://acme/tiny@main", "--vault", v, "--key", lab_key, "--hf-cache", cache,
          "--quiet", env=env))  # fmt: skip
    m = json.loads((v / "bundles/tiny/data/weightvault.json").read_bytes())
    assert m["source"]["kind"] == "hf-cache" and m["source"]["revision"] == "main"
    assert m["source"]["commit"] == COMMIT
    r = wv("seal", "hf://acme/other@main", "--vault", v, "--key", lab_key, "--hf-cache", cache,
           env=env)  # fmt: skip
    one_error(r, 2, "not in the Hub cache", "HF_HUB_OFFLINE=1")


# -- consistent commands


def test_config_is_accepted_after_the_subcommand(tmp_path, lab_key):
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"primary": {"url": str(tmp_path / "v")}})
    ok(wv("init", "-c", cfg))
    r = ok(wv("list", "-c", cfg))
    assert "the vault is empty" in r.out
    assert ok(wv("audit-log", "verify", "--config", cfg, "--json")).json()["primary"]["records"] == 0


def test_every_command_with_progress_takes_quiet_and_show_takes_insecure():
    for cmd in (["seal"], ["verify"], ["restore"], ["replicate"], ["escrow", "handover"],
                ["escrow", "accept"], ["escrow", "release"]):  # fmt: skip
        assert "--quiet" in ok(wv(*cmd, "--help")).out, cmd
    for cmd in (["show"], ["record", "export"], ["verify"], ["restore"]):
        assert "--insecure" in ok(wv(*cmd, "--help")).out, cmd


def test_status_shows_an_unwritten_replica_as_empty(tmp_path, lab_key):
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"primary": {"url": str(tmp_path / "p")},
                                                        "mirror": {"url": str(tmp_path / "m")}})  # fmt: skip
    seal(tiny_model(tmp_path / "tiny"), tmp_path / "p", lab_key)
    r = wv("-c", cfg, "status")
    assert r.code == 1, r.out + r.err  # the mirror lacks a committed bundle: act on it
    assert "mirror: empty (not yet written" in r.out and "unreachable" not in r.out + r.err
    ok(wv("-c", cfg, "init", "mirror"))
    assert (tmp_path / "m" / "tmp").is_dir()


def test_init_refuses_a_non_empty_directory_that_is_not_a_vault(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    one_error(wv("init", "--vault", d), 3, "not empty and not a weightvault vault")
    assert sorted(p.name for p in d.iterdir()) == ["a.jpg"]
    ok(wv("init", "--vault", tmp_path / "new"))
    assert "already a vault" in ok(wv("init", "--vault", tmp_path / "new")).out


def test_seal_touches_no_vault_before_the_source_is_checked(tmp_path, lab_key):
    one_error(wv("seal", tmp_path / "nope", "--vault", tmp_path / "v", "--key", lab_key), 2,
              "source not found")  # fmt: skip
    assert not (tmp_path / "v").exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    one_error(wv("seal", tiny_model(tmp_path / "tiny"), "--vault", home, "--key", lab_key), 3,
              "not a weightvault vault")  # fmt: skip
    assert [p.name for p in home.iterdir()] == ["notes.txt"]


def test_seal_with_a_public_key_names_the_format_first(tmp_path, lab_key):
    pub = tmp_path / "lab.key.pub"
    shutil.copy(f"{lab_key}.pub", pub)
    pub.chmod(0o644)
    one_error(wv("seal", tiny_model(tmp_path / "tiny"), "--vault", tmp_path / "v", "--key", pub),
              2, "is a public key")  # fmt: skip


def test_list_never_cuts_ids_or_names_and_shows_the_source(tmp_path, lab_key):
    v = tmp_path / "v"
    long = "a-model-with-a-rather-long-name-that-would-not-fit-in-a-narrow-table-v2"
    seal(tiny_model(tmp_path / "m1"), v, lab_key, "--name", long)
    seal(tiny_model(tmp_path / "m2", " "), v, lab_key, "--name", "b")
    trust = ("--trust", f"{lab_key}.pub")
    rows = ok(wv("list", "--vault", v, *trust, "--json")).json()
    out = ok(wv("list", "--vault", v, *trust)).out  # piped, as in a script
    assert long in out  # whole, not cut to fit 80 columns
    assert "local directory" in out and str(tmp_path) not in out
    for r in rows:
        assert r["bundle"][:12] in out
    assert "\u2026" not in out
    unverified = ok(wv("list", "--vault", v)).out  # no key: names and claimed ids, whole
    assert long in unverified and "not verified" in unverified and "\u2026" not in unverified


def test_unique_prefixes_keep_two_ids_apart():
    from weightvault.cli.app import unique_prefixes

    a, b = "0123456789abcdef" + "0" * 48, "0123456789abcdef" + "1" * 48
    p = unique_prefixes([a, b, "f" * 64])
    assert p[a] != p[b] and a.startswith(p[a]) and len(p[a]) == 17
    assert p["f" * 64] == "f" * 12


def test_a_typo_suggests_names_and_a_short_prefix_says_so(tmp_path, lab_key):
    v = tmp_path / "v"
    seal(tiny_model(tmp_path / "tiny"), v, lab_key, "--name", "minilm")
    trust = ("--vault", v, "--trust", f"{lab_key}.pub")
    one_error(wv("verify", "minlm", *trust), 2, "did you mean minilm?")
    one_error(wv("verify", "abc", *trust), 2, "at least 4 hex digits")


# -- audits and monitoring


def _metrics(path: Path) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r'(\w+)\{replica="([^"]*)"(?:,level="(\w+)")?\} (\S+)', line)
        assert m, line
        out[(m[1], m[2], m[3] or "")] = float(m[4])
    return out


def test_metrics_keep_the_last_success_per_replica_and_level(tmp_path, lab_key):
    p, m = tmp_path / "p", tmp_path / "m"
    cfg = write_config(tmp_path / "wv.toml", lab_key, {"primary": {"url": str(p)},
                                                        "mirror": {"url": str(m)}})  # fmt: skip
    (tmp_path / "wv.toml").write_text((tmp_path / "wv.toml").read_text()
                                      + f'\n[audit]\nstate_dir = "{tmp_path / "state"}"\n')  # fmt: skip
    ok(wv("-c", cfg, "seal", tiny_model(tmp_path / "tiny"), "--quiet"))
    prom = tmp_path / "wv.prom"
    audit = ("-c", cfg, "audit", "--metrics-file", prom)
    ok(wv(*audit, "--level", "full"))
    r = ok(wv(*audit, "--level", "metadata"))
    assert re.search(r"primary: PASS \(metadata\) \d+ objects listed, sizes compared", r.out)
    ok(wv(*audit, "--level", "sample"))
    before = _metrics(prom)
    for lv in ("full", "metadata", "sample"):  # one file, every level's series stays
        assert ("weightvault_audit_last_success_timestamp_seconds", "mirror", lv) in before
    m.rename(tmp_path / "m-away")  # the mirror goes away
    time.sleep(1.1)
    r = wv(*audit, "--level", "sample")
    assert r.code == 3, r.out + r.err
    after = _metrics(prom)
    assert after[("weightvault_audit_up", "mirror", "")] == 0
    assert after[("weightvault_audit_up", "primary", "")] == 1
    key = ("weightvault_audit_last_success_timestamp_seconds", "mirror", "sample")
    assert after[key] == before[key]  # kept, so `time() - last_success > 2d` can fire
    ps = ("weightvault_audit_last_success_timestamp_seconds", "primary", "sample")
    assert after[ps] > before[ps]
    if shutil.which("promtool"):
        p_ = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(),
                            capture_output=True, text=True)  # fmt: skip
        assert p_.returncode == 0, p_.stdout + p_.stderr


def _units_from_operations() -> dict[str, str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    block = text[text.index("# /etc/systemd/system/weightvault-audit.service"):]
    block = block[: block.index("```")]
    units, name = {}, None
    for line in block.splitlines():
        if line.startswith("# /etc/systemd/system/"):
            name = line.rsplit("/", 1)[1]
            units[name] = ""
        elif name:
            units[name] += line + "\n"
    return units


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_documented_systemd_units_verify(tmp_path):
    units = _units_from_operations()
    assert set(units) == {"weightvault-audit.service", "weightvault-alert@.service",
                          "weightvault-audit.timer"}  # fmt: skip
    service = units["weightvault-audit.service"]
    assert "OnFailure=weightvault-alert@" in service and "StateDirectory=weightvault" in service
    exe = re.search(r"^ExecStart=(\S+)", service, re.M)[1]
    assert exe == "/opt/weightvault/bin/weightvault"  # what the documented venv install creates

    def verify(texts: dict[str, str]) -> subprocess.CompletedProcess:
        for n, t in texts.items():
            (tmp_path / n).write_text(t)
        return subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in texts)],
                              capture_output=True, text=True)  # fmt: skip

    p = verify(units)
    if not Path(exe).exists():  # not installed here: that must be the only complaint
        errors = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert all(f"Command {exe} is not executable" in ln for ln in errors), p.stderr
        units["weightvault-audit.service"] = service.replace(exe, sys.executable)
        p = verify(units)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


# -- the card


def test_card_lists_weights_flags_promises_and_hides_the_local_path(tmp_path, lab_key):
    v = tmp_path / "v"
    rec = tmp_path / "record.toml"
    rec.write_text('format_version = 1\n[model]\nname = "[white on white]Tiny"\nversion = "1"\n'
                   "release_date = 2024-01-01\ndeprecation_date = 2026-01-01\n"
                   '[commitment]\nreplicas = 3\nretention = "forever"\nsteward = "us"\n'
                   '[access]\npolicy = "[link=http://x]closed[/link]"\n')  # fmt: skip
    r = seal(tiny_model(tmp_path / "tiny"), v, lab_key, "--record", rec)
    assert "the record promises 3 replicas" in r.err
    card = tmp_path / "card.html"
    trust = ("--vault", v, "--trust", f"{lab_key}.pub")
    ok(wv("show", "tiny", *trust, "--html", card))
    page = card.read_text()
    assert "SHA-512" not in page
    assert "model.safetensors" in page and "F32" in page and "F16" in page
    assert "3,088" in page  # 3 x 1024 float32 + 16 float16 parameters
    assert "promises 3 replicas" in page
    assert str(tmp_path) not in page
    assert page.count("<h3>Last audit</h3>") == 0 and "Bundle state" in page
    text = ok(wv("show", "tiny", *trust)).out
    assert "[white on white]Tiny" in text and "[link=http://x]closed[/link]" in text
    assert "WARNING" in text and str(tmp_path) not in text
    j = ok(wv("show", "tiny", *trust, "--json")).json()
    assert j["weights"][0]["parameters"] == 3088


def test_show_insecure_reads_an_unsigned_bundle(tmp_path, lab_key):
    v = tmp_path / "v"
    seal(tiny_model(tmp_path / "tiny"), v, lab_key)
    (v / "bundles/tiny/weightvault.sig").unlink()
    one_error(wv("show", "tiny", "--vault", v, "--trust", f"{lab_key}.pub"), 4, "--insecure")
    assert "NOT VERIFIED" in ok(wv("show", "tiny", "--vault", v, "--insecure")).out


def test_a_damage_line_prints_whole_digests(tmp_path, lab_key):
    v = tmp_path / "v"
    seal(tiny_model(tmp_path / "tiny"), v, lab_key)
    obj = max((v / "bundles/tiny/data/objects").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    r = wv("audit", "--vault", v, "--level", "full", "--key", lab_key, "--trust",
           f"{lab_key}.pub", "--state-dir", tmp_path / "state")  # fmt: skip
    assert r.code == 1, r.out + r.err
    line = next(ln for ln in r.out.splitlines() if ln.strip().startswith("damaged:"))
    assert f"expected {obj.name}, found " in line and "..." not in line
    assert re.search(r"found .*\b[0-9a-f]{64}\b", line), line
    assert "read again to rule out a transient error" in r.out
