"""Per-batch shared metrics: each is computed at most once per batch and parameter set.

A metric is a function ``fn(batch, **params)`` registered under a name; components ask for it with
``batch.metric(name, **params)``. Register your own with :func:`register_metric`.
Metric values cover the whole batch (B rows); rows of invalid crystals are NaN / False.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from crystal_env.crystals.validity import structure_problem
from rewards import features, novelty, parallel, safety
from rewards.hull import FormationEnergyHull, composition_key, mp_composition_keys
from rewards.mlip import get_mlip

log = logging.getLogger(__name__)
MetricFn = Callable[..., Any]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return wrap


#: RewardBatch.note kind: a relaxed-energy metric used the unrelaxed crystal (its relaxation failed)
UNRELAXED = "unrelaxed"


class RewardBatch:
    """The crystals of one reward call, their validity, the reference, and the metric cache.

    Structures pass :func:`rewards.safety.sanitize` first. Every metric (and component) runs under
    :func:`rewards.safety.run_guarded` with ``crystal_timeout`` seconds per crystal (``None``: no
    limit); crystals that fail in it are listed in ``failures[name]`` (index → reason).

    ``device``: where model-based metrics (MLIP, VAE features) run unless their parameters say otherwise.
    ``num_workers``: processes for the CPU-bound metric work (:mod:`rewards.parallel`; None: every
    available core, 0 or 1: serial in this process); pooled work keeps the per-crystal isolation.
    """

    def __init__(
        self,
        structures: Sequence[Structure | None],
        reference=None,
        crystal_timeout: float | None = safety.DEFAULT_CRYSTAL_TIMEOUT,
        device: str = "cpu",
        num_workers: int | None = 0,
    ):
        self.device = str(device)
        self.num_workers = parallel.resolve_num_workers(num_workers)
        self.structures = [safety.sanitize(s) for s in structures]
        self.problems = [structure_problem(s) for s in self.structures]
        self.valid = torch.tensor([p is None for p in self.problems], dtype=torch.bool)
        self._reference = reference
        self._cache: dict[tuple, Any] = {}
        self.timings: dict[str, float] = {}
        self.crystal_timeout = crystal_timeout
        self.failures: dict[str, dict[int, str]] = {}
        self.notes: dict[int, tuple[str, str]] = {}  # index -> (kind, text): computed otherwise, not failed
        self.origin = list(range(len(self.structures)))  # index of each crystal in the reward call
        self._deps: dict[str, set[str]] = {}
        self._computing: list[str] = []
        self._nested_seconds = 0.0

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def reference(self):
        """The reference set (the bundled default, loaded on first use, unless one was given; a
        callable given instead is called on first use)."""
        if self._reference is None:
            from rewards.reference import load_reference

            self._reference = load_reference()
        elif callable(self._reference):
            self._reference = self._reference()
        return self._reference

    @property
    def valid_structures(self) -> list[Structure | None]:
        """The structures with invalid ones replaced by ``None``."""
        return [s if ok else None for s, ok in zip(self.structures, self.valid.tolist(), strict=True)]

    @property
    def invalid_reasons(self) -> Counter:
        return Counter(p for p in self.problems if p is not None)

    def computed(self, name: str) -> bool:
        """Whether ``name`` has been computed for this batch (with any parameters)."""
        return any(key[0] == name for key in self._cache)

    def metric(self, name: str, **params: Any) -> Any:
        if name not in METRICS:
            raise KeyError(f"Unknown metric {name!r}; registered: {sorted(METRICS)}")
        key = (name, tuple(sorted(params.items())))
        if key not in self._cache:
            # timings are self times: a metric that asks for another (e_above_hull → mlip_energy)
            # is charged only for its own work, so they add up to the time spent in metrics
            outer = self._nested_seconds
            self._nested_seconds = 0.0
            start = time.perf_counter()
            try:
                self._cache[key] = self.guarded(name, lambda b: METRICS[name](b, **params))
            finally:
                elapsed = time.perf_counter() - start
                self.timings[name] = self.timings.get(name, 0.0) + elapsed - self._nested_seconds
                self._nested_seconds = outer + elapsed
        elif self._computing:
            self._deps.setdefault(self._computing[-1], set()).add(name)
        return self._cache[key]

    # ---- fault isolation (rewards.safety) ----------------------------------------------------------
    def guarded(self, label: str, fn: Callable[[RewardBatch], Any]) -> Any:
        """``fn(self)`` with per-crystal isolation, failures recorded under ``label``."""
        if self._computing:
            self._deps.setdefault(self._computing[-1], set()).add(label)
        self._computing.append(label)
        try:
            return safety.run_guarded(self, label, fn)
        finally:
            self._computing.pop()

    def record_failures(self, label: str, failures: dict[int, str]) -> None:
        """Record crystals of this batch that failed in ``label`` (index → reason)."""
        ours = {i: r for i, r in failures.items() if 0 <= i < len(self)}
        if len(ours) != len(failures):  # a crystal scope around a loop over some other list
            log.warning("%s recorded failures outside this batch's %d crystals; ignored", label, len(self))
        if ours:
            self.failures.setdefault(label, {}).update(ours)

    def note(self, index: int, kind: str, text: str) -> None:
        """Record that a value of crystal ``index`` was computed differently from the convention (kind
        :data:`UNRELAXED`: a relaxed energy of the unrelaxed crystal): kept, but said, in ``last_info``
        and evaluations."""
        self.notes.setdefault(index, (kind, text))

    def failed_in(self, labels: Sequence[str]) -> dict[int, str]:
        """Crystals that failed in any of ``labels`` or the metrics they used (index → reason)."""
        seen, todo, out = set(), list(labels), {}
        while todo:
            label = todo.pop()
            if label in seen:
                continue
            seen.add(label)
            todo.extend(self._deps.get(label, ()))
            for i, reason in self.failures.get(label, {}).items():
                out.setdefault(i, f"{label}: {reason}")
        return out

    def single(self, i: int) -> RewardBatch:
        """A batch of crystal ``i`` alone (same reference and budget), to probe it in isolation."""
        single = RewardBatch(
            [self.structures[i]],
            self._reference,
            self.crystal_timeout,
            device=self.device,
            num_workers=self.num_workers,
        )
        single.origin = [self.origin[i]]
        return single

    def masked(self, drop: Collection[int]) -> RewardBatch:
        """This batch with crystals ``drop`` treated as invalid (sharing caches and failure records)."""
        view = copy.copy(self)
        view.valid = self.valid.clone()
        view.valid[list(drop)] = False
        return view


@register_metric("amd")
def _amd(batch: RewardBatch, k: int = novelty.AMD_K) -> np.ndarray:
    """AMD vectors (Å) of the valid crystals that share their reduced formula with another crystal of
    the batch or of the reference — the only ones ever compared; NaN rows for the others."""
    structures = batch.valid_structures
    partners = novelty.crystals_with_partners(structures, batch.reference)
    return novelty.amd_vectors_of(structures, partners, k, batch.num_workers)


def _scale_free_amd(batch: RewardBatch) -> np.ndarray:
    return novelty.scale_free(batch.metric("amd"), batch.valid_structures)


@register_metric("unique_match")
def _unique_match(batch: RewardBatch) -> np.ndarray:
    """Index of the earlier crystal of the batch a crystal matches (``novelty.NO_MATCH`` if none)."""
    return novelty.unique_matches(
        batch.valid_structures, _scale_free_amd(batch), batch.reference.matcher, num_workers=batch.num_workers
    )


@register_metric("novel_match")
def _novel_match(batch: RewardBatch) -> np.ndarray:
    """Index of the reference crystal a crystal matches (``novelty.NO_MATCH`` if none)."""
    ref = batch.reference
    return novelty.novel_matches(
        batch.valid_structures, _scale_free_amd(batch), ref, ref.matcher, num_workers=batch.num_workers
    )


@register_metric("unique")
def _unique(batch: RewardBatch) -> np.ndarray:
    """Valid and matching no earlier crystal of the batch (``StructureMatcher``, default tolerances)."""
    return batch.valid.numpy() & (batch.metric("unique_match") == novelty.NO_MATCH)


@register_metric("novel")
def _novel(batch: RewardBatch) -> np.ndarray:
    """Valid and matching no crystal of the reference set (``StructureMatcher``, default tolerances)."""
    return batch.valid.numpy() & (batch.metric("novel_match") == novelty.NO_MATCH)


@register_metric("novel_formula")
def _novel_formula(batch: RewardBatch) -> np.ndarray:
    """Valid and with a reduced formula that no Materials Project entry (bundled file) has."""
    known = mp_composition_keys()
    return np.array([s is not None and composition_key(s.composition) not in known for s in batch.valid_structures])


@register_metric("mlip_energy")
def _mlip_energy(
    batch: RewardBatch,
    mlip: str = "chgnet",
    model: str | None = None,
    relax_steps: int = 0,
    fmax: float = 0.1,
    batch_size: int = 16,
    device: str | None = None,
) -> np.ndarray:
    """MP2020-compatible MLIP energy per atom (eV/atom), after optional relaxation; NaN if unavailable.

    ``device``: None = the batch's. On the CPU without relaxation, the MLIP batches are spread over
    the batch's worker processes (whole batches of ``batch_size``, as the serial loop cuts them).
    """
    device = device or batch.device
    idx = [i for i, ok in enumerate(batch.valid.tolist()) if ok]
    structures = [batch.structures[i] for i in idx]
    out = np.full(len(batch), np.nan)
    if not structures:
        return out
    if relax_steps == 0 and device == "cpu" and batch.num_workers > 1:
        starts = list(range(0, len(structures), batch_size))
        parts = [[starts[j] for j in part] for part in parallel.chunks(range(len(starts)), batch.num_workers)]
        tasks = [(mlip, model, structures[p[0] : p[-1] + batch_size], batch_size) for p in parts]
        out[idx] = np.concatenate(parallel.run(_mlip_energies, tasks, batch.num_workers))
        for i in idx:
            if not np.isfinite(out[i]):
                safety.note_failure(i, f"no {mlip} energy")
        return out
    with safety.suspended():  # loading the model (once per process) is not the crystals' time
        backend = get_mlip(mlip, model, device)
    if relax_steps > 0:
        relaxed = backend.relax(structures, relax_steps, fmax, batch_size)
        for i, before, after in zip(idx, structures, relaxed, strict=True):
            if after is before:  # relax() returns a crystal it could not relax as it was
                batch.note(i, UNRELAXED, f"{mlip} relaxation failed: energy of the unrelaxed crystal")
        structures = relaxed
    out[idx] = backend.energies(structures, batch_size)
    for i in idx:
        if not np.isfinite(out[i]):
            safety.note_failure(i, f"no {mlip} energy")
    return out


def _mlip_energies(mlip: str, model: str | None, structures: Sequence[Structure], batch_size: int) -> np.ndarray:
    """A pool task: MP2020-compatible energies of consecutive MLIP batches, on the worker's CPU."""
    return get_mlip(mlip, model, "cpu").energies(structures, batch_size)


