"""Build rewards from ``crystal_rl/configs/reward/<name>.yaml`` (or any config) with Hydra's ``_target_``."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from crystal_env.config import CONFIG_DIR as _CONFIG_ROOT
from rewards.reference import DEFAULT_REFERENCE_DATASET

CONFIG_DIR = _CONFIG_ROOT / "reward"
# null: in this process (per-crystal budgets via SIGALRM); process: in a worker process that is
# restarted when a crystal gets stuck in native code (rewards.isolated.IsolatedReward)
ISOLATION_MODES = (None, "process")


def reward_names() -> list[str]:
    """Names of the bundled reward configs (``crystal_rl/configs/reward``)."""
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


def component_targets() -> list[str]:
    """``_target_`` names of the built-in reward components (``rewards.<Class>``)."""
    import rewards
    from rewards.base import RewardComponent

    return sorted(
        f"rewards.{name}"
        for name in rewards.__all__
        if isinstance(getattr(rewards, name), type)
        and issubclass(getattr(rewards, name), RewardComponent)
        and getattr(rewards, name) is not RewardComponent
    )


def _locate(target: str) -> str | None:
    """``None`` if ``target`` (``package.module.Name``) can be imported, else why not."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name is not None and ".".join(parts[:i]).startswith(exc.name):
                continue  # that module does not exist: try a shorter prefix
            return f"importing it failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - the user's module itself fails to import
            return f"importing it failed: {type(exc).__name__}: {exc}"
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:i])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module named {parts[0]!r}"


def check_component_targets(cfg: Mapping | DictConfig) -> None:
    """Fail before instantiating anything if a component's ``_target_`` cannot be imported, listing
    the built-in components (and the closest name)."""
    for i, comp in enumerate(cfg.get("components") or []):
        target = comp.get("_target_") if isinstance(comp, Mapping | DictConfig) else None
        problem = "no _target_" if target is None else _locate(str(target))
        if problem is not None:
            known = component_targets()
            close = difflib.get_close_matches(str(target), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown reward component _target_ {target!r} (components.{i}: {problem}).{hint} "
                f"Built-in components: {known}; or the import path of your own rewards.RewardComponent subclass."
            )


def build_reward(
    name_or_config: str | Path | Mapping | DictConfig,
    overrides: Sequence[str] = (),
    device: str | None = None,
    dataset: str | None = None,
) -> Any:
    """Instantiate a reward: a config name (``dng``), a YAML path, or a config mapping.

    A component is any class named by ``_target_`` (so a user's own module works unchanged).
    ``overrides`` are ``key=value`` strings, e.g. ``components.1.weight=2.0`` or ``normalize_fn=null``.
    A config without a top-level ``_target_`` is a :class:`rewards.CompositeReward`. With
    ``isolation: process`` (and optionally ``isolation_grace: <seconds>``) it is computed in a worker
    process, see :class:`rewards.isolated.IsolatedReward`. ``device`` (e.g. the env's) is where a
    :class:`rewards.CompositeReward` runs its MLIP and VAE features, unless the config sets ``device``
    itself. ``dataset`` (the env's, e.g. ``perov5``) fills a ``reference.dataset`` left null: the
    known crystals of novelty are those the generator was trained on; without it, ``mp20_sample``.
    """
    cfg = load_reward_config(name_or_config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not key=value")
        OmegaConf.update(cfg, key.strip(), yaml.safe_load(value) if value else None, merge=True)
    isolation = cfg.pop("isolation", None)
    grace = cfg.pop("isolation_grace", 30.0)
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"Unknown reward isolation {isolation!r}; valid: {list(ISOLATION_MODES)}")
    if "_target_" not in cfg:
        cfg._target_ = "rewards.CompositeReward"
    check_component_targets(cfg)
    reference = cfg.get("reference")
    if isinstance(reference, Mapping) and reference.get("dataset") is None:
        reference["dataset"] = dataset or DEFAULT_REFERENCE_DATASET
    if device is not None and cfg._target_ in ("rewards.CompositeReward", "rewards.composite.CompositeReward"):
        if cfg.get("device") is None:
            cfg.device = str(device)
    if isolation == "process":
        from rewards.isolated import IsolatedReward

        return IsolatedReward(OmegaConf.to_container(cfg, resolve=True), grace=float(grace))
    return instantiate(cfg, _convert_="all")
