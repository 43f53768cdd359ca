"""REINFORCE with a KL penalty (the reference "PO" variant): no groups, batch-standardised rewards,
the GRPO loss without ratio clipping."""

from __future__ import annotations

from torch import nn

from agents.policy_gradient import PolicyGradientAgent


class ReinforceAgent(PolicyGradientAgent):
    required_group_size = 1

    def __init__(self, policy: nn.Module, reference: nn.Module | None, **kwargs):
        kwargs.pop("clip_ratio", None)
        super().__init__(policy, reference, advantage="batch", clip_ratio=None, **kwargs)
