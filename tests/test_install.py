"""The package works when installed from its wheel, outside the repository.

Builds the wheel (offline, no build isolation), installs it without dependencies into a temporary
directory, and from another working directory - with only that directory (and the already
installed dependencies) importable - builds the env, the dng reward and the Gymnasium env, and runs
one training step through the ``crystal-rl-train`` console command.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(
    ".git", ".*_cache", "runs", "outputs", "multirun", "wandb", "build", "*.egg-info", "__pycache__"
)


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel, the --target directory it is installed in, and a clean environment using it."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=IGNORE)
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), "."],
        cwd=source,
    )
    wheel = next((root / "dist").glob("crystal_rl-*.whl"))
    target = root / "site"
    run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)], root
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "target": target, "env": env, "cwd": elsewhere}


def test_wheel_ships_configs_checkpoints_data_and_console_commands(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        files = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in files if n.endswith("entry_points.txt"))
    for name in (
        "crystal_rl/configs/train.yaml",
        "crystal_rl/configs/env/ldm_mp20.yaml",
        "crystal_rl/configs/reward/dng.yaml",
        "crystal_rl/configs/agent/grpo.yaml",
        "crystal_rl/configs/experiment/paper.yaml",
        "crystal_rl/configs/pretrain/vae.yaml",
        "crystal_rl/configs/predictor/band_gap.yaml",
        "crystal_env/checkpoints/mp20_tiny.pt",
        "crystal_env/data/bundled/mp20_sample/train.csv",
        "atomic_io/__init__.py",
    ):
        assert name in files, name
    assert not any(n.startswith(("tests/", "scripts/", "configs/")) for n in files)
    for command in ("train", "sample", "evaluate", "benchmark", "pretrain-vae", "pretrain-ldm", "reproduce"):
        assert f"crystal-rl-{command} = crystal_rl." in entry_points
    assert (installed["target"] / "bin" / "crystal-rl-train").is_file()


def test_installed_package_builds_env_reward_and_gym_env_from_elsewhere(installed):
    code = """
import gymnasium as gym, torch
import crystal_env, crystal_rl, rewards
from crystal_env import make_env
from rewards import build_reward
for module in (crystal_env, crystal_rl, rewards):
    assert module.__file__.startswith(TARGET), module.__file__
density = lambda structures: torch.tensor([0.0 if s is None else len(s) / s.volume for s in structures])
env = make_env("ldm_mp20", reward=density, batch_size=2, group_size=1, num_steps=2, seed=0)
assert env.rollout(5)["next", "done"][..., -1, :].all()
reward = build_reward("dng")
assert reward.component_names[:4] == ["creativity", "energy", "structure_diversity", "composition_diversity"]
gym_env = gym.make("CrystalEnv/LDM-MP20-v0", reward=density, num_steps=2)
obs, _ = gym_env.reset(seed=0)
assert set(obs) == {"latent", "mask", "step_index"}
print("ok")
"""
    out = run(
        [sys.executable, "-c", f"TARGET = {str(installed['target'])!r}\n{code}"],
        cwd=installed["cwd"],
        env=installed["env"],
    )
    assert out.stdout.strip().endswith("ok")


def test_console_command_runs_a_training_step_from_elsewhere(installed):
    command = installed["target"] / "bin" / "crystal-rl-train"
    overrides = [
        "reward=atomic_density",
        "trainer.max_steps=1",
        "trainer.val_batch_size=0",
        "env.num_steps=2",
        "env.batch_size=4",
        "env.group_size=2",
        "run_dir=run",
    ]
    out = run([sys.executable, str(command), *overrides], cwd=installed["cwd"], env=installed["env"])
    assert "run directory:" in out.stdout and "elapsed:" in out.stdout
    assert (installed["cwd"] / "run" / "checkpoint.pt").is_file()
    assert (installed["cwd"] / "run" / "model.pt").is_file()
