"""The science of stability and novelty: the hull over all of the Materials Project, its linear
programme against pymatgen, held-out DFT energies, textbook ground states with CHGNet, coverage,
novelty against all splits, formula novelty, creativity of copies, relaxed evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure

from crystal_env.crystals.validity import is_smact_valid
from crystal_env.data import load_dataset
from crystal_env.models.diffusion import RespacedSchedule, SamplerConfig, cosine_alphas_cumprod
from rewards import CompositeReward, Creativity, Energy, ReferenceSet, load_reference
from rewards.evaluation import evaluate_structures
from rewards.hull import FormationEnergyHull, load_mp_formation_energies
from rewards.metrics import RewardBatch
from tests.rewards_helpers import rattled, rock_salt


@pytest.fixture(scope="module")
def mp_hull() -> FormationEnergyHull:
    return load_reference().hull


def test_linear_programme_equals_pymatgen_phase_diagram(mp_hull):
    rng = np.random.default_rng(0)
    for system in [("Li", "Fe", "O"), ("Ba", "Sr", "Ti", "O"), ("Li", "Mn", "Ni", "Co", "O")]:
        zs = [Composition(el).elements[0].Z for el in system]
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        for j in mp_hull._candidates(zs):
            comp = Composition(mp_hull.formulas[j])
            entries.append(PDEntry(comp, mp_hull.energies[j] * comp.num_atoms))
        diagram = PhaseDiagram(entries)
        for _ in range(15):
            comp = Composition(dict(zip(system, rng.integers(1, 7, len(system)).tolist(), strict=True)))
            assert mp_hull.hull_energy_per_atom(comp) == pytest.approx(diagram.get_hull_energy_per_atom(comp), abs=1e-6)


def test_many_element_system_is_fast_and_finite(mp_hull):
    # 13 elements: pymatgen's qhull did not finish in 200 s; the linear programme is instant
    comp = Composition("LiNaKMgCaSrBaTiFeNiCuOF")
    assert mp_hull.has_compound(comp)
    assert -5.0 < mp_hull.hull_energy_per_atom(comp) < 0.0


def test_held_out_mp20_dft_energies_sit_on_the_mp_hull():
    """Hull from all of MP + the *train* rows; the test rows' DFT energies land on their e_above_hull."""
    hull = load_reference(hull_splits=["train"]).hull
    test = load_dataset("mp20_sample", "test")
    calc = np.array(
        [
            hull.e_above_hull_from_formation(r.structure.composition, e)
            for r, e in zip(test, test.property_values("formation_energy_per_atom"), strict=True)
        ]
    )
    true = test.property_values("e_above_hull")
    assert np.abs(calc - true).mean() < 0.1
    # the old hull (the sample's train rows alone) puts held-out crystals far below it
    small = load_reference(hull_splits=["train"], hull="dataset").hull
    old = np.array(
        [
            small.e_above_hull_from_formation(r.structure.composition, e)
            for r, e in zip(test, test.property_values("formation_energy_per_atom"), strict=True)
        ]
    )
    assert old.mean() < -0.5


def _textbook() -> dict[str, Structure]:
    fcc = [[0, 0, 0]]
    return {
        "MgO": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "LiF": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.026), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "NaCl": rock_salt(5.640),
        "GaAs": Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [fcc[0], [0.25, 0.25, 0.25]]),
        "CaF2": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.463), ["Ca", "F"], [fcc[0], [0.25, 0.25, 0.25]]),
        "SrTiO3": Structure.from_spacegroup(
            "Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
        ),
    }


def test_textbook_ground_states_lie_on_the_hull_with_chgnet():
    reference = load_reference()
    crystals = _textbook()
    assert not set(crystals) & set(reference.by_formula)  # none of them is in the bundled sample
    reward = CompositeReward([Energy(normalize_fn=None)], reference=reference)
    reward(list(crystals.values()))
    e_hull = RewardBatch(list(crystals.values()), reference).metric("e_above_hull")
    assert np.abs(e_hull).max() < 0.15, dict(zip(crystals, e_hull.round(3), strict=True))
    assert reward.last_info["hull_coverage"] == 1.0


