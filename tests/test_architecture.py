"""The layers stay one-way (README, under the package table): agents know TensorDicts and losses, the env core knows
no RL algorithm and no reward implementation, rewards reach the model through ``crystal_env.models``.
Checked on the source, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_CORE = [
    "crystals",
    "data",
    "models",
    "env.py",
    "policy.py",
    "paths.py",
    "reward_protocol.py",
    "sampling.py",
    "config.py",
    "training",  # pretraining loops; the RL training glue is crystal_rl/training.py
]


def _modules(*parts: str) -> list[Path]:
    files = []
    for part in parts:
        path = ROOT / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module, _ in _imports(path)
        if module.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize(
    ("layer", "files", "forbidden"),
    [
        ("agents", _modules("agents"), ("crystal_env", "rewards", "crystal_rl", "pymatgen", "ase", "chgnet")),
        ("env core", _modules(*(f"crystal_env/{p}" for p in ENV_CORE)), ("agents", "rewards", "crystal_rl")),
        ("rewards", _modules("rewards"), ("agents", "crystal_rl")),
        ("atomic_io", _modules("atomic_io"), ("agents", "crystal_env", "rewards", "crystal_rl")),
    ],
)
def test_layers_import_one_way(layer, files, forbidden):
    assert files, f"no modules found for {layer}"
    assert _violations(files, forbidden) == []


def test_rewards_reach_the_env_through_submodules_not_package_root_re_exports():
    root_imports = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _modules("rewards")
        for line, module, _ in _imports(path)
        if module == "crystal_env"
    ]
    assert root_imports == []


def test_the_checker_sees_lazy_and_from_imports(tmp_path):
    """The check can fail: a function-level ``from crystal_env import ...`` is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f():\n    from crystal_env.models import CrystalLDM\n    import rewards\n")
    found = [(line, module) for line, module, _ in _imports(bad)]
    assert found == [(1, "torch"), (4, "crystal_env.models"), (5, "rewards")]
