"""Composition uniqueness: a count-based guard against collapse onto a few compositions."""

from __future__ import annotations

from typing import Any

import torch

from rewards.base import RewardComponent
from rewards.formula_memory import FormulaMemory
from rewards.metrics import RewardBatch


class CompositionUniqueness(RewardComponent):
    """1 / k, k = how often this reduced formula occurs among the batch's valid crystals and the last
    ``memory`` valid crystals of earlier calls; 0 for invalid crystals. With ``penalty="linear"``:
    −(k − 1) / ``scale`` (invalid crystals: the batch's lowest value). 1/k punishes the first repeats
    most and saturates (k = 16 and k = 64 differ by 0.05); the linear count is, in expectation,
    the policy's collision probability (how often two samples share a formula, i.e. what the
    uniqueness metric counts), tolerating a few repeats and growing without bound with collapse.

    With ``memory=0`` it is a batch-level term: a batch all on one composition earns 1/B per crystal,
    a composition nobody else in the batch has earns 1. A batch of 32 rarely repeats a formula even
    when the policy has narrowed to a few hundred of them, which 500 evaluation samples then repeat
    many times over; ``memory`` (a count-based novelty bonus over the generator's own recent output)
    extends the count across calls so such narrowing is penalised as it happens. The memory is part
    of :meth:`state_dict`, which training checkpoints save (a resumed run continues with it); calls
    made with ``remember = False``
    (:meth:`~rewards.CompositeReward.frozen`, which training uses for validation batches) read it
    without adding to it. Unlike :class:`~rewards.Creativity` (structure level: a second polymorph of
    a formula is still creative), this counts compositions, the quantity a stability reward tends to
    collapse ("distinct formulas" in the evaluation).
    """

    worst = 0.0
    PENALTIES = ("reciprocal", "linear")

    def __init__(self, memory: int = 0, penalty: str = "reciprocal", scale: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        if penalty not in self.PENALTIES:
            raise ValueError(f"Unknown penalty {penalty!r}; valid: {list(self.PENALTIES)}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.penalty, self.scale = penalty, float(scale)
        if penalty == "linear":
            self.worst = None  # values go below 0: an invalid crystal gets the batch's lowest
        self.memory = int(memory)
        self._recent = FormulaMemory(self.memory)
        self.remember = True

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        formulas = [s.composition.reduced_formula if s is not None else None for s in batch.valid_structures]
        counts = self._recent.counts([f for f in formulas if f is not None], self.remember)
        if self.penalty == "linear":
            return torch.tensor([-(counts[f] - 1) / self.scale if f is not None else 0.0 for f in formulas])
        return torch.tensor([1.0 / counts[f] if f is not None else 0.0 for f in formulas])

    def state_dict(self) -> dict[str, Any]:
        return self._recent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._recent.load_state_dict(state, self.name)
