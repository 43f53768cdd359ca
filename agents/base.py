"""The agent interface the trainer drives, and the shared optimiser step.

An agent sees TensorDicts of whole trajectories ([B, K] batches from a TorchRL collector) and a
policy module; it knows nothing about what the environment generates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDictBase
from torch import nn


class Agent(ABC):
    """One ``update`` per collected batch; ``state_dict`` holds everything needed to resume."""

    #: False for agents that only sample (e.g. best-of-n): the trainer then skips gradient logging.
    learns: bool = True
    #: Group size the agent requires from the environment (None: any).
    required_group_size: int | None = None

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self.consecutive_nan = 0

    @abstractmethod
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """Learn from one batch of trajectories; return scalar metrics (``loss``, ``kl_div``, …)."""

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])


class GradientAgent(Agent):
    """An agent with an AdamW optimiser over its trainable parameters, gradient clipping, NaN-safe
    steps and (under ``torch.distributed``) gradient all-reduce across ranks."""

    def __init__(
        self,
        policy: nn.Module,
        extra_modules: list[nn.Module] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ):
        super().__init__(policy)
        self.extra_modules = nn.ModuleList(extra_modules or [])
        self.params = [p for m in (policy, self.extra_modules) for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("The policy has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        self.skipped_updates = 0

    def optimizer_step(self, loss: torch.Tensor) -> tuple[bool, float]:
        """Backward + all-reduce + clip + step; a non-finite loss or gradient skips the update.

        Returns (applied, grad_norm).
        """
        self.optimizer.zero_grad(set_to_none=True)
        finite = torch.isfinite(loss.detach())
        if dist.is_available() and dist.is_initialized():  # every rank must agree to skip
            flag = finite.to(torch.float32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.bool()[0]
        if not bool(finite):
            self.skipped_updates += 1
            return False, math.nan
        loss.backward()
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            return False, grad_norm
        self.optimizer.step()
        return True, grad_norm

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "extra": self.extra_modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.extra_modules.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
