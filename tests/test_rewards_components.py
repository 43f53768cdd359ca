import numpy as np
import pytest
import torch

from rewards import (
    AtomicDensity,
    CompositeReward,
    CompositionDiversity,
    CompositionUniqueness,
    Creativity,
    Predictor,
    ReferenceSet,
    SMACTValidity,
    StructureDiversity,
    build_reward,
)
from rewards.metrics import RewardBatch
from rewards.mmd import mmd_contributions, poly_kernel
from rewards.novelty import amd_vector
from rewards.predictor import PropertyHead, PropertyPredictor
from tests.rewards_helpers import invalid_structures, rattled, rock_salt


@pytest.fixture(scope="module")
def small_crystals(mp20_train):
    from crystal_env.data import load_dataset

    ref = [s for s in mp20_train.structures if len(s) <= 8][:12]
    new = [s for s in load_dataset("mp20_sample", "test").structures if len(s) <= 8][:6]
    return ref, new


@pytest.fixture(scope="module")
def reference(small_crystals):
    return ReferenceSet(small_crystals[0], use_disk_cache=False)


def test_novelty_uniqueness_and_creativity_known_answers(small_crystals, reference):
    ref, new = small_crystals
    copy_of_ref, rattled_ref = ref[0].copy(), rattled(ref[1], 0.02)
    supercell = ref[2].copy()
    supercell.make_supercell([1, 1, 2])
    rattled_new = rattled(new[1], 0.02)
    structures = [new[0], new[0].copy(), copy_of_ref, rattled_ref, supercell, new[1], rattled_new, None]
    batch = RewardBatch(structures, reference)
    unique, novel = batch.metric("unique"), batch.metric("novel")
    assert unique.tolist() == [True, False, True, True, True, True, False, False]
    assert novel.tolist() == [True, True, False, False, False, True, True, False]
    creativity = Creativity().score(batch)[0]
    assert creativity[0] == 1.0 and creativity[5] == 1.0  # unique and novel
    assert creativity[7] == 0.0  # invalid
    assert creativity[1] == 0.0  # exact duplicate of a new crystal: no non-zero distance left
    # a rattled copy of a new crystal (novel, not unique) gets its AMD distance to the original
    expected = np.abs(amd_vector(rattled_new) - amd_vector(new[1])).max()
    assert 0 < expected < 0.2
    assert creativity[6].item() == pytest.approx(expected, rel=1e-5)
    # a (rattled/supercell) copy of a reference crystal: unique but not novel, so at most the
    # distance to its reference original
    assert creativity[3].item() == pytest.approx(np.abs(amd_vector(rattled_ref) - amd_vector(ref[1])).max(), rel=1e-5)
    assert 0 <= creativity[4] < 1e-3


def test_creativity_invalid_crystals_get_zero(reference, small_crystals):
    structures = [small_crystals[1][0], *invalid_structures()]
    out = CompositeReward([Creativity()], reference=reference)(structures)
    assert out["raw", "creativity"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out["invalid"].sum() == 4


def test_mmd_contributions_match_brute_force():
    gen = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))

    def mmd(x):
        m, n = len(x), len(ref)
        kxx = poly_kernel(x.double(), x.double())
        krr = poly_kernel(ref.double(), ref.double())
        return (
            (kxx.sum() - kxx.trace()) / (m * (m - 1))
            + (krr.sum() - krr.trace()) / (n * (n - 1))
            - 2 * poly_kernel(x.double(), ref.double()).mean()
        )

    expected = torch.stack([mmd(torch.cat([gen[:i], gen[i + 1 :]])) - mmd(gen) for i in range(6)]).float()
    torch.testing.assert_close(mmd_contributions(gen, ref), expected, rtol=1e-4, atol=1e-6)
    assert not mmd_contributions(gen[:2], ref).any()  # too few samples: no signal


