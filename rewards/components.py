"""Built-in reward components. Each maps a batch of crystals to one raw float per crystal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystal_env.crystals.validity import is_smact_valid
from rewards.base import RewardComponent
from rewards.metrics import RewardBatch
from rewards.mmd import mmd_contributions
from rewards.predictor import get_predictor

ZERO_DISTANCE = 1e-9  # Å; AMD distances at or below this count as "identical"


class Creativity(RewardComponent):
    """1 if unique in the batch and novel w.r.t. the reference, 0 if neither.

    Otherwise (a new crystal repeated in the batch, or a first copy of a known one) the smallest
    non-zero AMD distance (k = 100, Chebyshev, Å) to the crystals of the same reduced formula in the
    reference and the rest of the batch, capped at 1 so it never beats a fully creative crystal.
    """

    required_metrics = ("unique", "novel", "amd")
    worst = 0.0

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        unique, novel, amds = batch.metric("unique"), batch.metric("novel"), batch.metric("amd")
        valid = batch.valid.tolist()
        formulas = [s.composition.reduced_formula if s is not None else None for s in batch.valid_structures]
        out = torch.zeros(len(batch))
        for i, ok in enumerate(valid):
            if not ok or unique[i] == novel[i]:
                out[i] = float(unique[i] and novel[i])
                continue
            ref_amds = batch.reference.formula_amds(formulas[i])
            same = [j for j, f in enumerate(formulas) if f == formulas[i] and j != i]
            dist = np.abs(np.vstack([ref_amds, amds[same]]) - amds[i]).max(axis=1)
            dist = dist[np.isfinite(dist) & (dist > ZERO_DISTANCE)]
            out[i] = min(float(dist.min()), 1.0) if dist.size else 0.0
        return out


class Energy(RewardComponent):
    """−clamp(E_hull, 0, 1) with E_hull (eV/atom) from an MLIP against the reference hull; failures → −1.

    ``device``: where the MLIP runs (None: the reward's device, i.e. the env's)."""

    required_metrics = ("e_above_hull",)
    worst = -1.0

    def __init__(
        self,
        mlip: str = "chgnet",
        model: str | None = None,
        relax_steps: int = 0,
        fmax: float = 0.1,
        batch_size: int = 16,
        device: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.mlip_params = dict(
            mlip=mlip,
            model=None if model is None else str(model),
            relax_steps=int(relax_steps),
            fmax=float(fmax),
            batch_size=int(batch_size),
            device=device,
        )

    def metric_params(self, metric: str) -> dict:
        return self.mlip_params

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        e_hull = torch.as_tensor(batch.metric("e_above_hull", **self.mlip_params), dtype=torch.float32)
        return -e_hull.clamp(0.0, 1.0)  # NaN (no energy / no hull) stays NaN and becomes `worst`


class _Diversity(RewardComponent):
    """Leave-one-out contribution to the polynomial-kernel MMD between the batch and the reference.

    ``device``: where the VAE runs (None: the reward's device, i.e. the env's)."""

    kind = ""

    def __init__(self, model: str | Path | Any = "mp20_tiny", device: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.device = device
        self.required_metrics = (f"vae_{self.kind}_features",)

    def metric_params(self, metric: str) -> dict:
        return {"model": self.model, "device": self.device}

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        feats = batch.metric(f"vae_{self.kind}_features", model=self.model, device=self.device)
        ok = torch.isfinite(feats).all(1)
        out = torch.full((len(batch),), float("nan"))
        ref = batch.reference.vae_features(self.model, self.kind, device=self.device or batch.device)
        out[ok] = mmd_contributions(feats[ok], ref)
        return out


class StructureDiversity(_Diversity):
    """MMD contribution on mean-pooled VAE latent means."""

    kind = "structure"


class CompositionDiversity(_Diversity):
    """MMD contribution on mean-pooled VAE atom-type embeddings."""

    kind = "composition"


class Predictor(RewardComponent):
    """A trained property predictor: −(pred − target)² with ``target_value``, else the prediction.

    The prediction is clamped to [``clip_min``, ``clip_max``] first (e.g. ``clip_min: 0`` for band gaps).
    """

    required_metrics = ("property_prediction",)

    def __init__(
        self,
        checkpoint: str | Path,
        target_value: float | None = None,
        clip_min: float | None = None,
        clip_max: float | None = None,
        device: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.checkpoint = str(checkpoint)
        self.device = device  # where the VAE encodes (None: the reward's device)
        get_predictor(self.checkpoint)  # fail early on a missing or broken checkpoint
        self.target_value = target_value
        self.clip_min, self.clip_max = clip_min, clip_max

    def metric_params(self, metric: str) -> dict:
        return {"checkpoint": self.checkpoint, "device": self.device}

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        pred = batch.metric("property_prediction", checkpoint=self.checkpoint, device=self.device)
        if self.clip_min is not None or self.clip_max is not None:
            pred = pred.clamp(self.clip_min, self.clip_max)
        return pred if self.target_value is None else -((pred - self.target_value) ** 2)


class AtomicDensity(RewardComponent):
    """Atoms per Å³; with ``target``, −|density − target| (absolute, so small gaps still register)."""

    def __init__(self, target: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.target = target

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        density = torch.tensor([len(s) / s.volume if s is not None else float("nan") for s in batch.valid_structures])
        return density if self.target is None else -(density - self.target).abs()


class SMACTValidity(RewardComponent):
    """1 if the composition passes SMACT's charge-neutrality and electronegativity screen, else 0."""

    worst = 0.0

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        return torch.tensor([float(is_smact_valid(s)) for s in batch.valid_structures])
