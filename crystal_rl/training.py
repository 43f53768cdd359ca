"""RL fine-tuning glue: env + reward + policy + agent + trainer from one resolved config dict.

``scripts/train.py`` is the Hydra front end; tests call :func:`run_training` directly.

A run owns its directory: :func:`run_training` locks it, writes ``config.yaml`` (the configuration
actually used) and ``train.log``. Resuming restores the configuration saved in the checkpoint;
only the keys given explicitly on the resume command change, and changes that make the run no
longer an exact continuation (``PROTECTED_KEYS``) need ``resume_allow_changes=true``.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torchrl.record.loggers import CSVLogger, Logger

from agents.base import Agent
from agents.checkpoint import CHECKPOINT_NAME, RunDirLock, load_checkpoint, resolve_checkpoint
from agents.factory import build_agent
from agents.trainer import Trainer, TrainerConfig
from atomic_io import atomic_write_bytes, remove_stale_temp_files
from crystal_env.env import CrystalDiffusionEnv
from crystal_env.factory import build_reward_fn, make_env
from crystal_env.models.ldm import CrystalLDM
from crystal_env.policy import make_policy, make_reference_policy
from crystal_env.reward_protocol import RewardFn

log = logging.getLogger(__name__)
NUM_VALIDATION_CIFS = 8
BEST_MODEL_NAME = "model_best.pt"
SNAPSHOT_DIR = "snapshots"
# Changing these on resume makes the run no longer an exact continuation of the saved one.
PROTECTED_KEYS = ("env", "reward", "agent", "policy", "seed")
# Per-invocation keys, never restored from a checkpoint.
INVOCATION_KEYS = ("run_dir", "resume", "resume_allow_changes")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
#: (reward_fn, role) -> the reward callable the env of that role ("train" / "validation") calls
RewardWrapper = Callable[[RewardFn, str], RewardFn]


# ---- configuration on resume ---------------------------------------------------------------------
def _lookup(cfg: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _assign(cfg: dict[str, Any], path: str, found: bool, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    if found:
        node[leaf] = copy.deepcopy(value)
    else:
        node.pop(leaf, None)


def _diff_paths(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Dotted paths where two nested configs differ (the deepest differing node)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            path = f"{prefix}{key}"
            if key not in a or key not in b:
                out.add(path)
            else:
                out |= _diff_paths(a[key], b[key], f"{path}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def explicit_keys(overrides: Sequence[str], cfg: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[str]:
    """Config paths the user set for this invocation: the keys named in ``overrides`` (Hydra
    ``key=value`` strings; a group choice such as ``reward=energy`` names its whole subtree), plus
    every path where ``cfg`` differs from ``baseline``, the config composed without overrides
    (which catches what an ``experiment=...`` choice sets)."""
    keys = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    keys = {k for k in keys if k.split(".")[0] != "hydra"}
    if baseline is not None:
        keys |= _diff_paths(cfg, baseline)
    return sorted(k for k in keys if k.split(".")[0] not in INVOCATION_KEYS)


def resume_config(saved: dict[str, Any], cfg: dict[str, Any], explicit: Sequence[str] | None) -> dict[str, Any]:
    """The saved run's configuration with the ``explicit`` paths taken from ``cfg`` (``None``: all
    of ``cfg``). Whole top-level groups come from the checkpoint, so a resumed PPO run rebuilds a
    PPO agent. Raises if a :data:`PROTECTED_KEYS` setting changes without ``resume_allow_changes``."""
    merged = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in saved or k in INVOCATION_KEYS}
    merged.update({k: copy.deepcopy(v) for k, v in saved.items() if k not in INVOCATION_KEYS})
    paths = [k for k in cfg if k not in INVOCATION_KEYS] if explicit is None else list(explicit)
    for path in paths:
        _assign(merged, path, *_lookup(cfg, path))
    changes = sorted(
        _diff_paths(
            {k: v for k, v in saved.items() if k not in INVOCATION_KEYS},
            {k: v for k, v in merged.items() if k not in INVOCATION_KEYS and k in saved},
        )
    )
    for path in changes:
        log.info("Resume override: %s = %r (saved run: %r)", path, _lookup(merged, path)[1], _lookup(saved, path)[1])
    breaking = [p for p in changes if p.split(".")[0] in PROTECTED_KEYS]
    if breaking and not cfg.get("resume_allow_changes", False):
        detail = ", ".join(f"{p}: {_lookup(saved, p)[1]!r} -> {_lookup(merged, p)[1]!r}" for p in breaking)
        raise ValueError(
            f"Resuming would change settings that make the run no longer an exact continuation ({detail}). "
            "Drop these overrides to continue the saved run as it was, or pass resume_allow_changes=true."
        )
    return merged


# ---- the run directory ---------------------------------------------------------------------------
def default_run_dir(resume: str | None) -> Path:
    """A resumed run continues in its own directory; a new one gets ``runs/train/<date>_<time>``."""
    if resume:
        ckpt = resolve_checkpoint(resume)
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return Path("runs/train") / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def truncate_csv_logs(log_dir: Path, last_step: int) -> int:
    """Drop the CSV scalar rows logged after ``last_step`` (steps a resumed run will log again) and
    any torn last line; returns the number of rows dropped."""
    dropped = 0
    for path in sorted(log_dir.glob("scalars/**/*.csv")):
        lines = path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            step, sep, value = line.strip().partition(",")
            try:
                ok = bool(sep) and line.endswith("\n") and int(step) <= last_step and bool(value)
                float(value)
            except ValueError:
                ok = False
            if ok:
                keep.append(line)
        if len(keep) != len(lines):
            dropped += len(lines) - len(keep)
            atomic_write_bytes(path, "".join(keep).encode())
    return dropped


def make_loggers(cfg: dict[str, Any], run_dir: Path) -> list[Logger]:
    """CSV always; wandb too when selected (offline without an API key or without network)."""
    loggers: list[Logger] = [CSVLogger(exp_name="logs", log_dir=str(run_dir))]
    if cfg.get("backend") == "wandb":
        from torchrl.record.loggers import WandbLogger

        mode = cfg.get("mode", "auto")
        offline = mode == "offline" or (mode == "auto" and not _wandb_reachable())
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        loggers.append(
            WandbLogger(
                exp_name=run_dir.name, offline=offline, save_dir=str(run_dir), project=cfg.get("project", "crystal-rl")
            )
        )
    return loggers


def _wandb_reachable() -> bool:
    if not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "offline":
        return False
    import socket

    try:
        socket.getaddrinfo("api.wandb.ai", 443)
    except OSError:
        return False
    return True


def best_model_meta(run_dir: str | Path) -> dict[str, Any] | None:
    """What ``model_best.pt`` in ``run_dir`` holds (metric, mode, value, step), read from the file
    itself so that it names the weights a user will load; None when the run wrote none."""
    path = Path(run_dir) / BEST_MODEL_NAME
    return torch.load(path, map_location="cpu", weights_only=True)["meta"] if path.is_file() else None


def crystal_hooks(model: CrystalLDM):
    """Validation: write a few decoded crystals as CIFs; checkpoint: export ``model.pt`` (LDM format,
    readable by ``load_model`` and ``scripts/sample.py``); best (``trainer.best_metric``): export the
    weights of the best validation so far as ``model_best.pt`` (its meta: metric, mode, value, step);
    snapshot (``trainer.snapshot_every``): export the model of this step as ``snapshots/step_NNNNN.pt``."""

    def hook(event: str, step: int, run_dir: Path, data: Any) -> None:
        if event == "validation":
            out = run_dir / "crystals" / f"step_{step:05d}"
            out.mkdir(parents=True, exist_ok=True)
            for i, s in enumerate(data[:, -1]["next", "crystals"][:NUM_VALIDATION_CIFS]):
                if s is not None:
                    s.to(filename=str(out / f"{i:02d}.cif"))
        elif event == "checkpoint":
            model.save(run_dir / "model.pt", meta={"step": step})
        elif event == "best":
            model.save(run_dir / BEST_MODEL_NAME, meta=data)
        elif event == "snapshot":
            model.save(run_dir / SNAPSHOT_DIR / f"step_{step:05d}.pt", meta={"step": step})

    return hook


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def run_training(
    cfg: dict[str, Any], explicit: Sequence[str] | None = None, reward_wrapper: RewardWrapper | None = None
) -> list[dict[str, float]]:
    """Train with a resolved config (keys: env, reward, agent, logger, trainer, seed, run_dir, resume).

    With ``resume``, the configuration saved in the checkpoint is used, except for the config paths
    in ``explicit`` (``None``: every key of ``cfg``), see :func:`resume_config`. ``run_dir`` (``None``:
    the resumed run's own directory, or a new timestamped one) is locked for the whole run.
    ``reward_wrapper``: see :func:`build_training` (e.g. to record every crystal scored).
    """
    cfg = copy.deepcopy(cfg)
    state = load_checkpoint(cfg["resume"]) if cfg.get("resume") else None
    run_dir = Path(cfg.get("run_dir") or default_run_dir(cfg.get("resume"))).resolve()
    rank, world = _distributed()
    created = not run_dir.exists()
    lock = RunDirLock(run_dir).acquire() if rank == 0 else None
    file_log = _open_train_log(run_dir) if rank == 0 else None
    if lock is not None and lock.stale_holder:
        log.warning("Took over the stale lock of %s (pid %s is no longer running)", lock.path, lock.stale_holder)
    try:
        if state is not None:
            log.info("Resuming %s from step %d", run_dir, state["step"])
            cfg = resume_config(state.get("config") or {}, cfg, explicit)
        cfg["run_dir"] = str(run_dir)
        if rank == 0:
            _prepare_run_dir(run_dir, cfg, state)
        return _train(cfg, run_dir, state, rank, world, reward_wrapper)
    except BaseException:
        if lock is not None and created and not _started(run_dir):
            lock.release()  # a run that failed before its first step leaves no directory behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()
        if lock is not None:
            lock.release()


def _started(run_dir: Path) -> bool:
    """Whether a training step finished (its metrics are logged) or a checkpoint was written."""
    return (run_dir / CHECKPOINT_NAME).exists() or (run_dir / "logs" / "scalars" / "train").is_dir()


def _open_train_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def drop_snapshots_after(snapshots: Path, last: int) -> list[str]:
    """Delete ``step_NNNNN.pt`` snapshots of steps after ``last`` (a resume retrains them, perhaps
    differently; -1: a fresh run, all of them), so averaging a step range never mixes trajectories."""
    dropped = []
    for path in sorted(snapshots.glob("step_*.pt")) if snapshots.is_dir() else []:
        step = path.stem.removeprefix("step_")
        if step.isdigit() and int(step) > last:
            path.unlink()
            dropped.append(path.name)
    return dropped


def _prepare_run_dir(run_dir: Path, cfg: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Under the lock: refuse to start afresh over another run, drop log rows and snapshots a resume
    will rewrite, remove temp files of killed writers, write ``config.yaml``."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if state is None and checkpoint.is_file():
        raise FileExistsError(
            f"{run_dir} already holds a run ({checkpoint}); continue it with resume={run_dir}, "
            "or choose another run_dir"
        )
    if state is None:
        log.info("New run in %s", run_dir)
    logs = run_dir / "logs"
    if logs.is_dir():
        last = state["step"] if state is not None else -1
        dropped = truncate_csv_logs(logs, last)
        if dropped:
            log.warning("Dropped %d CSV log row(s) of %s written after step %d (not checkpointed)", dropped, logs, last)
    for stale in remove_stale_temp_files(checkpoint):
        log.warning("Removed %s, left by a run killed while writing its checkpoint", stale)
    dropped_snapshots = drop_snapshots_after(run_dir / SNAPSHOT_DIR, state["step"] if state is not None else -1)
    if dropped_snapshots:
        log.warning(
            "Removed %d snapshot(s) written after the checkpointed step: %s", len(dropped_snapshots), dropped_snapshots
        )
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())


class _Frozen:
    """The validation env's view of the training reward: same object (models, reference, caches), but its
    calls leave stateful components (``reward.frozen()``, e.g. a composition memory) unchanged, so
    validation does not shape the training reward. Other attributes are the reward's."""

    def __init__(self, reward_fn: Any):
        self.reward_fn = reward_fn

    def __call__(self, structures: Any) -> Any:
        with self.reward_fn.frozen():
            return self.reward_fn(structures)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reward_fn, name)


