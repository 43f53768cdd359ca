"""Structure and composition validity checks (CDVAE conventions)."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import smact
from pymatgen.core import Composition, DummySpecies, Structure
from smact.screening import smact_validity

MIN_VOLUME_PER_ATOM = 0.1  # Å³
# Two atoms (periodic images included) closer than max(MIN_DISTANCE_FLOOR, MIN_DISTANCE_FRACTION x the sum
# of their covalent radii) overlap. The closest pair of any of the 8,080 bundled MP-20 / Perov-5 crystals
# sits at 0.63 of its radii sum (UFeGe), so 0.5 keeps every real crystal valid, while e.g. Na-Na must be
# >= 1.66 Å apart instead of the old single 0.5 Å constant. The floor keeps H-H >= 0.5 Å.
MIN_DISTANCE_FRACTION = 0.5
MIN_DISTANCE_FLOOR = 0.5  # Å
FALLBACK_COVALENT_RADIUS = 1.69  # Å, Cm's: elements beyond Cm have no tabulated covalent radius


@lru_cache(maxsize=256)
def covalent_radius(symbol: str) -> float:
    """Cordero et al. (2008) covalent radius (Å) as tabulated by pymatgen."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return float(CovalentRadius.radius.get(symbol, FALLBACK_COVALENT_RADIUS))


def min_distances(structure: Structure, species: list | None = None) -> np.ndarray:
    """(n, n) minimum allowed distances (Å) between the sites of an ordered structure."""
    radii = np.array([covalent_radius(sp.symbol) for sp in species or structure.species])
    return np.maximum(MIN_DISTANCE_FLOOR, MIN_DISTANCE_FRACTION * (radii[:, None] + radii[None, :]))


def structure_problem(structure: Structure | None, min_distance: float | None = None) -> str | None:
    """Why a crystal is structurally invalid (``None`` if it is valid).

    Invalid: missing, no atoms, disordered sites, dummy species, non-finite lattice or coordinates,
    volume ≤ 0.1 Å³/atom, or two atoms (periodic images included) closer than the per-pair minimum
    (:func:`min_distances`; ``min_distance``, if given, is one constant for every pair instead).
    """
    if structure is None:
        return "undecodable"
    if len(structure) == 0:
        return "no_atoms"
    if not structure.is_ordered:
        return "disordered"
    species = [site.specie for site in structure]
    if any(isinstance(sp, DummySpecies) for sp in species):
        return "dummy_species"
    matrix = structure.lattice.matrix
    if not np.isfinite(matrix).all() or not np.isfinite(structure.frac_coords).all():
        return "non_finite"
    volume = structure.volume
    if not math.isfinite(volume) or volume / len(structure) <= MIN_VOLUME_PER_ATOM:
        return "degenerate_lattice"
    limits = (
        np.full((len(structure),) * 2, min_distance) if min_distance is not None else min_distances(structure, species)
    )
    dist = structure.distance_matrix
    np.fill_diagonal(dist, np.inf)
    if (dist < limits).any():
        return "overlapping_atoms"
    # every atom must also stay away from its own periodic images: the shortest lattice vector
    reach = float(np.diag(limits).max())
    images = structure.lattice.get_points_in_sphere(np.zeros((1, 3)), np.zeros(3), reach)
    if any(d > 1e-8 for _, d, _, _ in images):
        return "overlapping_atoms"
    return None


def is_structurally_valid(structure: Structure | None) -> bool:
    return structure_problem(structure) is None


SMACT_OXIDATION_STATE_SETS = ("smact14", "icsd16", "icsd24", "pymatgen_sp", "wiki")
#: SMACT enumerates every combination of oxidation states, exponential in the number of elements (one
#: 10-element sample took minutes); compositions with more elements than this (MP-20 has at most 7)
#: that are not all-metal count as not charge-balanced without being screened.
MAX_SMACT_ELEMENTS = 8
_SMACT_METALS = frozenset(smact.metals)  # SMACT's own alloy rule's list


@lru_cache(maxsize=65536)
def _smact_valid_formula(formula: str, oxidation_states_set: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(smact_validity(Composition(formula), oxidation_states_set=oxidation_states_set))
        except Exception:  # noqa: BLE001 - smact raises on elements it has no data for
            return False


def is_smact_valid(composition: Composition | Structure | None, oxidation_states_set: str = "smact14") -> bool:
    """Charge-neutral with plausible oxidation states and Pauling electronegativity order (SMACT).

    ``oxidation_states_set``: ``smact14`` (default; SMACT's original table, the one CDVAE-style
    metrics use) or ``icsd24`` (the oxidation states seen in the 2024 ICSD, what Chemeleon2 uses), or
    another of SMACT's sets. Single elements and all-metal alloys count as valid; other compositions
    of more than :data:`MAX_SMACT_ELEMENTS` elements as invalid (not screened: exponential cost).
    """
    if oxidation_states_set not in SMACT_OXIDATION_STATE_SETS:
        raise ValueError(f"Unknown oxidation_states_set {oxidation_states_set!r}; valid: {SMACT_OXIDATION_STATE_SETS}")
    if composition is None:
        return False
    comp = composition.composition if isinstance(composition, Structure) else composition
    if comp.num_atoms == 0:
        return False
    if len(comp.elements) > MAX_SMACT_ELEMENTS and not {el.symbol for el in comp.elements} <= _SMACT_METALS:
        return False
    return _smact_valid_formula(comp.formula, oxidation_states_set)
