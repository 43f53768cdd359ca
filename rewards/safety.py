"""Per-crystal fault isolation for rewards: one bad crystal never costs the others their values.

Three layers, all driven by :class:`rewards.metrics.RewardBatch`:

* :func:`sanitize` — the gate every structure passes first: oxidation-state-decorated species become
  plain elements (a copy; everything downstream wants elements). Disordered sites, dummy species and
  absurd geometry are rejected by the validity check (:mod:`crystal_env.crystals.validity`).
* :func:`crystal_scope` — wraps the work on one crystal inside a metric's loop: an exception or a
  run past the per-crystal time budget (``RewardBatch.crystal_timeout``) makes that crystal fail
  with a reason; the loop goes on with the next crystal.
* :func:`run_guarded` — wraps a whole metric or component computation (batched work such as MLIP
  or VAE calls): it gets the sum of its crystals' budgets; if it raises or overruns, each crystal is
  probed alone to find the culprits, which are then masked out and the computation is redone, so
  the other crystals keep exactly the values they would have had.

Budgets are enforced pre-emptively with ``SIGALRM`` (``signal.setitimer``) in the main thread: pure
Python code and C extensions that return to the interpreter regularly (numpy, torch, pymatgen,
StructureMatcher, FIRE) are interrupted on time. A single C call that never returns cannot be
interrupted in-process: for that, run the reward in a worker process (:class:`rewards.IsolatedReward`),
which is killed and restarted when a crystal overruns. Outside the main thread the budget is checked
when the crystal's work ends (the crystal still fails, late).
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymatgen.core import Species, Structure

if TYPE_CHECKING:
    from rewards.metrics import RewardBatch

log = logging.getLogger(__name__)

DEFAULT_CRYSTAL_TIMEOUT = 60.0  # seconds per crystal and per metric


class CrystalTimeout(BaseException):  # noqa: N818 - not an error of the code, a budget running out
    """Raised (by ``SIGALRM``) inside the work whose budget ran out. A ``BaseException``, so that a
    metric's own ``except Exception`` cannot swallow it."""

    def __init__(self, frame: _Frame):
        super().__init__(f"time budget of {frame.seconds:g} s exceeded")
        self.frame = frame


def sanitize(structure: Structure | None) -> Structure | None:
    """``structure`` with oxidation-state-decorated species replaced by plain elements (a copy), or
    as it is. Anything else unusual (disorder, dummy species) is left for the validity check."""
    if structure is None:
        return None
    try:
        decorated = any(type(sp) is Species for site in structure for sp in site.species)
    except Exception:  # noqa: BLE001 - an unreadable object: let the validity check reject it
        return structure
    if not decorated:
        return structure
    plain = structure.copy()
    plain.remove_oxidation_states()
    return plain


# ---- pre-emptive deadlines -------------------------------------------------------------------------
@dataclass(eq=False)
class _Frame:
    seconds: float
    deadline: float


