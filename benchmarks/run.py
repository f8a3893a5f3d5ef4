#!/usr/bin/env python3
"""Side-by-side benchmark of weightvault against what users would pick instead (issue 7).

    python benchmarks/run.py                       # 1 GiB synthetic bf16 + real MiniLM fp32
    python benchmarks/run.py --scale --rss-growth  # plus the 1 TB manifest and RSS growth parts
    python benchmarks/run.py --tiny --json OUT     # seconds, for the smoke test

Every tool runs as a child process on the same input files; wall time, CPU time (user + sys)
and peak RSS come from os.wait4's rusage of that child. Before every timed step the input
(and the tool's repository, for steps that read one) is read once, so every tool sees a warm
page cache. Results go to benchmarks/results/latest.json (latest-tiny.json with --tiny) and
to --json PATH. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MiB = 1 << 20
GiB = 1 << 30
PEERS = ("restic", "borg", "zstd", "openssl", "sha256sum")
APT_HINT = "apt-get install restic borgbackup zstd"
APT_PACKAGES = {"restic": "restic", "borg": "borgbackup", "zstd": "zstd", "openssl": "openssl",
                "sha256sum": "coreutils"}  # fmt: skip
PASSWORD = "weightvault-benchmark"  # restic needs one; the repository is thrown away
CLK = os.sysconf("SC_CLK_TCK")

# Issue 7's targets. "applies" decides which input a target is judged on; the others are
# shown for information (MiniLM is 90 MB: process start-up weighs on every tool's times).
TARGETS = [
    # key, label, numerator step, denominator step (None: absolute), op, limit
    ("seal_vs_borg_create", "seal wall / borg create wall",
     "seal", "borg_create", "<=", 0.40),
    ("seal_vs_restic_backup", "seal wall / restic backup wall",
     "seal", "restic_backup", "<=", 0.35),
    ("audit_vs_restic_check", "full audit wall / restic check --read-data wall",
     "audit", "restic_check", "<=", 0.50),
    ("stored_fraction", "weightvault stored / input", None, None, "<=", None),
    ("restore_mb_s", "restore MB/s", "restore", None, ">=", 500.0),
    ("seal_peak_rss", "seal peak RSS MiB", "seal", None, "<", 300.0),
]  # fmt: skip
STORED_LIMIT = {"bf16": 0.68, "fp32": 0.83}
# Informative ratios: weightvault step wall / peer step wall, and stored bytes against peers.
INFO_RATIOS = [
    ("seal wall / zstd -3 -T2 wall", "seal", "zstd"),
    ("seal wall / sha256sum wall", "seal", "sha256sum"),
    ("seal wall / openssl dgst -sha256 wall", "seal", "openssl"),
    ("verify --deep wall / restic check wall", "verify_deep", "restic_check"),
    ("verify --deep wall / borg check wall", "verify_deep", "borg_check"),
    ("full audit wall / borg check wall", "audit", "borg_check"),
    ("restore wall / restic check wall", "restore", "restic_check"),
]
STORED_RATIOS = [
    ("stored: weightvault / borg", "borg_create"),
    ("stored: weightvault / restic", "restic_backup"),
    ("stored: weightvault / zstd -3", "zstd"),
]


# ---------------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, 8G)")
    unit = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()]
    n = int(float(m.group(1)) * unit)
    return n - n % 2


def human(n: int) -> str:
    for unit, k in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return f"{n}B"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def files_under(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        out.extend(Path(dirpath) / n for n in sorted(names))
    return [p for p in out if p.is_file() and not p.is_symlink()]


def dir_size(root: Path) -> int:
    if root.is_file():
        return root.stat().st_size
    return sum(p.lstat().st_size for p in files_under(root))


def warm(*roots: Path) -> int:
    """Read every file once so the tool that follows finds it in the page cache."""
    total = 0
    for root in roots:
        if not root.exists():
            continue
        for p in [root] if root.is_file() else files_under(root):
            with open(p, "rb", buffering=0) as f:
                while n := len(f.read(8 * MiB)):
                    total += n
    return total


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


def busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(v) - v[3] - v[4]) / CLK


# The child is started by a small launcher (python -S, no imports) that forks, execs and
# wait4s it. Linux carries a process's pre-exec peak RSS over into ru_maxrss, so spawning the
# tool straight from this process (tens of MiB after numpy) would floor every tool's peak at
# ours; forked from the launcher the floor is a few MiB (measured and reported: rss_floor_mib).
LAUNCHER = r"""
import os, sys, time
out, cwd, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        if cwd:
            os.chdir(cwd)
        os.execvp(argv[0], argv)
    except BaseException as e:
        os.write(2, ("cannot run %s: %s\n" % (argv[0], e)).encode())
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    f.write("%r %d %r %r %d" % (wall, os.waitstatus_to_exitcode(status), ru.ru_utime,
                                ru.ru_stime, ru.ru_maxrss))
