"""Atomic file writes shared by every layer (agents' checkpoints, the env's caches and models): a
leaf package with no imports from the project, so ``agents`` and ``crystal_env`` both use it without
depending on each other."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "pid_alive", "remove_stale_temp_files"]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` siblings of ``path`` left by writers that died mid-write."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temp file, fsync and rename, so readers never see half a
    file; temp files of writers that were killed mid-write are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    remove_stale_temp_files(path)