def build_training(
    cfg: dict[str, Any], seed: int, val_batch_size: int | None = None, reward_wrapper: RewardWrapper | None = None
) -> tuple[Agent, CrystalDiffusionEnv, CrystalDiffusionEnv | None]:
    """The agent, the training env and (if ``val_batch_size``) the validation env of a resolved
    config (keys: env, reward, agent, policy, device), all on ``cfg["device"]``.

    ``reward_wrapper(reward_fn, role)``, if given, returns the reward callable the training env
    (``role="train"``) and the validation env (``role="validation"``) call instead of ``reward_fn``;
    it must forward ``component_names``. The agent's reward normaliser stays ``reward_fn``'s."""
    env_cfg = dict(cfg["env"])
    agent_cfg = dict(cfg["agent"])
    from hydra.utils import get_class

    required_group = getattr(get_class(agent_cfg["_target_"]), "required_group_size", None)
    if required_group is not None:
        env_cfg["group_size"] = required_group
    device = cfg.get("device", "cpu")
    reward_fn = build_reward_fn(cfg["reward"], device=device, dataset=env_cfg.get("dataset"))
    wrap = reward_wrapper or (lambda fn, role: fn)
    env = make_env(env_cfg, reward=wrap(reward_fn, "train"), seed=seed, device=device)
    val_env = None
    if val_batch_size:
        # validation computes no advantages: independent crystals (group size 1), so every agent of a seed,
        # whatever its group size, validates on the same noise and atom counts
        val_env = make_env(
            {**env_cfg, "batch_size": val_batch_size, "group_size": 1},
            reward=wrap(_Frozen(reward_fn) if hasattr(reward_fn, "frozen") else reward_fn, "validation"),
            seed=seed + 10_000,
            device=device,
        )
        val_env.model = env.model  # one model in memory: the policy being trained
    model = env.model
    policy_cfg = dict(cfg.get("policy", {}))
    policy = make_policy(model, **policy_cfg)
    reference = make_reference_policy(model, **policy_cfg)
    agent = build_agent(
        agent_cfg,
        policy,
        reference,
        latent_dim=model.latent_dim,
        num_steps=env.num_steps,
        reward_normalizer=getattr(reward_fn, "normalize", None),
    )
    return agent, env, val_env


