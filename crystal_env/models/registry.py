"""Registered model names and :func:`load_model`."""

from __future__ import annotations

from pathlib import Path

import torch

from crystal_env.models.ldm import CrystalLDM
from crystal_env.paths import BUNDLED_CHECKPOINT_DIR

REGISTERED_MODELS: dict[str, Path] = {
    "mp20_tiny": BUNDLED_CHECKPOINT_DIR / "mp20_tiny.pt",
    "perov5_tiny": BUNDLED_CHECKPOINT_DIR / "perov5_tiny.pt",
}
CHECKPOINT_FILE_NAMES = ("model.pt", "ldm.pt")


def registered_model_names() -> list[str]:
    return sorted(REGISTERED_MODELS)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A registered name's bundled file, a checkpoint file, or a run directory holding one."""
    key = str(name_or_path)
    if key in REGISTERED_MODELS:
        path = REGISTERED_MODELS[key]
        if not path.is_file():
            raise FileNotFoundError(f"Registered model {key!r} is missing its file; looked at {path}")
        return path
    path = Path(key).expanduser()
    looks_like_path = path.suffix in {".pt", ".pth", ".ckpt"} or "/" in key or path.exists()
    if not looks_like_path:
        raise ValueError(f"Unknown model {key!r}; registered names: {registered_model_names()}, or give a path")
    candidates = [path / n for n in CHECKPOINT_FILE_NAMES] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No model checkpoint for {key!r}; looked at: {[str(c) for c in candidates]}")


def load_model(name_or_path: str | Path = "mp20_tiny", device: str | torch.device = "cpu") -> CrystalLDM:
    """Load a VAE + LDM pair by registered name (e.g. ``mp20_tiny``) or checkpoint path, in eval mode."""
    path = resolve_model_path(name_or_path)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or damaged file: say which one
        raise RuntimeError(f"Model checkpoint {path} is damaged or truncated ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint that embeds the model
    return CrystalLDM.from_state(state).to(device)
