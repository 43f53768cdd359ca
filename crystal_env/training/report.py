"""Quality figures of a pretrained model: VAE reconstruction and unconditional-sample validity."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystal_env.crystals.batch import batch_to_structures, structures_to_batch
from crystal_env.crystals.validity import is_smact_valid, is_structurally_valid
from crystal_env.models.ldm import CrystalLDM


@torch.no_grad()
def reconstruction_match_rate(model: CrystalLDM, structures: Sequence[Structure]) -> dict[str, float]:
    """Encode (posterior mean) and decode ``structures``; fraction matched by StructureMatcher.

    Also reports the fraction with the exact composition and the per-atom type accuracy.
    """
    batch = structures_to_batch(structures, model.max_atoms).to(model.latent_mean.device)
    mu, _ = model.vae.encode(batch)
    decoded = model.vae.decode(mu, batch["mask"])
    recon = batch_to_structures(decoded)
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    matches = comps = 0
    for original, back in zip(structures, recon, strict=True):
        if back is None:
            continue
        same_comp = back.composition == original.composition
        comps += same_comp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matches += bool(same_comp and matcher.fit(original, back))
    m = batch["mask"]
    type_acc = (decoded["atom_types"][m] == batch["atom_types"][m]).float().mean().item()
    n = len(structures)
    return {"match_rate": matches / n, "composition_rate": comps / n, "atom_type_accuracy": type_acc, "n": n}


def _element_count_distribution(structures: Sequence[Structure | None]) -> dict[int, float]:
    counts = Counter(len(s.composition.elements) for s in structures if s is not None)
    total = sum(counts.values()) or 1
    return {k: counts[k] / total for k in sorted(counts)}


def sample_report(samples: Sequence[Structure | None], reference: Sequence[Structure]) -> dict:
    """Structural and SMACT validity of ``samples`` and their number-of-elements distribution vs data."""
    n = len(samples)
    return {
        "n": n,
        "structural_validity": sum(is_structurally_valid(s) for s in samples) / n,
        "smact_validity": sum(is_smact_valid(s) for s in samples) / n,
        "decodable": sum(s is not None for s in samples) / n,
        "num_elements_samples": _element_count_distribution(samples),
        "num_elements_data": _element_count_distribution(reference),
        "reference_smact_validity": sum(is_smact_valid(s) for s in reference) / len(reference),
    }