def _train(
    cfg: dict[str, Any],
    run_dir: Path,
    state: dict[str, Any] | None,
    rank: int,
    world: int,
    reward_wrapper: RewardWrapper | None = None,
) -> list[dict[str, float]]:
    seed = int(cfg.get("seed", 0)) + rank  # each rank collects its own groups
    torch.manual_seed(seed)
    saved_cfg = cfg  # the checkpoint keeps "cuda", not this rank's GPU, so a resume maps ranks afresh
    if world > 1 and cfg.get("device") == "cuda":  # torchrun: one GPU per process
        cfg = {**cfg, "device": f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"}
        torch.cuda.set_device(torch.device(cfg["device"]))
    trainer_cfg = dict(cfg["trainer"])
    val_batch = trainer_cfg.pop("val_batch_size", int(cfg["env"]["batch_size"]))
    agent, env, val_env = build_training(cfg, seed, val_batch, reward_wrapper)
    trainer = Trainer(
        agent,
        env,
        val_env,
        TrainerConfig(**trainer_cfg),
        run_dir,
        loggers=make_loggers(dict(cfg.get("logger", {})), run_dir) if rank == 0 else [],
        config=saved_cfg,
        hooks=[crystal_hooks(env.model)],
    )
    if world > 1:
        log.info("rank %d/%d: data-parallel training, gradients all-reduced", rank, world)
    history = trainer.fit(resume=state)
    for logger in trainer.loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    return history
