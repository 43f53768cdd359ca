"""The reference set rewards compare against: known crystals (novelty, diversity) and a hull (energy).

Preprocessing (structures grouped by reduced formula, AMD vectors, the hull, VAE features per
model) is computed on first use and cached on disk under ``cache_dir()/rewards``, keyed by a hash
of its inputs (the crystals' coordinates, the hull's energies, the VAE checkpoint's bytes).

Default (:func:`load_reference`): the bundled MP-20 sample. Novelty and diversity are measured
against its *train* split (the crystals the generator was trained on); the hull is built from the
DFT formation energies of all three splits plus the pure elements at 0.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystal_env import CrystalLDM
from crystal_env.data import load_dataset
from crystal_env.data.csv_reader import file_sha256
from crystal_env.models.registry import resolve_model_path
from crystal_env.paths import atomic_write_bytes, cache_dir
from rewards import features, novelty
from rewards.hull import FormationEnergyHull, PhaseDiagramHull, load_phase_diagram

CACHE_VERSION = 1
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
    if path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    value = build()
    atomic_write_bytes(path, pickle.dumps(value))
    return value


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
        return _cached("amd", self.key, build) if self.use_disk_cache else build()

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
                self._features[mem_key] = build()
        return self._features[mem_key]


def dataset_hull(dataset: str, splits: Sequence[str], max_atoms: int) -> FormationEnergyHull:
    """Hull of a dataset's DFT ``formation_energy_per_atom`` (all rows of ``splits``), elements at 0."""
    comps, energies = [], []
    for split in splits:
        ds = load_dataset(dataset, split, max_atoms=max_atoms)
        comps += [r.structure.composition.formula for r in ds]
        energies += ds.property_values("formation_energy_per_atom").tolist()
    key = hashlib.sha256(repr((comps, energies)).encode()).hexdigest()
    return _cached("hull", key, lambda: FormationEnergyHull(comps, energies))


def load_reference(
    dataset: str = "mp20_sample",
    novelty_splits: Sequence[str] = ("train",),
    hull_splits: Sequence[str] = ("train", "val", "test"),
    phase_diagram: str | None = None,
    max_atoms: int = 20,
    max_features: int = MAX_REFERENCE_FEATURES,
) -> ReferenceSet:
    """A dataset's reference set, built once per process (and its preprocessing cached on disk).

    ``phase_diagram``: path to a pickled ``PatchedPhaseDiagram`` of MP2020-compatible total energies
    to use instead of the dataset's formation-energy hull.
    """
    return _load_reference(dataset, tuple(novelty_splits), tuple(hull_splits), phase_diagram, max_atoms, max_features)


@lru_cache(maxsize=4)
def _load_reference(
    dataset: str,
    novelty_splits: tuple[str, ...],
    hull_splits: tuple[str, ...],
    phase_diagram: str | None,
    max_atoms: int,
    max_features: int,
) -> ReferenceSet:
    structures = [s for split in novelty_splits for s in load_dataset(dataset, split, max_atoms=max_atoms).structures]
    hull = load_phase_diagram(phase_diagram) if phase_diagram else dataset_hull(dataset, hull_splits, max_atoms)
    ref = ReferenceSet(structures, hull, name=dataset, max_features=max_features)
    _ = ref.amds  # the novelty checks need them on every call
    return ref
