"""Convex hulls for the energy above the hull of generated crystals.

Default (offline): a hull of *formation* energies per atom, from a dataset's DFT formation energies
with the pure elements at 0. A generated crystal's formation energy is
``(E_MLIP − Σ n_i μ_i) / N`` with ``μ_i`` the Materials Project elemental reference energies per
atom (2023-02-07, the convention of Matbench Discovery), bundled with the package.
Alternatively a user-supplied pickled ``PatchedPhaseDiagram`` / ``PhaseDiagram`` of MP2020-corrected
total energies (e.g. built from all of the Materials Project) is used with the total energy directly.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import warnings
from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations
from pathlib import Path

from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PDEntry, PhaseDiagram
from pymatgen.core import Composition

from crystal_env.paths import PACKAGE_DIR

ELEMENTAL_REFS_FILE = (
    PACKAGE_DIR / "data" / "refs" / "mp_elemental_refs" / "2023-02-07-mp-elemental-reference-entries.json.gz"
)


@lru_cache(maxsize=1)
def elemental_reference_energies() -> dict[str, float]:
    """MP GGA(+U) reference energy per atom (eV/atom) of each element's ground state."""
    with gzip.open(ELEMENTAL_REFS_FILE, "rt") as fh:
        entries = json.load(fh)
    out = {}
    for symbol, entry in entries.items():
        n_atoms = sum(entry["composition"].values())
        out[symbol] = (entry["energy"] + entry.get("correction", 0.0)) / n_atoms
    return out


def formation_energy_per_atom(composition: Composition, energy_per_atom: float) -> float:
    """Formation energy per atom from a total energy per atom; NaN if an element has no reference."""
    refs = elemental_reference_energies()
    comp = composition.fractional_composition
    try:
        mu = sum(amount * refs[el.symbol] for el, amount in comp.items())
    except KeyError:
        return math.nan
    return energy_per_atom - mu


class FormationEnergyHull:
    """Lower convex hull of formation energies per atom, with every pure element at 0.

    Phase diagrams are built lazily, one per chemical system that is queried, from the entries
    whose elements are a subset of it, so any number of elements is fine.
    """

    def __init__(self, compositions: Sequence[Composition | str], e_form_per_atom: Sequence[float]):
        self._by_system: dict[frozenset[str], list[tuple[Composition, float]]] = {}
        for comp, e in zip(compositions, e_form_per_atom, strict=True):
            comp = Composition(comp)
            if len(comp.elements) > 1 and math.isfinite(e):
                key = frozenset(el.symbol for el in comp.elements)
                self._by_system.setdefault(key, []).append((comp, float(e)))
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_system.values())

    def _diagram(self, system: frozenset[str]) -> PhaseDiagram:
        if system not in self._diagrams:
            entries = [PDEntry(Composition({el: 1}), 0.0) for el in sorted(system)]
            for size in range(2, len(system) + 1):
                for sub in combinations(sorted(system), size):
                    entries += [
                        PDEntry(comp, e * comp.num_atoms) for comp, e in self._by_system.get(frozenset(sub), [])
                    ]
            self._diagrams[system] = PhaseDiagram(entries)
        return self._diagrams[system]

    def e_above_hull_from_formation(self, composition: Composition | str, e_form_per_atom: float) -> float:
        """Energy above the hull (eV/atom, negative below it) of a formation energy per atom."""
        comp = Composition(composition)
        if not math.isfinite(e_form_per_atom) or comp.num_atoms == 0:
            return math.nan
        system = frozenset(el.symbol for el in comp.elements)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hull_energy = self._diagram(system).get_hull_energy_per_atom(comp)
        return float(e_form_per_atom - hull_energy)

    def e_above_hull(self, composition: Composition, energy_per_atom: float) -> float:
        """Energy above the hull of an MP2020-compatible total energy per atom."""
        return self.e_above_hull_from_formation(composition, formation_energy_per_atom(composition, energy_per_atom))


class PhaseDiagramHull:
    """A user's (Patched)PhaseDiagram of MP2020-compatible total energies."""

    def __init__(self, diagram: PhaseDiagram | PatchedPhaseDiagram):
        self.diagram = diagram

    def e_above_hull(self, composition: Composition, energy_per_atom: float) -> float:
        if not math.isfinite(energy_per_atom):
            return math.nan
        entry = PDEntry(composition, energy_per_atom * composition.num_atoms)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(self.diagram.get_e_above_hull(entry, allow_negative=True))
        except (ValueError, KeyError):  # chemical system outside the diagram
            return math.nan


def load_phase_diagram(path: str | Path) -> PhaseDiagramHull:
    """Load a pickled ``PatchedPhaseDiagram`` or ``PhaseDiagram`` (e.g. built from all of MP)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Phase diagram pickle not found: {path}")
    with open(path, "rb") as fh:
        diagram = pickle.load(fh)
    if not isinstance(diagram, PhaseDiagram | PatchedPhaseDiagram):
        raise TypeError(f"{path} holds a {type(diagram).__name__}, not a (Patched)PhaseDiagram")
    return PhaseDiagramHull(diagram)
