import functools

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.envs import GymWrapper
from torchrl.envs.utils import ExplorationType, check_env_specs, set_exploration_type

import crystal_env
from crystal_env import CrystalDiffusionEnv, make_env
from crystal_env.policy import LatentGaussian, make_policy, make_reference_policy


def density_reward(structures):
    """Atoms per Å³, 0 for undecodable crystals (a small known reward for env tests)."""
    return torch.tensor([0.0 if s is None else len(s) / s.volume for s in structures])


class ComponentReward:
    component_names = ["density", "size"]

    def __call__(self, structures):
        d = density_reward(structures)
        n = torch.tensor([0.0 if s is None else float(len(s)) for s in structures])
        return {"total": d + n, "density": d, "size": n}


def make_tiny_env(model, reward=density_reward, **kw):
    kw = {"batch_size": 4, "group_size": 2, "num_steps": 5, "seed": 0, **kw}
    return CrystalDiffusionEnv(model, reward, **kw)


def test_check_env_specs(tiny_model):
    check_env_specs(make_tiny_env(tiny_model, ComponentReward()))


def test_episode_shapes_groups_and_terminal_reward(tiny_model):
    env = make_tiny_env(tiny_model, ComponentReward(), batch_size=6, group_size=3)
    td = env.reset()
    assert td["latent"].shape == (6, 8, 4) and td["mask"].shape == (6, 8)
    assert td["group_id"].squeeze(-1).tolist() == [0, 0, 0, 1, 1, 1]
    n = td["num_atoms"].squeeze(-1)
    assert n[0] == n[1] == n[2] and n[3] == n[4] == n[5]
    assert td["step_index"].eq(0).all() and td["timestep"].eq(800).all()  # 5 steps: 800, 600, ..., 0
    traj = env.rollout(100, make_policy(tiny_model))
    assert traj.shape == (6, 5)
    reward = traj["next", "reward"].squeeze(-1)
    assert reward[:, :-1].eq(0).all()
    assert traj["next", "done"].squeeze(-1)[:, -1].all() and not traj["next", "done"][:, :-1].any()
    comps = traj["next", "reward_components"][:, -1]
    torch.testing.assert_close(reward[:, -1], (comps["density"] + comps["size"]).squeeze(-1))
    structures = traj[:, -1]["next", "crystals"]
    assert all(s is not None for s in structures)
    n = traj["num_atoms"][:, 0].squeeze(-1)  # rollout() resets again: new numbers of atoms
    assert [len(s) for s in structures] == n.tolist()
    torch.testing.assert_close(reward[:, -1], density_reward(structures) + n.float(), rtol=1e-4, atol=1e-4)


class FailingReward:
    """Density with a failure mask: crystal 2 of every batch "could not be scored" (worst value 0)."""

    component_names = ["density"]

    def __call__(self, structures):
        d = density_reward(structures)
        failed = torch.zeros(len(structures), dtype=torch.bool)
        failed[2] = True
        d[2] = 0.0
        return {"total": d, "density": d, "raw": {"density": d}, "failed": {"density": failed}}


class NaNReward(ComponentReward):
    """A reward without a failure mask whose raw size is NaN for crystal 0."""

    def __call__(self, structures):
        out = super().__call__(structures)
        out["raw"] = {"density": out["density"], "size": out["size"].clone()}
        out["raw"]["size"][0] = float("nan")
        return out


def test_component_failures_are_reported(tiny_model):
    """``reward_failed`` per component: the reward's own mask, else the non-finite raw values; all
    False before the last step."""
    policy = make_policy(tiny_model)
    traj = make_tiny_env(tiny_model, FailingReward()).rollout(100, policy)
    failed = traj["next", "reward_failed", "density"].squeeze(-1)
    assert failed[:, -1].tolist() == [False, False, True, False]
    assert not failed[:, :-1].any()
    traj = make_tiny_env(tiny_model, NaNReward()).rollout(100, policy)
    final = traj["next", "reward_failed"][:, -1]
    assert final["size"].squeeze(-1).tolist() == [True, False, False, False]
    assert not final["density"].any()


