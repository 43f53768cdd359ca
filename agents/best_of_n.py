"""Best-of-n: no learning. Samples from the base policy and keeps the best final states seen."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase, lazy_stack
from torch import nn

from agents.advantages import terminal_rewards
from agents.base import Agent


class BestOfNAgent(Agent):
    """The baseline every learning agent must beat at an equal budget of reward evaluations."""

    learns = False

    def __init__(self, policy: nn.Module, reference: nn.Module | None = None, keep: int = 64):
        super().__init__(policy)
        self.keep = keep
        self.best: TensorDictBase | None = None  # final steps of the best trajectories so far

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        final = batch[:, -1].to("cpu")  # kept across steps and checkpointed: off the GPU
        pool = final if self.best is None else lazy_stack([*self.best.unbind(0), *final.unbind(0)])
        rewards = pool["next", "reward"].reshape(-1)
        top = torch.argsort(rewards, descending=True)[: self.keep]
        self.best = lazy_stack([pool[int(i)] for i in top])
        kept = self.best["next", "reward"].reshape(-1)
        return {
            "best_reward": float(kept[0]),
            "kept_mean_reward": float(kept.mean()),
            "batch_reward": float(terminal_rewards(batch).mean()),
        }

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.best = state["best"]
