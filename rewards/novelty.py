"""Uniqueness and novelty: an AMD prefilter in front of pymatgen's StructureMatcher.

``StructureMatcher`` (default tolerances, volume scaling on) is the judge. It is only asked about
candidates with the same reduced formula whose *scale-free* AMD (average minimum distances divided
by the length (V/N)^(1/3), so uniformly scaled copies coincide, as they do for the matcher) is
within ``threshold`` of the query, nearest first, stopping at the first match. AMD is an isometry
invariant that is continuous under atomic perturbations, so matching crystals have close AMDs and
distant ones need no matcher call.

Uniqueness and novelty only ever compare crystals of the same reduced formula, so fingerprints are
computed only for crystals with a same-formula partner in the batch or the reference
(:func:`crystals_with_partners`). The work runs in :mod:`rewards.parallel`'s process pool when
``num_workers`` > 1, split along formula groups, so the verdicts equal the serial ones.

``amd`` compiles its numba kernels with ``cache=True``; the compiled code is written under
``$NUMBA_CACHE_DIR`` (set, if unset, to ``cache_dir()/numba`` before ``amd`` is imported), so a new
process — a pool worker, the next run — loads it instead of compiling again (~15 s).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystal_env.paths import cache_dir
from rewards import parallel
from rewards.safety import crystal_scope

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))  # before numba configures itself
import amd  # noqa: E402  (after NUMBA_CACHE_DIR)

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
            with crystal_scope(i):  # a failing (or, in a reward, overrunning) crystal keeps its NaN row
                out[i] = amd_vector(s, k)
    return out


def crystals_with_partners(structures: Sequence[Structure | None], reference=None) -> list[int]:
    """Indices of the crystals whose reduced formula another crystal of ``structures`` or of the
    reference set (a :class:`rewards.ReferenceSet`) shares: the only ones uniqueness and novelty
    compare, so the only ones that need a fingerprint."""
    formulas = [None if s is None else s.composition.reduced_formula for s in structures]
    counts = Counter(f for f in formulas if f is not None)
    known = reference.by_formula if reference is not None else {}
    return [i for i, f in enumerate(formulas) if f is not None and (counts[f] > 1 or f in known)]


def amd_vectors_of(
    structures: Sequence[Structure | None], indices: Sequence[int], k: int = AMD_K, num_workers: int | None = 0
) -> np.ndarray:
    """(n, k) AMDs of ``structures[indices]`` (other rows NaN), in the process pool if ``num_workers`` > 1."""
    out = np.full((len(structures), k), np.nan)
    parts = parallel.chunks(indices, 4 * parallel.resolve_num_workers(num_workers))
    tasks = [([structures[i] for i in part], k) for part in parts]
    results = parallel.run(amd_vectors, tasks, num_workers, crystals=parts)
    for part, values in zip(parts, results, strict=True):
        out[part] = values
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
    num_workers: int | None = 0,
) -> np.ndarray:
    """Per crystal, the index of the first earlier crystal of the batch that matches it, or
    :data:`NO_MATCH` (unique). ``None`` entries get :data:`NO_MATCH` too; they are never unique.
    Formula groups are independent: with ``num_workers`` > 1 they are matched in the process pool."""
    out = np.full(len(structures), NO_MATCH, dtype=np.int64)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(structures):
        if s is not None:
            groups.setdefault(s.composition.reduced_formula, []).append(i)
    groups_to_match = [g for g in groups.values() if len(g) > 1]
    tasks = [([structures[i] for i in g], scale_free_amds[g], matcher, threshold) for g in groups_to_match]
    results = parallel.run(_unique_in_group, tasks, num_workers, crystals=groups_to_match)
    for group, local in zip(groups_to_match, results, strict=True):
        for j, hit in enumerate(local):
            if hit != NO_MATCH:
                out[group[j]] = group[hit]
    return out


def _unique_in_group(
    structures: Sequence[Structure], scale_free_amds: np.ndarray, matcher: StructureMatcher, threshold: float | None
) -> np.ndarray:
    """:func:`unique_matches` of crystals that all share one reduced formula (local indices)."""
    out = np.full(len(structures), NO_MATCH, dtype=np.int64)
    reduced = ReducedStructures(structures, matcher)
    earlier: list[int] = []
    for i in range(len(structures)):
        with crystal_scope(i):  # a crystal that fails here is no match target for later ones either
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
    num_workers: int | None = 0,
) -> np.ndarray:
    """Per crystal, the index of a matching reference crystal (``reference`` is a
    :class:`rewards.ReferenceSet`), or :data:`NO_MATCH` (novel, or a ``None`` entry). Crystals are
    independent: with ``num_workers`` > 1 they are matched in the process pool."""
    out = np.full(len(structures), NO_MATCH, dtype=np.int64)
    queries = [
        (i, reference.by_formula[s.composition.reduced_formula])
        for i, s in enumerate(structures)
        if s is not None and s.composition.reduced_formula in reference.by_formula
    ]
    parts = parallel.chunks(range(len(queries)), 4 * parallel.resolve_num_workers(num_workers))
    tasks = []
    for part in parts:
        batch = [queries[q] for q in part]
        tasks.append(
            (
                [structures[i] for i, _ in batch],
                scale_free_amds[[i for i, _ in batch]],
                [idx for _, idx in batch],
                [reference.scale_free_amds[idx] for _, idx in batch],
                matcher,
                threshold,
            )
        )
    crystals = [[queries[q][0] for q in part] for part in parts]
    results = parallel.run(_novel_in_reference, tasks, num_workers, reference, crystals=crystals)
    for part, hits in zip(parts, results, strict=True):
        for q, hit in zip(part, hits, strict=True):
            out[queries[q][0]] = hit
    return out


def _novel_in_reference(
    structures: Sequence[Structure],
    scale_free_amds: np.ndarray,
    candidates: Sequence[Sequence[int]],
    candidate_amds: Sequence[np.ndarray],
    matcher: StructureMatcher,
    threshold: float | None,
) -> list[int]:
    """:func:`novel_matches` of crystals that all have reference candidates (run where the reference's
    reduced structures are at hand: the parent's cache, or a pool worker's)."""
    reduced = ReducedStructures(structures, matcher)
    reference = parallel.worker_reduced_reference()
    out = [NO_MATCH] * len(structures)  # a crystal that fails keeps NO_MATCH (and is recorded as failed)
    for i in range(len(structures)):
        with crystal_scope(i):
            hit = first_match(
                reduced[i], scale_free_amds[i], reference, candidates[i], candidate_amds[i], matcher, threshold
            )
            out[i] = NO_MATCH if hit is None else hit
    return out
