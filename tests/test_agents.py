import pytest
import torch

from agents.advantages import batch_standardize, broadcast_to_steps, group_normalize
from agents.best_of_n import BestOfNAgent
from agents.grpo import GRPOAgent
from agents.grpo_loss import GroupPolicyLoss
from agents.ppo import PPOAgent
from agents.reinforce import ReinforceAgent
from crystal_env import CrystalDiffusionEnv
from crystal_env.policy import make_policy, make_reference_policy


def trainable(policy):
    return [p for p in policy.parameters() if p.requires_grad]


def density_reward(structures):
    return torch.tensor([0.0 if s is None else len(s) / s.volume for s in structures])


def test_group_normalize_known_answer():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    out = group_normalize(r, g, eps=0.0 + 1e-12)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))
    torch.testing.assert_close(batch_standardize(torch.tensor([0.0, 2.0]), 0.0), torch.tensor([-1.0, 1.0]))
    assert broadcast_to_steps(torch.tensor([1.0, 2.0]), 3).shape == (2, 3, 1)


@pytest.fixture
def batch_and_policy(tiny_model):
    env = CrystalDiffusionEnv(tiny_model, density_reward, batch_size=4, group_size=2, num_steps=4, seed=0)
    policy = make_policy(tiny_model)
    with torch.no_grad():
        batch = env.rollout(10, policy)
    return batch, policy, make_reference_policy(tiny_model)


def test_loss_at_the_rollout_policy(batch_and_policy):
    batch, policy, ref = batch_and_policy
    batch = batch.clone()
    batch["advantage"] = broadcast_to_steps(torch.tensor([1.0, -1.0, 0.5, -0.5]), 4)
    loss = GroupPolicyLoss(policy, ref, clip_epsilon=0.2, kl_weight=1.0, entropy_weight=0.0)
    out = loss(batch)
    torch.testing.assert_close(out["ratio"], torch.tensor(1.0))
    assert abs(out["kl_div"]) < 1e-6 and out["clip_fraction"] == 0
    # surrogate at ratio 1 = mean advantage over the stochastic steps (3 of 4 per trajectory)
    torch.testing.assert_close(out["loss_objective"], -torch.tensor(0.0), atol=1e-6, rtol=0)
    out["loss_objective"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_deterministic_steps_are_skipped(batch_and_policy):
    batch, policy, ref = batch_and_policy
    assert not batch["stochastic"][:, -1].any() and batch["stochastic"][:, :-1].all()
    batch = batch.clone()
    batch["advantage"] = broadcast_to_steps(torch.ones(4), 4)
    loss = GroupPolicyLoss(policy, ref, clip_epsilon=None, kl_weight=0.0, entropy_weight=0.0)
    full = loss(batch)["loss_objective"]
    batch["advantage"][:, -1] = 1e6  # a skipped step's advantage cannot matter
    torch.testing.assert_close(loss(batch)["loss_objective"], full)
    assert torch.isfinite(full)


def test_kl_references_and_errors(batch_and_policy, tiny_model):
    batch, policy, ref = batch_and_policy
    batch = batch.clone()
    batch["advantage"] = broadcast_to_steps(torch.zeros(4), 4)
    with torch.no_grad():
        for p in tiny_model.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base = GroupPolicyLoss(policy, ref, kl_reference="base")(batch)
    rollout = GroupPolicyLoss(policy, None, kl_reference="rollout")(batch)
    # the batch was sampled by the base policy, so both references agree here ...
    assert base["kl_div"] > 0
    torch.testing.assert_close(base["kl_div"], rollout["kl_div"])
    # ... and differ once the reference is not the sampling policy
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    moved = GroupPolicyLoss(policy, ref, kl_reference="base")(batch)
    assert not torch.isclose(moved["kl_div"], rollout["kl_div"])
    analytic = GroupPolicyLoss(policy, ref, entropy_estimator="analytic")(batch)
    assert torch.isfinite(analytic["entropy"])
    with pytest.raises(ValueError, match="kl_reference"):
        GroupPolicyLoss(policy, ref, kl_reference="nope")
    with pytest.raises(ValueError, match="reference"):
        GroupPolicyLoss(policy, None, kl_reference="base")


@pytest.mark.parametrize("agent_cls", [GRPOAgent, ReinforceAgent, PPOAgent, BestOfNAgent])
def test_every_agent_updates_on_a_batch(agent_cls, batch_and_policy):
    batch, policy, ref = batch_and_policy
    kwargs = {"latent_dim": 4, "num_steps": 4} if agent_cls is PPOAgent else {}
    agent = agent_cls(policy, ref, **kwargs)
    before = [p.detach().clone() for p in trainable(policy)]
    metrics = agent.update(batch)
    assert all(isinstance(v, float) for v in metrics.values())
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainable(policy), strict=True))
    assert changed == agent.learns
    state = agent.state_dict()
    agent.load_state_dict(state)


def test_nan_loss_skips_the_update(batch_and_policy):
    batch, policy, ref = batch_and_policy
    agent = GRPOAgent(policy, ref)
    before = [p.detach().clone() for p in trainable(policy)]
    bad = batch.clone()
    bad["next", "reward"][:, -1] = float("nan")
    metrics = agent.update(bad)
    assert metrics["skipped_updates"] == 2 and agent.consecutive_nan == 1
    assert all(torch.equal(a, p) for a, p in zip(before, trainable(policy), strict=True))


def test_readme_example_agent_plugs_in(batch_and_policy):
    from agents.factory import build_agent

    batch, policy, ref = batch_and_policy
    agent = build_agent({"_target_": "tests.example_agent.MyAgent", "my_param": 0.1}, policy, ref, latent_dim=4)
    before = [p.detach().clone() for p in trainable(policy)]
    metrics = agent.update(batch)
    assert set(metrics) == {"loss", "grad_norm"}
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable(policy), strict=True))
    with pytest.raises(TypeError, match="Agent"):
        build_agent({"_target_": "torch.nn.Linear"}, policy, ref)


def test_trainer_logs_reward_component_means_and_failure_shares():
    """_final_means on a [B, K] batch: the terminal reward, each raw component, its contribution, and
    the share of crystals each component could not score (from the env's ``reward_failed``)."""
    from tensordict import TensorDict

    from agents.trainer import _final_means

    B, K = 4, 3
    reward = torch.zeros(B, K, 1)
    reward[:, -1, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    final = {
        "reward": reward,
        "reward_raw": TensorDict({"energy": torch.tensor([-0.5, -1.0, -3.0, -3.0]).expand(K, B).T[..., None]}, [B, K]),
        "reward_components": TensorDict({"energy": torch.ones(B, K, 1)}, [B, K]),
        "reward_failed": TensorDict(
            {"energy": torch.tensor([False, False, True, True]).expand(K, B).T[..., None]}, [B, K]
        ),
        "done": torch.zeros(B, K, 1, dtype=torch.bool),
    }
    final["done"][:, -1] = True
    batch = TensorDict({"next": TensorDict(final, [B, K])}, [B, K])
    means = _final_means(batch, "train")
    assert means == {
        "train/reward": 2.5,
        "train/energy": -1.875,
        "train/weighted/energy": 1.0,
        "train/failed/energy": 0.5,
    }