class _AlarmClock:
    """Nested deadlines on one ``ITIMER_REAL`` timer; the handler raises :class:`CrystalTimeout` for
    the outermost expired frame (everything inside it is abandoned).

    Invariant: a frame is removed before its timeout is raised, together with the frames nested in
    it (pushed after it). A raise can strike anywhere in the abandoned blocks, their ``__exit__``
    bookkeeping included; a frame left behind would stay expired and fail every later scope of the
    process."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.previous: Any = None
        self.busy = False
        self.paused = 0  # suspended() blocks open: their frames come back, so keep the handler

    @staticmethod
    def usable() -> bool:
        return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def _arm(self) -> None:
        if not self.frames:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if not self.paused:
                self._give_back_handler()
            return
        remaining = min(f.deadline for f in self.frames) - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-4))

    def _give_back_handler(self) -> None:
        """Reinstall the SIGALRM handler found at the first push, if ours is the one installed."""
        if signal.getsignal(signal.SIGALRM) == self._handler:
            signal.signal(signal.SIGALRM, self.previous if self.previous is not None else signal.SIG_DFL)

    def _expired(self) -> _Frame | None:
        now = time.monotonic()
        return next((f for f in self.frames if f.deadline <= now), None)

    def _fire(self, frame: _Frame) -> CrystalTimeout:
        """Remove ``frame`` and the frames nested in it, re-arm for the rest: the timeout to raise."""
        self.busy = True
        try:
            del self.frames[self.frames.index(frame) :]
            self._arm()
        finally:
            self.busy = False
        return CrystalTimeout(frame)

    def _handler(self, signum: int, stack: Any) -> None:
        if self.busy:  # inside push/pop/_fire: they re-check deadlines when done
            return
        frame = self._expired()
        if frame is None:
            self._arm()
            return
        raise self._fire(frame)

    def push(self, budget: _Budget) -> None:
        """Start ``budget``'s deadline; its ``frame`` is set before an alarm can strike."""
        self.busy = True
        try:
            if not self.frames:
                current = signal.signal(signal.SIGALRM, self._handler)
                if current != self._handler:  # not a push while paused (suspended()): keep the original
                    self.previous = current
            budget.frame = _Frame(budget.seconds, time.monotonic() + budget.seconds)
            self.frames.append(budget.frame)
            self._arm()
        finally:
            self.busy = False

    def pop(self, frame: _Frame) -> None:
        self.busy = True
        try:
            if frame in self.frames:  # gone: its timeout (or an enclosing one) already fired
                self.frames.remove(frame)
                self._arm()
        finally:
            self.busy = False
        expired = self._expired()  # an outer budget ran out while we were busy
        if expired is not None:
            raise self._fire(expired)

    def pause(self) -> tuple[list[_Frame], float]:
        self.busy = True
        try:
            frames, self.frames = self.frames, []
            self.paused += 1
            if frames:
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            self.busy = False
        return frames, time.monotonic()

    def resume(self, frames: list[_Frame], since: float) -> None:
        self.busy = True
        try:
            self.paused -= 1
            paused = time.monotonic() - since
            for f in frames:
                f.deadline += paused
            self.frames = frames + self.frames
            self._arm()  # no frames: gives the handler back if a push inside the pause installed it
        finally:
            self.busy = False

    def reset(self) -> None:
        """No deadlines, no timer, the original handler back. Run in every forked child (a reward pool
        worker started inside a metric): the parent's deadlines are copied with its memory, and a child
        that armed its timer for them would be killed by the parent's budget long after the fork."""
        self.frames, self.busy, self.paused = [], False, 0
        with suppress(ValueError):  # not the main thread: leave it
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._give_back_handler()
        self.previous = None


_CLOCK = _AlarmClock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_CLOCK.reset)

# Set in an IsolatedReward worker: a shared array (crystal index in the call, or -1 for a whole
# computation, or -2 when idle; start time on the monotonic clock; allowed seconds) that the
# supervising process reads to detect work stuck in native code.
PROGRESS: Any = None


def _progress_enter(index: int, seconds: float | None) -> tuple[float, float, float] | None:
    if PROGRESS is None or seconds is None:
        return None
    previous = (PROGRESS[0], PROGRESS[1], PROGRESS[2])
    PROGRESS[0], PROGRESS[1], PROGRESS[2] = float(index), time.monotonic(), float(seconds)
    return previous


def _progress_exit(previous: tuple[float, float, float] | None, paused: float = 0.0) -> None:
    if previous is not None:
        PROGRESS[0], PROGRESS[1], PROGRESS[2] = previous[0], previous[1] + paused, previous[2]


