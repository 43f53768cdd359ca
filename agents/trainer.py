"""The training loop: TorchRL collector → agent update → logging, validation, atomic checkpoints."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger
from tqdm.auto import tqdm

from agents.advantages import terminal_rewards
from agents.base import Agent
from agents.checkpoint import CHECKPOINT_NAME, capture_rng, load_checkpoint, restore_global_rng, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    max_steps: int = 30
    val_every: int = 10
    val_seed: int = 12345
    checkpoint_every: int = 10
    nan_patience: int = 3
    progress: bool = True
    best_metric: str | None = None  # a validation metric (e.g. "val/reward") whose best value is kept
    best_mode: str = "max"  # "max" or "min": which direction of best_metric is better
    snapshot_every: int = 0  # > 0: call the "snapshot" hooks every this many steps (a copy of the policy per snapshot)


class NaNLossError(RuntimeError):
    """Raised after ``nan_patience`` consecutive steps whose every update was skipped."""


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in ``mode`` ("max" or "min"); NaN never does."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _final_means(batch: TensorDictBase, prefix: str) -> dict[str, float]:
    """Mean terminal reward, and the mean of each reward component of a [B, K] batch: raw metric as
    ``<prefix>/<name>`` (NaNs ignored), contribution to the reward as ``<prefix>/weighted/<name>``,
    and, where the env reports them (``reward_failed``), the share of crystals the component could
    not score as ``<prefix>/failed/<name>``."""
    final = batch[:, -1]["next"]
    out = {f"{prefix}/reward": float(terminal_rewards(batch).mean())}
    for group, fmt in (
        ("reward_raw", "{}/{}"),
        ("reward_components", "{}/weighted/{}"),
        ("reward_failed", "{}/failed/{}"),
    ):
        if group in final.keys():
            for name, value in final[group].items():
                out[fmt.format(prefix, name)] = float(value.float().nanmean())
    return out


class Trainer:
    """Drives any :class:`Agent` on a TorchRL env; knows nothing of what the env generates.

    ``hooks`` are called as ``hook(event, step, run_dir, data)`` with event ``"validation"`` (data:
    the validation trajectories), ``"checkpoint"`` (data: None) and, with ``cfg.best_metric`` set,
    ``"best"`` (data: ``{"metric", "mode", "value", "step"}``) whenever a validation improves on it and,
    with ``cfg.snapshot_every`` > 0, ``"snapshot"`` (data: None) every that many steps, for
    domain-specific outputs (e.g. a copy of the model at its best validation score, or at every snapshot).
    """

    def __init__(
        self,
        agent: Agent,
        env: EnvBase,
        val_env: EnvBase | None,
        cfg: TrainerConfig,
        run_dir: str | Path,
        loggers: Sequence[Logger] = (),
        config: dict[str, Any] | None = None,
        hooks: Sequence[Callable[[str, int, Path, Any], None]] = (),
    ):
        self.agent, self.env, self.val_env, self.cfg = agent, env, val_env, cfg
        self.run_dir = Path(run_dir)
        self.loggers = list(loggers) if _is_main() else []
        self.config = config or {}
        self.hooks = list(hooks)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None  # {"metric", "mode", "value", "step"} of the best validation
        if cfg.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {cfg.best_mode!r}")
        if cfg.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {cfg.snapshot_every}")
        if cfg.best_metric is not None and val_env is None:
            raise ValueError(f"best_metric={cfg.best_metric!r} needs validation (a val_env), and there is none")
        self._resume_state: dict[str, Any] | None = None
        self.frames_per_batch = int(env.batch_size.numel()) * int(getattr(env, "num_steps", 1))

    # ---- state --------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def save(self) -> None:
        if not _is_main():
            return
        save_checkpoint(
            self.checkpoint_path(),
            {
                "step": self.step,
                "agent": self.agent.state_dict(),
                "rng": capture_rng(self._env_rng_states()),
                "env_state": self._env_checkpoint_state(),
                "config": self.config,
                "history": self.history,
                "best": self.best,
            },
        )
        for hook in self.hooks:
            hook("checkpoint", self.step, self.run_dir, None)

    def _env_rng_states(self) -> dict[str, torch.Tensor]:
        """The env generator state its pending episode was drawn from (the collector resets the env
        at the end of each batch, before the update, so that episode is already drawn)."""
        state = getattr(self.env, "rng_state_at_last_reset", None)
        return {} if state is None else {"env_reset": state}

    def _env_checkpoint_state(self) -> dict[str, Any]:
        """The env's own state beyond its generator (e.g. a reward's memory of earlier batches), if it
        keeps one (``checkpoint_state``/``load_checkpoint_state``)."""
        state = getattr(self.env, "checkpoint_state", None)
        return state() if callable(state) else {}

    def resume(self, source: str | Path | dict[str, Any]) -> None:
        """Load agent, step, history and the env's state from a checkpoint (path, run directory or
        loaded dict); the env generator is rewound so the collector's first reset redraws the pending episode, and
        the global RNGs are restored after that reset."""
        state = source if isinstance(source, dict) else load_checkpoint(source)
        self.agent.load_state_dict(state["agent"])
        self.step = state["step"]
        self.history = state["history"]
        best = state.get("best")  # checkpoints of older versions have none
        same = best and (best["metric"], best.get("mode")) == (self.cfg.best_metric, self.cfg.best_mode)
        self.best = best if same else None  # a changed metric or mode starts over
        self._resume_state = state["rng"]
        if state.get("env_state"):  # checkpoints of older versions have none
            self.env.load_checkpoint_state(state["env_state"])
        env_state = state["rng"]["generators"].get("env_reset")
        if env_state is not None and isinstance(getattr(self.env, "rng", None), torch.Generator):
            self.env.rng.set_state(env_state)
        log.info("Resumed at step %d", self.step)

    # ---- loop ---------------------------------------------------------------------------------------
    def log(self, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            for key, value in metrics.items():
                if math.isfinite(value):
                    logger.log_scalar(key, value, step=self.step)

    def _track_best(self, record: dict[str, float]) -> None:
        """Call the ``"best"`` hooks when ``record``'s ``best_metric`` beats the best so far."""
        name = self.cfg.best_metric
        if name is None:
            return
        if name not in record:
            valid = sorted(k for k in record if k.startswith("val/"))
            raise ValueError(f"best_metric {name!r} is not a validation metric of this run; valid: {valid}")
        value = record[name]
        if not is_better(value, None if self.best is None else self.best["value"], self.cfg.best_mode):
            return
        self.best = {"metric": name, "mode": self.cfg.best_mode, "value": value, "step": self.step}
        if _is_main():
            for hook in self.hooks:
                hook("best", self.step, self.run_dir, dict(self.best))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_env is None:
            return {}
        with torch.random.fork_rng():  # same validation crystals' noise every time; training RNG untouched
            self.val_env.set_seed(self.cfg.val_seed)
            batch = self.val_env.rollout(10**6, self.agent.policy, break_when_any_done=True)
        for hook in self.hooks:
            hook("validation", self.step, self.run_dir, batch)
        return _final_means(batch, "val")

    def fit(self, resume: str | Path | dict[str, Any] | None = None) -> list[dict[str, float]]:
        """Train until ``max_steps``; checkpoints every ``checkpoint_every`` steps, at the end and on
        Ctrl-C. Returns the metric history (one dict per step)."""
        if resume is not None:
            self.resume(resume)
        collector = Collector(  # resets the env: with a rewound generator, the same pending episode
            self.env,
            self.agent.policy,
            frames_per_batch=self.frames_per_batch,
            total_frames=-1,
            auto_register_policy_transforms=False,
        )
        if self._resume_state is not None:
            restore_global_rng(self._resume_state)
        if self.step == 0 and self.val_env is not None:
            record = {"step": 0, **self.validate()}
            self._track_best(record)
            self.history.append(record)
            self.log(record)
        stop = self._install_interrupt_handler()
        bar = tqdm(
            total=self.cfg.max_steps, initial=self.step, disable=not (self.cfg.progress and _is_main()), desc="train"
        )
        iterator = iter(collector)
        try:
            while self.step < self.cfg.max_steps and not stop.is_set():
                start = time.perf_counter()
                batch = next(iterator)
                metrics = self.agent.update(batch)
                elapsed = time.perf_counter() - start
                self.step += 1
                record = {
                    "step": self.step,
                    **_final_means(batch, "train"),
                    **{f"train/{k}": v for k, v in metrics.items()},
                    "train/crystals_per_second": batch.shape[0] / elapsed,
                }
                if self.agent.consecutive_nan >= self.cfg.nan_patience:
                    self.history.append(record)
                    self.save()
                    raise NaNLossError(
                        f"{self.agent.consecutive_nan} consecutive steps with a non-finite loss; "
                        f"stopped at step {self.step}, checkpoint in {self.checkpoint_path()}"
                    )
                if self.step % self.cfg.val_every == 0 or self.step == self.cfg.max_steps:
                    record.update(self.validate())
                    self._track_best(record)
                self.history.append(record)
                self.log(record)
                bar.update(1)
                bar.set_postfix(reward=f"{record['train/reward']:.3f}", kl=f"{record.get('train/kl_div', 0.0):.2e}")
                if self.cfg.snapshot_every and self.step % self.cfg.snapshot_every == 0 and _is_main():
                    for hook in self.hooks:
                        hook("snapshot", self.step, self.run_dir, None)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.max_steps:
                    self.save()
            if stop.is_set():
                log.warning("Interrupted: checkpoint of step %d written to %s", self.step, self.checkpoint_path())
                self.save()
        finally:
            bar.close()
            collector.shutdown()
            self._restore_interrupt_handler()
        return self.history

    def _install_interrupt_handler(self) -> threading.Event:
        """First Ctrl-C: finish the current step, checkpoint, stop (so resume stays exact).
        Second Ctrl-C: stop at once."""
        stop = threading.Event()
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread():

            def handler(signum, frame):
                if stop.is_set():
                    raise KeyboardInterrupt
                log.warning("Ctrl-C: stopping after this step (press again to abort now)")
                stop.set()

            self._previous_handler = signal.signal(signal.SIGINT, handler)
        return stop

    def _restore_interrupt_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
