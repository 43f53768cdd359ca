"""Structure and composition validity checks (CDVAE conventions)."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Structure
from smact.screening import smact_validity

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME_PER_ATOM = 0.1  # Å³


def structure_problem(structure: Structure | None, min_distance: float = MIN_DISTANCE) -> str | None:
    """Why a crystal is structurally invalid (``None`` if it is valid).

    Invalid: missing, no atoms, non-finite lattice, volume ≤ 0.1 Å³/atom, or two atoms (periodic
    images included) closer than ``min_distance``.
    """
    if structure is None:
        return "undecodable"
    if len(structure) == 0:
        return "no_atoms"
    matrix = structure.lattice.matrix
    if not np.isfinite(matrix).all() or not np.isfinite(structure.frac_coords).all():
        return "non_finite"
    volume = structure.volume
    if not math.isfinite(volume) or volume / len(structure) <= MIN_VOLUME_PER_ATOM:
        return "degenerate_lattice"
    dist = structure.distance_matrix
    if len(structure) > 1:
        np.fill_diagonal(dist, np.inf)
        if dist.min() < min_distance:
            return "overlapping_atoms"
    # a lone atom (or any atom) must also stay away from its own periodic images
    if min(structure.lattice.abc) < min_distance:
        return "overlapping_atoms"
    return None


def is_structurally_valid(structure: Structure | None) -> bool:
    return structure_problem(structure) is None


SMACT_OXIDATION_STATE_SETS = ("smact14", "icsd16", "icsd24", "pymatgen_sp", "wiki")


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
    another of SMACT's sets. Single elements and all-metal alloys count as valid.
    """
    if oxidation_states_set not in SMACT_OXIDATION_STATE_SETS:
        raise ValueError(f"Unknown oxidation_states_set {oxidation_states_set!r}; valid: {SMACT_OXIDATION_STATE_SETS}")
    if composition is None:
        return False
    comp = composition.composition if isinstance(composition, Structure) else composition
    if comp.num_atoms == 0:
        return False
    return _smact_valid_formula(comp.formula, oxidation_states_set)
