"""Padded crystal batches as TensorDicts, and conversions to/from pymatgen and ASE.

Keys: ``atom_types`` (B, N) long (0 = padding), ``frac_coords`` (B, N, 3), ``lengths`` (B, 3) Å,
``angles`` (B, 3) degrees, ``mask`` (B, N) bool, ``num_atoms`` (B,) long.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tensordict import TensorDict

MAX_ATOMIC_NUMBER = 100
ATOM_KEYS = ("atom_types", "frac_coords", "mask")  # the per-atom entries, (B, N, ...)


def structures_to_batch(structures: Sequence[Structure], max_atoms: int | None = None) -> TensorDict:
    """Pad ``structures`` into a batch; ``max_atoms`` fixes N (default: the largest structure)."""
    if len(structures) == 0:
        raise ValueError("structures_to_batch needs at least one structure")
    sizes = [len(s) for s in structures]
    n_max = max_atoms if max_atoms is not None else max(sizes)
    if max(sizes) > n_max:
        raise ValueError(f"A structure has {max(sizes)} sites, more than max_atoms={n_max}")
    bsz = len(structures)
    atom_types = torch.zeros(bsz, n_max, dtype=torch.long)
    frac = torch.zeros(bsz, n_max, 3)
    lengths = torch.zeros(bsz, 3)
    angles = torch.zeros(bsz, 3)
    for i, s in enumerate(structures):
        n = len(s)
        z = torch.as_tensor(s.atomic_numbers)
        if n and not 1 <= int(z.min()) <= int(z.max()) <= MAX_ATOMIC_NUMBER:
            raise ValueError(
                f"Structure {i} ({s.composition.reduced_formula}) has atomic numbers outside 1..{MAX_ATOMIC_NUMBER}"
            )
        atom_types[i, :n] = z
        frac[i, :n] = torch.as_tensor(np.mod(s.frac_coords, 1.0), dtype=torch.float32)
        lengths[i] = torch.as_tensor(s.lattice.abc, dtype=torch.float32)
        angles[i] = torch.as_tensor(s.lattice.angles, dtype=torch.float32)
    num_atoms = torch.as_tensor(sizes, dtype=torch.long)
    mask = torch.arange(n_max)[None, :] < num_atoms[:, None]
    return make_batch(atom_types, frac, lengths, angles, mask)


def make_batch(
    atom_types: torch.Tensor,
    frac_coords: torch.Tensor,
    lengths: torch.Tensor,
    angles: torch.Tensor,
    mask: torch.Tensor,
) -> TensorDict:
    """The batch TensorDict of these tensors (``num_atoms`` derived from ``mask``)."""
    return TensorDict(
        {
            "atom_types": atom_types,
            "frac_coords": frac_coords,
            "lengths": lengths,
            "angles": angles,
            "mask": mask,
            "num_atoms": mask.sum(1),
        },
        batch_size=[mask.shape[0]],
    )


def trim_atoms(batch: TensorDict, n: int, keys: Sequence[str] = ATOM_KEYS) -> TensorDict:
    """The batch with its per-atom entries ``keys`` cut to the first ``n`` atom columns (e.g. to
    its largest crystal, ``crystal_env.models.layers.used_length(batch["mask"])``)."""
    if batch["mask"].shape[1] == n:
        return batch
    out = batch.clone(recurse=False)
    for key in keys:
        if key in batch.keys():
            out[key] = batch[key][:, :n]
    return out


def batch_to_structures(batch: TensorDict) -> list[Structure | None]:
    """Structures of a batch; ``None`` where the lattice is non-finite or has no volume.

    Atoms with a type outside 1..100 are invalid too (``None``), so callers can penalise them.
    """
    out: list[Structure | None] = []
    atom_types = batch["atom_types"].cpu()
    frac = batch["frac_coords"].detach().cpu().double()
    lengths = batch["lengths"].detach().cpu().double()
    angles = batch["angles"].detach().cpu().double()
    mask = batch["mask"].cpu()
    for i in range(batch.batch_size[0]):
        m = mask[i]
        z = atom_types[i][m]
        params = [*lengths[i].tolist(), *angles[i].tolist()]
        if (
            z.numel() == 0
            or not all(math.isfinite(p) for p in params)
            or not torch.isfinite(frac[i][m]).all()
            or bool(((z < 1) | (z > MAX_ATOMIC_NUMBER)).any())
        ):
            out.append(None)
            continue
        with np.errstate(all="ignore"):
            lattice = Lattice.from_parameters(*params)
            volume = lattice.volume
        if not np.isfinite(lattice.matrix).all() or not math.isfinite(volume) or volume <= 1e-6:
            out.append(None)
            continue
        out.append(Structure(lattice, z.tolist(), frac[i][m].numpy()))
    return out


def atoms_to_batch(atoms_list: Sequence[Atoms], max_atoms: int | None = None) -> TensorDict:
    return structures_to_batch([AseAtomsAdaptor.get_structure(a) for a in atoms_list], max_atoms)


def batch_to_atoms(batch: TensorDict) -> list[Atoms | None]:
    return [None if s is None else AseAtomsAdaptor.get_atoms(s) for s in batch_to_structures(batch)]
