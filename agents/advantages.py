"""Trajectory-level advantages from terminal rewards (no knowledge of what is being generated).

torchrl's ``MCAdvantage`` does group-relative normalisation as a replay-buffer transform that queues
and re-concatenates trajectories by group; our collector batches always hold whole groups, so the
advantage is computed directly on the [B, K] batch, keeping its layout for minibatching.
"""

from __future__ import annotations

import torch


def group_normalize(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean_g) / (std_g + eps) within each group g (population std)."""
    out = torch.empty_like(rewards)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx]
        out[idx] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out


def batch_standardize(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean) / (std + eps) over the whole batch."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def terminal_rewards(batch) -> torch.Tensor:
    """The (B,) reward of the last step of each trajectory of a [B, K] batch."""
    return batch["next", "reward"][:, -1].reshape(batch.shape[0])


def broadcast_to_steps(values: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B,) per-trajectory values → (B, K, 1), the same value at every step."""
    return values.reshape(-1, 1, 1).expand(-1, num_steps, 1).clone()
