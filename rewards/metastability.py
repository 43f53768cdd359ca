"""Metastability: a step reward for reaching the hull's neighbourhood, on top of a smooth energy term."""

from __future__ import annotations

from typing import Any

import torch

from rewards.components import Energy
from rewards.metrics import RewardBatch


class Metastability(Energy):
    """1 if E_hull ≤ ``threshold`` eV/atom (default 0.1, the usual "metastable" cut), else 0.

    −E_hull (:class:`~rewards.Energy`) rewards 1.5 → 0.5 eV/atom as much as 1.0 → 0.0, and a policy
    that must also stay diverse settles where low-energy compositions are plentiful (0.2–0.5 eV/atom
    for Perov-5) rather than in the sparse region under the threshold that the metastable share
    counts. This term pays for crossing the threshold itself. It takes the MLIP options of
    :class:`~rewards.Energy` (``mlip``, ``model``, ``relax_steps``, …); with the same options as an
    Energy term in the reward, the energies are computed once and shared. Failures score 0.
    """

    def __init__(self, threshold: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.worst = 0.0  # Energy.__init__ sets -max_e_hull

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        e_hull = torch.as_tensor(batch.metric("e_above_hull", **self.mlip_params), dtype=torch.float32)
        hit = (e_hull <= self.threshold).float()
        return torch.where(torch.isnan(e_hull), e_hull, hit)  # NaN (no energy / no hull): a failure, 0
