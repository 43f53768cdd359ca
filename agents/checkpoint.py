"""Atomic training checkpoints with every RNG state, for exact resume."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write via a temp file in the same directory and an atomic rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def resolve_checkpoint(path_or_dir: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``; says where it looked."""
    path = Path(path_or_dir).expanduser()
    candidates = [path / CHECKPOINT_NAME, path / "checkpoints" / CHECKPOINT_NAME] if path.is_dir() else [path]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"No checkpoint to resume from; looked at: {[str(c.resolve()) for c in candidates]}")


def load_checkpoint(path_or_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's payload, tensors on the CPU (``load_state_dict`` moves them to each module's device)."""
    return torch.load(resolve_checkpoint(path_or_dir), map_location="cpu", weights_only=False)
