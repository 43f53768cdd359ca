"""Small building blocks shared by the VAE and the denoiser."""

from __future__ import annotations

import math

import torch
from torch import nn


def periodic_features(frac: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """sin/cos of 2πk·x for k = 1..num_freqs: a translation-periodic encoding of fractional coords."""
    k = torch.arange(1, num_freqs + 1, device=frac.device, dtype=frac.dtype)
    angles = 2 * math.pi * frac[..., None] * k  # (..., 3, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 6F)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the atom axis (dim 1) of the real atoms only."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def used_length(mask: torch.Tensor) -> int:
    """Number of leading atom columns of a (B, N) mask that hold any real atom: the columns after it
    are padding in every row and can be dropped (a batch padded to ``max_atoms`` → to its largest
    crystal). At least 1 (models need a non-empty sequence) unless N is 0. One device sync."""
    if mask.numel() == 0:
        return min(mask.shape[1], 1)
    cols = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return max(int((mask.any(0) * cols).max()), 1)


def pad_atoms(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad dim 1 (atoms) of ``x`` back to ``n``."""
    if x.shape[1] == n:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, n - x.shape[1]]
    return torch.nn.functional.pad(x, pad)


def transformer_encoder(d_model: int, num_heads: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, num_heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
