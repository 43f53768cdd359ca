"""Build an agent from its config (``configs/agent/<name>.yaml``: ``_target_`` + keyword arguments)."""

from __future__ import annotations

import inspect
from typing import Any

from hydra.utils import get_class
from torch import nn

from agents.base import Agent


def build_agent(cfg: dict[str, Any], policy: nn.Module, reference: nn.Module | None, **context: Any) -> Agent:
    """Instantiate ``cfg["_target_"]`` with ``policy``, ``reference``, the config's keys, and those
    ``context`` entries (e.g. ``latent_dim``, ``num_steps``, ``reward_normalizer``) that its
    constructor (or a base class's) accepts."""
    cfg = dict(cfg)
    cls = get_class(cfg.pop("_target_"))
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"{cls} is not an agents.base.Agent subclass")
    accepted = {
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass)
        for name in inspect.signature(klass.__init__).parameters
    }
    extra = {k: v for k, v in context.items() if k in accepted and k not in cfg}
    return cls(policy, reference, **cfg, **extra)
