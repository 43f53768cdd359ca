"""DiT-style transformer denoiser over per-atom latents (adaLN-Zero conditioning on the timestep)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crystal_env.models.layers import pad_atoms, sinusoidal_embedding, used_length


@dataclass
class DenoiserConfig:
    latent_dim: int = 8
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    dropout: float = 0.0


class PackedAtoms:
    """Index maps between a padded (B, N) batch and its T real atoms ("packed" tokens).

    Token-wise layers (projections, MLPs, norms) run on the T real atoms only; attention runs on
    the batch padded to its largest crystal, not to ``max_atoms``. Padding never influences real
    atoms (it is masked out of attention), so the result equals that of the padded computation.
    """

    def __init__(self, mask: torch.Tensor):
        self.batch_size, self.max_len = mask.shape[0], used_length(mask)
        mask = mask[:, : self.max_len]
        flat = mask.reshape(-1).nonzero().squeeze(-1)  # positions of the real atoms in (B * n)
        self.flat_index = flat
        self.batch_index = flat.div(self.max_len, rounding_mode="floor")
        # (B, 1, 1, n) for scaled_dot_product_attention: True where a key may be attended to
        self.key_mask = mask[:, None, None, :]

    def per_atom(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) per-crystal values → (T, ...) per real atom."""
        return x.index_select(0, self.batch_index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) → (B, n, ...) with zero padding."""
        out = x.new_zeros(self.batch_size * self.max_len, *x.shape[1:]).index_copy(0, self.flat_index, x)
        return out.view(self.batch_size, self.max_len, *x.shape[1:])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, ...) → (T, ...)."""
        return x.reshape(self.batch_size * self.max_len, *x.shape[2:]).index_select(0, self.flat_index)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


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

    def _attention(self, h: torch.Tensor, atoms: PackedAtoms) -> torch.Tensor:
        """Multi-head self-attention of packed tokens (T, d) within each crystal, with the weights of
        ``self.attn`` (an ``nn.MultiheadAttention``, kept for its parameters and checkpoints)."""
        attn = self.attn
        qkv = atoms.pad(F.linear(h, attn.in_proj_weight, attn.in_proj_bias))  # (B, n, 3d)
        B, n, _ = qkv.shape
        q, k, v = qkv.view(B, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=atoms.key_mask, dropout_p=dropout)
        out = atoms.pack(out.transpose(1, 2).reshape(B, n, -1))
        return attn.out_proj(out)

    def forward(self, x: torch.Tensor, c: torch.Tensor, atoms: PackedAtoms) -> torch.Tensor:
        """``x`` (T, d) packed atom states, ``c`` (B, d) per-crystal conditioning."""
        sh1, sc1, g1, sh2, sc2, g2 = atoms.per_atom(self.ada(c)).chunk(6, dim=-1)
        x = x + g1 * self._attention(_modulate(self.norm1(x), sh1, sc1), atoms)
        return x + g2 * self.mlp(_modulate(self.norm2(x), sh2, sc2))


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
        """ε̂ (B, N, L) for latents ``z`` (B, N, L) at timesteps ``t`` (B,); zero on padding."""
        atoms = PackedAtoms(mask)
        num_atoms = mask.sum(1).clamp_max(self.size_embedding.num_embeddings - 1)
        c = self.time_mlp(sinusoidal_embedding(t, self.config.d_model)) + self.size_embedding(num_atoms)
        x = self.inp(atoms.pack(z[:, : atoms.max_len]))
        for block in self.blocks:
            x = block(x, c, atoms)
        shift, scale = atoms.per_atom(self.final_ada(c)).chunk(2, dim=-1)
        eps = self.out(_modulate(self.final_norm(x), shift, scale))
        return pad_atoms(atoms.pad(eps), z.shape[1])
