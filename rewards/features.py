"""VAE features of crystals for the diversity rewards, and the process-wide model cache."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from pymatgen.core import Structure

from crystal_env import CrystalLDM, load_model

FEATURE_KINDS = ("structure", "composition")


@lru_cache(maxsize=4)
def _load(name_or_path: str, device: str) -> CrystalLDM:
    return load_model(name_or_path, device=device).eval()


def get_model(model: str | Path | CrystalLDM = "mp20_tiny", device: str = "cpu") -> CrystalLDM:
    """A VAE + LDM by registered name or path on ``device``, loaded once per process and device
    (instances pass through, on their own device)."""
    return model if isinstance(model, CrystalLDM) else _load(str(model), str(device))


@torch.no_grad()
def vae_features(
    structures: Sequence[Structure | None], model: CrystalLDM, kind: str, chunk: int = 256
) -> torch.Tensor:
    """(n, d) features; NaN rows for ``None`` crystals and crystals larger than the model's max_atoms.

    ``structure``: mean over atoms of the normalised latent means (d = latent_dim);
    ``composition``: mean over atoms of the VAE's atom-type embeddings (d = d_model).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"Unknown feature kind {kind!r}; valid: {list(FEATURE_KINDS)}")
    dim = model.latent_dim if kind == "structure" else model.vae.config.d_model
    out = torch.full((len(structures), dim), float("nan"))
    keep = [i for i, s in enumerate(structures) if s is not None and 0 < len(s) <= model.max_atoms]
    table = model.vae.element_table().cpu() if kind == "composition" else None  # per-crystal lookups
    for start in range(0, len(keep), chunk):
        idx = keep[start : start + chunk]
        subset = [structures[i] for i in idx]
        if kind == "structure":
            z, mask = model.encode(subset)
            m = mask[..., None].to(z.dtype)
            feats = (z * m).sum(1) / m.sum(1)
        else:
            feats = torch.stack([table[torch.as_tensor(s.atomic_numbers)].mean(0) for s in subset])
        out[idx] = feats.float().cpu()
    return out
