"""Reward throughput: fingerprints only where a same-formula partner exists, and the process pool
gives exactly the serial results."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from crystal_env.data import load_dataset
from rewards import CompositeReward, Creativity, Energy, ReferenceSet, parallel
from rewards.hull import FormationEnergyHull
from rewards.metrics import RewardBatch
from rewards.novelty import crystals_with_partners
from tests.rewards_helpers import invalid_structures, rattled, rock_salt


@pytest.fixture(scope="module")
def reference_and_batch():
    train = load_dataset("mp20_sample", "train")
    test = load_dataset("mp20_sample", "test")
    known = [s for s in train.structures if len(s) <= 8][:10]
    hull = FormationEnergyHull(
        [r.structure.composition for r in train], train.property_values("formation_energy_per_atom")
    )
    reference = ReferenceSet(known, hull=hull, use_disk_cache=False)
    new = [s for s in test.structures if len(s) <= 8][:8]
    batch = [
        known[0].copy(),  # a copy of a known crystal
        rattled(known[1], 0.02),  # a near-copy
        *new,  # new crystals, most without a same-formula partner
        new[0].copy(),  # a repeat within the batch
        rattled(new[1], 0.02),
        rock_salt(),
        rock_salt(5.0),  # same formula, scaled: the matcher's verdict decides
        *invalid_structures(),
    ]
    return reference, batch


def test_fingerprints_only_for_crystals_with_a_same_formula_partner(reference_and_batch):
    reference, structures = reference_and_batch
    batch = RewardBatch(structures, reference)
    partners = crystals_with_partners(batch.valid_structures, reference)
    formulas = [s.composition.reduced_formula if s is not None else None for s in batch.valid_structures]
    assert 0 in partners and 1 in partners and 2 in partners and len(structures) - 5 in partners
    for i, f in enumerate(formulas):
        shared = f is not None and (formulas.count(f) > 1 or f in reference.by_formula)
        assert (i in partners) == shared
    amds = batch.metric("amd")
    assert np.isfinite(amds[partners]).all()
    lonely = [i for i in range(len(structures)) if i not in partners]
    assert lonely and np.isnan(amds[lonely]).all()


def test_process_pool_gives_the_serial_results(reference_and_batch):
    """num_workers=2 (fingerprints, StructureMatcher, hull LPs and CHGNet in worker processes) and
    num_workers=0 give identical per-crystal outputs."""
    reference, structures = reference_and_batch

    def reward(num_workers):
        return CompositeReward(
            [Creativity(), Energy(batch_size=4)], reference=reference, normalize_fn=None, num_workers=num_workers
        )

    serial, pooled = reward(0), reward(2)
    a, b = serial(structures), pooled(structures)
    for key in ("total", ("raw", "creativity"), ("raw", "energy"), ("failed", "energy"), "invalid"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    assert a["raw", "creativity"][0] == 0.0 and a["raw", "creativity"][10] == 0.0  # exact copies recognised
    assert torch.isfinite(a["raw", "energy"][:10]).all()
    for name in ("unique_match", "novel_match"):
        x = RewardBatch(structures, reference, num_workers=0).metric(name)
        y = RewardBatch(structures, reference, num_workers=2).metric(name)
        assert np.array_equal(x, y)


def _exit_in_worker(parent_pid: int, value: int) -> int:
    if os.getpid() != parent_pid:
        os._exit(1)  # a worker dies (as when killed for memory)
    return value


def test_a_broken_pool_falls_back_to_serial():
    out = parallel.run(_exit_in_worker, [(os.getpid(), i) for i in range(4)], num_workers=2)
    assert out == [0, 1, 2, 3]
    assert parallel.run(_exit_in_worker, [(os.getpid(), 7)], num_workers=2) == [7]  # one task: no pool


def test_num_workers_resolution():
    assert parallel.resolve_num_workers(None) == len(os.sched_getaffinity(0))
    assert parallel.resolve_num_workers(0) == 0
    with pytest.raises(ValueError, match="num_workers"):
        parallel.resolve_num_workers(-1)
    assert parallel.chunks(range(5), 2) == [[0, 1, 2], [3, 4]]
    assert parallel.chunks([], 3) == []
