"""Check the default hull against known answers: ``python scripts/validate_hull.py --out docs/hull_validation.json``.

1. The linear programme vs pymatgen's ``PhaseDiagram`` on random compositions of MP chemical systems
   of 3, 5 and 7 elements (largest difference, time per hull energy of each).
2. DFT formation energies of the bundled MP-20 rows placed on the hull (all of MP + the *train* rows)
   vs their own ``e_above_hull`` column (a newer database, MP2020 corrections): mean absolute
   difference, share within 0.1 eV/atom, share metastable.
3. CHGNet energies (unrelaxed) of the MP-20 test rows against the default hull (MP + all rows).
4. Textbook ground states absent from the bundled sample, at experimental lattice constants, CHGNet.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure

from crystal_env.data import load_dataset
from rewards import load_reference
from rewards.metrics import RewardBatch

SYSTEMS = [("Li", "Fe", "O"), ("Li", "Mn", "Ni", "Co", "O"), ("Li", "Na", "Mg", "Ti", "Fe", "P", "O")]


def textbook() -> dict[str, Structure]:
    rs = [[0, 0, 0], [0.5, 0.5, 0.5]]
    return {
        "MgO": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], rs),
        "LiF": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.026), ["Li", "F"], rs),
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.640), ["Na", "Cl"], rs),
        "KCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.293), ["K", "Cl"], rs),
        "CaO": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.811), ["Ca", "O"], rs),
        "GaAs": Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25] * 3]),
        "ZnS": Structure.from_spacegroup("F-43m", Lattice.cubic(5.409), ["Zn", "S"], [[0, 0, 0], [0.25] * 3]),
        "CaF2": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.463), ["Ca", "F"], [[0, 0, 0], [0.25] * 3]),
        "SrTiO3": Structure.from_spacegroup(
            "Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
        ),
    }


def lp_vs_pymatgen(hull, rng: np.random.Generator) -> list[dict]:
    rows = []
    for system in SYSTEMS:
        zs = [Composition(el).elements[0].Z for el in system]
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        for j in hull._candidates(zs):
            comp = Composition(hull.formulas[j])
            entries.append(PDEntry(comp, hull.energies[j] * comp.num_atoms))
        comps = [
            Composition(dict(zip(system, rng.integers(1, 7, len(system)).tolist(), strict=True))) for _ in range(10)
        ]
        start = time.perf_counter()
        diagram = PhaseDiagram(entries)
        ref = [diagram.get_hull_energy_per_atom(c) for c in comps]
        t_pmg = time.perf_counter() - start
        hull._memo.clear()
        start = time.perf_counter()
        lp = [hull.hull_energy_per_atom(c) for c in comps]
        t_lp = time.perf_counter() - start
        rows.append(
            {
                "elements": len(system),
                "entries": len(entries),
                "max_abs_diff": float(np.abs(np.array(ref) - np.array(lp)).max()),
                "pymatgen_s": t_pmg,
                "linprog_s": t_lp,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/hull_validation.json")
    args = p.parse_args(argv)
    reference = load_reference()
    result: dict = {
        "hull_compounds": len(reference.hull),
        "lp_vs_pymatgen": lp_vs_pymatgen(reference.hull, np.random.default_rng(0)),
    }

    held_out_hull = load_reference(hull_splits=["train"]).hull
    rows = [r for split in ("val", "test") for r in load_dataset("mp20_sample", split)]
    e_form = np.array([r.properties["formation_energy_per_atom"] for r in rows])
    true = np.array([r.properties["e_above_hull"] for r in rows])
    calc = np.array(
        [
            held_out_hull.e_above_hull_from_formation(r.structure.composition, e)
            for r, e in zip(rows, e_form, strict=True)
        ]
    )
    small = load_reference(hull_splits=["train"], hull="dataset").hull
    old = np.array(
        [small.e_above_hull_from_formation(r.structure.composition, e) for r, e in zip(rows, e_form, strict=True)]
    )
    result["dft_held_out"] = {
        "n": len(rows),
        "mean_abs_diff": float(np.abs(calc - true).mean()),
        "median_abs_diff": float(np.median(np.abs(calc - true))),
        "within_0.1": float((np.abs(calc - true) <= 0.1).mean()),
        "metastable": float((calc <= 0.1).mean()),
        "mean_calc": float(calc.mean()),
        "mean_true": float(true.mean()),
        "old_hull_mean_calc": float(old.mean()),
        "old_hull_stable": float((old <= 0).mean()),
    }
    print(result["dft_held_out"], flush=True)

    test = load_dataset("mp20_sample", "test").structures
    e_hull = RewardBatch(test, reference).metric("e_above_hull")
    result["chgnet_test_rows"] = {
        "n": len(test),
        "mean": float(np.nanmean(e_hull)),
        "median": float(np.nanmedian(e_hull)),
        "metastable": float(np.mean(e_hull <= 0.1)),
    }
    print(result["chgnet_test_rows"], flush=True)
    crystals = textbook()
    e_tb = RewardBatch(list(crystals.values()), reference).metric("e_above_hull")
    result["chgnet_textbook"] = {k: round(float(v), 4) for k, v in zip(crystals, e_tb, strict=True)}
    print(result["chgnet_textbook"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
