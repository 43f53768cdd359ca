"""A reward computed in a worker process, so that work stuck in native code can be abandoned.

In-process time budgets (:mod:`rewards.safety`) interrupt Python code and C extensions that return
to the interpreter, but not one C call that never returns (or one that crashes the process). With
``isolation: process`` in a reward config, :func:`rewards.build_reward` returns an
:class:`IsolatedReward`: the reward is built and run in a spawned worker that publishes which
crystal it is working on. When that crystal (or a whole batched computation) overruns its budget
by more than ``grace`` seconds, or the worker dies, the worker is killed and restarted, and the call
is redone without that crystal — it gets the worst values, with the reason in ``last_info``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pymatgen.core import Structure

from rewards.base import normalize

log = logging.getLogger(__name__)
STUCK = "timeout (stuck in native code; worker restarted)"
CRASHED = "the reward worker crashed on it (restarted)"


def _worker(config: dict[str, Any], conn, progress) -> None:
    """Build the reward from ``config`` and score the structures received until told to stop."""
    from rewards import safety
    from rewards.factory import build_reward

    safety.PROGRESS = progress
    try:
        reward = build_reward(config)
        names = list(getattr(reward, "component_names", []) or [])
        conn.send(("ready", names, getattr(reward, "normalize_fn", None), getattr(reward, "eps", 1e-4)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        structures = conn.recv()
        if structures is None:
            return
        try:
            out = reward(structures)
            out = out.to_dict() if hasattr(out, "to_dict") else {"total": torch.as_tensor(out)}
            conn.send(("ok", out, dict(getattr(reward, "last_info", {}))))
        except Exception as exc:  # noqa: BLE001 - a setup error: the parent raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            progress[0] = -2.0


class IsolatedReward:
    """The reward of ``config`` (a reward config mapping, without ``isolation``) run in a worker."""

    def __init__(self, config: Mapping[str, Any], grace: float = 30.0, start_timeout: float = 900.0):
        self.config = dict(config)
        self.grace = float(grace)
        self.start_timeout = float(start_timeout)
        self._ctx = mp.get_context("spawn")  # a fresh interpreter: safe with threads, CUDA and OpenMP
        self._proc: Any = None
        self.last_info: dict[str, Any] = {}
        self.restarts = 0
        self._start()

    # ---- the worker ---------------------------------------------------------------------------------
    def _start(self) -> None:
        self._progress = self._ctx.Array("d", [-2.0, 0.0, 0.0])
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(self.config, child, self._progress), daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(self.start_timeout):
            self.close()
            raise RuntimeError(f"The reward worker did not start within {self.start_timeout:g} s")
        message = self._conn.recv()
        if message[0] == "error":
            self.close()
            raise RuntimeError(f"Building the reward in its worker failed: {message[1]}")
        _, self.component_names, self.normalize_fn, self.eps = message

    def close(self) -> None:
        """Stop the worker (it is restarted by the next call)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
            self._proc = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable (e.g. into a collector worker): config only
        return {"config": self.config, "grace": self.grace, "start_timeout": self.start_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["grace"], state["start_timeout"])

    def _run(self, structures: list[Structure | None]) -> tuple[str, Any]:
        """("ok", (out, info)), ("stuck", crystal index or -1), ("crashed", index) or ("error", text)."""
        if self._proc is None:
            self._start()
        self._conn.send(structures)
        while True:
            index, start, allowed = self._progress[0], self._progress[1], self._progress[2]
            if self._conn.poll(0.05):
                try:
                    message = self._conn.recv()
                    return ("ok", message[1:]) if message[0] == "ok" else message
                except EOFError:  # the worker died mid-call
                    status = "crashed"
            elif index > -2 and time.monotonic() - start > allowed + self.grace:
                status = "stuck"
            elif not self._proc.is_alive():
                status = "crashed"
            else:
                continue
            self.close()
            self.restarts += 1
            return status, int(index)

    # ---- the reward protocol --------------------------------------------------------------------------
    def __call__(self, structures: Sequence[Structure | None]) -> Any:
        from tensordict import TensorDict

        structures = list(structures)
        dropped: dict[int, str] = {}
        while True:
            status, payload = self._run([None if i in dropped else s for i, s in enumerate(structures)])
            if status == "ok":
                break
            if status == "error":
                raise RuntimeError(f"The reward failed in its worker: {payload}")
            culprits = [payload] if payload >= 0 else self._probe(structures, dropped)
            reason = STUCK if status == "stuck" else CRASHED
            log.warning("Reward worker %s (crystal(s) %s); restarted, scoring the rest", status, culprits)
            dropped.update({i: reason for i in culprits})
            if not culprits:  # cannot pin it on a crystal: every remaining one gets the worst value
                dropped.update({i: reason for i in range(len(structures))})
        out, info = payload
        info.setdefault("problems", [None] * len(structures))
        for i, reason in dropped.items():
            info["problems"][i] = reason
        info["num_timeouts"] = info.get("num_timeouts", 0) + sum(r == STUCK for r in dropped.values())
        info["worker_restarts"] = self.restarts
        self.last_info = info
        return TensorDict(out, batch_size=[len(structures)])

    def _probe(self, structures: list[Structure | None], dropped: dict[int, str]) -> list[int]:
        """A batched computation got stuck: score the crystals one at a time to find the culprits."""
        culprits = []
        for i, s in enumerate(structures):
            if i not in dropped and s is not None and self._run([s])[0] in ("stuck", "crashed"):
                culprits.append(i)
        return culprits

    def normalize(self, x: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The reward's global normalisation (as :meth:`rewards.CompositeReward.normalize`)."""
        return normalize(torch.as_tensor(x).reshape(-1), self.normalize_fn, self.eps, group_ids)

    def __repr__(self) -> str:
        return f"IsolatedReward(components={self.component_names}, grace={self.grace})"
