"""The side-by-side benchmark (benchmarks/run.py) still runs: --tiny, in a subprocess.

Checks the shape of its JSON, never its timings: weightvault's steps must all have run and
succeeded, and each peer's steps must be there exactly when its binary is on PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEIGHTVAULT_ROLES = {"seal", "verify_deep", "audit", "restore"}
PEER_ROLES = {
    "restic": {"restic_backup", "restic_check"},
    "borg": {"borg_create", "borg_check"},
    "zstd": {"zstd"},
    "openssl": {"openssl"},
    "sha256sum": {"sha256sum"},
}
MEASURES = ("wall_s", "cpu_s", "peak_rss_mib", "mb_s")


def test_benchmark_tiny_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--tiny", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tiny"] is True
    assert res["machine"]["nproc"] >= 1

    inputs = {i["kind"]: i for i in res["inputs"]}
    assert "bf16" in inputs, "the synthetic bf16 input is always benchmarked"
    for inp in res["inputs"]:
        assert inp["bytes"] > 0
        steps = {s["role"]: s for s in inp["steps"]}
        want = set(WEIGHTVAULT_ROLES)
        for tool, roles in PEER_ROLES.items():
            if shutil.which(tool):
                want |= roles
            else:
                assert not roles & set(steps), f"{tool} is missing but has results"
                assert tool in res["missing"]
        assert want <= set(steps), f"{inp['name']}: no results for {sorted(want - set(steps))}"
        for role in want:
            s = steps[role]
            assert s["rc"] == 0 and not s["error"], f"{inp['name']}: {role}: {s['error']}"
            for m in MEASURES:
                assert isinstance(s[m], (int, float)) and s[m] >= 0, (role, m, s[m])
        assert steps["restore"]["restored_identical"] is True
        assert steps["seal"]["stored_bytes"] > 0
        for role in ("restic_backup", "borg_create", "zstd"):
            if role in steps:
                assert steps[role]["stored_bytes"] > 0
        ratios = {r["key"]: r for r in inp["ratios"] if r["key"]}
        assert {"stored_fraction", "restore_mb_s", "seal_peak_rss"} <= set(ratios)
        if shutil.which("borg") and shutil.which("restic"):
            for key in ("seal_vs_borg_create", "seal_vs_restic_backup", "audit_vs_restic_check"):
                assert ratios[key]["value"] is not None and ratios[key]["pass"] in (True, False)

    scale = res["scale"]
    assert scale["error"] is None, scale["error"]
    assert scale["parsed_chunks"] == scale["chunks"] > 0
    for k in ("from_doc_s", "sign_s", "parse_s", "peak_rss_mib", "manifest_bytes"):
        assert scale[k] > 0

    runs = res["rss_growth"]["runs"]
    assert len(runs) == 2 and all(r["rc"] == 0 and r["peak_rss_mib"] > 0 for r in runs)
    assert "growth_mib" in res["rss_growth"]
