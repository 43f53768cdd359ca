"""Set-level evaluation of generated crystals, built from the same metric code the rewards use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure
from scipy import linalg

from crystal_env.crystals.validity import is_smact_valid
from rewards.metrics import RewardBatch
from rewards.reference import ReferenceSet, load_reference

METASTABLE = 0.1  # eV/atom
STABLE = 0.0


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (as in FID)."""
    x, y = x.double().numpy(), y.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_x @ cov_y, disp=False)
    covmean = covmean.real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * covmean))


def evaluate_structures(
    structures: Sequence[Structure | None],
    reference: ReferenceSet | None = None,
    model: str = "mp20_tiny",
    mlip: str = "chgnet",
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-crystal metrics and their summary.

    Per crystal: structural validity, SMACT validity, unique (no StructureMatcher match earlier in
    the set), novel (no match in the reference), energy above the reference hull (MLIP), metastable
    (≤ 0.1 eV/atom), stable (≤ 0), S.U.N. and M.S.U.N. Summary: their means, the mean e_hull of the
    crystals that have one, and structure/composition diversity as 1/(1 + Fréchet distance) between
    the VAE features of the valid generated crystals and of the reference. The MLIP and the VAE
    run on ``device``.
    """
    reference = reference or load_reference()
    batch = RewardBatch(structures, reference, device=device)
    e_hull = batch.metric("e_above_hull", mlip=mlip)
    unique = np.asarray(batch.metric("unique"), dtype=bool)
    novel = np.asarray(batch.metric("novel"), dtype=bool)
    valid = batch.valid.numpy()
    finite = np.isfinite(e_hull)
    metastable = finite & (e_hull <= METASTABLE)
    stable = finite & (e_hull <= STABLE)
    frame = pd.DataFrame(
        {
            "formula": [s.composition.reduced_formula if s is not None else "" for s in structures],
            "num_atoms": [len(s) if s is not None else 0 for s in structures],
            "valid": valid,
            "problem": [p or "" for p in batch.problems],
            "smact_valid": [is_smact_valid(s) for s in structures],
            "unique": unique & valid,
            "novel": novel & valid,
            "e_above_hull": e_hull,
            "metastable": metastable,
            "stable": stable,
            "sun": stable & unique & novel & valid,
            "msun": metastable & unique & novel & valid,
        }
    )
    summary = {
        col: float(frame[col].mean())
        for col in ("valid", "smact_valid", "unique", "novel", "metastable", "stable", "sun", "msun")
    }
    summary["mean_e_above_hull"] = float(np.nanmean(e_hull)) if finite.any() else float("nan")
    summary["n"] = len(structures)
    for kind, key in (("structure", "vae_structure_features"), ("composition", "vae_composition_features")):
        gen = batch.metric(key, model=model)
        gen = gen[torch.isfinite(gen).all(1)]
        ref = reference.vae_features(model, kind, device=device)
        summary[f"{kind}_diversity"] = 1.0 / (1.0 + frechet_distance(gen, ref)) if len(gen) > 1 else float("nan")
    return frame, summary


def read_structures(path: str | Path) -> list[Structure | None]:
    """Crystals from a folder of CIFs (or its ``cif/`` subfolder, as written by ``scripts/sample.py``)
    or from a CSV with a ``cif`` column; an unreadable file becomes ``None``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        return [_parse(text) for text in pd.read_csv(path)["cif"]]
    folder = path / "cif" if (path / "cif").is_dir() else path
    files = sorted(folder.glob("*.cif"))
    if not files:
        raise FileNotFoundError(f"No CIF files in {folder} (and {path} is not a CSV with a 'cif' column)")
    return [_parse(f.read_text()) for f in files]


def _parse(cif: str) -> Structure | None:
    try:
        return Structure.from_str(cif, fmt="cif")
    except Exception:  # noqa: BLE001 - an unreadable crystal is counted as invalid, not fatal
        return None