class _Budget(AbstractContextManager):
    """Run a block under a deadline; ``timed_out`` tells afterwards whether it ran out."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.frame: _Frame | None = None
        self.start = 0.0

    def __enter__(self) -> _Budget:
        self.start = time.monotonic()
        if self.seconds is not None and _CLOCK.usable():
            try:
                _CLOCK.push(self)
            except BaseException:  # e.g. KeyboardInterrupt as the push ends: __exit__ will not run
                self.close()  # (nothing to do if it was this budget's own alarm: _fire removed it)
                raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def close(self) -> None:
        """Remove this budget's deadline (once: a second call, or one after its timeout fired, does
        nothing)."""
        if self.frame is not None:
            _CLOCK.pop(self.frame)

    def owns(self, exc: BaseException) -> bool:
        return isinstance(exc, CrystalTimeout) and exc.frame is self.frame and self.frame is not None

    def overran(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds


# ---- per-crystal scopes inside a metric ----------------------------------------------------------
@dataclass
class _Scope:
    """The metric (or component) being computed: its batch and where failures are recorded."""

    batch: RewardBatch
    label: str
    failures: dict[int, str] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("rewards_active_scope", default=None)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CrystalTimeout):
        return "timeout"
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"error: {type(exc).__name__}" + (f": {text}" if text else "")


def note_failure(i: int, reason: str) -> None:
    """Record that crystal ``i`` of the batch being scored failed in the current metric."""
    scope = _ACTIVE.get()
    if scope is not None:
        scope.failures.setdefault(i, reason)


class _CrystalScope(AbstractContextManager):
    def __init__(self, i: int, scope: _Scope | None):
        self.i, self.scope = i, scope
        timeout = scope.batch.crystal_timeout if scope is not None else None
        self.budget = _Budget(timeout)

    def __enter__(self) -> _CrystalScope:
        index = self.scope.batch.origin[self.i] if self.scope is not None else -1
        self.progress = _progress_enter(index, self.budget.seconds)
        self.early: CrystalTimeout | None = None
        try:
            self.budget.__enter__()
        except CrystalTimeout as struck:  # after the push, before the block: _fire removed the frame
            _progress_exit(self.progress)  # the enclosing computation's record back (a worker's supervisor)
            self.progress = None
            if not self.budget.owns(struck):
                raise
            # this crystal's own alarm (the process stalled for its whole budget): a with-statement
            # cannot skip its block, so the block runs under the enclosing budgets only and the
            # crystal fails with "timeout" when it ends, as if the alarm had struck inside it
            self.early = struck
        except BaseException:  # e.g. KeyboardInterrupt before the block (the budget closed itself)
            _progress_exit(self.progress)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            _progress_exit(self.progress)
            self.budget.__exit__(exc_type, exc, tb)
        except CrystalTimeout as late:  # struck before the deadline was removed; _fire removed it
            _progress_exit(self.progress)
            if not self.budget.owns(late):  # an enclosing budget ran out: not this crystal's business
                raise late from exc
            exc = exc if exc is not None else late  # this crystal's alarm, delivered as its block ended
        if exc is None and self.early is not None:
            exc = self.early
        if exc is None:
            if self.budget.overran():  # no pre-emption here (not the main thread): fail it late
                self._fail("timeout")
            return False
        if isinstance(exc, CrystalTimeout) and not self.budget.owns(exc):
            return False  # an enclosing budget: propagate
        if not isinstance(exc, Exception | CrystalTimeout):
            return False  # KeyboardInterrupt, SystemExit
        self._fail(_reason(exc))
        return True

    def _fail(self, reason: str) -> None:
        if self.scope is not None:
            self.scope.failures.setdefault(self.i, reason)
        else:
            log.debug("crystal %d failed: %s", self.i, reason)


@contextmanager
def suspended() -> Iterator[None]:
    """Shared, one-off work done lazily inside a reward computation (loading a model, preprocessing
    the reference set) runs outside any crystal's scope and budget: its time does not count."""
    token = _ACTIVE.set(None)
    start = time.monotonic()
    progress = _progress_enter(-2, 0.0)
    pausing = _CLOCK.usable()
    frames, since = _CLOCK.pause() if pausing else ([], 0.0)
    try:
        yield
    finally:
        if pausing:
            _CLOCK.resume(frames, since)
        _progress_exit(progress, time.monotonic() - start)
        _ACTIVE.reset(token)


def crystal_scope(i: int) -> AbstractContextManager:
    """Isolate the work on crystal ``i`` (its index in the batch) inside a metric loop::

        for i, s in enumerate(batch.valid_structures):
            with crystal_scope(i):
                out[i] = expensive(s)

    An exception or (inside a reward computation) a run past the per-crystal budget leaves ``out[i]``
    at its default and records the crystal as failed with the reason; the loop continues.
    """
    return _CrystalScope(i, _ACTIVE.get())