def test_hull_coverage_counts_systems_without_compounds():
    hull = FormationEnergyHull(["NaCl"], [-1.0])
    reference = ReferenceSet([rock_salt()], hull, use_disk_cache=False)
    crystals = [rock_salt(), rock_salt(6.6, "K", "Br")]  # Na-Cl has a compound, K-Br none here
    assert RewardBatch(crystals, reference).metric("hull_covered").tolist() == [True, False]


def test_novelty_against_all_splits_and_formula_novelty():
    known = load_dataset("mp20_sample", "test").structures[0]
    licl2 = Structure(Lattice.cubic(5.0), ["Li", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    batch = RewardBatch([known.copy(), rock_salt(), licl2], load_reference())
    assert batch.metric("novel").tolist() == [False, True, True]  # a test-split crystal is known
    assert batch.metric("novel_formula").tolist() == [False, False, True]  # NaCl is in MP, LiCl2 is not
    train_only = RewardBatch([known.copy()], load_reference(novelty_splits=["train"]))
    assert train_only.metric("novel").tolist() == [True]


def test_creativity_of_a_copy_uses_the_distance_to_its_match():
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    reference = ReferenceSet([rock_salt(), cscl], FormationEnergyHull([], []), use_disk_cache=False)
    new = Structure.from_spacegroup("F-43m", Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    crystals = [rock_salt(), rattled(rock_salt(), 0.02), new, new.copy()]
    raw = Creativity()(crystals, reference).tolist()
    assert raw[0] <= 0.1 and raw[1] <= 0.1  # copies of a known crystal, though another polymorph is known
    assert raw[2] == 1.0  # new and unique
    assert raw[3] <= 0.1  # a repeat of a new crystal


def test_energy_clamp_is_configurable():
    assert Energy(max_e_hull=3.0).worst == -3.0
    with pytest.raises(ValueError, match="max_e_hull"):
        Energy(max_e_hull=0.0)
    hull = FormationEnergyHull(["NaCl"], [-10.0])  # NaCl far below: real NaCl sits ~8 eV/atom above
    reference = ReferenceSet([rock_salt()], hull, use_disk_cache=False)
    raw1 = Energy()(rock_salt_list := [rock_salt()], reference)
    raw3 = Energy(max_e_hull=3.0)(rock_salt_list, reference)
    assert raw1.tolist() == [-1.0] and raw3.tolist() == [-3.0]
    # the floor: NaCl ~2 eV/atom below a hull of the bare elements scores -min_e_hull, not 0
    below = ReferenceSet([rock_salt()], FormationEnergyHull([], []), use_disk_cache=False)
    assert Energy()([rock_salt()], below).tolist() == [0.0]
    assert Energy(min_e_hull=0.5, max_e_hull=3.0)([rock_salt()], below).tolist() == [-0.5]
    assert Energy(min_e_hull=0.5, max_e_hull=3.0)(rock_salt_list, reference).tolist() == [-3.0]
    with pytest.raises(ValueError, match="min_e_hull"):
        Energy(min_e_hull=1.0, max_e_hull=1.0)


def test_smact_oxidation_state_set_is_selectable():
    assert is_smact_valid(Composition("NaCl"), "icsd24") and not is_smact_valid(Composition("KF2"), "icsd24")
    with pytest.raises(ValueError, match="icsd24"):
        is_smact_valid(Composition("NaCl"), "nonsense")


def test_ddim_respacing_starts_where_the_signal_is_usable():
    ab = cosine_alphas_cumprod()
    for k, start in ((50, 980), (10, 900), (1000, 999)):
        schedule = RespacedSchedule(SamplerConfig("ddim", k, 1.0), ab)
        assert schedule.timesteps[0] == start and schedule.timesteps[-1] == 0
        assert float(schedule.sqrt_ab[0]) > 0.01 or k == 1000


def test_relaxed_evaluation_end_to_end():
    crystals = [rattled(s, 0.1, seed=i) for i, s in enumerate(_textbook().values())][:3]
    for s in crystals:
        s.scale_lattice(s.volume * 1.1)
    frame, summary = evaluate_structures(crystals, relax_steps=20, fmax=0.05)
    for col in ("e_above_hull_relaxed", "metastable_relaxed", "stable_relaxed", "sun_relaxed", "msun_relaxed"):
        assert col in frame
    assert (frame["e_above_hull_relaxed"] < frame["e_above_hull"]).all()
    assert summary["mean_e_above_hull_relaxed"] < summary["mean_e_above_hull"]
    assert summary["hull_coverage"] == 1.0 and summary["novel_formula"] == 0.0


def test_bundled_mp_file_is_checked():
    formulas, energies = load_mp_formation_energies()
    assert len(formulas) == 132_752 and math.isfinite(energies.sum())


def test_a_relaxed_energy_reward_relaxes_inside_no_grad():
    """An env rollout calls the reward under torch.no_grad(); the relaxation's forces (energy gradients)
    must still work there. Before the fix every force call failed and the crystals were scored
    unrelaxed, silently: a training reward with relax_steps > 0 was the unrelaxed one."""
    crystals = [rattled(s, 0.1, seed=i) for i, s in enumerate(_textbook().values())][:2]
    for s in crystals:
        s.scale_lattice(s.volume * 1.1)
    reference = load_reference("mp20_sample")

    def energy(relax_steps):
        return CompositeReward([Energy(relax_steps=relax_steps, normalize_fn=None)], reference=reference)

    with torch.no_grad():
        inside = energy(5)(crystals)["raw", "energy"]
    torch.testing.assert_close(inside, energy(5)(crystals)["raw", "energy"])
    assert (inside > energy(0)(crystals)["raw", "energy"]).all()  # -E_hull: relaxed is higher


def test_a_failed_relaxation_is_scored_unrelaxed_and_said(monkeypatch, caplog):
    """A crystal the MLIP cannot relax keeps its unrelaxed energy, never silently: the evaluation's
    ``problem`` column and the reward's ``last_info`` say so, and the log warns once, not every call."""
    from rewards.mlip import CHGNetBackend, get_mlip

    crystals = [rattled(s, 0.1, seed=i) for i, s in enumerate(_textbook().values())][:3]
    for s in crystals:
        s.scale_lattice(s.volume * 1.1)
    broken = crystals[1].composition.reduced_formula
    crystals.insert(0, None)  # an undecodable crystal first: notes use batch indices, not valid-crystal ones
    forces = CHGNetBackend._batch_efs

    def failing(self, structures, batch_size):
        if any(s.composition.reduced_formula == broken for s in structures):
            raise RuntimeError("no forces for this crystal")
        return forces(self, structures, batch_size)

    monkeypatch.setattr(CHGNetBackend, "_batch_efs", failing)
    monkeypatch.setattr(get_mlip("chgnet", None, "cpu"), "_warned_unrelaxed", False)
    reference = load_reference("mp20_sample")
    with caplog.at_level("DEBUG", logger="rewards.mlip"):
        frame, _ = evaluate_structures(crystals, reference=reference, relax_steps=3)
        reward = CompositeReward([Energy(relax_steps=3, normalize_fn=None)], reference=reference)
        reward(crystals)
    assert frame["problem"].tolist()[1:] == ["", "chgnet relaxation failed: energy of the unrelaxed crystal", ""]
    assert frame["e_above_hull_relaxed"][2] == pytest.approx(frame["e_above_hull"][2])  # kept: unrelaxed
    assert (frame["e_above_hull_relaxed"][[1, 3]] < frame["e_above_hull"][[1, 3]]).all()  # the others relaxed
    assert reward.last_info["num_unrelaxed"] == 1 and list(reward.last_info["notes"]) == [2]
    failed = [r for r in caplog.records if "relaxation failed for 1 of 3" in r.getMessage()]
    assert [r.levelname for r in failed] == ["WARNING", "DEBUG"]
