"""What the environment needs from a reward: structures in, per-crystal scores out.

Any callable ``reward_fn(structures) -> Tensor (B,) | Mapping`` works. ``structures`` holds
pymatgen ``Structure`` objects, with ``None`` for crystals that could not be decoded (or whose
trajectory was corrupted); the reward must give those its defined penalty. A mapping result must
have a ``"total"`` entry; its other entries named in ``reward_fn.component_names`` are reported
per component (their contribution to the total), and ``out["raw"][name]``, when present, as the
component's raw metric (e.g. eV/atom, atoms/Å³), and ``out["failed"][name]``, when present, as the
crystals that component could not score (they hold its defined worst value; without the entry:
the crystals whose raw value is not finite).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from pymatgen.core import Structure

RewardFn = Callable[[Sequence[Structure | None]], torch.Tensor | Mapping[str, torch.Tensor]]


def component_names(reward_fn: RewardFn) -> list[str]:
    return list(getattr(reward_fn, "component_names", []) or [])


def evaluate_reward(
    reward_fn: RewardFn, structures: Sequence[Structure | None]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Total (B,) float32 reward (NaN replaced by the batch minimum), the named components' weighted
    values, their raw values as the reward gave them, and the (B,) bool masks of the crystals each
    component failed to score."""
    out = reward_fn(structures)
    n = len(structures)
    comps: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    failed: dict[str, torch.Tensor] = {}
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        total = torch.as_tensor(out["total"], dtype=torch.float32).reshape(n)
        has_raw, has_failed = "raw" in out.keys(), "failed" in out.keys()
        for k in component_names(reward_fn):
            comps[k] = torch.as_tensor(out[k], dtype=torch.float32).reshape(n)
            raw[k] = torch.as_tensor(out["raw"][k] if has_raw else out[k], dtype=torch.float32).reshape(n)
            if has_failed and k in out["failed"].keys():
                failed[k] = torch.as_tensor(out["failed"][k], dtype=torch.bool).reshape(n)
            else:
                failed[k] = ~torch.isfinite(raw[k])
    else:
        total = torch.as_tensor(out, dtype=torch.float32).reshape(n)
    if not torch.isfinite(total).all():
        finite = total[torch.isfinite(total)]
        floor = finite.min() if finite.numel() else torch.tensor(0.0)
        total = torch.where(torch.isfinite(total), total, floor)
    return total, comps, raw, failed
