"""RL fine-tuning glue: env + reward + policy + agent + trainer from one resolved config dict.

``scripts/train.py`` is the Hydra front end; tests call :func:`run_training` directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchrl.record.loggers import CSVLogger, Logger

from agents.base import Agent
from agents.factory import build_agent
from agents.trainer import Trainer, TrainerConfig
from crystal_env.env import CrystalDiffusionEnv
from crystal_env.factory import build_reward_fn, make_env
from crystal_env.models.ldm import CrystalLDM
from crystal_env.policy import make_policy, make_reference_policy

log = logging.getLogger(__name__)
NUM_VALIDATION_CIFS = 8


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


def crystal_hooks(model: CrystalLDM):
    """Validation: write a few decoded crystals as CIFs; checkpoint: export ``model.pt`` (LDM format,
    readable by ``load_model`` and ``scripts/sample.py``)."""

    def hook(event: str, step: int, run_dir: Path, data: Any) -> None:
        if event == "validation":
            out = run_dir / "crystals" / f"step_{step:05d}"
            out.mkdir(parents=True, exist_ok=True)
            for i, s in enumerate(data[:, -1]["next", "crystals"][:NUM_VALIDATION_CIFS]):
                if s is not None:
                    s.to(filename=str(out / f"{i:02d}.cif"))
        elif event == "checkpoint":
            model.save(run_dir / "model.pt", meta={"step": step})

    return hook


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def build_training(
    cfg: dict[str, Any], seed: int, val_batch_size: int | None = None
) -> tuple[Agent, CrystalDiffusionEnv, CrystalDiffusionEnv | None]:
    """The agent, the training env and (if ``val_batch_size``) the validation env of a resolved
    config (keys: env, reward, agent, policy, device), all on ``cfg["device"]``."""
    env_cfg = dict(cfg["env"])
    agent_cfg = dict(cfg["agent"])
    from hydra.utils import get_class

    required_group = getattr(get_class(agent_cfg["_target_"]), "required_group_size", None)
    if required_group is not None:
        env_cfg["group_size"] = required_group
    device = cfg.get("device", "cpu")
    reward_fn = build_reward_fn(cfg["reward"], device=device)
    env = make_env(env_cfg, reward=reward_fn, seed=seed, device=device)
    val_env = None
    if val_batch_size:
        group = env_cfg["group_size"] if val_batch_size % env_cfg["group_size"] == 0 else 1
        val_env = make_env(
            {**env_cfg, "batch_size": val_batch_size, "group_size": group},
            reward=reward_fn,
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


def run_training(cfg: dict[str, Any]) -> list[dict[str, float]]:
    """Train with a resolved config (keys: env, reward, agent, logger, trainer, seed, run_dir, resume)."""
    rank, world = _distributed()
    seed = int(cfg.get("seed", 0)) + rank  # each rank collects its own groups
    torch.manual_seed(seed)
    if world > 1 and cfg.get("device") == "cuda":  # torchrun: one GPU per process
        cfg = {**cfg, "device": f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"}
        torch.cuda.set_device(torch.device(cfg["device"]))
    run_dir = Path(cfg["run_dir"])
    trainer_cfg = dict(cfg["trainer"])
    val_batch = trainer_cfg.pop("val_batch_size", int(cfg["env"]["batch_size"]))
    agent, env, val_env = build_training(cfg, seed, val_batch)
    trainer = Trainer(
        agent,
        env,
        val_env,
        TrainerConfig(**trainer_cfg),
        run_dir,
        loggers=make_loggers(dict(cfg.get("logger", {})), run_dir) if rank == 0 else [],
        config=cfg,
        hooks=[crystal_hooks(env.model)],
    )
    if world > 1:
        log.info("rank %d/%d: data-parallel training, gradients all-reduced", rank, world)
    history = trainer.fit(resume=cfg.get("resume"))
    for logger in trainer.loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    return history
