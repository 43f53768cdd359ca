"""Generate crystals from a model in batches and write them out (CIF files, extxyz, CSV summary)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from ase.io import write as ase_write
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from tqdm.auto import tqdm

from crystal_env.crystals.validity import structure_problem
from crystal_env.models.ldm import CrystalLDM


def generate(
    model: CrystalLDM, num_samples: int, batch_size: int = 100, seed: int = 0, progress: bool = True
) -> list[Structure | None]:
    """``num_samples`` crystals from ``model``'s configured sampler; ``None`` marks undecodable ones."""
    generator = torch.Generator().manual_seed(seed)
    out: list[Structure | None] = []
    with tqdm(total=num_samples, disable=not progress, desc="sampling", unit="crystal") as bar:
        while len(out) < num_samples:
            n = min(batch_size, num_samples - len(out))
            out.extend(model.sample(n, generator=generator))
            bar.update(n)
    return out


def _space_group(structure: Structure) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
    except Exception:  # noqa: BLE001 - spglib fails on some degenerate cells
        return ""


def summarize(structures: Sequence[Structure | None], progress: bool = False) -> pd.DataFrame:
    """One row per crystal: formula, number of atoms, volume, density, space group, validity problem."""
    rows = []
    for i, s in enumerate(tqdm(structures, disable=not progress, desc="analysing", unit="crystal")):
        problem = structure_problem(s)
        if s is None:
            rows.append(
                {
                    "index": i,
                    "formula": "",
                    "num_atoms": 0,
                    "volume": float("nan"),
                    "density": float("nan"),
                    "space_group": "",
                    "problem": problem,
                }
            )
            continue
        rows.append(
            {
                "index": i,
                "formula": s.composition.reduced_formula,
                "num_atoms": len(s),
                "volume": s.volume,
                "density": s.density if s.volume > 0 else float("nan"),
                "space_group": _space_group(s) if problem is None else "",
                "problem": problem or "",
            }
        )
    return pd.DataFrame(rows)


def write_samples(structures: Sequence[Structure | None], out_dir: str | Path, progress: bool = False) -> pd.DataFrame:
    """Write ``cif/{index:05d}.cif`` per decodable crystal, ``samples.extxyz`` and ``samples.csv``."""
    out = Path(out_dir)
    (out / "cif").mkdir(parents=True, exist_ok=True)
    frame = summarize(structures, progress)
    atoms = []
    for i, s in enumerate(structures):
        if s is None:
            continue
        s.to(filename=str(out / "cif" / f"{i:05d}.cif"))
        a = AseAtomsAdaptor.get_atoms(s)
        a.info["index"] = i
        atoms.append(a)
    if atoms:
        ase_write(out / "samples.extxyz", atoms, format="extxyz")
    frame.to_csv(out / "samples.csv", index=False)
    return frame
