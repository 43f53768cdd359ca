"""PPO with TorchRL's stock ``ClipPPOLoss`` and ``GAE``: standard algorithms run on the env unchanged."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from agents.base import GradientAgent


class LatentValueNet(nn.Module):
    """V(latent, step): a per-atom MLP, masked mean over atoms, plus a step embedding."""

    def __init__(self, latent_dim: int, num_steps: int, hidden: int = 64):
        super().__init__()
        self.atom = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.step = nn.Embedding(num_steps + 1, hidden)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))
        self.num_steps = num_steps

    def forward(self, latent: torch.Tensor, mask: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1).to(latent.dtype)
        pooled = (self.atom(latent) * w).sum(-2) / w.sum(-2).clamp_min(1.0)
        step = self.step(step_index.squeeze(-1).clamp(0, self.num_steps))
        return self.head(pooled + step)


class PPOAgent(GradientAgent):
    """``ppo_epochs`` passes of ``num_inner_batch`` minibatches (over trajectories) per batch."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        latent_dim: int,
        num_steps: int,
        clip_epsilon: float = 0.2,
        entropy_weight: float = 1e-5,
        critic_coeff: float = 1.0,
        gamma: float = 1.0,
        lmbda: float = 0.95,
        ppo_epochs: int = 2,
        num_inner_batch: int = 2,
        value_hidden: int = 64,
        lr: float = 1e-5,
        critic_lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ):
        device = next(policy.parameters()).device
        critic = TensorDictModule(
            LatentValueNet(latent_dim, num_steps, value_hidden).to(device),  # where the policy is
            in_keys=["latent", "mask", "step_index"],
            out_keys=["state_value"],
        )
        super().__init__(policy, [critic], lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        critic_params = set(map(id, critic.parameters()))
        self.optimizer.param_groups[0]["params"] = [p for p in self.params if id(p) not in critic_params]
        self.optimizer.add_param_group({"params": list(critic.parameters()), "lr": critic_lr})
        self.critic = critic
        self.advantage_module = GAE(gamma=gamma, lmbda=lmbda, value_network=critic)
        self.loss = ClipPPOLoss(
            policy,
            critic,
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_weight,
            critic_coeff=critic_coeff,
            normalize_advantage=True,
        )
        self.loss.set_keys(sample_log_prob="action_log_prob")
        self.ppo_epochs = ppo_epochs
        self.num_inner_batch = num_inner_batch

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        batch = batch.clone(False)
        with torch.no_grad():
            self.advantage_module(batch)
        sums: dict[str, float] = {}
        n = 0
        applied = 0
        for _ in range(self.ppo_epochs):
            for idx in torch.randperm(batch.shape[0]).chunk(self.num_inner_batch):
                out = self.loss(batch[idx])
                loss = out["loss_objective"] + out["loss_critic"] + out.get("loss_entropy", 0.0)
                ok, grad_norm = self.optimizer_step(loss)
                applied += ok
                n += 1
                for key, value in (
                    ("loss", loss.detach()),
                    ("grad_norm", grad_norm),
                    ("loss_critic", out["loss_critic"].detach()),
                    ("entropy", out.get("entropy", torch.zeros(()))),
                    ("clip_fraction", out.get("clip_fraction", torch.zeros(()))),
                    ("kl_div", out.get("kl_approx", torch.zeros(()))),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value)
        self.consecutive_nan = 0 if applied else self.consecutive_nan + 1
        metrics = {k: v / n for k, v in sums.items()}
        metrics["advantages"] = float(batch["advantage"].abs().mean())
        metrics["skipped_updates"] = float(n - applied)
        return metrics
