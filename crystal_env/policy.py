"""Policy modules: the denoiser's Gaussian transition as a TorchRL ``ProbabilisticActor``."""

from __future__ import annotations

import copy
import math

import torch
from tensordict.nn import InteractionType, TensorDictModule
from torch import nn
from torch.distributions import Distribution
from torchrl.modules import ProbabilisticActor

from crystal_env.models.ldm import CrystalLDM

REDUCTIONS = ("mean", "sum")
LOG_PROB_KEY = "action_log_prob"


class LatentGaussian(Distribution):
    """Diagonal Gaussian over (N, L) latents of a padded batch, one log-probability per crystal.

    Log-probabilities and entropies are reduced over the real atoms' entries only, by ``mean``
    (the reference implementation's choice) or ``sum``. A crystal whose transition has zero std
    (the last DDIM step) is deterministic: sampling returns the mean, and its log-probability and
    entropy are 0 — losses read ``stochastic`` to skip it instead of facing infinities.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"Unknown log-prob reduction {reduction!r}; valid: {list(REDUCTIONS)}")
        self.loc, self.scale, self.mask, self.reduction = loc, scale, mask, reduction
        self.entry_mask = mask[..., None].expand_as(loc).to(loc.dtype)
        self.stochastic = (scale * self.entry_mask).flatten(-2).amax(-1) > 0
        self.safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        super().__init__(batch_shape=loc.shape[:-2], validate_args=False)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        total = (x * self.entry_mask).flatten(-2).sum(-1)
        if self.reduction == "sum":
            return total
        return total / self.entry_mask.flatten(-2).sum(-1).clamp_min(1.0)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.loc.shape
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return (self.loc + self.scale * noise) * self.entry_mask

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z = (value - self.loc) / self.safe_scale
        lp = -0.5 * z**2 - self.safe_scale.log() - 0.5 * math.log(2 * math.pi)
        return torch.where(self.stochastic, self._reduce(lp), torch.zeros_like(self._reduce(lp)))

    def entropy(self) -> torch.Tensor:
        ent = 0.5 + 0.5 * math.log(2 * math.pi) + self.safe_scale.log()
        return torch.where(self.stochastic, self._reduce(ent), torch.zeros_like(self._reduce(ent)))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc * self.entry_mask

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mean


class TransitionModule(nn.Module):
    """(latent, mask, step_index) → (loc, scale, stochastic) of p(z_{t-1} | z_t) via ``model.transition``."""

    def __init__(self, model: CrystalLDM, min_std: float = 0.0):
        super().__init__()
        self.model = model
        self.min_std = min_std

    def forward(
        self, latent: torch.Tensor, mask: torch.Tensor, step_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = latent.shape[:-2]  # any batch dims, e.g. [B] from the env or [B, K] in a loss
        z = latent.reshape(-1, *latent.shape[-2:])
        m = mask.reshape(-1, mask.shape[-1])
        step = step_index.reshape(-1).clamp_max(self.model.schedule.num_steps - 1)
        loc, scale = self.model.transition(z, step, m)
        if self.min_std > 0:  # near-deterministic steps: take the mean, leave them out of the loss
            scale = torch.where(scale < self.min_std, torch.zeros_like(scale), scale)
        stochastic = (scale * m[..., None]).flatten(1).amax(1, keepdim=True) > 0
        return loc.reshape(latent.shape), scale.reshape(latent.shape), stochastic.reshape(*lead, 1)


def make_policy(
    model: CrystalLDM, reduction: str = "mean", trainable: bool = True, min_std: float = 0.0
) -> ProbabilisticActor:
    """The actor that samples ``action`` and writes ``action_log_prob``; only the denoiser trains.

    ``min_std`` > 0 treats transitions whose std is below it (e.g. the σ ≈ 0.006 step into t = 0
    of a 10-step DDIM schedule) as deterministic: their log-probabilities are so sharp that they
    dominate policy gradients with noise on short schedules.
    """
    model.vae.requires_grad_(False)
    model.denoiser.requires_grad_(trainable)
    module = TensorDictModule(
        TransitionModule(model, min_std),
        in_keys=["latent", "mask", "step_index"],
        out_keys=["loc", "scale", "stochastic"],
    )
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale", "mask"],
        out_keys=["action"],
        distribution_class=LatentGaussian,
        distribution_kwargs={"reduction": reduction},
        return_log_prob=True,
        log_prob_key=LOG_PROB_KEY,
        default_interaction_type=InteractionType.RANDOM,  # sample; ExplorationType.DETERMINISTIC gives the mean
    )


def make_reference_policy(model: CrystalLDM, reduction: str = "mean", min_std: float = 0.0) -> ProbabilisticActor:
    """A frozen copy of the base model's policy, the reference for KL penalties."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return make_policy(frozen, reduction=reduction, trainable=False, min_std=min_std)
