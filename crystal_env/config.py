"""Access to the Hydra config groups (``configs/<group>/<name>.yaml``) from plain Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from crystal_env.paths import PACKAGE_DIR

# A source checkout keeps configs/ next to the package; an installed wheel ships a copy inside it.
CONFIG_DIR = next(
    (p for p in (PACKAGE_DIR.parent / "configs", PACKAGE_DIR / "configs") if p.is_dir()),
    PACKAGE_DIR.parent / "configs",
)


def config_names(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_config(group: str, name: str) -> dict[str, Any]:
    """The resolved YAML ``configs/<group>/<name>.yaml`` as a dict; unknown names list the valid ones."""
    path = Path(CONFIG_DIR) / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown {group} config {name!r}; valid: {config_names(group)} (in {CONFIG_DIR / group})")
    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
