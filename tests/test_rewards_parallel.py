"""Reward throughput: fingerprints only where a same-formula partner exists, and the process pool
gives exactly the serial results."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal_env.data import load_dataset
from rewards import CompositeReward, Creativity, Energy, ReferenceSet, novelty, parallel
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


_REAL_AMD_VECTOR = novelty.amd_vector


def _amd_with_faults(structure, k=novelty.AMD_K):
    """Krypton: an error; xenon: 30 s of work (past any budget here); others: the real AMD."""
    if "Kr" in structure.composition:
        raise RuntimeError("cannot fingerprint krypton")
    if "Xe" in structure.composition:
        time.sleep(30)
    return _REAL_AMD_VECTOR(structure, k)


def test_pooled_work_keeps_the_per_crystal_fault_isolation(monkeypatch, caplog):
    """A crystal that raises or overruns its budget inside a pool worker fails alone, with the same
    values and recorded failures as in the serial computation."""
    _REAL_AMD_VECTOR(rock_salt())  # numba's compilation (or cache load) is not a crystal's time
    parallel.shutdown()  # workers forked after the patch below see it
    monkeypatch.setattr(novelty, "amd_vector", _amd_with_faults)
    kr = Structure(Lattice.cubic(4.0), ["Kr"], [[0, 0, 0]])
    xe = Structure(Lattice.cubic(4.5), ["Xe"], [[0, 0, 0]])
    structures = [rock_salt(), kr, rock_salt(5.0), kr.copy(), xe, xe.copy(), rock_salt(5.5)]
    results = {}
    try:
        for n in (0, 2):
            batch = RewardBatch(structures, ReferenceSet([]), crystal_timeout=0.5, num_workers=n)
            results[n] = (batch.metric("amd"), batch.failed_in(["amd"]))
    finally:
        parallel.shutdown()
    (serial, serial_failures), (pooled, pooled_failures) = results[0], results[2]
    assert np.array_equal(serial, pooled, equal_nan=True)
    assert serial_failures == pooled_failures
    assert sorted(pooled_failures) == [1, 3, 4, 5]
    assert "cannot fingerprint krypton" in pooled_failures[1] and pooled_failures[4] == "amd: timeout"
    assert np.isfinite(pooled[[0, 2, 6]]).all() and np.isnan(pooled[[1, 3, 4, 5]]).all()
    # each crystal's budget was enforced in its worker: the metric's guard never had to step in
    assert "isolating the culprit" not in caplog.text
