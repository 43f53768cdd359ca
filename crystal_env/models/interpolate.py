"""Weight interpolation between a base LDM and a fine-tuned one (WiSE-FT style), and weight averages
of several fine-tuned ones (a uniform "model soup").

Fine-tuned denoisers and their base share the VAE and the latent statistics (RL trains the denoiser
only), so ``(1 - w) * base + w * tuned`` on the denoiser's weights is a model again: ``w = 0`` is the
base, ``w = 1`` the fine-tuned model, values in between trade reward for closeness to the base without
retraining, values above 1 extrapolate. Averaging runs of different seeds keeps what they share and
averages out where each run drifted on its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from crystal_env.models.ldm import CrystalLDM


def _mismatch(base: CrystalLDM, tuned: CrystalLDM) -> str | None:
    """Why the two models cannot be interpolated, or None."""
    if base.denoiser.config != tuned.denoiser.config:
        return f"different denoiser configurations ({base.denoiser.config} vs {tuned.denoiser.config})"
    buffers = ("latent_mean", "latent_std", "num_atoms_counts")
    for name in buffers:
        if not torch.equal(getattr(base, name).cpu(), getattr(tuned, name).cpu()):
            return f"different {name} (not fine-tuned from the same base)"
    vae_base, vae_tuned = base.vae.state_dict(), tuned.vae.state_dict()
    if vae_base.keys() != vae_tuned.keys() or any(
        not torch.equal(v.cpu(), vae_tuned[k].cpu()) for k, v in vae_base.items()
    ):
        return "different VAE weights (not fine-tuned from the same base)"
    return None


def interpolate_models(base: CrystalLDM, tuned: CrystalLDM, weight: float) -> CrystalLDM:
    """A copy of ``tuned`` whose denoiser weights are ``(1 - weight) * base + weight * tuned``. The VAE
    and latent statistics must equal the base's (checked); the sampler settings are ``tuned``'s."""
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0 (0: base, 1: fine-tuned), got {weight}")
    reason = _mismatch(base, tuned)
    if reason:
        raise ValueError(f"Cannot interpolate these models: {reason}")
    out = copy.deepcopy(tuned)
    base_state = base.denoiser.state_dict()
    merged = {
        k: torch.lerp(base_state[k].to(v), v, weight) if v.is_floating_point() else v
        for k, v in tuned.denoiser.state_dict().items()
    }
    out.denoiser.load_state_dict(merged)
    return out.eval()


def average_models(models: Sequence[CrystalLDM]) -> CrystalLDM:
    """A copy of the first model whose denoiser weights are the mean of all ``models``' (fine-tuned
    from one base: checked as for :func:`interpolate_models`); the sampler settings are the first's."""
    if not models:
        raise ValueError("average_models needs at least one model")
    first = models[0]
    for i, other in enumerate(models[1:], start=1):
        reason = _mismatch(first, other)
        if reason:
            raise ValueError(f"Cannot average these models: model {i} vs model 0: {reason}")
    states = [m.denoiser.state_dict() for m in models]
    out = copy.deepcopy(first)
    mean = {
        k: torch.stack([s[k].to(v) for s in states]).mean(0) if v.is_floating_point() else v
        for k, v in states[0].items()
    }
    out.denoiser.load_state_dict(mean)
    return out.eval()