@register_metric("e_above_hull")
def _e_above_hull(batch: RewardBatch, **mlip_params: Any) -> np.ndarray:
    """Energy above the reference hull (eV/atom; negative below it), NaN where unavailable."""
    energies = batch.metric("mlip_energy", **mlip_params)
    hull = batch.reference.hull
    out = np.full(len(batch), np.nan)
    idx = [i for i, e in enumerate(energies) if np.isfinite(e)]
    if isinstance(hull, FormationEnergyHull) and batch.num_workers > 1:
        # its linear programmes (one per composition not memoised yet) in the pool first; a programme
        # that fails there is left unmemoised and tried again below, in its crystal's scope
        def solve_many(keys: list[tuple]) -> list[float | None]:
            parts = parallel.chunks(range(len(keys)), 4 * batch.num_workers)
            tasks = [([keys[j] for j in part],) for part in parts]
            results = parallel.run(_solve_hull, tasks, batch.num_workers, batch.reference)
            return [value for part in results for value in part]

        hull.hull_energies([batch.structures[i].composition for i in idx], solve_many)
    for i in idx:
        with safety.crystal_scope(i):
            out[i] = hull.e_above_hull(batch.structures[i].composition, float(energies[i]))
            if not np.isfinite(out[i]):
                safety.note_failure(i, "no hull energy (an element without reference energy, or outside the hull)")
    return out