def test_mmd_rewards_covering_the_reference_over_duplicates():
    ref = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]).repeat(5, 1)
    gen = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [-2.0, 0.0]])
    r = mmd_contributions(gen, ref)
    assert r[3] > r[0] and torch.allclose(r[0], r[1]) and torch.allclose(r[1], r[2])


def test_diversity_components_on_crystals(tiny_model, small_crystals):
    ref, new = small_crystals
    reference = ReferenceSet(ref, use_disk_cache=False)
    structures = [*new[:4], new[0].copy(), None]
    reward = CompositeReward(
        [
            StructureDiversity(model=tiny_model, weight=0.1, normalize_fn="norm"),
            CompositionDiversity(model=tiny_model, normalize_fn="norm"),
        ],
        reference=reference,
    )
    out = reward(structures)
    for name in ("structure_diversity", "composition_diversity"):
        raw = out["raw", name]
        assert torch.isfinite(raw).all() and out["failed", name].tolist() == [False] * 5 + [True]
        assert raw[5] == raw[:5].min()  # invalid: the batch's lowest value
        torch.testing.assert_close(raw[0], raw[4])  # identical crystals, identical contributions
    assert out["structure_diversity"].max() == pytest.approx(0.1)
    feats = reference.vae_features(tiny_model, "composition")
    assert feats.shape == (len(ref), tiny_model.vae.config.d_model)


def test_atomic_density_and_smact():
    nacl = rock_salt(5.64)  # 8 atoms in 5.64³ Å³
    bad = rock_salt(5.0, "Na", "Na")  # a metal, valid by SMACT's alloy rule
    structures = [nacl, rock_salt(4.0), None]
    density = AtomicDensity()(structures)
    torch.testing.assert_close(density[:2], torch.tensor([8 / 5.64**3, 8 / 4.0**3]))
    assert density[2] == density[:2].min()
    target = AtomicDensity(target=0.05)(structures)
    torch.testing.assert_close(target[:2], -(torch.tensor([8 / 5.64**3, 8 / 4.0**3]) - 0.05).abs())
    from pymatgen.core import Lattice, Structure

    na_cl2 = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    assert SMACTValidity()([nacl, na_cl2, bad, None]).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_smact_screen_is_bounded_for_many_element_compositions():
    from pymatgen.core import Composition

    from crystal_env.crystals.validity import MAX_SMACT_ELEMENTS, is_smact_valid

    many = Composition("LiNaKRbCsMgCaSrBaO9F")  # 11 elements: SMACT's enumeration would take minutes
    assert len(many.elements) > MAX_SMACT_ELEMENTS and not is_smact_valid(many)
    assert is_smact_valid(Composition("FeCoNiCuZnTiVCrMnAl"))  # all-metal: the alloy rule still applies
    assert is_smact_valid(Composition("NaCl")) and not is_smact_valid(Composition("NaCl2"))


