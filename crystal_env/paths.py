"""Where the package keeps its bundled files, downloaded data and caches."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATA_DIR = PACKAGE_DIR / "data" / "bundled"
BUNDLED_CHECKPOINT_DIR = PACKAGE_DIR / "checkpoints"


def data_dir() -> Path:
    """Directory for downloaded datasets: ``$CRYSTAL_ENV_DATA`` or ``~/.cache/crystal_env/data``."""
    return Path(os.environ.get("CRYSTAL_ENV_DATA", Path.home() / ".cache" / "crystal_env" / "data"))


def cache_dir() -> Path:
    """Directory for derived caches (parsed datasets, reference features): ``$CRYSTAL_ENV_CACHE``."""
    return Path(os.environ.get("CRYSTAL_ENV_CACHE", Path.home() / ".cache" / "crystal_env" / "cache"))


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
