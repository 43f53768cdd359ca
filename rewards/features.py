"""VAE features of crystals for the diversity rewards, and the process-wide model cache."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from pymatgen.core import Structure

from crystal_env.crystals.batch import MAX_ATOMIC_NUMBER
from crystal_env.models import CrystalLDM, load_model
from rewards.safety import note_failure, suspended

FEATURE_KINDS = ("structure", "composition")


@lru_cache(maxsize=4)
def _load(name_or_path: str, device: str) -> CrystalLDM:
    return load_model(name_or_path, device=device).eval()


def get_model(model: str | Path | CrystalLDM = "mp20_tiny", device: str = "cpu") -> CrystalLDM:
    """A VAE + LDM by registered name or path on ``device``, loaded once per process and device
    (instances pass through, on their own device)."""
    if isinstance(model, CrystalLDM):
        return model
    with suspended():  # loading (once per process) is not charged to the crystals being scored
        return _load(str(model), str(device))


def encodable(structures: Sequence[Structure | None], model: CrystalLDM) -> list[int]:
    """Indices of the crystals the VAE can encode; the others (too many atoms, elements beyond its
    table) are recorded as failed in the current reward computation."""
    keep = []
    for i, s in enumerate(structures):
        if s is None or len(s) == 0:
            continue
        if len(s) > model.max_atoms:
            note_failure(i, f"{len(s)} atoms, more than the VAE's max_atoms ({model.max_atoms})")
        elif max(s.atomic_numbers) > MAX_ATOMIC_NUMBER:
            unknown = sorted({el.symbol for el in s.composition.elements if el.Z > MAX_ATOMIC_NUMBER})
            note_failure(i, f"element(s) {unknown} unknown to the VAE (Z > {MAX_ATOMIC_NUMBER})")
        else:
            keep.append(i)
    return keep


@torch.no_grad()
def vae_features(
    structures: Sequence[Structure | None], model: CrystalLDM, kind: str, chunk: int = 256
) -> torch.Tensor:
    """(n, d) features; NaN rows for ``None`` crystals and those the VAE cannot encode (:func:`encodable`).

    ``structure``: mean over atoms of the normalised latent means (d = latent_dim);
    ``composition``: mean over atoms of the VAE's atom-type embeddings (d = d_model).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"Unknown feature kind {kind!r}; valid: {list(FEATURE_KINDS)}")
    dim = model.latent_dim if kind == "structure" else model.vae.config.d_model
    out = torch.full((len(structures), dim), float("nan"))
    keep = encodable(structures, model)
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
