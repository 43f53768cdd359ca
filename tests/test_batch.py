import math

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystal_env.crystals import atoms_to_batch, batch_to_atoms, batch_to_structures, structures_to_batch
from crystal_env.crystals.validity import is_smact_valid, structure_problem


def test_structure_batch_round_trip(mp20_train):
    structures = mp20_train.structures[:16]
    batch = structures_to_batch(structures, max_atoms=20)
    assert batch["atom_types"].shape == (16, 20) and batch["atom_types"].dtype == torch.long
    assert batch["frac_coords"].shape == (16, 20, 3)
    assert batch["lengths"].shape == batch["angles"].shape == (16, 3)
    assert batch["mask"].dtype == torch.bool
    assert batch["num_atoms"].tolist() == [len(s) for s in structures]
    assert not batch["atom_types"][~batch["mask"]].any()
    matcher = StructureMatcher()
    for original, back in zip(structures, batch_to_structures(batch), strict=True):
        assert back.composition == original.composition
        assert matcher.fit(original, back)


def test_ase_round_trip(mp20_train):
    structures = mp20_train.structures[:4]
    atoms = batch_to_atoms(structures_to_batch(structures))
    again = batch_to_structures(atoms_to_batch(atoms))
    for s, t in zip(structures, again, strict=True):
        assert StructureMatcher().fit(s, t)


def test_invalid_batches_give_none_not_crash(mp20_train):
    batch = structures_to_batch(mp20_train.structures[:3])
    batch["lengths"][0, 0] = math.nan
    batch["angles"][1] = torch.tensor([0.0, 0.0, 0.0])  # flat cell, zero volume
    out = batch_to_structures(batch)
    assert out[0] is None and out[1] is None and out[2] is not None


def test_too_many_atoms_raises(mp20_train):
    big = max(mp20_train.structures, key=len)
    with pytest.raises(ValueError, match="max_atoms"):
        structures_to_batch([big], max_atoms=len(big) - 1)


def test_structure_validity_known_answers():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structure_problem(nacl) is None
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.25 Å apart
    assert structure_problem(close) == "overlapping_atoms"
    tiny = Structure(Lattice.cubic(0.3), ["Na"], [[0, 0, 0]])
    assert structure_problem(tiny) == "degenerate_lattice"
    assert structure_problem(None) == "undecodable"
    flat = Structure(Lattice(np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 1e-4]])), ["C"], [[0, 0, 0]])
    assert structure_problem(flat) is not None


def test_smact_validity_known_answers():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert is_smact_valid(nacl)
    assert is_smact_valid(nacl.composition)
    na2cl = Structure(Lattice.cubic(5.64), ["Na", "Na", "Cl"], [[0, 0, 0], [0, 0.5, 0], [0.5, 0.5, 0.5]])
    assert not is_smact_valid(na2cl)  # not charge balanced
    assert is_smact_valid(Structure(Lattice.cubic(3.0), ["Cu", "Zn"], [[0, 0, 0], [0.5, 0.5, 0.5]]))  # alloy
    assert not is_smact_valid(None)
