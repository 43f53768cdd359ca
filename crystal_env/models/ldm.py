"""The VAE + latent-diffusion pair behind one interface: ``prior``, ``transition``, ``decode``, ``encode``.

Latents seen through this interface are *normalised* (per-dimension statistics of the training set's
encoder means), shaped (B, N, L) with a (B, N) bool mask; padding entries are zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from pymatgen.core import Structure
from tensordict import TensorDict
from torch import nn

from atomic_io import atomic_write_bytes
from crystal_env.crystals.batch import batch_to_structures, structures_to_batch
from crystal_env.models.denoiser import DenoiserConfig, DiTDenoiser
from crystal_env.models.diffusion import (
    NUM_TRAIN_TIMESTEPS,
    RespacedSchedule,
    SamplerConfig,
    cosine_alphas_cumprod,
)
from crystal_env.models.vae import CrystalVAE, VAEConfig

LDM_FORMAT = "crystal_env.ldm/1"
VAE_FORMAT = "crystal_env.vae/1"


class CrystalLDM(nn.Module):
    """A frozen VAE and a trainable denoiser, with the sampling schedule they are used with."""

    def __init__(
        self,
        vae: CrystalVAE,
        denoiser: DiTDenoiser,
        latent_mean: torch.Tensor,
        latent_std: torch.Tensor,
        num_atoms_counts: torch.Tensor,
        sampler: SamplerConfig | None = None,
        x0_clip: float = 5.0,
    ):
        super().__init__()
        self.vae = vae
        self.denoiser = denoiser
        self.register_buffer("latent_mean", latent_mean.float().clone())
        self.register_buffer("latent_std", latent_std.float().clone())
        self.register_buffer("num_atoms_counts", num_atoms_counts.float().clone())
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(NUM_TRAIN_TIMESTEPS).float())
        self.x0_clip = x0_clip
        self.vae.requires_grad_(False)
        self.configure_sampler(**asdict(sampler or SamplerConfig()))

    # ---- configuration -------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    @property
    def max_atoms(self) -> int:
        return self.num_atoms_counts.numel() - 1

    def configure_sampler(self, kind: str = "ddim", num_steps: int = 50, eta: float = 1.0) -> RespacedSchedule:
        self.sampler = SamplerConfig(kind=kind, num_steps=num_steps, eta=eta)
        self.schedule = RespacedSchedule(self.sampler, self.alphas_cumprod)  # on the model's device
        return self.schedule

    # ---- the interface used by environments and agents -------------------------------------------
    def sample_num_atoms(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Numbers of atoms drawn from the training set's empirical distribution."""
        return torch.multinomial(self.num_atoms_counts.cpu(), n, replacement=True, generator=generator)

    def prior(
        self, num_atoms: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z_T ~ N(0, I) for crystals of ``num_atoms`` atoms (padding zeroed), and its mask."""
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long).flatten().cpu()  # drawn on the CPU, then moved
        if bool(((num_atoms < 1) | (num_atoms > self.max_atoms)).any()):
            raise ValueError(f"num_atoms must be in [1, {self.max_atoms}], got {num_atoms.tolist()}")
        mask = torch.arange(self.max_atoms)[None, :] < num_atoms[:, None]
        z = torch.randn(num_atoms.numel(), self.max_atoms, self.latent_dim, generator=generator)
        dev = self.latent_mean.device
        return (z * mask[..., None]).to(dev), mask.to(dev)

    def transition(
        self, z_t: torch.Tensor, step: torch.Tensor | int, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p(z_{t-1} | z_t) at sampling step ``step`` (0 = first step from noise).

        Differentiable w.r.t. the denoiser's parameters. ``std`` has the shape of ``mean``; it is
        zero on the last step (a deterministic transition) and the mean is zero on padding.
        """
        step = torch.as_tensor(step, device=z_t.device, dtype=torch.long).flatten()
        if step.numel() == 1:
            step = step.expand(z_t.shape[0])
        c = self.schedule.coefficients(step)
        eps = self.denoiser(z_t, c["t"], mask)
        x0 = ((z_t - c["sqrt_1m_ab"] * eps) / c["sqrt_ab"]).clamp(-self.x0_clip, self.x0_clip)
        eps = (z_t - c["sqrt_ab"] * x0) / c["sqrt_1m_ab"]  # consistent with the clipped x̂_0
        keep = mask[..., None].to(z_t.dtype)
        mean = (c["sqrt_ab_prev"] * x0 + c["dir_coef"] * eps) * keep
        return mean, c["sigma"].expand_as(mean)

    def decode(self, z_0: torch.Tensor, mask: torch.Tensor) -> TensorDict:
        """Normalised latents → crystal batch (see :mod:`crystal_env.crystals.batch`)."""
        z = (z_0 * self.latent_std + self.latent_mean) * mask[..., None].to(z_0.dtype)
        return self.vae.decode(z, mask)

    def decode_structures(self, z_0: torch.Tensor, mask: torch.Tensor) -> list[Structure | None]:
        return batch_to_structures(self.decode(z_0, mask))

    @torch.no_grad()
    def encode(self, structures: Sequence[Structure]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised per-atom latents (encoder means) and mask of ``structures``."""
        batch = structures_to_batch(structures, self.max_atoms).to(self.latent_mean.device)
        mu, _ = self.vae.encode(batch)
        z = (mu - self.latent_mean) / self.latent_std * batch["mask"][..., None]
        return z, batch["mask"]

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        num_atoms: torch.Tensor | None = None,
    ) -> list[Structure | None]:
        """Ancestral sampling with the configured sampler; ``None`` marks undecodable crystals."""
        if num_atoms is None:
            num_atoms = self.sample_num_atoms(num_samples, generator)
        z, mask = self.prior(num_atoms, generator)
        for k in range(self.schedule.num_steps):
            mean, std = self.transition(z, k, mask)
            noise = torch.randn(z.shape, generator=generator).to(z.device)
            z = mean + std * noise * mask[..., None]
        return self.decode_structures(z, mask)

    # ---- training ---------------------------------------------------------------------------------
    def diffusion_loss(self, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ε-prediction MSE over the real entries, at uniformly drawn training timesteps."""
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (z0.shape[0],), device=z0.device)
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        keep = mask[..., None].to(z0.dtype)
        eps = torch.randn_like(z0) * keep
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        err = (self.denoiser(z_t, t, mask) - eps) ** 2 * keep
        return err.sum() / (keep.sum() * z0.shape[-1])

    # ---- persistence ------------------------------------------------------------------------------
    def state(self, meta: dict | None = None) -> dict:
        return {
            "format": LDM_FORMAT,
            "vae_config": asdict(self.vae.config),
            "vae_state": {k: v.cpu() for k, v in self.vae.state_dict().items()},
            "denoiser_config": asdict(self.denoiser.config),
            "denoiser_state": {k: v.cpu() for k, v in self.denoiser.state_dict().items()},
            "latent_mean": self.latent_mean.cpu(),
            "latent_std": self.latent_std.cpu(),
            "num_atoms_counts": self.num_atoms_counts.cpu(),
            "sampler": asdict(self.sampler),
            "x0_clip": self.x0_clip,
            "meta": meta or {},
        }

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Atomic write of the whole pair (VAE, denoiser, statistics) to one file."""
        import io

        buf = io.BytesIO()
        torch.save(self.state(meta), buf)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def from_state(cls, state: dict) -> CrystalLDM:
        if not isinstance(state, dict):
            raise ValueError(f"Not a crystal_env LDM checkpoint (a {type(state).__name__}, not a dict)")
        if state.get("format") != LDM_FORMAT:
            raise ValueError(f"Not a crystal_env LDM checkpoint (format {state.get('format')!r})")
        vae = load_vae_state(state)
        counts = state["num_atoms_counts"]
        denoiser = DiTDenoiser(DenoiserConfig(**state["denoiser_config"]), max_atoms=counts.numel() - 1)
        denoiser.load_state_dict(state["denoiser_state"])
        model = cls(
            vae,
            denoiser,
            state["latent_mean"],
            state["latent_std"],
            counts,
            SamplerConfig(**state["sampler"]),
            state["x0_clip"],
        )
        return model.eval()


def load_vae_state(state: dict) -> CrystalVAE:
    vae = CrystalVAE(VAEConfig(**state["vae_config"]))
    vae.load_state_dict(state["vae_state"])
    return vae.eval()