# ---- tasks run elsewhere (rewards.parallel) ---------------------------------------------------------
@dataclass
class TaskScope:
    """What a task computed away from its metric (in a pool worker, or here on a slice of the batch)
    needs to isolate its crystals as the metric would: the per-crystal budget, and each crystal's index
    in the reward call. Positions in the task are what its ``crystal_scope(j)`` calls name."""

    crystal_timeout: float | None
    origin: list[int]


def task_scope(crystals: Sequence[int]) -> TaskScope:
    """The :class:`TaskScope` of a task on crystals ``crystals`` (indices in the batch being scored)."""
    scope = _ACTIVE.get()
    if scope is None:  # outside a reward computation: no budget, failures only logged
        return TaskScope(None, [-1] * len(crystals))
    return TaskScope(scope.batch.crystal_timeout, [scope.batch.origin[i] for i in crystals])


def run_task(fn: Callable[..., Any], args: Sequence[Any], task: TaskScope) -> tuple[Any, dict[int, str]]:
    """``fn(*args)`` with its crystal scopes under ``task``'s budget; the value and the crystals that
    failed (position in the task → reason). Exceptions outside crystal scopes propagate."""
    scope = _Scope(task, "task")  # type: ignore[arg-type]  # a TaskScope stands in for the batch
    token = _ACTIVE.set(scope)
    try:
        return fn(*args), scope.failures
    finally:
        _ACTIVE.reset(token)


# ---- whole computations ----------------------------------------------------------------------------
def _attempt(batch: RewardBatch, label: str, fn: Callable[[RewardBatch], Any], seconds: float | None):
    """(value, failures, exception) of ``fn(batch)`` under a budget, with crystal scopes recording."""
    scope = _Scope(batch, label)
    token = _ACTIVE.set(scope)
    budget = _Budget(seconds)
    progress = _progress_enter(batch.origin[0] if len(batch) == 1 else -1, seconds)
    try:
        with budget:
            return fn(batch), scope.failures, None
    except CrystalTimeout as exc:
        if not budget.owns(exc):
            raise
        return None, scope.failures, exc
    except Exception as exc:  # noqa: BLE001 - isolated below
        return None, scope.failures, exc
    finally:
        _progress_exit(progress)
        _ACTIVE.reset(token)


def run_guarded(batch: RewardBatch, label: str, fn: Callable[[RewardBatch], Any]) -> Any:
    """``fn(batch)`` with per-crystal fault isolation; crystals that failed are recorded in
    ``batch.failures[label]`` (index → reason). See the module docstring."""
    timeout = batch.crystal_timeout
    valid = [i for i, ok in enumerate(batch.valid.tolist()) if ok]
    total = timeout * max(len(valid), 1) if timeout is not None else None
    value, failures, exc = _attempt(batch, label, fn, total)
    if exc is None:
        batch.record_failures(label, failures)
        return value
    log.warning("%s failed on a batch of %d crystals (%s); isolating the culprit(s)", label, len(batch), _reason(exc))
    culprits: dict[int, str] = {}
    errors = 0
    for i in valid:
        _, single_failures, single_exc = _attempt(batch.single(i), label, fn, timeout)
        if single_exc is not None:
            culprits[i] = _reason(single_exc)
            errors += not isinstance(single_exc, CrystalTimeout)
        elif single_failures:
            culprits[i] = next(iter(single_failures.values()))
    if valid and errors == len(valid):
        raise exc  # every crystal fails alone: a setup problem (missing file, bad option), not a crystal's
    value, failures, exc2 = _attempt(batch.masked(culprits), label, fn, total)
    if exc2 is not None:  # the failure needs several crystals together: give up on all of them
        culprits = {i: culprits.get(i, _reason(exc2)) for i in valid}
        value, failures, exc3 = _attempt(batch.masked(culprits), label, fn, None)
        if exc3 is not None:
            raise exc3
    batch.record_failures(label, {**failures, **culprits})
    return value