def test_seed_reproduces_trajectories(tiny_model):
    env = make_tiny_env(tiny_model)
    policy = make_policy(tiny_model)
    env.set_seed(7)
    a = env.rollout(10, policy)
    env.set_seed(7)
    b = env.rollout(10, policy)
    torch.testing.assert_close(a["latent"][:, 0], b["latent"][:, 0])
    assert [s.as_dict() for s in a[:, -1]["next", "crystals"]] == [s.as_dict() for s in b[:, -1]["next", "crystals"]]
    env.set_seed(8)
    c = env.rollout(10, policy)
    assert not torch.equal(a["latent"][:, 0], c["latent"][:, 0])
    first = env.reset(seed=3)["latent"]
    torch.testing.assert_close(first, env.reset(seed=3)["latent"])


def test_bad_actions(tiny_model):
    env = make_tiny_env(tiny_model)
    td = env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(td.clone().set("action", torch.zeros(4, 8, 3)))
    policy = make_policy(tiny_model)
    td = policy(env.reset())
    td["action"][1, 0, 0] = float("nan")
    td = env.step(td)["next"]
    assert td["failed"].squeeze(-1).tolist() == [False, True, False, False]
    assert env.num_invalid_actions == 1
    assert torch.isfinite(td["latent"]).all()
    for _ in range(4):
        td = env.step(policy(td))["next"]
    assert td["done"].all()
    reward = td["reward"].squeeze(-1)
    assert reward[1] == 0.0 and (reward[[0, 2, 3]] > 0).all()  # the penalty for an undecodable crystal
    assert td["crystals"][1] is None
    with pytest.raises(RuntimeError, match="reset"):
        env.step(policy(td))
    with pytest.raises(ValueError, match="group_size"):
        make_tiny_env(tiny_model, batch_size=5, group_size=2)
    with pytest.raises(ValueError, match="max_atoms"):
        make_tiny_env(tiny_model, max_atoms=99)


def test_policy_log_prob_reduction_and_deterministic_steps(tiny_model):
    env = make_tiny_env(tiny_model)
    policy = make_policy(tiny_model, reduction="sum")
    td = policy(env.reset())
    dist = LatentGaussian(td["loc"], td["scale"], td["mask"], reduction="sum")
    real = td["mask"][..., None].expand_as(td["loc"])
    manual = torch.stack(
        [
            torch.distributions.Normal(td["loc"][i][real[i]], td["scale"][i][real[i]])
            .log_prob(td["action"][i][real[i]])
            .sum()
            for i in range(4)
        ]
    )
    torch.testing.assert_close(td["action_log_prob"], manual)
    mean_dist = LatentGaussian(td["loc"], td["scale"], td["mask"], reduction="mean")
    torch.testing.assert_close(mean_dist.log_prob(td["action"]), manual / real.flatten(1).sum(1))
    assert dist.stochastic.all()
    # the last DDIM step has zero std: deterministic, log-prob 0, action = mean
    td["step_index"][:] = 4
    last = policy(td)
    assert not last["stochastic"].any()
    assert last["action_log_prob"].eq(0).all()
    torch.testing.assert_close(last["action"], last["loc"] * td["mask"][..., None])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = policy(env.reset())
    torch.testing.assert_close(det["action"], det["loc"] * det["mask"][..., None])


def test_only_the_denoiser_trains_and_reference_is_frozen(tiny_model):
    policy = make_policy(tiny_model)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".denoiser." in n for n in trainable)
    ref = make_reference_policy(tiny_model)
    assert not any(p.requires_grad for p in ref.parameters())
    first = next(tiny_model.denoiser.parameters())
    with torch.no_grad():
        first.add_(1.0)
    assert not torch.equal(first, next(ref.module[0].module.model.denoiser.parameters()))


