"""DiT-style transformer denoiser over per-atom latents (adaLN-Zero conditioning on the timestep)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crystal_env.models.layers import sinusoidal_embedding


@dataclass
class DenoiserConfig:
    latent_dim: int = 8
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    dropout: float = 0.0


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, d: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), sh1, sc1)
        h, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        x = x + g1[:, None] * h
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class DiTDenoiser(nn.Module):
    """Predicts the noise ε in z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε for every real atom."""

    def __init__(self, config: DenoiserConfig | None = None, max_atoms: int = 20):
        super().__init__()
        self.config = cfg = config or DenoiserConfig()
        d = cfg.d_model
        self.inp = nn.Linear(cfg.latent_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.size_embedding = nn.Embedding(max_atoms + 1, d)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, cfg.latent_dim)
        for layer in (self.final_ada[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        num_atoms = mask.sum(1).clamp_max(self.size_embedding.num_embeddings - 1)
        c = self.time_mlp(sinusoidal_embedding(t, self.config.d_model)) + self.size_embedding(num_atoms)
        x = self.inp(z)
        pad = ~mask
        for block in self.blocks:
            x = block(x, c, pad)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.final_norm(x), shift, scale)) * mask[..., None].to(z.dtype)
