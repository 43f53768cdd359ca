"""The bundled Hydra config groups (``crystal_rl/configs/<group>/<name>.yaml``) from plain Python,
and the typed-schema validation every entry point runs before anything heavy loads.

The YAML files ship inside the installed ``crystal_rl`` package; they are located without importing
it. A schema is a dataclass: OmegaConf structured configs check each value's type, and the
``ge``/``gt``/``le``/``lt``/``choices`` rules in its fields' metadata (see :func:`rule`) check the
range. Failures raise :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import importlib.util
import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _config_dir() -> Path:
    spec = importlib.util.find_spec("crystal_rl")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The crystal_rl package (which holds the configs) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "configs"


CONFIG_DIR = _config_dir()


def config_names(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_config(group: str, name: str | Path) -> dict[str, Any]:
    """The resolved YAML ``configs/<group>/<name>.yaml`` (or a path to any ``.yaml`` file) as a dict;
    unknown names list the valid ones."""
    path = Path(name).expanduser()
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"Unknown {group} config {str(name)!r}; valid: {config_names(group)} (in {CONFIG_DIR / group}), "
            "or a path to a .yaml file"
        )
    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


class ConfigError(ValueError):
    """A config value of the wrong type, out of range, or an unknown key; the message names the key."""


def rule(default: Any = MISSING, **checks: Any) -> Any:
    """A schema field with range checks, e.g. ``rule(ge=1)`` or ``rule("mean", choices=("mean", "sum"))``."""
    return field(default=default, metadata=checks)


@dataclass
class EnvSchema:
    """``configs/env/*.yaml`` (keys of ``crystal_env.factory.make_env``)."""

    name: str = ""
    model: str = MISSING
    dataset: Optional[str] = None  # noqa: UP045 - the model's training data: novelty reference of rewards with reference.dataset null
    sampler: str = rule(choices=("ddim", "ddpm"))
    num_steps: int = rule(ge=1)
    eta: float = rule(ge=0.0)
    max_atoms: Optional[int] = rule(None, ge=1)  # noqa: UP045 - OmegaConf 2.3 needs typing.Optional; None: the model's
    batch_size: int = rule(ge=1)
    group_size: int = rule(ge=1)


# ---- validation ---------------------------------------------------------------------------------------
def validate(cfg: DictConfig | Mapping[str, Any], schema: type, prefix: str = "") -> dict[str, Any]:
    """``cfg`` checked against the dataclass ``schema`` and resolved to a plain dict.

    Types are checked (and e.g. ``"3"`` converted to 3) by OmegaConf, ranges by the fields' rules.
    The ``hydra`` node, if present, is left out.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    else:
        cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        out = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, schema, prefix)) from None
    _check_rules(schema, out, prefix)
    return out  # type: ignore[return-value]


def _describe(e: OmegaConfBaseException, schema: type, prefix: str) -> str:
    key = prefix + str(getattr(e, "full_key", "") or "")
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if type(e).__name__ == "ConfigKeyError" and "not in" in first:
        parent = _schema_at(schema, str(getattr(e, "full_key", "")).rpartition(".")[0])
        valid = sorted(f.name for f in fields(parent)) if parent else []
        return f"Unknown config key {key!r}; valid keys here: {valid}"
    if type(e).__name__ == "MissingMandatoryValue":
        return f"Config key {key!r} is required but has no value"
    return f"Invalid value for config key {key!r}: {first}"


def _schema_at(schema: type, path: str) -> type | None:
    for part in filter(None, path.split(".")):
        hints = typing.get_type_hints(schema)
        schema = hints.get(part)
        if not is_dataclass(schema):
            return None
    return schema


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _check_rules(schema: type, values: Mapping[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        value, key = values.get(f.name), f"{prefix}{f.name}"
        if is_dataclass(hints[f.name]) and isinstance(value, Mapping):
            _check_rules(hints[f.name], value, key + ".")
            continue
        rules = f.metadata
        if not rules or value is None:
            continue
        if "choices" in rules and value not in rules["choices"]:
            raise ConfigError(f"Invalid value for config key {key!r}: {value!r}; valid: {list(rules['choices'])}")
        violated = [op for op, (_, ok) in _BOUNDS.items() if op in rules and not ok(value, rules[op])]
        if violated:
            allowed = " and ".join(f"{sym} {rules[op]}" for op, (sym, _) in _BOUNDS.items() if op in rules)
            raise ConfigError(f"Config key {key!r} is {value!r}, out of range: must be {allowed}")


def validate_env_config(cfg: Mapping[str, Any], prefix: str = "env.") -> dict[str, Any]:
    """An env config (``configs/env/*.yaml`` plus overrides) validated, with batch_size a multiple of group_size."""
    out = validate(cfg, EnvSchema, prefix)
    if out["batch_size"] % out["group_size"]:
        raise ConfigError(
            f"Config key {prefix + 'batch_size'!r} ({out['batch_size']}) must be a multiple of "
            f"{prefix + 'group_size'} ({out['group_size']})"
        )
    return out
