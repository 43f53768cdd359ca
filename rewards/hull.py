"""Convex hulls for the energy above the hull of generated crystals.

Default: a hull of DFT *formation* energies per atom over all of the Materials Project (the bundled
Matbench ``mp_e_form`` file, 132,752 entries, see :func:`mp_hull`), plus the reference dataset's own
rows, with every pure element at 0. A generated crystal's formation energy is
``(E_MLIP − Σ n_i μ_i) / N`` with ``μ_i`` the Materials Project elemental reference energies per atom
(2023-02-07, the convention of Matbench Discovery), bundled with the package.

The hull energy at a composition x is a linear programme over the entries of its chemical system
and all of its sub-systems (each a fractional composition ``c_j`` and formation energy ``e_j``)::

    E_hull(x) = min Σ_j w_j e_j   subject to   Σ_j w_j c_j = x,  w ≥ 0

solved with HiGHS (``scipy.optimize.linprog``). It equals pymatgen's
``PhaseDiagram.get_hull_energy_per_atom`` (tested) but never builds the qhull facets, whose cost
explodes with the number of elements (a 13-element system of MP did not finish in 200 s; the LP takes
~0.1 s). Alternatively a user-supplied pickled ``PatchedPhaseDiagram`` / ``PhaseDiagram`` of
MP2020-corrected total energies is used with the total energy directly (:func:`load_phase_diagram`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element
from scipy.optimize import linprog

from crystal_env.paths import PACKAGE_DIR

REFS_DIR = PACKAGE_DIR / "data" / "refs"
ELEMENTAL_REFS_FILE = REFS_DIR / "mp_elemental_refs" / "2023-02-07-mp-elemental-reference-entries.json.gz"
MP_FORMATION_ENERGIES_FILE = REFS_DIR / "mp_formation_energies" / "mp_e_form.csv.gz"
MP_FORMATION_ENERGIES_SHA256 = "c382ef24c2fe8ef65c6d2666489db9216e4b06cc821a1e1742b704790a55608a"
NUM_ELEMENTS = 118


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


_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


def _parse_amounts(composition: Composition | str) -> dict[int, float] | None:
    """{Z: amount} of a composition; a plain formula like ``Li2O1`` is parsed without pymatgen (fast)."""
    if isinstance(composition, str) and _FORMULA_TOKEN.sub("", composition) == "":
        out: dict[int, float] = {}
        for symbol, amount in _FORMULA_TOKEN.findall(composition):
            z = _Z.get(symbol)
            if z is None:  # not an element symbol (e.g. D for deuterium): pymatgen's reading
                return _parse_amounts(Composition(composition))
            out[z] = out.get(z, 0.0) + (float(amount) if amount else 1.0)
        return out
    comp = Composition(composition)
    if any(el.Z > NUM_ELEMENTS for el in comp.elements):
        return None
    return {el.Z: float(amt) for el, amt in comp.element_composition.items()}


def _fraction_key(amounts: dict[int, float]) -> tuple[tuple[int, float], ...]:
    total = sum(amounts.values())
    return tuple(sorted((z, round(x / total, 10)) for z, x in amounts.items() if x > 0))


_Z = {el.symbol: el.Z for el in Element}


class FormationEnergyHull:
    """Lower convex hull of formation energies per atom, with every pure element at 0.

    Entries are reduced to the lowest energy per reduced formula (only the lowest polymorph can be
    on the hull) and indexed by element set as bit masks, so the candidates of any chemical system
    are found with two vectorised integer operations. Hull energies are memoised per composition.
    """

    def __init__(self, compositions: Sequence[Composition | str], e_form_per_atom: Sequence[float]):
        best: dict[tuple, tuple[str, float]] = {}
        for comp, e in zip(compositions, e_form_per_atom, strict=True):
            amounts = _parse_amounts(comp)
            if amounts is None or len(amounts) < 2 or not math.isfinite(e):
                continue
            key = _fraction_key(amounts)
            if key not in best or e < best[key][1]:
                best[key] = (str(comp) if isinstance(comp, str) else comp.formula.replace(" ", ""), float(e))
        self.formulas = [f for f, _ in best.values()]
        self.energies = np.array([e for _, e in best.values()], dtype=np.float64)
        keys = list(best)
        self._lo = np.array([_mask([z for z, _ in k], 0) for k in keys], dtype=np.uint64)
        self._hi = np.array([_mask([z for z, _ in k], 64) for k in keys], dtype=np.uint64)
        # sparse fractional compositions: entry j has (Z, fraction) pairs _z[_ptr[j]:_ptr[j+1]]
        self._ptr = np.cumsum([0] + [len(k) for k in keys])
        self._z = np.array([z for k in keys for z, _ in k], dtype=np.int64)
        self._frac = np.array([x for k in keys for _, x in k], dtype=np.float64)
        self._memo: dict[tuple, float] = {}
        self._systems: dict[frozenset[int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.formulas)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_memo", "_systems")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._memo, self._systems = {}, {}

    def _candidates(self, zs: Sequence[int]) -> np.ndarray:
        """Indices of the entries whose elements are all in ``zs`` (memoised per chemical system: the
        coverage check and the hull energy of a crystal ask for the same system)."""
        system = frozenset(zs)
        if system not in self._systems:
            lo, hi = np.uint64(_mask(zs, 0)), np.uint64(_mask(zs, 64))
            self._systems[system] = np.flatnonzero(((self._lo & ~lo) == 0) & ((self._hi & ~hi) == 0))
        return self._systems[system]

    def has_compound(self, composition: Composition | str) -> bool:
        """Whether the chemical system of ``composition`` holds at least one known compound."""
        amounts = _parse_amounts(composition)
        return bool(amounts) and bool(len(self._candidates(list(amounts))))

    def hull_energy_per_atom(self, composition: Composition | str) -> float:
        """Formation energy per atom of the hull at ``composition`` (0 for a pure element)."""
        amounts = _parse_amounts(composition)
        if not amounts or sum(amounts.values()) <= 0:
            return math.nan
        key = _fraction_key(amounts)
        if key not in self._memo:
            self._memo[key] = self._solve(key)
        return self._memo[key]

    def hull_energies(
        self,
        compositions: Sequence[Composition | str],
        solve_many: Callable[[list[tuple]], list[float | None]] | None = None,
    ) -> np.ndarray:
        """:meth:`hull_energy_per_atom` of many compositions. The linear programmes not memoised
        yet (one per distinct fractional composition) are solved by ``solve_many(keys)`` — e.g. in a
        process pool, each with :meth:`solve` — or here, and memoised. A ``None`` from ``solve_many``
        (a programme that failed) is returned as NaN and not memoised."""
        keys: list[tuple | None] = []
        for comp in compositions:
            amounts = _parse_amounts(comp)
            keys.append(_fraction_key(amounts) if amounts and sum(amounts.values()) > 0 else None)
        todo = list(dict.fromkeys(k for k in keys if k is not None and k not in self._memo))
        if todo:
            values = solve_many(todo) if solve_many is not None else self.solve(todo)
            self._memo.update((k, v) for k, v in zip(todo, values, strict=True) if v is not None)
        return np.array([self._memo.get(k, math.nan) if k is not None else math.nan for k in keys], dtype=np.float64)

    def solve(self, keys: Sequence[tuple[tuple[int, float], ...]]) -> list[float]:
        """Hull energies of fractional-composition keys (as made by :meth:`hull_energies`), not memoised."""
        return [self._solve(key) for key in keys]

    def _solve(self, key: tuple[tuple[int, float], ...]) -> float:
        zs = [z for z, _ in key]
        if len(zs) == 1:
            return 0.0
        row = {z: i for i, z in enumerate(zs)}
        cand = self._candidates(zs)
        a = np.zeros((len(zs), len(zs) + len(cand)))
        a[:, : len(zs)] = np.eye(len(zs))  # the pure elements at 0
        for col, j in enumerate(cand, start=len(zs)):
            sl = slice(self._ptr[j], self._ptr[j + 1])
            a[[row[z] for z in self._z[sl]], col] = self._frac[sl]
        cost = np.concatenate([np.zeros(len(zs)), self.energies[cand]])
        target = np.array([x for _, x in key])
        res = linprog(cost, A_eq=a, b_eq=target, bounds=(0, None), method="highs")
        return float(res.fun) if res.status == 0 else math.nan

    def e_above_hull_from_formation(self, composition: Composition | str, e_form_per_atom: float) -> float:
        """Energy above the hull (eV/atom, negative below it) of a formation energy per atom."""
        if not math.isfinite(e_form_per_atom):
            return math.nan
        return float(e_form_per_atom - self.hull_energy_per_atom(composition))

    def e_above_hull(self, composition: Composition, energy_per_atom: float) -> float:
        """Energy above the hull of an MP2020-compatible total energy per atom."""
        return self.e_above_hull_from_formation(composition, formation_energy_per_atom(composition, energy_per_atom))


def _mask(zs: Sequence[int], offset: int) -> int:
    return sum(1 << (z - 1 - offset) for z in zs if offset < z <= offset + 64)


def load_mp_formation_energies(path: str | Path = MP_FORMATION_ENERGIES_FILE) -> tuple[list[str], np.ndarray]:
    """The bundled Materials Project formulas and DFT formation energies (eV/atom), sha256-checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Materials Project formation energies not found at {path} (reinstall the package)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path == MP_FORMATION_ENERGIES_FILE and digest != MP_FORMATION_ENERGIES_SHA256:
        raise ValueError(f"{path} is damaged: sha256 {digest}, expected {MP_FORMATION_ENERGIES_SHA256}")
    frame = pd.read_csv(path)
    return frame["formula"].astype(str).tolist(), frame["target"].to_numpy(dtype=np.float64)


