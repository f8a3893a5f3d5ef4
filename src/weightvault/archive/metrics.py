"""Prometheus textfile metrics of the audits, rebuilt on every run from the audit state.

Every series comes from the newest record of its replica and level in the local audit chain
(state_dir), not from this run alone: a daily sample audit and a weekly full audit writing one
file both stay in it, and an unreachable replica keeps its last success timestamp, so the
documented alert `time() - weightvault_audit_last_success_timestamp_seconds > 2 * 86400`
fires for it instead of losing its series.
"""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path

from weightvault.archive.auditlog import failures_by_kind, parse, replica_dir
from weightvault.errors import WeightvaultError

LEVELS = ("metadata", "sample", "full")
SERIES = {
    "weightvault_audit_last_run_timestamp_seconds": "End of the last audit of a replica at this level.",
    "weightvault_audit_last_success_timestamp_seconds": "End of the last audit at this level that found nothing wrong.",
    "weightvault_audit_objects_checked": "Objects checked by the last audit at this level.",
    "weightvault_audit_damaged_objects": "Objects found damaged by the last audit at this level.",
    "weightvault_audit_missing_objects": "Objects found missing by the last audit at this level.",
    "weightvault_audit_bytes_read": "Payload bytes read by the last audit at this level.",
    "weightvault_audit_unverifiable_objects": "Objects a metadata audit could not verify (no server SHA-256).",
    "weightvault_audit_coverage_ratio": "Share of objects hashed by an audit within the cycle.",
    "weightvault_audit_up": "1 if the replica could be audited by the last run, 0 if unreachable.",
}  # fmt: skip


def _epoch(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def latest(state: Path, url: str) -> dict[str, dict]:
    """level -> {"last": newest record, "success": end of the newest passing one or None}, from
    every audit chain of the replica in the local state (one per signer, and the legacy one:
    FORMAT.md section 8), newest first."""
    root = replica_dir(state, url) / "audits"
    records = []
    for path in root.rglob("*.json"):
        if not path.stem.isdigit():
            continue
        try:
            rec = parse(path.read_bytes(), str(path))["record"]
        except (OSError, WeightvaultError):
            continue  # audit-log verify reports it; the metrics still show the others
        records.append(rec)
    out: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["ended"], reverse=True):
        lv = rec.get("level")
        if lv not in LEVELS:
            continue  # repairs
        slot = out.setdefault(lv, {"last": rec, "success": None})
        if slot["success"] is None and rec["eventOutcome"] == "pass":
            slot["success"] = _epoch(rec["ended"])
    return out


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(replicas: dict[str, str], up: dict[str, bool], state: Path) -> str:
    """replicas: name -> url of every replica this run covered; up: name -> reached or not."""
    out: dict[str, list[str]] = {k: [] for k in SERIES}
    for name, url in replicas.items():
        for lv, slot in sorted(latest(state, url).items()):
            r, lab = slot["last"], f'replica="{_esc(name)}",level="{lv}"'

            def put(series: str, value, lab=lab) -> None:
                out[series].append(f"{series}{{{lab}}} {value}")

            put("weightvault_audit_last_run_timestamp_seconds", _epoch(r["ended"]))
            if slot["success"] is not None:
                put("weightvault_audit_last_success_timestamp_seconds", slot["success"])
            put("weightvault_audit_objects_checked", r["objects_checked"])
            kinds = failures_by_kind(r)  # every failure, not the record's first only
            put("weightvault_audit_damaged_objects",
                sum(n for k, n in kinds.items() if k != "missing"))  # fmt: skip
            put("weightvault_audit_missing_objects", kinds.get("missing", 0))
            put("weightvault_audit_bytes_read", r["bytes_read"])
            put("weightvault_audit_unverifiable_objects", r.get("objects_unverifiable", 0))
            cov = r["coverage"]
            ratio = cov["verified_within_cycle"] / cov["objects"] if cov["objects"] else 1.0
            put("weightvault_audit_coverage_ratio", f"{ratio:.6f}")
        if name in up:
            out["weightvault_audit_up"].append(
                f'weightvault_audit_up{{replica="{_esc(name)}"}} {1 if up[name] else 0}')
    lines: list[str] = []
    for k, help_ in SERIES.items():
        lines += [f"# HELP {k} {help_}", f"# TYPE {k} gauge", *out[k]]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # node_exporter must never read half a file
