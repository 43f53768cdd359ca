import numpy as np
import pytest
import torch

from crystal_env.reward_protocol import evaluate_reward
from rewards import (
    METRICS,
    CompositeReward,
    ReferenceSet,
    RewardComponent,
    build_reward,
    normalize,
    register_metric,
    reward_names,
)
from tests.rewards_helpers import DNG_COMPONENTS, ConstantReward, NaNForSodium, NumAtoms, invalid_structures, rock_salt


class SquaredAtoms(RewardComponent):
    """Defined here to check that ``_target_`` can name a class of the user's own module."""

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def compute(self, batch) -> torch.Tensor:
        return torch.tensor([self.scale * len(s) ** 2 if s is not None else 0.0 for s in batch.structures])


@pytest.fixture
def tiny_reference():
    return ReferenceSet([rock_salt()], use_disk_cache=False)


def test_normalize_known_vectors():
    x = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(normalize(x, "norm"), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(normalize(x, "std"), torch.tensor([-1.0, 0.0, 1.0]) * np.sqrt(1.5))
    torch.testing.assert_close(normalize(x, "subtract_mean"), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(normalize(torch.tensor([-3.0, 0.5, 2.0]), "clip"), torch.tensor([-1.0, 0.5, 1.0]))
    assert normalize(x, None) is x and normalize(x, "null") is x


def test_normalize_spread_below_eps_gives_zero():
    x = torch.tensor([1.0, 1.0 + 1e-5, 1.0 - 1e-5])
    assert not normalize(x, "norm", eps=1e-4).any()
    assert not normalize(x, "std", eps=1e-4).any()
    assert normalize(x, "norm", eps=1e-6).max() == 1.0  # above eps it is a real spread


def test_normalize_per_group():
    x = torch.tensor([1.0, 3.0, 10.0, 30.0, 7.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(normalize(x, "norm", group_ids=groups), torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(normalize(x, "std", group_ids=groups), torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="Unknown normalize_fn"):
        normalize(x, "minmax")


def test_composite_weights_normalisation_and_outputs(tiny_reference):
    supercell = rock_salt()
    supercell.make_supercell([2, 1, 1])
    structures = [rock_salt(), rock_salt(4.0, "K", "Br"), supercell]
    reward = CompositeReward(
        [ConstantReward(2.0, weight=0.5), SquaredAtoms(weight=2.0, normalize_fn="norm")],
        normalize_fn="std",
        reference=tiny_reference,
    )
    out = reward(structures)
    assert reward.component_names == ["constant", "squared_atoms"]
    assert out.batch_size == torch.Size([3])
    torch.testing.assert_close(out["raw", "squared_atoms"], torch.tensor([64.0, 64.0, 256.0]))
    torch.testing.assert_close(out["squared_atoms"], torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(out["constant"], torch.full((3,), 1.0))
    torch.testing.assert_close(out["total"], torch.tensor([1.0, 1.0, 3.0]))
    groups = torch.tensor([0, 0, 1])
    torch.testing.assert_close(reward.normalize(out["total"], groups), torch.zeros(3))
    total, comps, *_ = evaluate_reward(reward, structures)  # what the environment does
    torch.testing.assert_close(total, out["total"])
    assert set(comps) == {"constant", "squared_atoms"}


def test_shared_metric_is_computed_once_per_batch(tiny_reference):
    calls = []

    @register_metric("test_num_atoms")
    def _count(batch):
        calls.append(len(batch))
        return [len(s) if s is not None else np.nan for s in batch.structures]

    try:
        reward = CompositeReward([NumAtoms(), NumAtoms(weight=3.0)], reference=tiny_reference)
        out = reward([rock_salt(), rock_salt(5.0, "K", "Cl")])
        assert calls == [2]
        assert reward.component_names == ["num_atoms", "num_atoms_2"]
        torch.testing.assert_close(out["total"], torch.full((2,), 32.0))
        reward([rock_salt()])
        assert calls == [2, 1]
    finally:
        METRICS.pop("test_num_atoms")


def test_invalid_crystals_get_worst_value_and_are_counted(tiny_reference):
    structures = [rock_salt(), *invalid_structures(), rock_salt(6.0, "K", "Cl")]
    reward = CompositeReward(
        [SquaredAtoms(), ConstantReward(1.0), NaNForSodium(normalize_fn="norm")], reference=tiny_reference
    )
    out = reward(structures)
    invalid = torch.tensor([False, True, True, True, True, False])
    assert torch.equal(out["invalid"], invalid)
    assert reward.last_info["num_invalid"] == 4
    assert set(reward.last_info["invalid_reasons"]) == {"undecodable", "non_finite", "overlapping_atoms", "no_atoms"}
    # unbounded component: invalid crystals get the batch's lowest valid value
    torch.testing.assert_close(out["raw", "squared_atoms"], torch.full((6,), 64.0))
    # the NaN of a component on one crystal penalises only that crystal
    assert torch.equal(out["failed", "na_n_for_sodium"], invalid | torch.tensor([True, *[False] * 5]))
    assert reward.last_info["num_failed"]["na_n_for_sodium"] == 5
    for key in out.keys(include_nested=True, leaves_only=True):
        assert torch.isfinite(out[key].float()).all(), key


def test_empty_and_all_invalid_batches_do_not_crash(tiny_reference):
    reward = CompositeReward([SquaredAtoms(normalize_fn="std")], reference=tiny_reference)
    assert reward([])["total"].shape == (0,)
    out = reward(invalid_structures())
    assert torch.equal(out["total"], torch.zeros(4))


def test_build_reward_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_reward("no_such_reward")
    for name in ("dng", "energy", "atomic_density", "bandgap"):
        assert name in str(err.value)
    assert {"dng", "energy", "atomic_density", "bandgap"} <= set(reward_names())


def test_build_reward_with_user_component_from_a_test_module(tiny_reference):
    cfg = {
        "normalize_fn": "std",
        "components": [
            {"_target_": "tests.test_rewards_composite.SquaredAtoms", "scale": 0.5, "weight": 2.0},
            {"_target_": "tests.rewards_helpers.ConstantReward", "value": 3.0, "name": "bonus"},
        ],
    }
    reward = build_reward(cfg)
    assert isinstance(reward, CompositeReward) and reward.component_names == ["squared_atoms", "bonus"]
    reward._reference = tiny_reference
    out = reward([rock_salt()])
    torch.testing.assert_close(out["total"], torch.tensor([2.0 * 0.5 * 64 + 3.0]))


def test_dng_config_matches_the_issue():
    reward = build_reward("dng", overrides=["reference=null"])
    spec = [(type(c).__name__, c.weight, c.normalize_fn) for c in reward.components]
    assert spec == [
        ("Creativity", 1.0, None),
        ("Energy", 1.0, "norm"),
        ("StructureDiversity", 0.1, "norm"),
        ("CompositionDiversity", 1.0, "norm"),
        ("SMACTValidity", 1.0, None),
        ("CompositionUniqueness", 1.0, None),
    ]
    assert reward.normalize_fn == "std" and reward.eps == 1e-4
    assert reward.component_names == DNG_COMPONENTS
    energy = build_reward("energy", overrides=["components.0.mlip=mace", "reference=null"]).components[0]
    assert energy.mlip_params["mlip"] == "mace"
    density = build_reward("atomic_density", overrides=["components.0.target=0.05"])
    assert density.components[0].target == 0.05


@pytest.mark.parametrize(
    "env, reward, expected",
    [("ldm_perov5", "stability", "perov5"), ("ldm_mp20", "dng", "mp20_sample"), (None, "energy", "mp20_sample")],
)
def test_reward_reference_is_the_envs_training_data_unless_the_config_names_one(monkeypatch, env, reward, expected):
    """Novelty of a Perov-5 generator's crystals is judged against Perov-5, not MP-20: a bundled reward's
    reference.dataset is null and the env's ``dataset`` fills it; a dataset the config names wins."""
    import rewards.composite
    from crystal_env.config import load_config
    from crystal_env.factory import build_reward_fn

    loaded = []
    monkeypatch.setattr(rewards.composite, "load_reference", lambda **kw: loaded.append(kw["dataset"]))
    dataset = load_config("env", env)["dataset"] if env else None
    build_reward_fn(reward, dataset=dataset)
    build_reward(reward, overrides=["reference.dataset=carbon24"], dataset=dataset)
    assert loaded == [expected, "carbon24"]


def test_reward_models_run_on_the_reward_device_unless_a_component_says_otherwise(
    monkeypatch, tiny_reference, tiny_model
):
    """build_reward(..., device=) (the env's device) reaches the MLIP and the VAE features; a
    component's own ``device`` wins. Checked with stand-ins: no GPU is needed to test the wiring."""
    import rewards.features
    import rewards.metrics

    class FakeMLIP:
        def energies(self, structures, batch_size):
            return np.full(len(structures), -3.0)

    mlip_devices, vae_devices = [], []
    monkeypatch.setattr(
        rewards.metrics, "get_mlip", lambda name, model, device: mlip_devices.append(device) or FakeMLIP()
    )
    monkeypatch.setattr(
        rewards.features, "get_model", lambda model, device="cpu": vae_devices.append(device) or tiny_model
    )
    config = {
        "components": [
            {"_target_": "rewards.Energy"},
            {"_target_": "rewards.StructureDiversity", "model": "mp20_tiny"},
            {"_target_": "rewards.CompositionDiversity", "model": "mp20_tiny", "device": "cpu"},
        ]
    }
    reward = build_reward(config, device="cuda:3")
    reward._reference = tiny_reference
    assert reward.device == "cuda:3"
    reward([rock_salt(), rock_salt(5.0)])
    assert mlip_devices == ["cuda:3"]
    assert sorted(set(vae_devices)) == [
        "cpu",
        "cuda:3",
    ]  # structure features on the reward's device, composition on cpu
    assert build_reward({**config, "device": "cpu"}, device="cuda:3").device == "cpu"  # the config's own setting wins
    assert build_reward("atomic_density").device == "cpu"