def test_collector_yields_whole_trajectories(tiny_model):
    env = make_tiny_env(tiny_model)
    collector = Collector(
        env,
        make_policy(tiny_model),
        frames_per_batch=4 * 5,
        total_frames=40,
        auto_register_policy_transforms=False,
    )
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    for b in batches:
        assert b.shape == (4, 5)
        assert b["step_index"].squeeze(-1).tolist() == [list(range(5))] * 4
        assert b["next", "done"].squeeze(-1)[:, -1].all()


def _env_factory(model_path):
    return CrystalDiffusionEnv(
        crystal_env.load_model(model_path), density_reward, batch_size=2, group_size=2, num_steps=3, seed=0
    )


def test_multisync_collector_with_two_workers(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m.pt")
    create = functools.partial(_env_factory, str(tmp_path / "m.pt"))
    collector = MultiSyncCollector(
        [create, create],
        make_policy(crystal_env.load_model(tmp_path / "m.pt")),
        frames_per_batch=2 * 2 * 3,
        total_frames=24,
        cat_results="stack",
    )
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    assert batches[0]["next", "reward"].shape[-2] == 3
    assert batches[0].numel() == 12


def test_make_env_errors_list_valid_names():
    with pytest.raises(ValueError, match="ldm_mp20"):
        make_env("no_such_env", reward=density_reward)
    with pytest.raises(ValueError, match="model"):
        make_env("ldm_mp20", reward=density_reward, colour="blue")


def test_make_env_and_gymnasium_on_the_bundled_model():
    env = make_env("ldm_mp20", reward=density_reward, batch_size=4, group_size=2, num_steps=4, seed=0)
    assert env.num_steps == 4 and env.max_atoms == 20
    gym_env = gym.make("CrystalEnv/LDM-MP20-v0", reward=density_reward, num_steps=3)
    check_env(gym_env.unwrapped, skip_render_check=True)
    obs, _ = gym_env.reset(seed=0)
    assert set(obs) == {"latent", "mask", "step_index"}
    total, done = 0.0, False
    while not done:
        obs, r, done, _, info = gym_env.step(gym_env.action_space.sample() * 0)
        total += r
    assert "crystal" in info and info["reward_failed"] == []
    failing = gym.make("CrystalEnv/LDM-MP20-v0", reward=NaNReward(), num_steps=2)
    failing.reset(seed=0)
    for _ in range(2):
        *_, info = failing.step(failing.action_space.sample() * 0)
    assert info["reward_failed"] == ["size"] and set(info["reward_components"]) == {"density", "size"}
    wrapped = GymWrapper(gym.make("CrystalEnv/LDM-MP20-v0", reward=density_reward, num_steps=3))
    roll = wrapped.rollout(10)
    assert roll.shape[0] == 3 and roll["next", "done"][-1].all()


def test_env_edge_cases_are_rejected_or_handled(tiny_model):
    """Issue 11: NaN in a padding row failed the crystal; mixed step_index values silently finished 7
    of 8 crystals unscored; step_index -1 and eta=nan were accepted."""
    env = make_tiny_env(tiny_model, num_steps=2)
    policy = make_policy(tiny_model)
    td = policy(env.reset())
    padding = ~td["mask"]
    assert padding.any()
    td["action"][padding] = float("nan")  # garbage in padding rows only
    nxt = env.step(td)["next"]
    assert not nxt["failed"].any() and env.num_invalid_actions == 0
    assert torch.isfinite(nxt["latent"]).all() and nxt["latent"][padding].eq(0).all()
    mixed = policy(env.reset())
    mixed["step_index"][1] = 1
    with pytest.raises(ValueError, match=r"lockstep.*\[0, 1\]"):
        env.step(mixed)
    negative = policy(env.reset())
    negative["step_index"][:] = -1
    with pytest.raises(ValueError, match="step_index must be in"):
        env.step(negative)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        make_tiny_env(tiny_model, eta=float("nan"))
    with pytest.raises(ValueError, match="eta must be a finite number"):
        tiny_model.configure_sampler("ddim", 10, float("inf"))
