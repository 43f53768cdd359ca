"""``make_env``: build a :class:`CrystalDiffusionEnv` from the env and reward config groups."""

from __future__ import annotations

from typing import Any

from crystal_env.config import load_config, validate_env_config
from crystal_env.env import CrystalDiffusionEnv
from crystal_env.models.registry import load_model
from crystal_env.reward_protocol import RewardFn

ENV_KEYS = {"name", "model", "dataset", "sampler", "num_steps", "eta", "max_atoms", "batch_size", "group_size"}


def build_reward_fn(reward: str | dict | RewardFn, device: str | None = None, dataset: str | None = None) -> RewardFn:
    """A reward config name/dict through ``rewards.build_reward`` (its models on ``device``; its
    ``reference.dataset``, if null, ``dataset``: the env's), or a callable as it is."""
    if callable(reward):
        return reward
    from rewards import build_reward  # rewards is a separate package; the env depends on it only here

    return build_reward(reward, device=device, dataset=dataset)


def make_env(
    env: str | dict = "ldm_mp20",
    reward: str | dict | RewardFn = "dng",
    batch_size: int | None = None,
    group_size: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    **overrides: Any,
) -> CrystalDiffusionEnv:
    """Build the environment ``configs/env/<env>.yaml`` (a bundled name, a ``.yaml`` path or an env
    config dict) with reward ``configs/reward/<reward>.yaml``.

    ``overrides`` replace keys of the env config (``model``, ``dataset``, ``sampler``, ``num_steps``, ``eta``,
    ``max_atoms``); ``reward`` may also be any callable ``structures -> scores``. The config is
    validated (types, ranges, batch_size a multiple of group_size) before the model loads. The model,
    and a reward built from a config (its MLIP and VAE features), run on ``device``.
    """
    cfg = dict(env) if isinstance(env, dict) else load_config("env", env)
    unknown = set(overrides) - ENV_KEYS
    if unknown:
        raise ValueError(f"Unknown env option(s) {sorted(unknown)}; valid: {sorted(ENV_KEYS - {'name'})}")
    cfg.update(overrides)
    if batch_size is not None:
        cfg["batch_size"] = batch_size
    if group_size is not None:
        cfg["group_size"] = group_size
    cfg = validate_env_config(cfg)
    return CrystalDiffusionEnv(
        load_model(cfg["model"], device=device),
        build_reward_fn(reward, device=device, dataset=cfg["dataset"]),
        batch_size=cfg["batch_size"],
        group_size=cfg["group_size"],
        sampler=cfg["sampler"],
        num_steps=cfg["num_steps"],
        eta=cfg["eta"],
        max_atoms=cfg["max_atoms"],
        seed=seed,
        device=device,
    )
