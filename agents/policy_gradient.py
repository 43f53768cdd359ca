"""Group-relative (GRPO) and batch-standardised (REINFORCE-style) policy-gradient agents."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torch import nn

from agents.advantages import batch_standardize, broadcast_to_steps, group_normalize, terminal_rewards
from agents.base import GradientAgent
from agents.grpo_loss import GroupPolicyLoss

ADVANTAGES = ("group", "batch", "reward")


class PolicyGradientAgent(GradientAgent):
    """Trajectory-level advantage from the terminal reward, then ``num_inner_batch`` minibatch
    updates of :class:`GroupPolicyLoss` (one optimiser step each) over the crystals of the batch.

    ``advantage``: ``group`` — (r − mean)/(std + eps) within each group (GRPO); ``batch`` — the same
    over the whole batch; ``reward`` — the reward's own global normalisation ``reward_normalizer(r)``
    (e.g. ``CompositeReward.normalize``), or the reward as it comes when none is given.
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        advantage: str = "group",
        clip_ratio: float | None = 0.001,
        kl_weight: float = 1.0,
        entropy_weight: float = 1e-5,
        kl_reference: str = "base",
        entropy_estimator: str = "sample",
        num_inner_batch: int = 2,
        adv_eps: float = 1e-4,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        reward_normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(policy, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        self.reward_normalizer = reward_normalizer
        if advantage not in ADVANTAGES:
            raise ValueError(f"Unknown advantage {advantage!r}; valid: {list(ADVANTAGES)}")
        self.advantage = advantage
        self.adv_eps = adv_eps
        self.num_inner_batch = num_inner_batch
        self.loss = GroupPolicyLoss(
            policy,
            reference if kl_reference == "base" else None,
            clip_epsilon=clip_ratio,
            kl_weight=kl_weight,
            entropy_weight=entropy_weight,
            kl_reference=kl_reference,
            entropy_estimator=entropy_estimator,
        )

    def advantages(self, batch: TensorDictBase) -> torch.Tensor:
        rewards = terminal_rewards(batch)
        if self.advantage == "group":
            return group_normalize(rewards, batch["group_id"][:, 0].reshape(-1), self.adv_eps)
        if self.advantage == "batch":
            return batch_standardize(rewards, self.adv_eps)
        return rewards if self.reward_normalizer is None else self.reward_normalizer(rewards)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        adv = self.advantages(batch)
        # only what the loss reads: minibatch indexing then copies no crystals, rewards or "next" states
        batch = batch.select(*(k for k in self.loss.required_keys if k != "advantage"))
        batch.set("advantage", broadcast_to_steps(adv, batch.shape[1]))
        perm = torch.randperm(batch.shape[0])
        sums: dict[str, float] = {}
        applied = 0
        chunks = [c for c in perm.chunk(self.num_inner_batch) if c.numel()]
        for idx in chunks:
            out = self.loss(batch[idx])
            loss = out["loss_objective"] + out["loss_kl"] + out["loss_entropy"]
            ok, grad_norm = self.optimizer_step(loss)
            applied += ok
            for key, value in (
                ("loss", loss.detach()),
                ("grad_norm", grad_norm),
                *((k, out[k]) for k in ("kl_div", "entropy", "ratio", "clip_fraction")),
            ):
                sums[key] = sums.get(key, 0.0) + float(value) / len(chunks)
        self.consecutive_nan = 0 if applied else self.consecutive_nan + 1
        return {
            **sums,
            "advantages": float(adv.abs().mean()),
            "skipped_updates": float(len(chunks) - applied),
            "nan_loss": float(applied == 0 and not math.isfinite(sums["loss"])),
        }
