"""Reward components that misbehave on purpose, importable by a reward worker process."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from rewards import RewardComponent, register_metric
from rewards.safety import crystal_scope


@register_metric("test_native_trouble")
def native_trouble(batch) -> np.ndarray:
    """Number of atoms; krypton: one C call that does not return for hours; xenon: kills the process."""
    out = np.full(len(batch), np.nan)
    for i, s in enumerate(batch.valid_structures):
        if s is None:
            continue
        with crystal_scope(i):
            if "Kr" in s.composition:
                hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2**31 - 1)  # about half an hour in C
            if "Xe" in s.composition:
                os.abort()
            out[i] = len(s)
    return out


class NativeTrouble(RewardComponent):
    required_metrics = ("test_native_trouble",)
    worst = -1.0

    def compute(self, batch) -> torch.Tensor:
        return torch.as_tensor(batch.metric("test_native_trouble"), dtype=torch.float32)
