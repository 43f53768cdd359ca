"""The bundled Hydra configs (``crystal_rl/configs``), their typed schemas, and validation at the door.

Every program validates its composed config before anything heavy loads (models, datasets, MLIPs):
OmegaConf structured configs check each value's type, the ``ge``/``gt``/``le``/``lt``/``choices``
rules in the schema fields' metadata check its range, and the ``_target_`` classes of the agent and
reward configs are imported and their keyword arguments checked against the constructors'
signatures. A failure raises :class:`ConfigError`, whose message names the key and what is allowed.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from crystal_env.config import CONFIG_DIR, ConfigError, EnvSchema, rule, validate

__all__ = ["CONFIG_DIR", "ConfigError", "compose_config", "compose_train_config", "validate", "validate_train_config"]


@dataclass
class TrainerSchema:
    """``configs/trainer/*.yaml``: ``agents.trainer.TrainerConfig`` plus ``val_batch_size``."""

    max_steps: int = rule(ge=1)
    val_every: int = rule(ge=1)
    val_seed: int = rule(ge=0)
    checkpoint_every: int = rule(ge=1)
    nan_patience: int = rule(ge=1)
    progress: bool = True
    val_batch_size: int = rule(ge=0)  # 0: no validation
    best_metric: Optional[str] = None  # noqa: UP045 - OmegaConf 2.3 needs typing.Optional
    best_mode: str = rule("max", choices=("max", "min"))
    snapshot_every: int = rule(0, ge=0)  # 0: no snapshots


@dataclass
class PolicySchema:
    reduction: str = rule("mean", choices=("mean", "sum"))
    min_std: float = rule(0.0, ge=0.0)


@dataclass
class LoggerSchema:
    backend: str = rule("csv", choices=("csv", "wandb"))
    project: str = "crystal-rl"
    mode: str = rule("auto", choices=("auto", "online", "offline"))


@dataclass
class TrainSchema:
    """``configs/train.yaml`` as composed; ``agent`` and ``reward`` are checked against their classes."""

    env: EnvSchema = field(default_factory=EnvSchema)
    reward: Any = MISSING
    agent: Any = MISSING
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    policy: PolicySchema = field(default_factory=PolicySchema)
    seed: int = rule(0, ge=0)
    device: str = "cpu"
    run_dir: Optional[str] = None  # noqa: UP045 - None: runs/train/<date>_<time>, or the resumed run's own
    resume: Optional[str] = None  # noqa: UP045 - OmegaConf 2.3 needs typing.Optional
    resume_allow_changes: bool = False


@dataclass
class LoopSchema:
    """``loop:`` of the pretraining configs (``crystal_env.training.loop.LoopConfig``)."""

    epochs: int = rule(ge=1)
    batch_size: int = rule(ge=1)
    lr: float = rule(gt=0.0)
    weight_decay: float = rule(ge=0.0)
    grad_clip: float = rule(gt=0.0)
    val_every: int = rule(ge=1)
    checkpoint_every: int = rule(ge=1)
    seed: int = rule(ge=0)
    progress: bool = True
    keep_best: bool = True
    bf16: bool = False
    num_workers: int = rule(0, ge=0)


@dataclass
class VAESchema:
    """``vae:`` of ``configs/pretrain/vae.yaml`` (``crystal_env.models.vae.VAEConfig``)."""

    latent_dim: int = rule(ge=1)
    d_model: int = rule(ge=1)
    num_heads: int = rule(ge=1)
    encoder_layers: int = rule(ge=1)
    decoder_layers: int = rule(ge=1)
    num_freqs: int = rule(ge=1)
    dropout: float = rule(ge=0.0, lt=1.0)
    kl_weight: float = rule(ge=0.0)
    type_weight: float = rule(ge=0.0)
    coord_weight: float = rule(ge=0.0)
    lattice_weight: float = rule(ge=0.0)
    translate_augment: bool = True


@dataclass
class DenoiserSchema:
    """``denoiser:`` of ``configs/pretrain/ldm.yaml`` (``crystal_env.models.denoiser.DenoiserConfig``)."""

    d_model: int = rule(ge=1)
    num_heads: int = rule(ge=1)
    num_layers: int = rule(ge=1)
    dropout: float = rule(ge=0.0, lt=1.0)


@dataclass
class SamplerSchema:
    kind: str = rule(choices=("ddim", "ddpm"))
    num_steps: int = rule(ge=1)
    eta: float = rule(ge=0.0)


@dataclass
class PretrainVAESchema:
    dataset: str = MISSING
    max_atoms: int = rule(ge=1)
    out_dir: str = MISSING
    resume: bool = False
    device: str = "cpu"
    vae: VAESchema = field(default_factory=VAESchema)
    loop: LoopSchema = field(default_factory=LoopSchema)


@dataclass
class PretrainLDMSchema:
    dataset: str = MISSING
    max_atoms: int = rule(ge=1)
    out_dir: str = MISSING
    vae_checkpoint: str = MISSING
    resume: bool = False
    device: str = "cpu"
    denoiser: DenoiserSchema = field(default_factory=DenoiserSchema)
    sampler: SamplerSchema = field(default_factory=SamplerSchema)
    loop: LoopSchema = field(default_factory=LoopSchema)


@dataclass
class PredictorHeadSchema:
    hidden: int = rule(ge=1)
    layers: int = rule(ge=1)
    dropout: float = rule(ge=0.0, lt=1.0)


@dataclass
class PredictorTrainSchema:
    epochs: int = rule(ge=1)
    lr: float = rule(gt=0.0)
    weight_decay: float = rule(ge=0.0)
    seed: int = rule(ge=0)


@dataclass
class PredictorSchema:
    """``configs/predictor/*.yaml`` (``rewards.predictor.train_predictor``)."""

    model: str = MISSING
    dataset: str = MISSING
    target: str = MISSING
    max_atoms: int = rule(ge=1)
    device: str = "cpu"
    out: str = MISSING
    head: PredictorHeadSchema = field(default_factory=PredictorHeadSchema)
    train: PredictorTrainSchema = field(default_factory=PredictorTrainSchema)


@dataclass
class BenchmarkTaskSchema:
    """One entry of ``tasks:`` in a benchmark suite (``configs/benchmark/*.yaml``, see crystal_rl.benchmark_suite)."""

    name: str = MISSING
    env: str = MISSING
    reward: str = MISSING
    reference: str = MISSING  # dataset of the final evaluation's novelty (and hull rows)
    budget: int = rule(ge=1)  # reward evaluations per run
    curve_every: int = rule(ge=1)
    score: dict[str, float] = MISSING  # raw reward component -> weight
    top_k: int = rule(16, ge=1)
    fresh_samples: int = rule(64, ge=1)
    overrides: list[str] = field(default_factory=list)


@dataclass
class BenchmarkSuiteSchema:
    """``configs/benchmark/*.yaml``; each entry of ``tasks`` is a :class:`BenchmarkTaskSchema`."""

    agents: list[str] = MISSING
    seeds: list[int] = MISSING
    tasks: list[Any] = MISSING
    baseline: str = "best_of_n"
    kl_samples: int = rule(32, ge=1)
    overrides: list[str] = field(default_factory=list)


def validate_suite_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A benchmark suite validated: types and ranges of every key, each task's keys, unique task
    names, agents and seeds, a non-empty ``score``, budgets that divide into curve points."""
    out = validate(cfg, BenchmarkSuiteSchema)
    for key in ("agents", "seeds", "tasks"):
        if not out[key]:
            raise ConfigError(f"Config key {key!r} must list at least one entry")
    for key in ("agents", "seeds"):
        dupes = sorted({str(x) for x in out[key] if out[key].count(x) > 1})
        if dupes:
            raise ConfigError(f"Config key {key!r} lists {dupes} more than once")
    if any(s < 0 for s in out["seeds"]):
        raise ConfigError(f"Config key 'seeds' must hold integers >= 0, got {out['seeds']}")
    tasks = []
    for i, task in enumerate(out["tasks"]):
        prefix = f"tasks.{i}."
        if not isinstance(task, Mapping):
            raise ConfigError(f"Config key {prefix[:-1]!r} must be a mapping of task keys, got {task!r}")
        task = validate(task, BenchmarkTaskSchema, prefix)
        if not task["score"]:
            raise ConfigError(f"Config key {prefix + 'score'!r} must name at least one reward component")
        if not task["name"] or not all(c.isalnum() or c in "_-./" for c in task["name"]) or ".." in task["name"]:
            raise ConfigError(
                f"Config key {prefix + 'name'!r}: {task['name']!r} must be letters, digits and '_', '-', '.', '/'"
            )
        if task["budget"] % task["curve_every"]:
            raise ConfigError(
                f"Config key {prefix + 'budget'!r} ({task['budget']}) must be a multiple of "
                f"{prefix + 'curve_every'} ({task['curve_every']})"
            )
        tasks.append(task)
    names = [t["name"] for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Config key 'tasks' has duplicate task names {dupes}")
    out["tasks"] = tasks
    return out


def check_target_kwargs(
    node: Mapping[str, Any], key: str, default_target: str | None = None, base: type | None = None
) -> Any:
    """Import ``node["_target_"]`` and check the other keys against its constructor: unknown keys
    (listing the accepted ones) and values whose type contradicts a simple annotation (int, float,
    bool, str, None, Literal, and unions of them). Nested ``_target_`` nodes are checked too.
    ``base``: the class the target must subclass. Returns the imported class or callable."""
    target = node.get("_target_", default_target)
    if not isinstance(target, str):
        raise ConfigError(f"Config key {key + '._target_'!r} is required (the dotted path of the class to build)")
    obj = _locate(target, key + "._target_")
    if base is not None and not (inspect.isclass(obj) and issubclass(obj, base)):
        raise ConfigError(
            f"Config key {key + '._target_'!r}: {target} is not a subclass of {base.__module__}.{base.__name__}"
        )
    params, hints, open_kwargs = _constructor_params(obj)
    for name, value in node.items():
        if name.startswith("_"):
            continue
        sub = f"{key}.{name}"
        if name not in params:
            if not open_kwargs:
                raise ConfigError(f"Unknown config key {sub!r}: {target} accepts {sorted(params)}")
        elif name in hints and not _matches(value, hints[name]):
            raise ConfigError(
                f"Invalid value for config key {sub!r}: {value!r} is not of type {_hint_name(hints[name])}"
            )
        for child_key, child in _target_nodes(value, sub):
            check_target_kwargs(child, child_key)
    return obj


def _locate(target: str, key: str) -> Any:
    """The object at the dotted path ``target`` (longest importable module prefix, then attributes)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name or module_name.startswith(f"{e.name}."):
                continue  # this prefix is not a module; try a shorter one
            raise ConfigError(f"Config key {key!r}: importing {module_name!r} failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - the user's module itself is broken
            raise ConfigError(f"Config key {key!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"Config key {key!r}: cannot import {target!r} (is its module on the Python path?)")


def _target_nodes(value: Any, key: str) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(value, Mapping) and "_target_" in value:
        return [(key, value)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [(f"{key}.{i}", v) for i, v in enumerate(value) if isinstance(v, Mapping) and "_target_" in v]
    return []


def _constructor_params(obj: Any) -> tuple[set[str], dict[str, Any], bool]:
    """Parameter names of ``obj``'s constructor over its MRO (subclasses forward keyword arguments to
    their bases), their resolvable type hints, and whether every constructor in the chain takes
    ``**kwargs`` (only then may unknown keys be meant for it)."""
    functions = (
        [vars(k)["__init__"] for k in obj.__mro__ if "__init__" in vars(k) and k is not object]
        if inspect.isclass(obj)
        else [obj]
    )
    params: set[str] = set()
    hints: dict[str, Any] = {}
    open_kwargs = bool(functions)
    for fn in functions:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return set(), {}, True
        names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        params.update(n for n in names if n != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            open_kwargs = False
        try:
            for name, hint in typing.get_type_hints(fn).items():
                hints.setdefault(name, hint)
        except Exception:  # noqa: BLE001 - unresolvable annotations are simply not checked
            pass
    return params, hints, open_kwargs


_SIMPLE = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (type(None),)}


def _matches(value: Any, hint: Any) -> bool:
    """False only when ``value`` certainly contradicts ``hint``; hints we cannot judge pass."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint in _SIMPLE:
        if isinstance(value, bool) and hint in (int, float):
            return False
        return isinstance(value, _SIMPLE[hint])
    if hint in (dict, list, tuple) or origin in (dict, list, tuple):
        return isinstance(value, Mapping if (hint is dict or origin is dict) else (list, tuple))
    return True


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def validate_train_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The composed training config, validated (types, ranges, agent and reward arguments, groups)."""
    out = validate(cfg, TrainSchema)
    if not isinstance(out["agent"], Mapping):
        raise ConfigError(f"Config key 'agent' must be a mapping with a _target_, got {out['agent']!r}")
    from agents.base import Agent

    agent_cls = check_target_kwargs(out["agent"], "agent", base=Agent)
    if isinstance(out["reward"], Mapping):
        from rewards.factory import ISOLATION_MODES, check_component_targets

        reward = {k: v for k, v in out["reward"].items() if k not in ("isolation", "isolation_grace")}
        if out["reward"].get("isolation") not in ISOLATION_MODES:
            raise ConfigError(
                f"Invalid value for config key 'reward.isolation': {out['reward']['isolation']!r}; "
                f"valid: {list(ISOLATION_MODES)}"
            )
        try:
            check_component_targets(reward)
        except ValueError as e:
            raise ConfigError(f"Config key 'reward.components': {e}") from None
        check_target_kwargs(reward, "reward", default_target="rewards.CompositeReward")
    group = agent_cls.required_group_size or out["env"]["group_size"]
    if out["env"]["batch_size"] % group:
        raise ConfigError(
            f"Config key 'env.batch_size' ({out['env']['batch_size']}) must be a multiple of env.group_size ({group})"
        )
    return out


def compose_config(name: str = "train", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``configs/<name>.yaml`` (``train``, ``pretrain/vae``, …) with Hydra ``overrides`` and
    validate it; returns the resolved dict. ``hydra.searchpath=[file:///my/configs]`` adds your own
    config groups."""
    from hydra import compose, initialize_config_dir

    folder, _, stem = name.rpartition("/")
    with initialize_config_dir(str(CONFIG_DIR / folder), version_base="1.3"):
        cfg = compose(stem, overrides=list(overrides))
    return SCHEMAS[name](cfg)


def compose_train_config(overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """The validated training config composed with ``overrides`` (as on the command line), and the
    config paths those overrides set — what :func:`crystal_rl.training.run_training` keeps from
    them when it resumes a run (everything else comes from the run's checkpoint)."""
    from crystal_rl.training import explicit_keys

    cfg = compose_config("train", overrides)
    return cfg, explicit_keys(overrides, cfg, compose_config("train"))


#: config name -> its validator (resolved config in, validated plain dict out)
SCHEMAS = {
    "train": validate_train_config,
    "pretrain/vae": lambda cfg: validate(cfg, PretrainVAESchema),
    "pretrain/ldm": lambda cfg: validate(cfg, PretrainLDMSchema),
    "predictor/band_gap": lambda cfg: validate(cfg, PredictorSchema),
}
