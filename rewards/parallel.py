"""A process pool for the CPU-bound reward work: AMD fingerprints, ``StructureMatcher`` calls, hull
linear programmes, and the MLIP when it runs on the CPU.

These are Python/numba code holding the GIL, so they scale with processes, not threads. The pool is
created on first use and kept for the life of the process (one per worker count and reference
set). Workers are forked (on Linux; spawned elsewhere, where a script must guard its entry point
with ``if __name__ == "__main__":``): they start at once, without re-importing the caller's script,
and inherit the loaded reference set. They only ever run CPU code (never CUDA, which a forked child
may not touch), use one torch thread each, and ignore Ctrl-C (the trainer finishes its step first).
Each worker keeps its own caches of reduced reference structures and loaded MLIPs.

Every task is a pure function of its inputs, and the work is split along the same boundaries as
the serial code (formula groups, MLIP batches), so results are identical to ``num_workers=0``.

Fault isolation (:mod:`rewards.safety`) is kept: a task on some crystals of the batch runs its
``crystal_scope`` calls under the calling metric's per-crystal budget (SIGALRM in the worker's main
thread), and the crystals that failed in it are recorded in the metric as if it had run serially.
An exception outside those scopes reaches the metric's guard, which isolates the culprit (probing
each crystal alone runs serially). When the metric's own budget runs out while it waits for the
pool, the workers are killed, so no runaway task outlives its batch.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_num_workers(num_workers: int | None) -> int:
    """``None`` → every available core; 0 or 1 → serial (no pool)."""
    n = available_cores() if num_workers is None else int(num_workers)
    if n < 0:
        raise ValueError(f"num_workers must be >= 0 or null (all cores), got {num_workers}")
    return n


class WorkerContext:
    """What workers need from the reference set: its crystals, matcher and hull."""

    def __init__(self, reference: Any):
        self.key = (reference.key, id(reference.hull))
        self.structures = reference.structures
        self.matcher = reference.matcher
        self.hull = reference.hull


# ---- worker side ------------------------------------------------------------------------------------
_CONTEXT: dict[str, Any] = {}


def _init_worker(context: WorkerContext | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    import torch

    torch.set_num_threads(1)  # one process per core
    _CONTEXT["context"] = context
    if context is not None:
        from rewards.novelty import ReducedStructures

        _CONTEXT["reduced_reference"] = ReducedStructures(context.structures, context.matcher)


def _call(task: tuple[Callable, tuple, Any]) -> Any:
    fn, args, scope = task
    if scope is None:
        return fn(*args)
    from rewards import safety

    return safety.run_task(fn, args, scope)


def worker_context() -> WorkerContext:
    return _CONTEXT["context"]


def worker_reduced_reference():
    return _CONTEXT["reduced_reference"]


# ---- parent side ------------------------------------------------------------------------------------
class _Pools:
    executor: ProcessPoolExecutor | None = None
    num_workers: int = 0
    context: WorkerContext | None = None


def _context_start_method() -> str:
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _executor(num_workers: int, context: WorkerContext | None) -> ProcessPoolExecutor:
    """The pool of ``num_workers`` workers holding ``context`` (a task without one runs in any pool);
    a new worker count or reference set replaces it."""
    current = _Pools.context
    if (
        _Pools.executor is None
        or _Pools.num_workers != num_workers
        or (context is not None and (current is None or current.key != context.key))
    ):
        context = context if context is not None else current
        shutdown()
        ctx = mp.get_context(_context_start_method())
        _Pools.executor = ProcessPoolExecutor(
            max_workers=num_workers, mp_context=ctx, initializer=_init_worker, initargs=(context,)
        )
        _Pools.num_workers, _Pools.context = num_workers, context
    return _Pools.executor


def _kill() -> None:
    """Stop the pool at once, terminating busy workers (their results are no longer wanted)."""
    executor = _Pools.executor
    if executor is not None:
        for process in list((getattr(executor, "_processes", None) or {}).values()):  # no public API for this
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
    _Pools.executor, _Pools.num_workers, _Pools.context = None, 0, None


def shutdown() -> None:
    """Stop the pool's workers (a later parallel call starts new ones)."""
    if _Pools.executor is not None:
        _Pools.executor.shutdown(wait=True, cancel_futures=True)
    _Pools.executor, _Pools.num_workers, _Pools.context = None, 0, None


atexit.register(shutdown)


def run(
    fn: Callable,
    tasks: Sequence[tuple],
    num_workers: int | None,
    reference: Any = None,
    crystals: Sequence[Sequence[int]] | None = None,
) -> list[Any]:
    """``[fn(*args) for args in tasks]``, in a pool of ``num_workers`` processes when it pays (more
    than one task and more than one worker); ``reference`` is the reference set workers may read
    through :func:`worker_context`. ``fn`` must be a module-level function.

    ``crystals[t]``: the batch indices of the crystals task ``t`` works on, position by position;
    given, each task's crystal scopes are isolated and timed as in the calling metric (see the module
    docstring), pooled or not, and their failures are recorded there under these indices."""
    n = resolve_num_workers(num_workers)
    if crystals is not None:
        from rewards import safety

        scopes = [safety.task_scope(c) for c in crystals]
    else:
        scopes = [None] * len(tasks)
    calls = [(fn, args, scope) for args, scope in zip(tasks, scopes, strict=True)]
    if n <= 1 or len(tasks) <= 1 or mp.current_process().daemon:  # a daemonic process may not have children
        results = _serial(calls, reference)
    else:
        context = None if reference is None else WorkerContext(reference)
        try:
            results = list(_executor(n, context).map(_call, calls))
        except BrokenProcessPool as exc:  # a worker died (e.g. killed for memory): do this call serially
            log.warning("Reward worker pool broke (%s); computing this batch serially", exc)
            shutdown()
            results = _serial(calls, reference)
        except Exception:  # a task's own error: the metric's guard isolates the crystal
            raise
        except BaseException:  # the metric's budget ran out (or Ctrl-C): abandon the tasks
            _kill()
            raise
    if crystals is None:
        return results
    from rewards import safety

    values = []
    for indices, (value, failures) in zip(crystals, results, strict=True):
        for j, reason in failures.items():
            safety.note_failure(indices[j], reason)
        values.append(value)
    return values


def _serial(calls: Sequence[tuple[Callable, tuple, Any]], reference: Any) -> list[Any]:
    """The same tasks in this process, with the same worker context the pool would have."""
    if reference is not None:
        previous = dict(_CONTEXT)
        context = WorkerContext(reference)
        _CONTEXT["context"] = context
        _CONTEXT["reduced_reference"] = reference.reduced  # the reference's own cache of reductions
        try:
            return [_call(c) for c in calls]
        finally:
            _CONTEXT.clear()
            _CONTEXT.update(previous)
    return [_call(c) for c in calls]


def chunks(indices: Sequence[int], num_chunks: int) -> list[list[int]]:
    """``indices`` split into at most ``num_chunks`` contiguous, nearly equal parts."""
    parts = np.array_split(np.asarray(indices, dtype=np.int64), max(1, min(num_chunks, len(indices))))
    return [p.tolist() for p in parts if len(p)]
