#!/usr/bin/env python3
"""Amending the retirement record of the real all-MiniLM-L6-v2 (issue 17), on a local vault
and on an S3 vault (SeaweedFS on loopback), side by side with sealing it again, which is what
a user would do without `amend`.

    python benchmarks/amend_real.py [--model DIR] [--json OUT]

Each step is the real CLI in a child process (run.py's `measure`). Growth is counted from the
store's own listing (every key under the vault, sizes summed) before and after. Target (issue
17): an amendment takes under 2 s and grows the vault by the record bytes plus metadata only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from run import human, log, measure  # noqa: E402

WV = [sys.executable, "-m", "weightvault.cli"]
MODEL = Path.home() / ".cache/weightvault-test/all-MiniLM-L6-v2"


def vault_bytes(url: str, env: dict) -> int:
    from weightvault.storage.opener import open_store

    opts = {"endpoint_url": env["WV_S3_ENDPOINT"]} if url.startswith("s3://") else None
    old = dict(os.environ)
    os.environ.update(env)
    try:
        st = open_store(url, opts)
        return sum(st.list("bundles").values()) + sum(st.list("objects").values())
    finally:
        os.environ.clear()
        os.environ.update(old)


def run(label: str, url: str, cfg: Path, env: dict, work: Path, model: Path) -> dict:
    def step(what: str, *args) -> dict:
        r = measure([*WV, "-c", cfg, *args], env=env)
        if r["rc"] != 0:
            raise SystemExit(f"{label} {what} failed: {r['stderr'][-2000:]}")
        log(f"{label} {what}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, "
            f"{r['peak_rss_mib']} MiB")  # fmt: skip
        return {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")}

    out: dict = {"vault": url}
    out["seal"] = step("seal", "seal", model, "--name", "minilm", "--quiet")
    interview = work / "later.jsonl"
    interview.write_text("".join(
        json.dumps({"role": r, "content": f"turn {i}: how was your deployment?",
                    "time": "2026-01-05T10:00:00Z"}) + "\n"
        for i, r in enumerate(["interviewer", "model"] * 50)))  # fmt: skip
    before = vault_bytes(url, env)
    out["amend"] = step("amend", "amend", "minilm", "--interview", interview, "--name", "minilm.2")
    growth = vault_bytes(url, env) - before
    out["amend"].update(growth=growth, record_bytes=interview.stat().st_size,
                        metadata_bytes=growth - interview.stat().st_size,
                        time_ok=out["amend"]["wall_s"] < 2)  # fmt: skip
    before = vault_bytes(url, env)
    out["reseal"] = step("seal again (what amend replaces)", "seal", model, "--name", "again",
                         "--quiet")  # fmt: skip
    out["reseal"]["growth"] = vault_bytes(url, env) - before
    out["amend_vs_reseal"] = round(out["amend"]["wall_s"] / out["reseal"]["wall_s"], 3)
    log(f"{label}: amend grew the vault {human(growth)} ({human(interview.stat().st_size)} "
        f"record + {human(growth - interview.stat().st_size)} metadata); "
        f"amend / seal again = {out['amend_vs_reseal']}")  # fmt: skip
    return out


def config(path: Path, key: Path, url: str, opts: dict | None = None) -> Path:
    lines = [f'signing_key = "{key}"', f'trusted_keys = ["{key}.pub"]', "[replicas.primary]",
             f'url = "{url}"']  # fmt: skip
    if opts:
        lines.append("storage_options = { " + ", ".join(f'{k} = "{v}"' for k, v in opts.items())
                     + " }")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from support.servers import SeaweedS3

    res: dict = {"model": str(a.model)}
    with tempfile.TemporaryDirectory(prefix="wv-amend-") as t:
        work = Path(t)
        key = work / "lab.key"
        if measure([*WV, "keygen", key])["rc"] != 0:
            raise SystemExit("keygen failed")
        env = dict(os.environ)
        local = work / "vault"
        res["local"] = run("local", str(local), config(work / "local.toml", key, str(local)),
                           env, work, a.model)  # fmt: skip
        with SeaweedS3(base_dir=work) as s3:
            bucket = s3.make_bucket("amend-bench")
            env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                   "WV_S3_ENDPOINT": s3.endpoint_url}  # fmt: skip
            url = f"s3://{bucket}/vault"
            cfg = config(work / "s3.toml", key, url, {"endpoint_url": s3.endpoint_url})
            res["s3"] = run("s3", url, cfg, env, work, a.model)
    out = HERE / "results" / "amend_real.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
