"""A weighted sum of reward components that share per-batch metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pymatgen.core import Structure
from tensordict import TensorDict

from rewards import parallel
from rewards.base import RewardComponent, normalize
from rewards.metrics import UNRELAXED, RewardBatch
from rewards.reference import ReferenceSet, load_reference
from rewards.safety import DEFAULT_CRYSTAL_TIMEOUT


class CompositeReward:
    """``total = Σ_c weight_c · normalize_c(raw_c)`` over the components, per crystal.

    Calling it on B structures (``None`` = undecodable) returns a TensorDict of batch size [B]:
    ``total``; one entry per component name (its weighted, normalised term of the total);
    ``("raw", name)`` the raw component values; ``("failed", name)`` the crystals that component
    gave its worst value (invalid crystal or e.g. MLIP failure); ``invalid`` the structurally
    invalid crystals. Never NaN. :attr:`last_info` holds counts and per-metric timings, and, when an
    energy above the hull was computed, ``hull_coverage``: the share of valid crystals whose chemical
    system holds at least one known compound of the hull.

    Fault isolation (:mod:`rewards.safety`): a crystal that is invalid or that a metric or component
    cannot handle (an error, or more than ``crystal_timeout`` seconds in one metric) gets that
    component's worst value and never changes the other crystals' raw values. ``last_info`` then
    has ``problems`` (per crystal: ``None`` or why it got a worst value), ``crystal_failures``
    (per metric/component: counts by reason) and ``num_timeouts``; ``notes`` (index → text) and
    ``num_unrelaxed`` list values kept but computed otherwise — a relaxed energy (``relax_steps``)
    of a crystal whose relaxation failed is its unrelaxed energy.

    ``total`` is *not* passed through the global ``normalize_fn``: it stays comparable across
    batches (for logging). Agents get advantages with :meth:`normalize` (per group for GRPO).
    """

    def __init__(
        self,
        components: Sequence[RewardComponent],
        normalize_fn: str | None = "std",
        eps: float = 1e-4,
        reference: ReferenceSet | dict | None = None,
        crystal_timeout: float | None = DEFAULT_CRYSTAL_TIMEOUT,
        device: str = "cpu",
        num_workers: int | None = None,
    ):
        if not components:
            raise ValueError("CompositeReward needs at least one component")
        self.components = list(components)
        names = [c.name for c in self.components]
        for i, c in enumerate(self.components):  # make names unique: energy, energy_2, ...
            if names[:i].count(c.name):
                c.name = f"{c.name}_{names[:i].count(c.name) + 1}"
            names[i] = c.name
        self.normalize_fn = None if normalize_fn in ("null", "none") else normalize_fn
        normalize(torch.zeros(1), self.normalize_fn)  # validate the name now, not mid-training
        self.eps = float(eps)
        if crystal_timeout is not None and not crystal_timeout > 0:
            raise ValueError(f"crystal_timeout must be > 0 seconds or null, got {crystal_timeout}")
        self.crystal_timeout = None if crystal_timeout is None else float(crystal_timeout)
        self.device = str(device)  # where the MLIP and VAE features run unless a component says otherwise
        # processes for fingerprints, StructureMatcher, hull LPs (and the MLIP on the CPU); None: all cores
        self.num_workers = parallel.resolve_num_workers(num_workers)
        self._reference = load_reference(**reference) if isinstance(reference, dict) else reference
        self.last_info: dict[str, Any] = {}

    @property
    def component_names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def reference(self) -> ReferenceSet:
        if self._reference is None:
            self._reference = load_reference()
        return self._reference

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Score without changing any component's state (components with a ``remember`` flag, e.g.
        :class:`~rewards.CompositionUniqueness`'s memory): for validation and evaluation batches."""
        stateful = [c for c in self.components if getattr(c, "remember", None) is True]
        for c in stateful:
            c.remember = False
        try:
            yield
        finally:
            for c in stateful:
                c.remember = True

    def state_dict(self) -> dict[str, Any]:
        """The components' state (only those that keep one), keyed by component name."""
        return {c.name: state for c in self.components if (state := c.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        by_name = {c.name: c for c in self.components}
        unknown = set(state) - set(by_name)
        if unknown:
            raise ValueError(f"Reward state for unknown component(s) {sorted(unknown)}; components: {list(by_name)}")
        for name, component_state in state.items():
            by_name[name].load_state_dict(component_state)

    def normalize(self, x: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The global normalisation (``normalize_fn``, ``eps``) of rewards, within each group if given."""
        return normalize(torch.as_tensor(x).reshape(-1), self.normalize_fn, self.eps, group_ids)

    def __call__(self, structures: Sequence[Structure | None]) -> TensorDict:
        start = time.perf_counter()
        # the reference is loaded only if a metric needs it
        batch = RewardBatch(
            structures,
            lambda: self.reference,
            self.crystal_timeout,
            device=self.device,
            num_workers=self.num_workers,
        )
        n = len(batch)
        for c in self.components:  # shared metrics first, each once (the batch memoises them)
            for metric in c.required_metrics:
                batch.metric(metric, **c.metric_params(metric))
        out: dict[str, torch.Tensor] = {}
        raw, failed = {}, {}
        total = torch.zeros(n)
        for c in self.components:
            raw[c.name], failed[c.name] = c.score(batch)
            term = c.weight * normalize(raw[c.name], c.normalize_fn, c.eps)
            out[c.name] = torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0)
            total = total + out[c.name]
        out["total"] = total
        info: dict[str, Any] = {}
        if batch.computed("e_above_hull") and batch.valid.any():
            info["hull_coverage"] = float(batch.metric("hull_covered")[batch.valid.numpy()].mean())
        problems: list[str | None] = [None if p is None else f"invalid: {p}" for p in batch.problems]
        for c in self.components:
            reasons = batch.failed_in([c.failure_label])
            for i in failed[c.name].nonzero().flatten().tolist():
                problems[i] = problems[i] or reasons.get(i, f"{c.name}: no finite value")
        notes = {i: note for i, note in batch.notes.items() if problems[i] is None}  # worst values say why
        self.last_info = {
            **info,
            "num_invalid": int((~batch.valid).sum()),
            "invalid_reasons": dict(batch.invalid_reasons),
            "num_failed": {k: int(v.sum()) for k, v in failed.items()},
            "problems": problems,
            "crystal_failures": {
                label: dict(Counter(": ".join(r.split(": ")[:2]) for r in f.values()))
                for label, f in batch.failures.items()
            },
            "num_unrelaxed": sum(kind == UNRELAXED for kind, _ in notes.values()),
            "notes": {i: text for i, (_, text) in notes.items()},
            "num_timeouts": len({i for f in batch.failures.values() for i, r in f.items() if r == "timeout"}),
            "metric_seconds": dict(batch.timings),
            "seconds": time.perf_counter() - start,
        }
        return TensorDict(
            {**out, "raw": TensorDict(raw, [n]), "failed": TensorDict(failed, [n]), "invalid": ~batch.valid},
            batch_size=[n],
        )

    def __repr__(self) -> str:
        comps = ", ".join(repr(c) for c in self.components)
        return f"CompositeReward([{comps}], normalize_fn={self.normalize_fn!r}, eps={self.eps})"
