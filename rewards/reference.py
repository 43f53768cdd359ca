"""The reference set rewards compare against: known crystals (novelty, diversity) and a hull (energy).

Preprocessing (structures grouped by reduced formula, AMD vectors, the hull, VAE features per
model) is computed on first use and cached on disk under ``cache_dir()/rewards``, keyed by a hash
of its inputs (the crystals' coordinates, the hull's energies, the VAE checkpoint's bytes).

Default (:func:`load_reference`): the bundled MP-20 sample. Novelty and diversity are measured
against all three of its splits (as the reference implementation and the literature count novelty);
the hull is every Materials Project formation energy in the bundled ``mp_e_form`` file plus the DFT
formation energies of the dataset's rows, with the pure elements at 0 (:func:`rewards.hull.mp_hull`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystal_env.data import load_dataset
from crystal_env.data.csv_reader import file_sha256
from crystal_env.models import CrystalLDM
from crystal_env.models.registry import resolve_model_path
from crystal_env.paths import cache_dir, cached
from rewards import features, novelty
from rewards.hull import (
    MP_FORMATION_ENERGIES_SHA256,
    FormationEnergyHull,
    PhaseDiagramHull,
    load_mp_formation_energies,
    load_phase_diagram,
)
from rewards.safety import suspended

CACHE_VERSION = 3  # 3: checksummed cache files
HULLS = ("mp", "dataset")
ALL_SPLITS = ("train", "val", "test")
DEFAULT_REFERENCE_DATASET = "mp20_sample"  # a reward config's reference.dataset when neither it nor an env names one
MAX_REFERENCE_FEATURES = 50_000


def structures_key(structures: Sequence[Structure]) -> str:
    digest = hashlib.sha256()
    for s in structures:
        digest.update(np.ascontiguousarray(s.lattice.matrix, dtype=np.float64).tobytes())
        digest.update(np.asarray(s.atomic_numbers, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(s.frac_coords, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _cached(kind: str, key: str, build):
    """``build()`` memoised on disk as ``cache_dir()/rewards/<kind>-<hash>.pkl``."""
    path = cache_dir() / "rewards" / f"{kind}-{hashlib.sha256(f'{key}|{CACHE_VERSION}'.encode()).hexdigest()[:24]}.pkl"
    with suspended():  # one-off preprocessing: not charged to the crystals being scored
        return cached(path, build)  # checksummed; a damaged file is rebuilt, never trusted


class ReferenceSet:
    """Known crystals (for novelty and diversity) and a hull (for the energy above it)."""

    def __init__(
        self,
        structures: Sequence[Structure],
        hull: FormationEnergyHull | PhaseDiagramHull | None = None,
        name: str = "custom",
        max_features: int = MAX_REFERENCE_FEATURES,
        matcher: StructureMatcher | None = None,
        use_disk_cache: bool = True,
    ):
        self.structures = list(structures)
        self.name = name
        self.key = structures_key(self.structures)
        self.max_features = max_features
        self.matcher = matcher or novelty.default_matcher()
        self.use_disk_cache = use_disk_cache
        self.hull = hull if hull is not None else FormationEnergyHull([], [])
        self.by_formula: dict[str, list[int]] = {}
        for i, s in enumerate(self.structures):
            self.by_formula.setdefault(s.composition.reduced_formula, []).append(i)
        self.reduced = novelty.ReducedStructures(self.structures, self.matcher)  # for StructureMatcher
        self._features: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def __repr__(self) -> str:
        return f"ReferenceSet(name={self.name!r}, structures={len(self)}, hull={type(self.hull).__name__})"

    @cached_property
    def amds(self) -> np.ndarray:
        """(n, 100) AMD vectors of the reference crystals."""
        build = lambda: novelty.amd_vectors(self.structures)  # noqa: E731
        if self.use_disk_cache:
            return _cached("amd", self.key, build)
        with suspended():
            return build()

    @cached_property
    def scale_free_amds(self) -> np.ndarray:
        return novelty.scale_free(self.amds, self.structures)

    def formula_amds(self, formula: str) -> np.ndarray:
        """AMD vectors (Å) of the reference crystals with this reduced formula."""
        return self.amds[self.by_formula.get(formula, [])]

    def vae_features(self, model: str | Path | CrystalLDM, kind: str, device: str = "cpu") -> torch.Tensor:
        """VAE features of (at most ``max_features``, a fixed random subset of) the reference crystals
        (computed on ``device`` when not cached; returned on the CPU)."""
        mem_key = (id(model) if isinstance(model, CrystalLDM) else str(model), kind)
        if mem_key not in self._features:

            def build() -> torch.Tensor:
                feats = features.vae_features(self.structures, features.get_model(model, device), kind)
                feats = feats[torch.isfinite(feats).all(1)]
                if len(feats) > self.max_features:
                    keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
                    feats = feats[keep[: self.max_features]]
                return feats

            if self.use_disk_cache and not isinstance(model, CrystalLDM):
                model_hash = file_sha256(resolve_model_path(model))
                disk_key = f"{self.key}|{model_hash}|{kind}|{self.max_features}"
                self._features[mem_key] = _cached("vae", disk_key, build)
            else:
                with suspended():
                    self._features[mem_key] = build()
        return self._features[mem_key]


def dataset_hull(dataset: str, splits: Sequence[str], max_atoms: int, hull: str = "mp") -> FormationEnergyHull:
    """Hull of a dataset's DFT ``formation_energy_per_atom`` (all rows of ``splits``), elements at 0.

    ``hull="mp"`` (default) adds every Materials Project entry of the bundled ``mp_e_form`` file;
    ``hull="dataset"`` uses the dataset's rows alone (only meaningful for a dataset that covers its
    chemistry, e.g. for tests).
    """
    if hull not in HULLS:
        raise ValueError(f"Unknown hull {hull!r}; valid: {list(HULLS)}")
    comps, energies = [], []
    for split in splits:
        ds = load_dataset(dataset, split, max_atoms=max_atoms)
        if "formation_energy_per_atom" not in ds.property_names:
            continue
        comps += [r.structure.composition.formula.replace(" ", "") for r in ds]
        energies += ds.property_values("formation_energy_per_atom").tolist()
    key = hashlib.sha256(repr((comps, energies)).encode()).hexdigest()
    if hull == "mp":
        key += MP_FORMATION_ENERGIES_SHA256

        def build() -> FormationEnergyHull:
            mp_formulas, mp_energies = load_mp_formation_energies()
            return FormationEnergyHull(mp_formulas + comps, mp_energies.tolist() + energies)

    else:

        def build() -> FormationEnergyHull:
            return FormationEnergyHull(comps, energies)

    return _cached(f"hull-{hull}", key, build)


def load_reference(
    dataset: str = "mp20_sample",
    novelty_splits: Sequence[str] = ALL_SPLITS,
    hull_splits: Sequence[str] = ALL_SPLITS,
    phase_diagram: str | None = None,
    max_atoms: int = 20,
    max_features: int = MAX_REFERENCE_FEATURES,
    hull: str = "mp",
) -> ReferenceSet:
    """A dataset's reference set, built once per process (and its preprocessing cached on disk).

    ``novelty_splits``: the known crystals of novelty and diversity (default all splits).
    ``hull``: ``mp`` (all of the Materials Project + the dataset's rows) or ``dataset`` (its rows only).
    ``phase_diagram``: path to a pickled ``PatchedPhaseDiagram`` of MP2020-compatible total energies
    to use instead of the formation-energy hull.
    """
    for split in (*novelty_splits, *hull_splits):
        if split not in ALL_SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid: {list(ALL_SPLITS)}")
    return _load_reference(
        dataset, tuple(novelty_splits), tuple(hull_splits), phase_diagram, max_atoms, max_features, hull
    )


@lru_cache(maxsize=4)
def _load_reference(
    dataset: str,
    novelty_splits: tuple[str, ...],
    hull_splits: tuple[str, ...],
    phase_diagram: str | None,
    max_atoms: int,
    max_features: int,
    hull: str,
) -> ReferenceSet:
    structures = [s for split in novelty_splits for s in load_dataset(dataset, split, max_atoms=max_atoms).structures]
    hull_obj = (
        load_phase_diagram(phase_diagram) if phase_diagram else dataset_hull(dataset, hull_splits, max_atoms, hull)
    )
    ref = ReferenceSet(structures, hull_obj, name=dataset, max_features=max_features)
    _ = ref.amds  # the novelty checks need them on every call
    return ref
