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


class Creativity(RewardComponent):
    """1 if unique in the batch and novel w.r.t. the reference, 0 if neither.

    Otherwise the AMD distance (k = 100, Chebyshev, Å) to the crystal it matched — the reference
    crystal for a first copy of a known crystal, the earlier batch crystal for a repeat of a new one —
    capped at 1 so it never beats a fully creative crystal. An exact copy scores 0; a copy that the
    matcher accepts within its tolerances scores its small distance, whatever other polymorphs of
    the formula are known. (The reference implementation takes the smallest non-zero distance to
    *any* same-formula crystal, which gives an exact copy of a known crystal ~1 when a different
    polymorph is also known.)
    """

    required_metrics = ("unique_match", "novel_match", "unique", "novel", "amd")
    worst = 0.0

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        unique, novel, amds = batch.metric("unique"), batch.metric("novel"), batch.metric("amd")
        unique_match, novel_match = batch.metric("unique_match"), batch.metric("novel_match")
        out = torch.zeros(len(batch))
        for i, ok in enumerate(batch.valid.tolist()):
            if not ok or unique[i] == novel[i]:
                out[i] = float(unique[i] and novel[i])
                continue
            matched = batch.reference.amds[novel_match[i]] if not novel[i] else amds[unique_match[i]]
            dist = float(np.abs(matched - amds[i]).max())
            out[i] = min(dist, 1.0) if np.isfinite(dist) else 0.0
        return out


class Energy(RewardComponent):
    """−clamp(E_hull, ``min_e_hull``, ``max_e_hull``) with E_hull (eV/atom) from an MLIP against the
    reference hull.

    ``max_e_hull`` (default 1.0, the reference implementation's) bounds the penalty: crystals further
    above the hull all score −max_e_hull, so the reward only discriminates below it. ``min_e_hull``
    (default 0) is the floor: crystals closer to the hull all score −min_e_hull, so the term stops
    pulling the policy once it gets there (a :class:`~rewards.Metastability` bonus can take over).
    Failures (no energy, no hull) get the worst value −max_e_hull. ``device``: where the MLIP runs
    (None: the reward's device, i.e. the env's).
    """

    required_metrics = ("e_above_hull",)

    def __init__(
        self,
        mlip: str = "chgnet",
        max_e_hull: float = 1.0,
        model: str | None = None,
        relax_steps: int = 0,
        fmax: float = 0.1,
        batch_size: int = 16,
        device: str | None = None,
        min_e_hull: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not max_e_hull > 0:
            raise ValueError(f"max_e_hull must be > 0 eV/atom, got {max_e_hull}")
        if not 0 <= min_e_hull < max_e_hull:
            raise ValueError(f"min_e_hull must be in [0, max_e_hull = {max_e_hull}) eV/atom, got {min_e_hull}")
        self.max_e_hull = float(max_e_hull)
        self.min_e_hull = float(min_e_hull)
        self.worst = -self.max_e_hull
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
        # NaN (no energy / no hull) stays NaN and becomes `worst`
        return -e_hull.clamp(self.min_e_hull, self.max_e_hull)


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
    """1 if the composition passes SMACT's charge-neutrality and electronegativity screen, else 0.

    ``oxidation_states_set``: ``smact14`` (default) or ``icsd24`` (the reference implementation's).
    """

    worst = 0.0

    def __init__(self, oxidation_states_set: str = "smact14", **kwargs: Any):
        super().__init__(**kwargs)
        is_smact_valid(None, oxidation_states_set)  # validate the name now
        self.oxidation_states_set = oxidation_states_set

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        return torch.tensor([float(is_smact_valid(s, self.oxidation_states_set)) for s in batch.valid_structures])
