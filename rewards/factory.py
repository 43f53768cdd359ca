"""Build rewards from ``configs/reward/<name>.yaml`` (or any config) with Hydra's ``_target_``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "reward"


def reward_names() -> list[str]:
    """Names of the reward configs in ``configs/reward``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_reward_config(name_or_config: str | Path | Mapping | DictConfig) -> DictConfig:
    if isinstance(name_or_config, DictConfig | Mapping):
        return OmegaConf.create(dict(name_or_config) if isinstance(name_or_config, Mapping) else name_or_config)
    path = Path(name_or_config).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return OmegaConf.load(path)
    if (CONFIG_DIR / f"{name_or_config}.yaml").is_file():
        return OmegaConf.load(CONFIG_DIR / f"{name_or_config}.yaml")
    raise ValueError(f"Unknown reward {str(name_or_config)!r}; valid names: {reward_names()}, or a .yaml path")


def build_reward(
    name_or_config: str | Path | Mapping | DictConfig, overrides: Sequence[str] = (), device: str | None = None
) -> Any:
    """Instantiate a reward: a config name (``dng``), a YAML path, or a config mapping.

    A component is any class named by ``_target_`` (so a user's own module works unchanged).
    ``overrides`` are ``key=value`` strings, e.g. ``components.1.weight=2.0`` or ``normalize_fn=null``.
    A config without a top-level ``_target_`` is a :class:`rewards.CompositeReward`. ``device``
    (e.g. the env's) is where a :class:`rewards.CompositeReward` runs its MLIP and VAE features,
    unless the config sets ``device`` itself.
    """
    cfg = load_reward_config(name_or_config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not key=value")
        OmegaConf.update(cfg, key.strip(), yaml.safe_load(value) if value else None, merge=True)
    if "_target_" not in cfg:
        cfg._target_ = "rewards.CompositeReward"
    if device is not None and cfg._target_ in ("rewards.CompositeReward", "rewards.composite.CompositeReward"):
        if cfg.get("device") is None:
            cfg.device = str(device)
    return instantiate(cfg, _convert_="all")
