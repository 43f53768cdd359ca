"""Where the package keeps its bundled files, downloaded data and caches."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from atomic_io import atomic_write_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATA_DIR = PACKAGE_DIR / "data" / "bundled"
BUNDLED_CHECKPOINT_DIR = PACKAGE_DIR / "checkpoints"


def data_dir() -> Path:
    """Directory for downloaded datasets: ``$CRYSTAL_ENV_DATA`` or ``~/.cache/crystal_env/data``."""
    return Path(os.environ.get("CRYSTAL_ENV_DATA", Path.home() / ".cache" / "crystal_env" / "data"))


def cache_dir() -> Path:
    """Directory for derived caches (parsed datasets, reference features): ``$CRYSTAL_ENV_CACHE``."""
    return Path(os.environ.get("CRYSTAL_ENV_CACHE", Path.home() / ".cache" / "crystal_env" / "cache"))


CACHE_MAGIC = b"crystal_env cache v1\n"


def write_cache(path: Path, value: Any) -> None:
    """Pickle ``value`` to ``path`` atomically, behind a header with the payload's sha256."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)


def read_cache(path: Path) -> tuple[bool, Any]:
    """``(True, value)`` for an intact cache file written by :func:`write_cache`, else ``(False, None)``.

    A file that exists but fails the check (truncated, emptied, bit flips, another format, a pickle
    that no longer loads) is logged, deleted and reported as a miss: a cache is never trusted.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return False, None
    head, digest, payload = (
        blob[: len(CACHE_MAGIC)],
        blob[len(CACHE_MAGIC) : len(CACHE_MAGIC) + 32],
        blob[len(CACHE_MAGIC) + 32 :],
    )
    problem = None
    if head != CACHE_MAGIC:
        problem = "unknown header" if blob else "empty file"
    elif hashlib.sha256(payload).digest() != digest:
        problem = "checksum mismatch"
    else:
        try:
            return True, pickle.loads(payload)
        except Exception as exc:  # noqa: BLE001 - e.g. classes renamed since it was written
            problem = f"unreadable pickle ({type(exc).__name__}: {exc})"
    log.warning("Cache file %s is damaged (%s); rebuilding it", path, problem)
    path.unlink(missing_ok=True)
    return False, None


def cached(path: Path, build: Callable[[], T]) -> T:
    """``build()`` memoised in the checked cache file ``path`` (rebuilt when missing or damaged)."""
    hit, value = read_cache(path)
    if not hit:
        value = build()
        write_cache(path, value)
    return value
