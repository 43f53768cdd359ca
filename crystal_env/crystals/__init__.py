"""Crystal batches and structure checks."""

from crystal_env.crystals.batch import (
    atoms_to_batch,
    batch_to_atoms,
    batch_to_structures,
    structures_to_batch,
)

__all__ = ["atoms_to_batch", "batch_to_atoms", "batch_to_structures", "structures_to_batch"]
