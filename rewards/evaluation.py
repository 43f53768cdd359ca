"""Set-level evaluation of generated crystals, built from the same metric code the rewards use."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser
from scipy import linalg
from tqdm.auto import tqdm

from crystal_env.crystals.validity import is_smact_valid, structure_problem
from rewards.metrics import RewardBatch
from rewards.reference import ReferenceSet, load_reference
from rewards.safety import DEFAULT_CRYSTAL_TIMEOUT

METASTABLE = 0.1  # eV/atom
STABLE = 0.0


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (as in FID)."""
    x, y = x.double().numpy(), y.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():  # few samples: a singular product; FID takes the real part all the same
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = np.asarray(linalg.sqrtm(cov_x @ cov_y)).real  # ``disp=``: deprecated in SciPy 1.17, gone after
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
    crystal_timeout: float | None = DEFAULT_CRYSTAL_TIMEOUT,
    progress: bool = False,
    device: str = "cpu",
    num_workers: int | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-crystal metrics and their summary (conventions in :data:`CONVENTIONS`).

    Per crystal: structural validity, SMACT validity, unique, novel (structure) and novel_formula,
    hull coverage, energy above the hull (MLIP, unrelaxed; with ``relax_steps > 0`` also after a
    FIRE relaxation), metastable (≤ 0.1 eV/atom), stable (≤ 0), S.U.N. and M.S.U.N. Summary: their
    means, the mean and median E_hull of the crystals that have one, and structure/composition
    diversity as 1/(1 + Fréchet distance) between the VAE features of the valid generated crystals
    and of the reference. A crystal a metric cannot handle (an error, or more than ``crystal_timeout``
    seconds) counts as not unique / not novel / without E_hull, with the reason in ``problem``; a
    crystal the MLIP could not relax keeps its unrelaxed energy as the relaxed one, said in ``problem``.
    ``progress`` shows a bar over these stages. The MLIP and the VAE run on ``device``; the CPU-bound
    metric work in ``num_workers`` processes (None: every available core, 0: serial).
    """
    variants = [("", 0)] + ([("_relaxed", relax_steps)] if relax_steps > 0 else [])
    bar = tqdm(total=3 + len(variants), disable=not progress, desc="evaluation", unit="stage", postfix="reference")

    def stage(name: str) -> None:  # the previous stage is done
        bar.update()
        bar.set_postfix_str(name)

    reference = reference or load_reference()
    batch = RewardBatch(structures, reference, crystal_timeout, device=device, num_workers=num_workers)
    structures = batch.structures  # sanitised: oxidation-state-decorated species as plain elements

    def ok(metric: str) -> np.ndarray:  # crystals that did not fail (error, time budget) in ``metric``
        out = np.ones(len(batch), dtype=bool)
        out[list(batch.failed_in([metric]))] = False
        return out

    stage("uniqueness, novelty")
    unique = np.asarray(batch.metric("unique"), dtype=bool) & ok("unique")
    novel = np.asarray(batch.metric("novel"), dtype=bool) & ok("novel")
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
    for suffix, steps in variants:
        relaxing = f", {steps} FIRE steps" if steps else ""
        stage(f"{mlip} energies of {int(batch.valid.sum())} valid crystals{relaxing}")
        e_hull = np.where(
            ok("e_above_hull"), batch.metric("e_above_hull", mlip=mlip, relax_steps=steps, fmax=fmax), np.nan
        )
        finite = np.isfinite(e_hull)
        columns[f"e_above_hull{suffix}"] = e_hull
        columns[f"metastable{suffix}"] = finite & (e_hull <= METASTABLE) & valid
        columns[f"stable{suffix}"] = finite & (e_hull <= STABLE) & valid
        columns[f"sun{suffix}"] = columns[f"stable{suffix}"] & unique & novel
        columns[f"msun{suffix}"] = columns[f"metastable{suffix}"] & unique & novel
        summary[f"mean_e_above_hull{suffix}"] = float(np.nanmean(e_hull)) if finite.any() else float("nan")
        summary[f"median_e_above_hull{suffix}"] = float(np.nanmedian(e_hull)) if finite.any() else float("nan")
    for i, reason in batch.failed_in(list(batch.failures)).items():  # every metric that failed on a crystal
        columns["problem"][i] = columns["problem"][i] or reason
    for i, (_, text) in batch.notes.items():  # values kept but computed otherwise (an unrelaxed "relaxed" energy)
        columns["problem"][i] = columns["problem"][i] or text
    frame = pd.DataFrame(columns)
    for col in frame.columns:
        if frame[col].dtype == bool and col not in ("hull_covered",):
            summary[col] = float(frame[col].mean())
    summary["hull_coverage"] = float(frame["hull_covered"][valid].mean()) if valid.any() else float("nan")
    summary["n"] = len(structures)
    summary["distinct_formulas"] = int(frame["formula"][valid].nunique())
    stage("diversity")
    for kind, key in (("structure", "vae_structure_features"), ("composition", "vae_composition_features")):
        gen = batch.metric(key, model=model)
        gen = gen[torch.isfinite(gen).all(1)]
        ref = reference.vae_features(model, kind, device=device)
        summary[f"{kind}_diversity"] = 1.0 / (1.0 + frechet_distance(gen, ref)) if len(gen) > 1 else float("nan")
    bar.update()
    bar.close()
    return frame, summary


@dataclass
class CrystalFiles:
    """Crystals read from files: the usable ones, their file names, and the skipped files' reasons."""

    structures: list[Structure]
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


UNHANDLED_PROBLEMS = ("disordered", "dummy_species")  # not a generated crystal's flaw: the file's


def read_crystal_files(path: str | Path) -> CrystalFiles:
    """Crystals from a folder of CIFs (or its ``cif/`` subfolder, as written by ``scripts/sample.py``)
    or from a CSV with a ``cif`` column. Files that cannot be read, or hold disordered sites or dummy
    species, are skipped with their reason; nothing in a file makes this fail."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        frame = pd.read_csv(path)
        if "cif" not in frame.columns:
            raise ValueError(f"{path} has no 'cif' column; columns: {list(frame.columns)}")
        ids = frame["material_id"].astype(str) if "material_id" in frame.columns else frame.index.astype(str)
        texts = list(zip(ids, frame["cif"].astype(str), strict=True))
    else:
        folder = path / "cif" if (path / "cif").is_dir() else path
        files = sorted(folder.glob("*.cif"))
        if not files:
            raise FileNotFoundError(f"No CIF files in {folder} (and {path} is not a CSV with a 'cif' column)")
        texts = [(f.name, f.read_bytes().decode("utf-8", errors="replace")) for f in files]
    out = CrystalFiles([], [])
    for name, text in texts:
        structure, reason = _parse(text)
        if structure is not None and structure_problem(structure) in UNHANDLED_PROBLEMS:
            structure, reason = None, str(structure_problem(structure))
        if structure is None:
            out.skipped[name] = reason or "unreadable"
        else:
            out.structures.append(structure)
            out.names.append(name)
    return out


def _parse(cif: str) -> tuple[Structure | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(cif).parse_structures(primitive=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is skipped and counted, not fatal
        return None, f"unreadable ({type(exc).__name__})"
    if not structures:
        return None, "unreadable (no structure)"
    return structures[0], None