def composition_key(composition: Composition | str) -> tuple[tuple[int, float], ...] | None:
    """The normalised fractional composition as sorted (Z, fraction) pairs. For integer amounts (ordered
    crystals, the MP file) equal keys mean equal reduced formulas; Li0.5O0.5 and LiO share a key."""
    amounts = _parse_amounts(composition)
    return _fraction_key(amounts) if amounts and sum(amounts.values()) > 0 else None


@lru_cache(maxsize=1)
def mp_composition_keys() -> frozenset[tuple[tuple[int, float], ...]]:
    """:func:`composition_key` of every Materials Project composition in the bundled file, elements
    included (parsed without pymatgen: ~2 s instead of 15-21 s for ``Composition.reduced_formula``)."""
    formulas, _ = load_mp_formation_energies()
    return frozenset(key for f in set(formulas) if (key := composition_key(f)) is not None)


class PhaseDiagramHull:
    """A user's (Patched)PhaseDiagram of MP2020-compatible total energies."""

    def __init__(self, diagram: PhaseDiagram | PatchedPhaseDiagram):
        self.diagram = diagram
        self._elements = {el.symbol for el in diagram.elements}

    def has_compound(self, composition: Composition | str) -> bool:
        comp = Composition(composition)
        system = {el.symbol for el in comp.elements}
        return any(
            len(e.composition.elements) > 1 and {el.symbol for el in e.composition.elements} <= system
            for e in self.diagram.stable_entries
        )

    def e_above_hull(self, composition: Composition, energy_per_atom: float) -> float:
        if not math.isfinite(energy_per_atom) or not {el.symbol for el in composition.elements} <= self._elements:
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
