"""Rewards for crystal generation: pymatgen structures in, per-crystal tensors out.

Nothing here knows about diffusion; a reward is any callable ``reward(structures)``.
"""

from rewards.base import NORMALIZE_FNS, RewardComponent, normalize
from rewards.components import (
    AtomicDensity,
    CompositionDiversity,
    Creativity,
    Energy,
    Predictor,
    SMACTValidity,
    StructureDiversity,
)
from rewards.composite import CompositeReward
from rewards.composition_uniqueness import CompositionUniqueness
from rewards.factory import build_reward, reward_names
from rewards.isolated import IsolatedReward
from rewards.metastability import Metastability
from rewards.metrics import METRICS, RewardBatch, register_metric
from rewards.reference import ReferenceSet, load_reference

__all__ = [
    "METRICS",
    "NORMALIZE_FNS",
    "AtomicDensity",
    "CompositeReward",
    "CompositionDiversity",
    "CompositionUniqueness",
    "Creativity",
    "Energy",
    "IsolatedReward",
    "Metastability",
    "Predictor",
    "ReferenceSet",
    "RewardBatch",
    "RewardComponent",
    "SMACTValidity",
    "StructureDiversity",
    "build_reward",
    "load_reference",
    "normalize",
    "register_metric",
    "reward_names",
]
