"""Gaussian diffusion (1000 training steps) and DDPM/DDIM samplers respaced to K sampling steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("ddim", "ddpm")


def cosine_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021), β_t clipped at 0.999."""
    x = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64)
    f = torch.cos(((x / num_steps) + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = "ddim"
    num_steps: int = 50
    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"Unknown sampler {self.kind!r}; valid: {list(SAMPLERS)}")
        if not 1 <= self.num_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"num_steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {self.num_steps}")
        if not 0 <= self.eta < float("inf"):  # also rejects NaN, which would make every crystal fail
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta}")


class RespacedSchedule(nn.Module):
    """The K diffusion timesteps a sampler visits and the coefficients of each transition.

    Step k (0 ≤ k < K) maps z at timestep ``timesteps[k]`` to z at ``timesteps[k+1]`` (or to z_0
    after the last step). With ᾱ, ᾱ' the cumulative alphas of the two timesteps and ε̂ the
    predicted noise, x̂_0 = (z − √(1−ᾱ) ε̂)/√ᾱ and

    * DDIM(η): σ = η √((1−ᾱ')/(1−ᾱ)) √(1−ᾱ/ᾱ'), mean = √ᾱ' x̂_0 + √(1−ᾱ'−σ²) ε̂;
    * DDPM: the posterior q(z' | z, x̂_0) of the respaced chain, which equals DDIM with η = 1.

    The last step has ᾱ' = 1, so σ = 0: it is deterministic.

    Timesteps are evenly strided from 0 ("leading" spacing, as the reference implementation's
    ``ddimK``): T·k/K for k = K−1, …, 0, so 50 steps start at t = 980 and 10 at t = 900. Starting at
    t = T−1 = 999, where √ᾱ = 5e-5, made x̂_0 = (z − √(1−ᾱ) ε̂)/√ᾱ hit the clip for 99 % of its
    entries: the first transition ignored the denoiser and inflated the latents' spread.

    The per-step tables are non-persistent buffers: they follow the model's device (``model.to``)
    and are rebuilt from the sampler config, never saved.
    """

    def __init__(self, config: SamplerConfig, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.config = config
        T = alphas_cumprod.numel()
        stride = T / config.num_steps
        timesteps = (torch.arange(config.num_steps, dtype=torch.float64) * stride).round().long().flip(0)
        ab = alphas_cumprod.double().cpu()[timesteps]
        ab_prev = torch.cat([ab[1:], torch.ones(1, dtype=ab.dtype)])
        eta = 1.0 if config.kind == "ddpm" else config.eta
        var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        tables = {
            "timesteps": timesteps,
            "sigma": var.clamp_min(0).sqrt(),
            "sqrt_ab": ab.sqrt(),
            "sqrt_1m_ab": (1 - ab).sqrt(),
            "sqrt_ab_prev": ab_prev.sqrt(),
            "dir_coef": (1 - ab_prev - var).clamp_min(0).sqrt(),
        }
        for name, value in tables.items():
            value = value if name == "timesteps" else value.float()
            self.register_buffer(name, value.to(alphas_cumprod.device), persistent=False)

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def coefficients(self, step: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample coefficients, shaped (B, 1, 1) for broadcasting over atoms and latent dims.

        ``step`` must be on the schedule's device (the model's).
        """
        if bool(((step < 0) | (step >= self.num_steps)).any()):
            raise IndexError(f"sampling step out of range [0, {self.num_steps}): {step.tolist()}")
        out = {"t": self.timesteps[step]}
        for name in ("sqrt_ab", "sqrt_1m_ab", "sqrt_ab_prev", "dir_coef", "sigma"):
            out[name] = getattr(self, name)[step].view(-1, 1, 1)
        return out
