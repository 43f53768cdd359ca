"""GRPO, the default agent: group-relative advantages, PPO ratio clipping, k3 KL to the base model."""

from __future__ import annotations

from torch import nn

from agents.policy_gradient import PolicyGradientAgent


class GRPOAgent(PolicyGradientAgent):
    """Defaults of the reference implementation: clip 0.001, KL weight 1, entropy 1e-5, 2 inner
    batches, gradient-norm clip 1, AdamW lr 1e-5, no weight decay.

    ``group_reward_norm=False`` uses the reward's own global normalisation instead of per-group.
    """

    def __init__(self, policy: nn.Module, reference: nn.Module | None, group_reward_norm: bool = True, **kwargs):
        super().__init__(policy, reference, advantage="group" if group_reward_norm else "reward", **kwargs)
