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


CONVENTIONS = {
    "valid": "structurally valid: finite lattice, volume > 0.1 Å³/atom, no interatomic distance below the minimum",
    "unique": "no pymatgen StructureMatcher match (default tolerances) earlier in the set; as generated",
    "novel": "no StructureMatcher match among the reference dataset's crystals (all splits by default)",
    "novel_formula": "reduced formula absent from the 132,752 Materials Project entries (Matbench mp_e_form)",
    "e_above_hull": "MLIP (MP2020-compatible) energy, unrelaxed, minus the hull of all Materials Project "
    "formation energies + the reference rows, pure elements at 0 (eV/atom)",
    "e_above_hull_relaxed": "the same after an MLIP FIRE relaxation of positions and cell (relax_steps, fmax)",
    "metastable": f"E_hull <= {METASTABLE} eV/atom",
    "stable": f"E_hull <= {STABLE} eV/atom",
    "sun / msun": "stable / metastable, unique, novel and valid (uniqueness and novelty judged as generated)",
    "hull_coverage": "share of valid crystals whose chemical system holds at least one known compound",
    "smact_valid": "SMACT charge neutrality + electronegativity (oxidation-state set in smact_set)",
    "diversity": "1/(1 + Fréchet distance) between VAE features of generated and reference crystals",
}


def evaluate_structures(
    structures: Sequence[Structure | None],
    reference: ReferenceSet | None = None,
    model: str = "mp20_tiny",
    mlip: str = "chgnet",
    relax_steps: int = 0,
    fmax: float = 0.1,
    smact_set: str = "smact14",
    device: str = "cpu",
    num_workers: int | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-crystal metrics and their summary (conventions in :data:`CONVENTIONS`).

    Per crystal: structural validity, SMACT validity, unique, novel (structure) and novel_formula,
    hull coverage, energy above the hull (MLIP, unrelaxed; with ``relax_steps > 0`` also after a
    FIRE relaxation), metastable (≤ 0.1 eV/atom), stable (≤ 0), S.U.N. and M.S.U.N. Summary: their
    means, the mean and median E_hull of the crystals that have one, and structure/composition
    diversity as 1/(1 + Fréchet distance) between the VAE features of the valid generated crystals
    and of the reference. The MLIP and the VAE run on ``device``; the CPU-bound metric work in
    ``num_workers`` processes (None: every available core, 0: serial).
    """
    reference = reference or load_reference()
    batch = RewardBatch(structures, reference, device=device, num_workers=num_workers)
    unique = np.asarray(batch.metric("unique"), dtype=bool)
    novel = np.asarray(batch.metric("novel"), dtype=bool)
    valid = batch.valid.numpy()
    columns = {
        "formula": [s.composition.reduced_formula if s is not None else "" for s in structures],
        "num_atoms": [len(s) if s is not None else 0 for s in structures],
        "valid": valid,
        "problem": [p or "" for p in batch.problems],
        "smact_valid": [is_smact_valid(s, smact_set) for s in structures],
        "unique": unique,
        "novel": novel,
        "novel_formula": np.asarray(batch.metric("novel_formula"), dtype=bool),
        "hull_covered": np.asarray(batch.metric("hull_covered"), dtype=bool),
    }
    summary: dict[str, float] = {}
    variants = [("", 0)] + ([("_relaxed", relax_steps)] if relax_steps > 0 else [])
    for suffix, steps in variants:
        e_hull = batch.metric("e_above_hull", mlip=mlip, relax_steps=steps, fmax=fmax)
        finite = np.isfinite(e_hull)
        columns[f"e_above_hull{suffix}"] = e_hull
        columns[f"metastable{suffix}"] = finite & (e_hull <= METASTABLE) & valid
        columns[f"stable{suffix}"] = finite & (e_hull <= STABLE) & valid
        columns[f"sun{suffix}"] = columns[f"stable{suffix}"] & unique & novel
        columns[f"msun{suffix}"] = columns[f"metastable{suffix}"] & unique & novel
        summary[f"mean_e_above_hull{suffix}"] = float(np.nanmean(e_hull)) if finite.any() else float("nan")
        summary[f"median_e_above_hull{suffix}"] = float(np.nanmedian(e_hull)) if finite.any() else float("nan")
    frame = pd.DataFrame(columns)
    for col in frame.columns:
        if frame[col].dtype == bool and col not in ("hull_covered",):
            summary[col] = float(frame[col].mean())
    summary["hull_coverage"] = float(frame["hull_covered"][valid].mean()) if valid.any() else float("nan")
    summary["n"] = len(structures)
    summary["distinct_formulas"] = int(frame["formula"][valid].nunique())
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
