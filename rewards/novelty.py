"""Uniqueness and novelty: an AMD prefilter in front of pymatgen's StructureMatcher.

``StructureMatcher`` (default tolerances, volume scaling on) is the judge. It is only asked about
candidates with the same reduced formula whose *scale-free* AMD (average minimum distances divided
by the length (V/N)^(1/3), so uniformly scaled copies coincide, as they do for the matcher) is
within ``threshold`` of the query, nearest first, stopping at the first match. AMD is an isometry
invariant that is continuous under atomic perturbations, so matching crystals have close AMDs and
distant ones need no matcher call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import amd
import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

AMD_K = 100
PREFILTER_THRESHOLD = 0.5  # scale-free AMD distance (Chebyshev) beyond which no match is attempted


def amd_vector(structure: Structure, k: int = AMD_K) -> np.ndarray:
    """AMD (average minimum distances to the k nearest neighbours, Å) of a periodic crystal."""
    pset = amd.PeriodicSet(structure.cart_coords, structure.lattice.matrix, types=np.array(structure.atomic_numbers))
    return np.asarray(amd.AMD(pset, k), dtype=np.float64)


def amd_vectors(structures: Sequence[Structure | None], k: int = AMD_K) -> np.ndarray:
    """(n, k) AMDs; rows of ``None`` structures (or failures) are NaN."""
    out = np.full((len(structures), k), np.nan)
    for i, s in enumerate(structures):
        if s is not None:
            try:
                out[i] = amd_vector(s, k)
            except Exception:  # noqa: BLE001 - a degenerate crystal keeps its NaN row
                pass
    return out


def scale_free(amds: np.ndarray, structures: Sequence[Structure | None]) -> np.ndarray:
    lengths = np.array([np.nan if s is None else (s.volume / len(s)) ** (1 / 3) for s in structures])
    return amds / lengths[:, None]


def default_matcher() -> StructureMatcher:
    return StructureMatcher()


class ReducedStructures:
    """Structures reduced (Niggli, then primitive) once, exactly as ``StructureMatcher.fit`` does
    on every call, so that ``fit(..., skip_structure_reduction=True)`` gives the same verdicts."""

    def __init__(self, structures: Sequence[Structure | None], matcher: StructureMatcher):
        self.structures = structures
        self.matcher = matcher
        self._cache: dict[int, Structure] = {}

    def __getitem__(self, i: int) -> Structure:
        if i not in self._cache:
            m = self.matcher
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._cache[i] = m._get_reduced_structure(self.structures[i], m._primitive_cell, niggli=True)
        return self._cache[i]


def first_match(
    query: Structure,
    query_amd: np.ndarray,
    candidates: Sequence[Structure] | ReducedStructures,
    indices: Sequence[int],
    candidate_amds: np.ndarray,
    matcher: StructureMatcher,
    threshold: float | None = PREFILTER_THRESHOLD,
) -> int | None:
    """The first of ``candidates[indices]`` that the matcher matches with ``query``, or None.

    ``query`` and the candidates are *reduced* structures (see :class:`ReducedStructures`);
    ``candidate_amds`` are the scale-free AMDs of ``indices``. Candidates are tried nearest AMD
    first; those with a different number of primitive sites (never a match without supercells) or
    an AMD distance above ``threshold`` (``None``: no threshold) are skipped.
    """
    if not len(indices):
        return None
    dist = np.abs(np.asarray(candidate_amds) - query_amd[None, :]).max(axis=1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    for j in np.argsort(dist, kind="stable"):
        if threshold is not None and dist[j] > threshold:
            break
        candidate = candidates[indices[j]]
        if len(candidate) != len(query):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if matcher.fit(query, candidate, skip_structure_reduction=True):
                return int(indices[j])
    return None


def naive_first_match(query: Structure, candidates: Sequence[Structure], matcher: StructureMatcher) -> int | None:
    """The reference implementation: try every same-formula candidate in order (for benchmarks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, c in enumerate(candidates):
            if matcher.fit(query, c):
                return j
    return None


NO_MATCH = -1


def unique_matches(
    structures: Sequence[Structure | None],
    scale_free_amds: np.ndarray,
    matcher: StructureMatcher,
    threshold: float | None = PREFILTER_THRESHOLD,
) -> np.ndarray:
    """Per crystal, the index of the first earlier crystal of the batch that matches it, or
    :data:`NO_MATCH` (unique). ``None`` entries get :data:`NO_MATCH` too; they are never unique."""
    out = np.full(len(structures), NO_MATCH, dtype=np.int64)
    reduced = ReducedStructures(structures, matcher)
    seen: dict[str, list[int]] = {}
    for i, s in enumerate(structures):
        if s is None:
            continue
        earlier = seen.setdefault(s.composition.reduced_formula, [])
        if earlier:
            hit = first_match(
                reduced[i], scale_free_amds[i], reduced, earlier, scale_free_amds[earlier], matcher, threshold
            )
            out[i] = NO_MATCH if hit is None else hit
        earlier.append(i)
    return out


def novel_matches(
    structures: Sequence[Structure | None],
    scale_free_amds: np.ndarray,
    reference,
    matcher: StructureMatcher,
    threshold: float | None = PREFILTER_THRESHOLD,
) -> np.ndarray:
    """Per crystal, the index of a matching reference crystal (``reference`` is a
    :class:`rewards.ReferenceSet`), or :data:`NO_MATCH` (novel, or a ``None`` entry)."""
    out = np.full(len(structures), NO_MATCH, dtype=np.int64)
    reduced = ReducedStructures(structures, matcher)
    for i, s in enumerate(structures):
        if s is None:
            continue
        idx = reference.by_formula.get(s.composition.reduced_formula, [])
        if idx:
            hit = first_match(
                reduced[i],
                scale_free_amds[i],
                reference.reduced,
                idx,
                reference.scale_free_amds[idx],
                matcher,
                threshold,
            )
            out[i] = NO_MATCH if hit is None else hit
    return out