"""


def measure(cmd: list, *, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 3600) -> dict:  # fmt: skip
    """Run cmd as a child; wall, CPU and peak RSS of that child (and anything it waited for)."""
    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rusage") as res:  # fmt: skip
        b0 = busy_seconds()
        launcher = [sys.executable, "-S", "-I", "-c", LAUNCHER, res.name, str(cwd or ""), *cmd]
        p = subprocess.Popen(launcher, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
        busy = busy_seconds() - b0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        fields = res.read().split()
    if len(fields) != 5:
        fields = [0.0, p.returncode or -1, 0.0, 0.0, 0]
    wall, rc, utime, stime, maxrss = float(fields[0]), int(fields[1]), float(fields[2]), \
        float(fields[3]), int(fields[4])  # fmt: skip
    cpu = utime + stime
    return {
        "cmd": cmd,
        "rc": rc,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 3),
        "user_s": round(utime, 3),
        "sys_s": round(stime, 3),
        "peak_rss_mib": round(maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
        # CPU that other processes used meanwhile (the launcher's own start-up, about 0.02 s,
        # included): more than a little means a noisy measurement.
        "other_cpu_s": round(max(0.0, busy - cpu), 2),
        "stdout": stdout.decode(errors="replace"),
        "stderr": stderr.decode(errors="replace"),
    }


def wait_quiet(limit: float) -> float | None:
    """Wait (at most `limit` seconds) until other processes use under 0.2 cores for 1 s."""
    if limit <= 0:
        return None
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        b0 = busy_seconds()
        time.sleep(1.0)
        if busy_seconds() - b0 < 0.2:
            break
    return round(time.monotonic() - t0, 1)


def first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ((p.stdout or p.stderr).strip().splitlines() or [""])[0]


def machine() -> dict:
    cpu = ""
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    try:
        import weightvault

        wv_version = weightvault.__version__
    except ImportError:
        wv_version = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gib": round(mem / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "weightvault": wv_version,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists() else None,
    }  # fmt: skip


def tool_versions(found: dict[str, str]) -> dict[str, str]:
    cmds = {"restic": ["version"], "borg": ["--version"], "zstd": ["--version"],
            "openssl": ["version"], "sha256sum": ["--version"]}  # fmt: skip
    return {t: first_line([path, *cmds[t]]) for t, path in found.items()}


# ------------------------------------------------------------------------ synthetic model


def layer_tensors(size: int) -> list[tuple[str, list[int]]]:
    """Tensor names and shapes of a transformer-like bf16 model holding about `size` bytes."""
    h = 2048
    while h > 64 and 2 * (12 * h * h + 2 * h) > max(size // 8, 1):
        h //= 2
    out: list[tuple[str, list[int]]] = []
    left = size // 2  # elements
    layer = 0
    shapes = [("attn.qkv", [3 * h, h]), ("attn.o", [h, h]), ("norm1", [h]),
              ("mlp.up", [4 * h, h]), ("mlp.down", [h, 4 * h]), ("norm2", [h])]  # fmt: skip
    per_layer = sum(_prod(s) for _, s in shapes)
    while left > per_layer:
        for name, shape in shapes:
            out.append((f"layers.{layer}.{name}.weight", shape))
        left -= per_layer
        layer += 1
    if left:
        out.append(("lm_head.weight", [left // h, h] if left % h == 0 else [left]))
    return out


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_bf16_model(dest: Path, size: int, seed: int = 0) -> Path:
    """A safetensors file of normal(0, 0.02) weights as bf16 (the upper 16 bits of float32),
    written in pieces so memory stays small. Reused when dest already holds the same one."""
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "model.safetensors"
    stamp = dest.parent / f"{dest.name}.json"  # beside, not inside: tools back up the dir
    params = {"kind": "bf16-normal-0.02", "size": size, "seed": seed, "generator": 1}
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return dest
    tensors = layer_tensors(size)
    header: dict = {"__metadata__": {"format": "pt", "generator": "weightvault benchmarks/run.py"}}
    off = 0
    for name, shape in tensors:
        n = _prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, shape in tensors:
            left = _prod(shape)
            while left:
                k = min(left, 8 << 20)
                x = rng.standard_normal(k, dtype=np.float32)
                x *= np.float32(0.02)
                f.write((x.view(np.uint32) >> 16).astype("<u2").tobytes())
                left -= k
    tmp.rename(path)
    stamp.write_text(json.dumps(params))
    return dest


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.found: dict[str, str] = {}
        self.missing: list[str] = []
        wv = Path(sys.executable).parent / "weightvault"
        self.wv = [str(wv)] if wv.is_file() else [sys.executable, "-m", "weightvault.cli"]
        self.env = dict(os.environ)
        self.env.update({
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
            "BORG_BASE_DIR": str(work / "borg-base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        })  # fmt: skip
        # weightvault reads ./weightvault.toml (or $WEIGHTVAULT_CONFIG) when present: its steps
        # run in their own empty directory with neither, so only the flags given here count.
        for var in ("WEIGHTVAULT_VAULT", "WEIGHTVAULT_CONFIG"):
            self.env.pop(var, None)
        self.key = work / "runs" / "keys" / "bench.key"
        self.audit = False

    # -- tools -------------------------------------------------------------------------------

    def find_tools(self) -> None:
        for t in PEERS:
            path = shutil.which(t)
            if path is None and self.args.install:
                self.install(t)
                path = shutil.which(t)
            if path:
                self.found[t] = path
            else:
                self.missing.append(t)
                log(f"{t}: not found on PATH; its steps are skipped "
                    f"(install it: {APT_HINT}; or run with --install as root)")  # fmt: skip
        r = subprocess.run([*self.wv, "audit", "--help"], capture_output=True, env=self.env,
                           cwd=self.work)  # fmt: skip
        self.audit = r.returncode == 0
        # pip byte-compiles the packages it installs from a wheel (Debian's borg is compiled by
        # dpkg); an editable install under PYTHONDONTWRITEBYTECODE compiles weightvault's own
        # modules again at every start (about 0.1 s), which no installed user pays
        import weightvault

        compileall.compile_dir(Path(weightvault.__file__).parent, quiet=1)

    def install(self, tool: str) -> None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            log(f"--install: cannot install {tool} (needs root and apt-get); {APT_HINT}")
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not getattr(self, "_apt_updated", False):
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            self._apt_updated = True
        log(f"--install: apt-get install -y {APT_PACKAGES[tool]}")
        subprocess.run(["apt-get", "install", "-y", "-qq", APT_PACKAGES[tool]], env=env,
                       check=False)  # fmt: skip

    def keygen(self) -> None:
        shutil.rmtree(self.key.parent, ignore_errors=True)
        self.key.parent.mkdir(parents=True)
        r = subprocess.run([*self.wv, "keygen", self.key], capture_output=True, text=True,
                           env=self.env, cwd=self.key.parent)  # fmt: skip
        if r.returncode:
            raise SystemExit(f"weightvault keygen failed: {r.stderr.strip()}")

    # -- one timed step ----------------------------------------------------------------------

    def step(self, role: str, label: str, tool: str, cmd: list, inp: dict, *,
             reads: list[Path] = (),
             cwd: Path | None = None) -> dict:  # fmt: skip
        warm(inp["dir"], *reads)
        waited = wait_quiet(self.args.wait_quiet)
        r = measure(cmd, env=self.env, cwd=cwd)
        r.update(role=role, step=label, tool=tool, input_bytes=inp["bytes"])
        if waited is not None:
            r["waited_for_quiet_s"] = waited
        r["mb_s"] = round(inp["bytes"] / 1e6 / r["wall_s"], 1) if r["wall_s"] else None
        r["stored_bytes"] = r["stored_pct"] = None
        r["error"] = None
        if r["rc"] != 0:
            tail = (r["stderr"].strip().splitlines() or ["(no stderr)"])[-3:]
            r["error"] = f"exit {r['rc']}: " + " | ".join(tail)
            log(f"  {label}: FAILED ({r['error']})")
        else:
            log(f"  {label}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, "
                f"{r['peak_rss_mib']:.0f} MiB peak RSS")  # fmt: skip
        return r

    def stored(self, r: dict, path: Path, inp: dict) -> None:
        if r["rc"] == 0:
            r["stored_bytes"] = dir_size(path)
            r["stored_pct"] = round(100 * r["stored_bytes"] / inp["bytes"], 2)

    def fresh(self, name: str) -> Path:
        d = self.work / "runs" / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    # -- groups: each returns its steps for one repetition ----------------------------------

    def g_weightvault(self, inp: dict) -> list[dict]:
        d = self.fresh("weightvault")
        vault = d / "vault"
        pub = f"{self.key}.pub"
        out = []
        seal = self.step("seal", "weightvault seal", "weightvault",
                         [*self.wv, "seal", inp["dir"], "--vault", vault, "--key", self.key,
                          "--name", "bench", "--quiet", "--json"], inp, cwd=d)  # fmt: skip
        self.stored(seal, vault, inp)
        if seal["rc"] == 0:
            with contextlib.suppress(ValueError):
                res = json.loads(seal["stdout"])
                seal["objects_bytes"] = res.get("bytes_stored")
                seal["objects"] = res.get("objects")
        out.append(seal)
        if seal["rc"] != 0:
            return out
        base = ["--vault", vault, "--trust", pub, "--quiet", "--json"]
        out.append(self.step("verify_deep", "weightvault verify --deep", "weightvault",
                             [*self.wv, "verify", "bench", *base, "--deep"], inp,
                             reads=[vault], cwd=d))  # fmt: skip
        audit = None
        if self.audit:
            # Audits every bundle on the vault (here just this one) and appends a signed audit
            # record to it; its local state goes to a scratch directory.
            audit = self.step("audit", "weightvault audit --level full", "weightvault",
                              [*self.wv, "audit", "--vault", vault, "--level", "full",
                               "--trust", pub, "--key", self.key, "--state-dir",
                               d / "audit-state", "--json"], inp, reads=[vault], cwd=d)  # fmt: skip
            audit["stands_in"] = "weightvault audit --level full"
            if audit["rc"] != 0:
                log("  weightvault audit --level full failed; falling back to verify")
                audit = None
        if audit is None:
            audit = self.step("audit", "weightvault verify", "weightvault",
                              [*self.wv, "verify", "bench", *base], inp, reads=[vault], cwd=d)  # fmt: skip
            audit["stands_in"] = "weightvault verify (objects only; no audit command yet)"
        out.append(audit)
        dest = d / "restored"
        rest = self.step("restore", "weightvault restore", "weightvault",
                         [*self.wv, "restore", "bench", dest, *base], inp, reads=[vault], cwd=d)  # fmt: skip
        if rest["rc"] == 0:
            rest["restored_identical"] = all(
                sha256_file(dest / rel) == digest for rel, digest in inp["digests"].items()
            )
            if not rest["restored_identical"]:
                rest["error"] = "restored files differ from the input"
        out.append(rest)
        shutil.rmtree(d, ignore_errors=True)
        return out

    def g_restic(self, inp: dict) -> list[dict]:
        d = self.fresh("restic")
        repo = d / "repo"
        shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
        r = subprocess.run(["restic", "-r", repo, "init", "--repository-version", "2"],
                           capture_output=True, text=True, env=self.env)  # fmt: skip
        if r.returncode:
            return [self._setup_failed("restic_backup", "restic backup", "restic", inp, r.stderr)]
        backup = self.step("restic_backup", "restic backup", "restic",
                           ["restic", "-r", repo, "backup", "--compression", "auto", "--quiet",
                            "."], inp, cwd=inp["dir"])  # fmt: skip
        self.stored(backup, repo, inp)
        out = [backup]
        if backup["rc"] == 0:
            out.append(self.step("restic_check", "restic check --read-data", "restic",
                                 ["restic", "-r", repo, "check", "--read-data"], inp,
                                 reads=[repo]))  # fmt: skip
        shutil.rmtree(d, ignore_errors=True)
        return out

    def g_borg(self, inp: dict) -> list[dict]:
        d = self.fresh("borg")
        repo = d / "repo"
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        r = subprocess.run(["borg", "init", "-e", "none", repo], capture_output=True,
                           text=True, env=self.env)  # fmt: skip
        if r.returncode:
            return [self._setup_failed("borg_create", "borg create", "borg", inp, r.stderr)]
        create = self.step("borg_create", "borg create", "borg",
                           ["borg", "create", "-C", "zstd,3", f"{repo}::bench", "."], inp,
                           cwd=inp["dir"])  # fmt: skip
        self.stored(create, repo, inp)
        out = [create]
        if create["rc"] == 0:
            out.append(
                self.step(
                    "borg_check",
                    "borg check --verify-data",
                    "borg",
                    ["borg", "check", "--verify-data", repo],
                    inp,
                    reads=[repo],
                )
            )
        shutil.rmtree(d, ignore_errors=True)
        return out

    def g_zstd(self, inp: dict) -> list[dict]:
        d = self.fresh("zstd")
        r = self.step("zstd", "zstd -3 -T2", "zstd",
                      ["zstd", "-3", "-T2", "-q", "-f", "--output-dir-mirror", d,
                       *inp["files"]], inp, cwd=inp["dir"])  # fmt: skip
        self.stored(r, d, inp)
        shutil.rmtree(d, ignore_errors=True)
        return [r]

    def g_openssl(self, inp: dict) -> list[dict]:
        return [
            self.step(
                "openssl",
                "openssl dgst -sha256",
                "openssl",
                ["openssl", "dgst", "-sha256", *inp["files"]],
                inp,
                cwd=inp["dir"],
            )
        ]

    def g_sha256sum(self, inp: dict) -> list[dict]:
        return [self.step("sha256sum", "sha256sum", "sha256sum", ["sha256sum", *inp["files"]], inp,
                          cwd=inp["dir"])]  # fmt: skip

    def _setup_failed(self, role: str, label: str, tool: str, inp: dict, stderr: str) -> dict:
        msg = f"repository init failed: {stderr.strip().splitlines()[-1:]}"
        log(f"  {label}: {msg}")
        return {
            "role": role,
            "step": label,
            "tool": tool,
            "rc": -1,
            "error": msg,
            "input_bytes": inp["bytes"],
        }

    # -- one input -----------------------------------------------------------------------------

    def compare(self, name: str, kind: str, root: Path) -> dict:
        files = [p.relative_to(root).as_posix() for p in files_under(root)]
        inp = {"name": name, "kind": kind, "dir": root, "files": files,
               "bytes": sum((root / f).stat().st_size for f in files)}  # fmt: skip
        inp["digests"] = {f: sha256_file(root / f) for f in files}
        log(f"\n== {name}: {len(files)} files, {inp['bytes']:,} bytes in {root}")
        groups = [("weightvault", self.g_weightvault), ("restic", self.g_restic),
                  ("borg", self.g_borg), ("zstd", self.g_zstd), ("openssl", self.g_openssl),
                  ("sha256sum", self.g_sha256sum)]  # fmt: skip
        steps: list[dict] = []
        for tool, fn in groups:
            if tool != "weightvault" and tool not in self.found:
                continue
            runs: dict[str, list[dict]] = {}
            for _ in range(self.args.repeat):
                for r in fn(inp):
                    runs.setdefault(r["role"], []).append(r)
            for rs in runs.values():
                ok = [r for r in rs if r.get("rc") == 0] or rs
                best = min(ok, key=lambda r: r.get("wall_s", float("inf")))
                best["walls"] = [r.get("wall_s") for r in rs]
                steps.append(best)
        for s in steps:
            s.pop("stdout", None)
            s["stderr"] = s.get("stderr", "")[-2000:]
        return {"name": name, "kind": kind, "path": str(root), "files": len(files),
                "bytes": inp["bytes"], "steps": steps,
                "ratios": ratios(steps, kind, inp["bytes"])}  # fmt: skip

    # -- the 1 TB manifest -------------------------------------------------------------------

    def scale(self, chunks: int) -> dict:
        log(f"\n== scale: manifest of {chunks:,} chunks of 64 MiB (one file, fake digests)")
        out = self.work / "scale.json"
        wait_quiet(self.args.wait_quiet)
        r = measure([sys.executable, __file__, "--scale-child", str(chunks), "--scale-out", out],
                    env=self.env)  # fmt: skip
        res: dict = {"chunks": chunks, "chunk_size": 64 * MiB, "model_bytes": chunks * 64 * MiB,
                     "rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                     "peak_rss_mib": r["peak_rss_mib"], "other_cpu_s": r["other_cpu_s"],
                     "error": None}  # fmt: skip
        if r["rc"] == 0:
            res.update(json.loads(out.read_text()))
            log(f"  from_doc {res['from_doc_s']:.2f} s, sign {res['sign_s'] * 1e3:.1f} ms, "
                f"parse {res['parse_s']:.2f} s, manifest {res['manifest_bytes']:,} bytes, "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB")  # fmt: skip
        else:
            res["error"] = r["stderr"].strip()[-2000:]
            log(f"  scale part FAILED: {res['error']}")
        return res

    # -- RSS growth ------------------------------------------------------------------------------

    def rss_growth(self, sizes: list[int]) -> dict:
        log(f"\n== RSS growth: seal of {', '.join(human(s) for s in sizes)} synthetic bf16")
        rows = []
        for size in sizes:
            free = shutil.disk_usage(self.work).free
            if free < 2.2 * size:
                log(f"  {human(size)}: skipped, {free / GiB:.1f} GiB free on {self.work}")
                rows.append({"size": size, "skipped": f"only {free} bytes free"})
                continue
            src = make_bf16_model(self.input_dir(size), size)
            inp = {"dir": src, "bytes": dir_size(src / "model.safetensors")}
            d = self.fresh("rss")
            r = self.step("seal", f"weightvault seal {human(size)}", "weightvault",
                          [*self.wv, "seal", src, "--vault", d / "vault", "--key", self.key,
                           "--name", "bench", "--quiet", "--json"], inp, cwd=d)  # fmt: skip
            self.stored(r, d / "vault", inp)
            shutil.rmtree(d, ignore_errors=True)
            r.pop("stdout", None)
            r["stderr"] = r["stderr"][-2000:]
            r["size"] = size
            rows.append(r)
            # the --size input stays: a --workdir keeps it for the next run's comparison
            if not self.args.keep_inputs and src != self.input_dir(self.args.size):
                shutil.rmtree(src, ignore_errors=True)
                (src.parent / f"{src.name}.json").unlink(missing_ok=True)
        ok = [r for r in rows if r.get("rc") == 0]
        res: dict = {"runs": rows}
        if len(ok) >= 2:
            lo, hi = ok[0]["peak_rss_mib"], ok[-1]["peak_rss_mib"]
            res["growth_mib"] = round(hi - lo, 1)
            res["growth_pct"] = round(100 * (hi - lo) / lo, 1)
            # "does not grow": within 10 % or 16 MiB of the smallest input's peak
            res["flat"] = hi - lo <= max(16.0, 0.10 * lo)
        return res

    def input_dir(self, size: int) -> Path:
        return self.work / "inputs" / f"bf16-{human(size)}"


def ratios(steps: list[dict], kind: str, input_bytes: int) -> list[dict]:
    by = {s["role"]: s for s in steps if s.get("rc") == 0}
    wall = {k: s["wall_s"] for k, s in by.items()}
    out = []
    for key, label, num, den, op, limit in TARGETS:
        value = None
        if key == "stored_fraction":
            limit = STORED_LIMIT.get(kind)
            s = by.get("seal")
            value = s["stored_bytes"] / input_bytes if s else None
        elif key == "restore_mb_s":
            value = by[num]["mb_s"] if num in by else None
        elif key == "seal_peak_rss":
            value = by[num]["peak_rss_mib"] if num in by else None
        elif num in wall and den in wall and wall[den] > 0:
            value = wall[num] / wall[den]
        applies = kind == "bf16" or key == "stored_fraction"
        row = {"key": key, "label": label, "value": _round(value), "op": op, "target": limit,
               "applies": applies, "pass": None, "margin": None}  # fmt: skip
        if value is not None and limit is not None:
            row["pass"] = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
            # margin: how far from the target, as a factor (>1 means that much to spare or
            # that much short): for <= targets limit/value, for >= targets value/limit
            row["margin"] = _round(limit / value if op in ("<=", "<") else value / limit)
        out.append(row)
    for label, num, den in INFO_RATIOS:
        if num in wall and den in wall and wall[den] > 0:
            out.append({"key": None, "label": label, "value": _round(wall[num] / wall[den]),
                        "op": None, "target": None, "applies": False, "pass": None,
                        "margin": None})  # fmt: skip
    seal = by.get("seal")
    for label, peer in STORED_RATIOS:
        if seal and peer in by and by[peer].get("stored_bytes"):
            out.append({"key": None, "label": label,
                        "value": _round(seal["stored_bytes"] / by[peer]["stored_bytes"]),
                        "op": None, "target": None, "applies": False, "pass": None,
                        "margin": None})  # fmt: skip
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


# ------------------------------------------------------------------- scale child process


def scale_child(chunks: int, out: Path) -> None:
    """Build, check, sign and parse the manifest of a one-file model of `chunks` x 64 MiB."""
    t0 = time.perf_counter()
    from weightvault import __version__
    from weightvault.format import canon, keys, manifest, spec
    from weightvault.format.manifest import PAYLOAD_TYPE, Manifest

    res: dict = {"import_s": time.perf_counter() - t0}

    def rss() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    res["rss_after_import_mib"] = rss()
    t = time.perf_counter()
    length = 64 * MiB
    chunk_list, objects = [], []
    for i in range(chunks):
        obj = hashlib.sha256(b"object %d" % i).hexdigest()
        chunk_list.append({"offset": i * length, "length": length, "codec": "fsplit-bf16",
                           "dtype": "BF16", "object": obj})  # fmt: skip
        objects.append({"name": obj, "size": length * 2 // 3})
    objects.sort(key=lambda o: o["name"])
    doc = {
        "format": "weightvault-manifest",
        "format_version": 4,
        "name": "scale-1tb",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool": {"name": "weightvault", "version": __version__},
        "source": {"kind": "local", "path": "/models/scale-1tb", "excluded": [".git"]},
        "chunking": {"target_size": length, "piece_size": 4 * MiB},
        "files": [{"path": "model.safetensors", "size": chunks * length, "mode": 0o644,
                   "sha256": hashlib.sha256(b"file").hexdigest(), "chunks": chunk_list}],
        "objects": objects,
        "encryption": None,
        "record": [],
        "spec": [{"path": "FORMAT.md", "size": 100000,
                  "sha256": hashlib.sha256(b"format").hexdigest()}],
        "supersedes": None,
        "bag_info": {"organization": None, "description": "scale test"},
    }  # fmt: skip
    res["build_doc_s"] = time.perf_counter() - t
    t = time.perf_counter()
    m = Manifest.from_doc(doc)  # schema + invariants + canonical bytes, as seal does
    res["from_doc_s"] = time.perf_counter() - t
    res["rss_after_from_doc_mib"] = rss()
    res["manifest_bytes"] = len(m.raw)
    # The same three parts again, one at a time (validator already compiled).
    t = time.perf_counter()
    spec.validate(doc, "manifest", "scale")
    res["schema_s"] = time.perf_counter() - t
    t = time.perf_counter()
    manifest.check(doc, "scale")
    res["invariants_s"] = time.perf_counter() - t
    t = time.perf_counter()
    canon.canonical(doc)
    res["canonical_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        sk = keys.generate(Path(d) / "scale.key")
        t = time.perf_counter()
        sig = sk.sign(PAYLOAD_TYPE, m.raw)
        res["sign_s"] = time.perf_counter() - t
    import base64

    t = time.perf_counter()
    assert sk.public.verify(PAYLOAD_TYPE, m.raw, base64.b64decode(sig["sig"]))
    res["verify_sig_s"] = time.perf_counter() - t
    raw = m.raw
    del doc, m, chunk_list, objects  # parse starts from the bytes alone, as a reader does
    t = time.perf_counter()
    parsed = Manifest.parse(raw, "scale")
    res["parse_s"] = time.perf_counter() - t
    res["parsed_chunks"] = len(parsed.files[0]["chunks"])
    res["rss_end_mib"] = rss()
    out.write_text(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                               for k, v in res.items()}))  # fmt: skip


# ------------------------------------------------------------------------------ rendering


def fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def step_rows(inp: dict) -> list[list[str]]:
    rows = []
    for s in inp["steps"]:
        if s.get("error") and s.get("rc") != 0:
            rows.append([s["step"], "FAILED", "", "", "", "", s["error"][:60], ""])
            continue
        stored = s.get("stored_bytes")
        rows.append([
            s["step"], fmt(s["wall_s"], ".2f"), fmt(s["cpu_s"], ".2f"), fmt(s["mb_s"], ",.0f"),
            fmt(s["peak_rss_mib"], ",.0f"), fmt(stored, ","),
            fmt(s.get("stored_pct"), ".1f") + (" %" if stored else ""),
            " / ".join(f"{w:.2f}" for w in s.get("walls") or [] if w is not None),
        ])  # fmt: skip
    return rows


def ratio_rows(inp: dict) -> list[list[str]]:
    rows = []
    for r in inp["ratios"]:
        if r["target"] is None and r["key"] is not None:
            continue
        target = f"{r['op']} {r['target']:g}" if r["target"] is not None else ""
        if r["pass"] is None:
            verdict = "" if r["key"] is None else "n/a"
        else:
            verdict = "pass" if r["pass"] else "MISS"
            if not r["applies"]:
                verdict = f"({verdict}, info)"
        margin = ""
        if r["margin"] is not None:
            margin = f"{r['margin']:.2f}x"
        rows.append([r["label"], fmt(r["value"], ".3f"), target, verdict, margin])
    return rows


STEP_HEAD = ["tool / step", "wall s", "CPU s", "MB/s", "peak RSS MiB", "stored bytes",
             "stored % of input", "wall s, every run"]  # fmt: skip
RATIO_HEAD = ["ratio", "value", "issue-7 target", "result", "target / value"]


def render(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 150)
    for inp in results["inputs"]:
        t = Table(*STEP_HEAD, title=f"{inp['name']}: {inp['bytes']:,} bytes, {inp['files']} files")
        for row in step_rows(inp):
            t.add_row(*row)
        con.print(t)
        t = Table(*RATIO_HEAD, title=f"{inp['name']}: weightvault vs peers")
        for row in ratio_rows(inp):
            t.add_row(*row)
        con.print(t)
    if sc := results.get("scale"):
        t = Table("scale: 1 manifest", "value", title=f"{sc['chunks']:,} chunks x 64 MiB")
        for k in (
            "build_doc_s",
            "from_doc_s",
            "schema_s",
            "invariants_s",
            "canonical_s",
            "sign_s",
            "parse_s",
            "manifest_bytes",
            "peak_rss_mib",
            "wall_s",
            "error",
        ):
            if k in sc and sc[k] is not None:
                t.add_row(k, f"{sc[k]:,}" if isinstance(sc[k], int) else str(sc[k]))
        con.print(t)
    if rg := results.get("rss_growth"):
        t = Table("seal input", "wall s", "MB/s", "peak RSS MiB", "stored %",
                  title="RSS growth")  # fmt: skip
        for r in rg["runs"]:
            if "skipped" in r:
                t.add_row(human(r["size"]), "skipped", "", "", "")
            elif r.get("rc") != 0:
                t.add_row(human(r["size"]), "FAILED", "", "", "")
            else:
                t.add_row(human(r["size"]), f"{r['wall_s']:.2f}", f"{r['mb_s']:,.0f}",
                          f"{r['peak_rss_mib']:,.0f}", f"{r['stored_pct']:.1f}")  # fmt: skip
        con.print(t)
        if "growth_mib" in rg:
            con.print(f"RSS growth smallest -> largest: {rg['growth_mib']:+.1f} MiB "
                      f"({rg['growth_pct']:+.1f} %): {'flat' if rg['flat'] else 'GROWS'}")  # fmt: skip
    for n in results["notes"]:
        con.print(f"note: {n}")


def markdown(results: dict) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)

    parts = []
    for inp in results["inputs"]:
        parts.append(f"**{inp['name']}** ({inp['bytes']:,} bytes, {inp['files']} files)\n")
        parts.append(table(STEP_HEAD, step_rows(inp)) + "\n")
        parts.append(table(RATIO_HEAD, ratio_rows(inp)) + "\n")
    if sc := results.get("scale"):
        keys = ["build_doc_s", "from_doc_s", "schema_s", "invariants_s", "canonical_s",
                "sign_s", "verify_sig_s", "parse_s", "manifest_bytes", "rss_after_import_mib",
                "peak_rss_mib"]  # fmt: skip
        parts.append(f"**scale**: {sc['chunks']:,} chunks x 64 MiB\n")
        parts.append(table(["measure", "value"],
                           [[k, f"{sc[k]:,}" if isinstance(sc[k], int) else str(sc[k])]
                            for k in keys if sc.get(k) is not None]) + "\n")  # fmt: skip
    if rg := results.get("rss_growth"):
        rows = []
        for r in rg["runs"]:
            if r.get("rc") == 0:
                rows.append([human(r["size"]), f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                             f"{r['mb_s']:,.0f}", f"{r['peak_rss_mib']:,.0f}",
                             f"{r['stored_pct']:.1f} %"])  # fmt: skip
        parts.append("**RSS growth** (weightvault seal)\n")
        parts.append(table(["input", "wall s", "CPU s", "MB/s", "peak RSS MiB", "stored"],
                           rows) + "\n")  # fmt: skip
        if "growth_mib" in rg:
            verdict = "flat (within 10 % or 16 MiB)" if rg["flat"] else "GROWS"
            parts.append(
                f"Peak RSS growth, smallest to largest input: {rg['growth_mib']:+.1f} MiB "
                f"({rg['growth_pct']:+.1f} %): {verdict}.\n"
            )
    return "\n".join(parts)


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size", type=parse_size, default=GiB,
                    help="synthetic bf16 model size (default 1GiB)")  # fmt: skip
    ap.add_argument("--no-minilm", action="store_true", help="skip the real MiniLM fp32 input")
    ap.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the side-by-side part (run only --scale / --rss-growth)",
    )
    ap.add_argument("--scale", action="store_true", help="time a 1 TB model's manifest")
    ap.add_argument(
        "--scale-chunks",
        type=int,
        default=16384,
        help="chunks of 64 MiB in the --scale manifest (default 16384 = 1 TiB)",
    )
    ap.add_argument(
        "--rss-growth",
        action="store_true",
        help="seal synthetic inputs of --rss-sizes and compare peak RSS",
    )
    ap.add_argument("--rss-sizes", default="1GiB,8GiB", help="default 1GiB,8GiB")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every tool N times and keep the fastest run (default 1)",
    )
    ap.add_argument("--tiny", action="store_true",
                    help="8 MiB synthetic, 64-chunk scale, 8/16 MiB RSS growth; MiniLM only "
                         "if already cached; for the smoke test")  # fmt: skip
    ap.add_argument(
        "--workdir",
        type=Path,
        help="keep inputs here and reuse them (default: a temporary directory)",
    )
    ap.add_argument("--keep-inputs", action="store_true", help="keep generated RSS inputs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables as well")
    ap.add_argument(
        "--install", action="store_true", help="apt-get install missing peers (root only)"
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each step wait up to S seconds for the other processes to go idle",
    )
    ap.add_argument("--strict", action="store_true", help="exit 3 if a target is missed")
    ap.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--scale-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.scale_child is not None:
        scale_child(args.scale_child, args.scale_out)
        return 0
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.tiny:
        args.size = 8 * MiB
        args.scale, args.rss_growth = True, True
        args.scale_chunks = min(args.scale_chunks, 64)
        args.rss_sizes = "8MiB,16MiB"
    rss_sizes = [parse_size(s) for s in args.rss_sizes.split(",") if s.strip()]

    own_work = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="weightvault-bench-")) if own_work else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work)
    results: dict = {
        "format": "weightvault-benchmark",
        "version": 1,
        "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tiny": args.tiny,
        "repeat": args.repeat,
        "cache": "warm: every input (and repository being read) is read once before each step",
        "machine": machine(),
        "tools": {},
        "missing": [],
        "rss_floor_mib": None,
        "audit_command": None,
        "inputs": [],
        "scale": None,
        "rss_growth": None,
        "notes": [],
    }
    failed = False
    try:
        bench.find_tools()
        bench.keygen()
        results["rss_floor_mib"] = measure(["true"])["peak_rss_mib"]
        results["tools"] = tool_versions(bench.found)
        results["missing"] = bench.missing
        results["audit_command"] = (
            "weightvault audit --level full" if bench.audit
            else "weightvault verify (objects only; `weightvault audit` does not exist yet)"
        )  # fmt: skip
        if not args.no_compare:
            log(f"generating {human(args.size)} synthetic bf16 safetensors ...")
            src = make_bf16_model(bench.input_dir(args.size), args.size)
            results["inputs"].append(bench.compare(f"synthetic bf16 {human(args.size)}",
                                                   "bf16", src))  # fmt: skip
            minilm = None if args.no_minilm else find_minilm(args.tiny, results["notes"])
            if minilm:
                results["inputs"].append(bench.compare("all-MiniLM-L6-v2 fp32 (real)",
                                                       "fp32", minilm))  # fmt: skip
        if args.scale:
            results["scale"] = bench.scale(args.scale_chunks)
        if args.rss_growth:
            results["rss_growth"] = bench.rss_growth(rss_sizes)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "runs", ignore_errors=True)

    noisy = []
    for inp in results["inputs"]:
        for s in inp["steps"]:
            if s.get("error"):
                failed = failed or s["tool"] == "weightvault"
                results["notes"].append(f"{inp['name']}: {s['step']} failed: {s['error']}")
            other = s.get("other_cpu_s") or 0
            if s.get("wall_s") and other > max(0.25, 0.15 * s["wall_s"]):
                noisy.append(
                    f"{inp['name']}: {s['step']} ({other:.1f} CPU s in {s['wall_s']:.1f} s)"
                )
    if noisy:
        results["notes"].append(
            "other processes used CPU during " + ", ".join(noisy) + ": noisy, re-run on a "
            "quiet machine (or with --repeat 3)"
        )
    if results["scale"] and results["scale"].get("error"):
        failed = True
    for r in (results["rss_growth"] or {}).get("runs", []):
        failed = failed or bool(r.get("error"))
    results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]

    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    (RESULTS / ("latest-tiny.json" if args.tiny else "latest.json")).write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    render(results)
    if args.markdown:
        print(markdown(results))
    if failed:
        return 1
    missed = [r for i in results["inputs"] for r in i["ratios"]
              if r["applies"] and r["pass"] is False]  # fmt: skip
    return 3 if args.strict and missed else 0


def find_minilm(tiny: bool, notes: list[str]) -> Path | None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.model import DEFAULT_CACHE, ENV_VAR, WEIGHTS, ensure_minilm
    except ImportError as e:
        notes.append(f"MiniLM skipped: cannot import tests/support/model.py ({e})")
        return None
    if tiny and not os.environ.get(ENV_VAR) and not (DEFAULT_CACHE / WEIGHTS).is_file():
        notes.append("MiniLM skipped in --tiny mode: not cached (python tests/support/model.py)")
        return None
    try:
        return ensure_minilm()
    except Exception as e:  # noqa: BLE001 - a benchmark input we can do without
        notes.append(f"MiniLM skipped: {e}")
        return None


if __name__ == "__main__":
    sys.exit(main())
