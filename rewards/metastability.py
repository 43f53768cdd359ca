"""Metastability: a step reward for reaching the hull's neighbourhood, on top of a smooth energy term."""

from __future__ import annotations

from typing import Any

import torch

from rewards.components import Energy
from rewards.formula_memory import FormulaMemory
from rewards.metrics import RewardBatch


class Metastability(Energy):
    """1 if E_hull ≤ ``threshold`` eV/atom (default 0.1, the usual "metastable" cut), else 0.

    −E_hull (:class:`~rewards.Energy`) rewards 1.5 → 0.5 eV/atom as much as 1.0 → 0.0, and a policy
    that must also stay diverse settles where low-energy compositions are plentiful (0.2–0.5 eV/atom
    for Perov-5) rather than in the sparse region under the threshold that the metastable share
    counts. This term pays for crossing the threshold itself. It takes the MLIP options of
    :class:`~rewards.Energy` (``mlip``, ``model``, ``relax_steps``, …); with the same options as an
    Energy term in the reward, the energies are computed once and shared. Failures score 0.

    ``share_memory`` > 0 shares the bonus among copies (fitness sharing): a metastable crystal earns
    1/k, k = how many metastable crystals of its reduced formula are in the batch and among the last
    ``share_memory`` metastable crystals of earlier calls. The whole bonus then goes to finding *more*
    metastable compositions rather than repeating one: the uniqueness and distinct-formula columns
    are what a plain bonus trades away. The memory is saved like
    :class:`~rewards.CompositionUniqueness`'s (:meth:`state_dict`; ``remember = False`` reads it
    without adding to it).
    """

    def __init__(self, threshold: float = 0.1, share_memory: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        if share_memory < 0:
            raise ValueError(f"share_memory must be >= 0, got {share_memory}")
        self.threshold = float(threshold)
        self.worst = 0.0  # Energy.__init__ sets -max_e_hull
        self.share_memory = int(share_memory)
        self._recent = FormulaMemory(self.share_memory)
        self.remember = True

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        e_hull = torch.as_tensor(batch.metric("e_above_hull", **self.mlip_params), dtype=torch.float32)
        hit = (e_hull <= self.threshold).float()
        if self.share_memory:
            hit = self._shared(hit, batch)
        return torch.where(torch.isnan(e_hull), e_hull, hit)  # NaN (no energy / no hull): a failure, 0

    def _shared(self, hit: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        formulas = [
            s.composition.reduced_formula if s is not None and h > 0 else None
            for s, h in zip(batch.valid_structures, hit.tolist(), strict=True)
        ]
        counts = self._recent.counts([f for f in formulas if f is not None], self.remember)
        return torch.tensor([1.0 / counts[f] if f is not None else 0.0 for f in formulas])

    def state_dict(self) -> dict[str, Any]:
        return self._recent.state_dict() if self.share_memory else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:  # empty: what state_dict() gives without sharing
            self._recent.load_state_dict(state, self.name)
        else:
            self._recent = FormulaMemory(self.share_memory)
