"""Per-sample leave-one-out contributions to the MMD between a batch and a reference set."""

from __future__ import annotations

import torch


def poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """k(x, y) = (x·y / d + 1)^degree."""
    return (x @ y.T / x.shape[-1] + 1.0) ** degree


def mmd_contributions(x: torch.Tensor, ref: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """(M,) reward of each batch sample: MMD²(batch without it, ref) − MMD²(batch, ref).

    MMD² is the unbiased estimate. A sample is rewarded when leaving it out would move the batch
    *away* from the reference distribution, i.e. when it fills a region of the reference the rest
    of the batch does not cover; near-duplicates of other batch members are penalised. The
    reference-reference term cancels, so the cost is O(M·(M + N)). Fewer than 3 samples: zeros.
    """
    x, ref = x.double(), ref.double()
    m, n = x.shape[0], ref.shape[0]
    if m < 3 or n == 0:
        return torch.zeros(m, dtype=torch.float32)
    k_xx = poly_kernel(x, x, degree)
    off_diag = k_xx.sum(1) - k_xx.diagonal()  # S_i = Σ_{j≠i} k(x_i, x_j)
    total_xx = off_diag.sum()
    cross = poly_kernel(x, ref, degree).sum(1)  # T_i = Σ_r k(x_i, y_r)
    total_cross = cross.sum()
    full = total_xx / (m * (m - 1)) - 2 * total_cross / (m * n)
    drop = (total_xx - 2 * off_diag) / ((m - 1) * (m - 2)) - 2 * (total_cross - cross) / ((m - 1) * n)
    return (drop - full).float()
