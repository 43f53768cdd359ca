"""Fixed chemical descriptors of the elements, so that rare elements share structure with common ones."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch
from pymatgen.core import Element

from crystal_env.crystals.batch import MAX_ATOMIC_NUMBER


def _value(x: object) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return v


@lru_cache(maxsize=1)
def element_descriptors() -> torch.Tensor:
    """(101, D) standardised descriptors; row 0 (padding) is zero.

    Columns: row, group, Pauling electronegativity, atomic radius, Mendeleev number, atomic mass,
    and one-hot s/p/d/f block.
    """
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_ATOMIC_NUMBER + 1):
            el = Element.from_Z(z)
            block = ["s", "p", "d", "f"]
            rows.append(
                [
                    _value(el.row),
                    _value(el.group),
                    _value(el.X),
                    _value(el.atomic_radius),
                    _value(el.mendeleev_no),
                    _value(el.atomic_mass),
                    *[1.0 if el.block == b else 0.0 for b in block],
                ]
            )
    table = torch.tensor(rows, dtype=torch.float32)
    numeric = table[:, :6]
    mean = torch.nanmean(numeric, dim=0)
    numeric = torch.where(torch.isnan(numeric), mean.expand_as(numeric), numeric)
    std = numeric.std(0).clamp_min(1e-6)
    table[:, :6] = (numeric - numeric.mean(0)) / std
    return torch.cat([torch.zeros(1, table.shape[1]), table], dim=0)
