"""Reward components and the normalisation functions they and the composite reward share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from pymatgen.core import Structure

if TYPE_CHECKING:
    from rewards.metrics import RewardBatch
    from rewards.reference import ReferenceSet

NORMALIZE_FNS = ("norm", "std", "subtract_mean", "clip")


def _normalize_1d(x: torch.Tensor, fn: str, eps: float) -> torch.Tensor:
    if fn == "norm":
        spread = x.max() - x.min()
        return torch.zeros_like(x) if spread < eps else (x - x.min()) / spread
    if fn == "std":
        std = x.std(correction=0)  # population std: a group of one has spread 0, not NaN
        return torch.zeros_like(x) if std < eps else (x - x.mean()) / std
    if fn == "subtract_mean":
        return x - x.mean()
    if fn == "clip":
        return x.clamp(-1.0, 1.0)
    raise ValueError(f"Unknown normalize_fn {fn!r}; valid: {[None, *NORMALIZE_FNS]}")


def normalize(
    x: torch.Tensor, fn: str | None, eps: float = 1e-4, group_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply ``fn`` to the 1-D ``x``, over the whole batch or separately within each group.

    ``norm``: min-max to [0, 1]; ``std``: zero mean, unit (population) std; ``subtract_mean``;
    ``clip``: clamp to [-1, 1]; ``None``/``"null"``: identity. For ``norm`` and ``std``, a group
    whose spread is below ``eps`` maps to 0 (all its members are equally good).
    """
    if fn is None or fn in ("null", "none"):
        return x
    if fn not in NORMALIZE_FNS:
        raise ValueError(f"Unknown normalize_fn {fn!r}; valid: {[None, *NORMALIZE_FNS]}")
    x = x.float()
    if group_ids is None or x.numel() == 0:
        return _normalize_1d(x, fn, eps) if x.numel() else x
    group_ids = torch.as_tensor(group_ids).reshape(-1)
    if group_ids.numel() != x.numel():
        raise ValueError(f"group_ids has {group_ids.numel()} entries for {x.numel()} rewards")
    out = torch.empty_like(x)
    for g in group_ids.unique():
        sel = group_ids == g
        out[sel] = _normalize_1d(x[sel], fn, eps)
    return out


def _snake_case(name: str) -> str:
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return name.lower().removesuffix("_reward")


class RewardComponent:
    """One term of a reward: structures in, one float per crystal out.

    Subclasses set ``required_metrics`` (names of shared per-batch metrics, see
    :mod:`rewards.metrics`) and implement :meth:`compute`. Crystals that are structurally invalid,
    or whose value comes out non-finite (e.g. an MLIP failure), get ``worst``; when ``worst`` is
    ``None`` (unbounded rewards) they get the lowest value of the valid crystals in the batch.
    """

    required_metrics: tuple[str, ...] = ()
    worst: float | None = None

    def __init__(
        self, weight: float = 1.0, normalize_fn: str | None = None, eps: float = 1e-4, name: str | None = None
    ):
        if normalize_fn is not None and normalize_fn not in (*NORMALIZE_FNS, "null", "none"):
            raise ValueError(f"Unknown normalize_fn {normalize_fn!r}; valid: {[None, *NORMALIZE_FNS]}")
        self.weight = float(weight)
        self.normalize_fn = None if normalize_fn in ("null", "none") else normalize_fn
        self.eps = float(eps)
        self.name = name or _snake_case(type(self).__name__)

    @property
    def failure_label(self) -> str:
        """The key of this component's entry in ``RewardBatch.failures``."""
        return f"component:{self.name}"

    def metric_params(self, metric: str) -> dict:
        """Keyword arguments this component computes ``metric`` with (part of the metric's cache key)."""
        return {}

    def compute(self, batch: RewardBatch) -> torch.Tensor:
        """Raw (B,) values; entries of invalid crystals are ignored and replaced by :meth:`score`."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What calls change (e.g. a memory of earlier crystals), for training checkpoints; {} if nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"Reward component {self.name!r} keeps no state; got keys {sorted(state)}")

    def score(self, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw values with the worst value filled in, and the (B,) mask of crystals that got it:
        invalid crystals, non-finite values, and crystals that failed (error, time budget) in this
        component's computation or in a metric it used (``batch.failed_in``)."""
        label = self.failure_label
        raw = torch.as_tensor(batch.guarded(label, self.compute), dtype=torch.float32).reshape(len(batch))
        failed = ~batch.valid | ~torch.isfinite(raw)
        failed[list(batch.failed_in([label]))] = True
        if failed.any():
            good = raw[~failed]
            fill = self.worst if self.worst is not None else (float(good.min()) if good.numel() else 0.0)
            raw = torch.where(failed, torch.full_like(raw, fill), raw)
        return raw, failed

    def __call__(self, structures: Sequence[Structure | None], reference: ReferenceSet | None = None) -> torch.Tensor:
        """Raw per-crystal values of this component alone (e.g. for evaluation)."""
        from rewards.metrics import RewardBatch

        return self.score(RewardBatch(structures, reference))[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight}, normalize_fn={self.normalize_fn!r})"
