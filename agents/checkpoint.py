"""Training-run files: atomic, checksummed checkpoints with every RNG state (for exact resume), and
the run-directory lock that keeps two runs out of one directory."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomic_io import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"
# torch.save writes a zip archive; its end-of-central-directory record may carry a comment, which
# torch.load ignores. The comment holds the sha256 of the archive, so the file stays loadable by
# plain torch.load and is still checked by load_checkpoint.
_EOCD = b"PK\x05\x06"
_DIGEST_PREFIX = b"crystal-rl sha256:"
_COMMENT_LEN = len(_DIGEST_PREFIX) + 64


class CheckpointError(RuntimeError):
    """A checkpoint file that is empty, truncated or damaged."""


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory."""


def capture_rng(generators: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Global RNG states plus the given generator states (tensors from ``Generator.get_state()``)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generators": {k: v.clone() for k, v in generators.items()},
    }
    if torch.cuda.is_available():  # a policy on a GPU samples its noise from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _with_digest(archive: bytes) -> bytes:
    if archive[-22:-18] != _EOCD or archive[-2:] != b"\x00\x00":  # not the zip layout torch.save writes
        return archive
    comment = _DIGEST_PREFIX + hashlib.sha256(archive).hexdigest().encode()
    return archive[:-2] + struct.pack("<H", len(comment)) + comment


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` with a sha256 in the zip comment, written to a temp file in the same directory,
    fsynced and renamed: never a half-written file. Temp files of killed writers are removed."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, _with_digest(buf.getvalue()))


def resolve_checkpoint(path_or_dir: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``; says where it looked."""
    path = Path(path_or_dir).expanduser()
    candidates = [path / CHECKPOINT_NAME, path / "checkpoints" / CHECKPOINT_NAME] if path.is_dir() else [path]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"No checkpoint to resume from; looked at: {[str(c.resolve()) for c in candidates]}")


def read_checkpoint_bytes(path: Path) -> bytes:
    """The file's bytes after its checksum was verified; :class:`CheckpointError` naming the file if
    it is empty or damaged. Files without a checksum (older versions) are accepted with a warning."""
    blob = path.read_bytes()
    if not blob:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): it was not written completely")
    eocd = blob.rfind(_EOCD, max(0, len(blob) - 22 - _COMMENT_LEN))
    comment_len = struct.unpack("<H", blob[eocd + 20 : eocd + 22])[0] if eocd >= 0 and len(blob) >= eocd + 22 else 0
    comment = blob[eocd + 22 :] if eocd >= 0 else b""
    if eocd >= 0 and len(comment) != comment_len:
        raise CheckpointError(f"Checkpoint {path} is truncated: its zip directory promises more bytes than it has")
    if comment.startswith(_DIGEST_PREFIX):
        archive = blob[: eocd + 20] + b"\x00\x00"
        if hashlib.sha256(archive).hexdigest().encode() != comment[len(_DIGEST_PREFIX) :]:
            raise CheckpointError(f"Checkpoint {path} is damaged: its sha256 does not match the one stored in it")
    else:
        log.warning("Checkpoint %s carries no checksum (older format); loading it unchecked", path)
    return blob


def load_checkpoint(path_or_dir: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint (a file or a run directory), tensors on the CPU (``load_state_dict``
    moves them to each module's device); errors name the file."""
    path = resolve_checkpoint(path_or_dir)
    blob = read_checkpoint_bytes(path)
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling errors, ...
        raise CheckpointError(f"Checkpoint {path} is damaged or truncated ({type(exc).__name__}: {exc})") from exc


class RunDirLock:
    """An exclusive lock on a run directory (``<run_dir>/.lock``, holding the owner's pid and host).

    A second process fails fast with :class:`RunDirLockedError` naming the holder. The lock is an
    OS file lock (``flock``), so it is released whenever its holder dies, even by SIGKILL; the
    stale pid left in the file is then taken over (and reported in ``stale_holder``).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fh: io.TextIOWrapper | None = None
        self.stale_holder: str | None = None

    def acquire(self) -> RunDirLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().split() or ["unknown"]
            fh.close()
            where = f" on {holder[1]}" if len(holder) > 1 else ""
            raise RunDirLockedError(
                f"Run directory {self.path.parent} is in use by another run (pid {holder[0]}{where}); "
                "wait for it to finish, stop it, or choose another run_dir"
            ) from None
        fh.seek(0)
        previous = fh.read().split()
        # a pid left behind by a holder that died without releasing (e.g. SIGKILL): the lock is free
        self.stale_holder = previous[0] if previous and previous[0] != str(os.getpid()) else None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.truncate(0)
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