def _solve_hull(keys: list[tuple]) -> list[float | None]:
    """A pool task: hull energies of fractional-composition keys, with the worker's copy of the hull
    (None for a programme that raised)."""
    hull = parallel.worker_context().hull
    values: list[float | None] = [None] * len(keys)
    for j, key in enumerate(keys):
        try:  # keys are not crystals: a failure is retried (and recorded) in its crystals' own scopes
            values[j] = hull.solve([key])[0]
        except Exception:  # noqa: BLE001
            continue
    return values


@register_metric("hull_covered")
def _hull_covered(batch: RewardBatch) -> np.ndarray:
    """Whether a valid crystal's chemical system holds at least one known compound of the hull
    (if not, its E_hull is just its formation energy against the elements)."""
    hull = batch.reference.hull
    return np.array([s is not None and hull.has_compound(s.composition) for s in batch.valid_structures])


@register_metric("vae_structure_features")
def _vae_structure_features(batch: RewardBatch, model: Any = "mp20_tiny", device: str | None = None) -> torch.Tensor:
    return features.vae_features(batch.valid_structures, features.get_model(model, device or batch.device), "structure")


@register_metric("vae_composition_features")
def _vae_composition_features(batch: RewardBatch, model: Any = "mp20_tiny", device: str | None = None) -> torch.Tensor:
    model = features.get_model(model, device or batch.device)
    return features.vae_features(batch.valid_structures, model, "composition")