def test_composition_uniqueness_counts_formulas_in_batch_and_memory():
    nacl, nacl_big, kcl = rock_salt(5.64), rock_salt(6.0), rock_salt(6.3, "K", "Cl")
    # the two NaCl lattices are different structures but one composition; invalid crystals get 0
    batch_only = CompositionUniqueness()
    assert batch_only([nacl, nacl_big, kcl, None]).tolist() == [0.5, 0.5, 1.0, 0.0]
    assert batch_only([nacl]).tolist() == [1.0]  # memory=0: nothing carries over between calls
    remembering = CompositionUniqueness(memory=3)
    remembering([nacl, nacl_big, kcl])  # remembers NaCl, NaCl, KCl
    torch.testing.assert_close(remembering([nacl, kcl]), torch.tensor([1 / 3, 1 / 2]))  # 1 + 2 NaCl, 1 + 1 KCl
    torch.testing.assert_close(remembering([kcl]), torch.tensor([1 / 3]))  # the last 3 crystals: KCl, NaCl, KCl
    with pytest.raises(ValueError, match="memory"):
        CompositionUniqueness(memory=-1)
    # linear: -(k - 1) / scale, unbounded below; an invalid crystal gets the batch's lowest value
    linear = CompositionUniqueness(memory=4, penalty="linear", scale=2.0)
    assert linear([nacl, nacl_big, kcl, None]).tolist() == [-0.5, -0.5, 0.0, -0.5]
    assert linear([nacl, kcl]).tolist() == [-1.0, -0.5]  # 2 earlier NaCl + itself; 1 earlier KCl + itself
    with pytest.raises(ValueError, match=r"Unknown penalty 'log'; valid: \['reciprocal', 'linear'\]"):
        CompositionUniqueness(penalty="log")
    composite = CompositeReward([CompositionUniqueness(memory=4)], reference=ReferenceSet([nacl]))
    composite([kcl])
    with composite.frozen():  # validation: reads the memory, adds nothing to it
        assert composite([kcl])["raw", "composition_uniqueness"].tolist() == [0.5]
    assert composite([kcl])["raw", "composition_uniqueness"].tolist() == [0.5]  # still one earlier KCl
    from crystal_rl.training import _Frozen  # what the training's validation env scores with

    validation = _Frozen(composite)
    third = torch.tensor([1 / 3])
    torch.testing.assert_close(validation([kcl])["raw", "composition_uniqueness"], third)
    torch.testing.assert_close(validation([kcl])["raw", "composition_uniqueness"], third)  # nothing remembered
    assert validation.component_names == composite.component_names
    # the memory is the reward's checkpoint state: a copy loaded into a fresh reward scores alike
    state = composite.state_dict()
    assert state == {"composition_uniqueness": {"recent": ["KCl", "KCl"]}}
    fresh = CompositeReward([CompositionUniqueness(memory=4)], reference=ReferenceSet([nacl]))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh([kcl, nacl])["raw", "composition_uniqueness"], torch.tensor([1 / 3, 1.0]))
    with pytest.raises(
        ValueError, match=r"unknown component\(s\) \['energy'\]; components: \['composition_uniqueness'\]"
    ):
        fresh.load_state_dict({"energy": {}})
    with pytest.raises(ValueError, match="list of formulas"):
        fresh.load_state_dict({"composition_uniqueness": {"recent": "KCl"}})


def test_predictor_component(tmp_path, tiny_model):
    model_path = tmp_path / "ldm.pt"
    tiny_model.save(model_path)
    head = PropertyHead(4 * tiny_model.latent_dim + 1, hidden=8)
    with torch.no_grad():
        head.net[-1].weight.zero_()
        head.net[-1].bias.fill_(0.5)  # normalised output 0.5 -> 0.5 * 2.0 + 1.0 = 2.0 eV
    ckpt = tmp_path / "predictor.pt"
    PropertyPredictor(str(model_path), head, "band_gap", mean=1.0, std=2.0).save(ckpt)
    structures = [rock_salt(), rock_salt(4.2, "K", "Br"), None, rock_salt().make_supercell([2, 2, 1])]
    torch.testing.assert_close(Predictor(ckpt)(structures[:2]), torch.tensor([2.0, 2.0]))
    targeted = Predictor(ckpt, target_value=3.0)(structures)
    torch.testing.assert_close(targeted, torch.full((4,), -1.0))  # 32 atoms > max_atoms: worst too
    assert Predictor(ckpt, clip_max=1.5)(structures[:1]).item() == 1.5
    reward = build_reward("bandgap", overrides=[f"components.0.checkpoint={ckpt}", f"components.1.model={model_path}"])
    assert reward.component_names == ["band_gap", "composition_diversity"]
    assert reward.components[0].target_value == 3.0 and reward.components[1].weight == 0.5
    with pytest.raises(FileNotFoundError, match="train_predictor"):
        Predictor(tmp_path / "missing.pt")
