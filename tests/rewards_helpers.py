"""Hand-made crystals and small reward components shared by the rewards tests."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from rewards import RewardComponent


def rock_salt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rattled(structure: Structure, sigma: float = 0.03, seed: int = 0) -> Structure:
    rng = np.random.default_rng(seed)
    s = structure.copy()
    for i in range(len(s)):
        s.translate_sites([i], rng.normal(0.0, sigma, 3), frac_coords=False)
    return s


def invalid_structures() -> list[Structure | None]:
    """None, a NaN lattice, two atoms on top of each other, and a crystal without atoms."""
    nan_lattice = Structure(Lattice(np.full((3, 3), np.nan)), ["Na"], [[0, 0, 0]])
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    empty = Structure(Lattice.cubic(4.0), [], [])
    return [None, nan_lattice, overlapping, empty]


class ConstantReward(RewardComponent):
    """A user-defined component (built through ``_target_`` in the tests): ``value`` for every crystal."""

    def __init__(self, value: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def compute(self, batch) -> torch.Tensor:
        return torch.full((len(batch),), float(self.value))


class NumAtoms(RewardComponent):
    """Number of atoms, read from a shared metric (to count how often the metric runs)."""

    required_metrics = ("test_num_atoms",)

    def compute(self, batch) -> torch.Tensor:
        return torch.as_tensor(batch.metric("test_num_atoms"), dtype=torch.float32)


class NaNForSodium(RewardComponent):
    """1 per crystal, but NaN for crystals containing Na (a component failing on some crystals)."""

    def compute(self, batch) -> torch.Tensor:
        return torch.tensor(
            [float("nan") if s is not None and "Na" in s.composition else 1.0 for s in batch.structures]
        )


#: the raw components of the shipped ``reward=dng``, in order
DNG_COMPONENTS = [
    "creativity",
    "energy",
    "structure_diversity",
    "composition_diversity",
    "smact_validity",
    "composition_uniqueness",
]
