"""Configs: bundled inside crystal_rl, typed and validated at the door, no empty run directories."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crystal_env.config import CONFIG_DIR, ConfigError, config_names
from crystal_rl import config as schema
from crystal_rl.config import compose_config

REPO = Path(__file__).resolve().parents[1]


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_configs_live_in_the_crystal_rl_package():
    assert CONFIG_DIR == REPO / "crystal_rl" / "configs"
    assert {"ldm_mp20", "ldm_perov5"} <= set(config_names("env"))
    assert {"dng", "atomic_density", "energy", "bandgap"} <= set(config_names("reward"))


def test_schemas_match_the_code_that_consumes_them():
    """A key added to a consumer must be added to its schema (and the other way round)."""
    from agents.trainer import TrainerConfig
    from crystal_env.factory import ENV_KEYS
    from crystal_env.models.denoiser import DenoiserConfig
    from crystal_env.models.vae import VAEConfig
    from crystal_env.training.loop import LoopConfig

    assert names(schema.EnvSchema) == ENV_KEYS
    assert names(schema.TrainerSchema) == names(TrainerConfig) | {"val_batch_size"}
    assert names(schema.VAESchema) == names(VAEConfig)
    assert names(schema.DenoiserSchema) == names(DenoiserConfig) - {"latent_dim"}  # taken from the VAE
    assert names(schema.LoopSchema) == names(LoopConfig)


@pytest.mark.parametrize("env", config_names("env"))
@pytest.mark.parametrize("reward", config_names("reward"))
@pytest.mark.parametrize("agent", config_names("agent"))
def test_every_bundled_combination_validates(env, reward, agent, tmp_path):
    cfg = compose_config("train", [f"env={env}", f"reward={reward}", f"agent={agent}", f"run_dir={tmp_path}"])
    assert cfg["env"]["batch_size"] % cfg["env"]["group_size"] == 0


@pytest.mark.parametrize("name", ["pretrain/vae", "pretrain/ldm", "predictor/band_gap"])
def test_other_programs_configs_validate(name):
    assert compose_config(name)


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.group_size=0", r"'env.group_size' is 0, out of range: must be >= 1"),
        ("trainer.checkpoint_every=0", r"'trainer.checkpoint_every' is 0, out of range: must be >= 1"),
        ("trainer.val_every=0", r"'trainer.val_every' is 0, out of range: must be >= 1"),
        ("trainer.snapshot_every=-1", r"'trainer.snapshot_every' is -1, out of range: must be >= 0"),
        ("trainer.max_steps=abc", r"'trainer.max_steps'.*'abc'.*Integer"),
        ("env.batch_size=30", r"'env.batch_size' \(30\) must be a multiple of env.group_size \(8\)"),
        ("env.sampler=ddpx", r"'env.sampler': 'ddpx'; valid: \['ddim', 'ddpm'\]"),
        ("env.eta=-0.5", r"'env.eta' is -0.5, out of range: must be >= 0.0"),
        ("policy.reduction=max", r"'policy.reduction': 'max'; valid: \['mean', 'sum'\]"),
        ("logger.backend=sql", r"'logger.backend': 'sql'; valid: \['csv', 'wandb'\]"),
        ("agent.lr=fast", r"'agent.lr': 'fast' is not of type float"),
        ("+agent.learning_rate=0.1", r"Unknown config key 'agent.learning_rate'.*accepts \[.*'lr'"),
        ("reward.components.0.weight=heavy", r"'reward.components.0.weight': 'heavy' is not of type float"),
        ("+reward.components.1.colour=red", r"Unknown config key 'reward.components.1.colour'"),
        ("agent._target_=agents.nothing.Here", r"'agent._target_': cannot import 'agents.nothing.Here'"),
        ("agent._target_=rewards.AtomicDensity", r"not a subclass of agents.base.Agent"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        compose_config("train", [f"run_dir={tmp_path}", override])


def test_agent_group_size_requirement_is_taken_into_account(tmp_path):
    # reinforce runs with groups of one, so any batch size works
    assert compose_config("train", [f"run_dir={tmp_path}", "agent=reinforce", "env.batch_size=30"])


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("pretrain/vae", "loop.lr=0", r"'loop.lr' is 0.0, out of range: must be > 0.0"),
        ("pretrain/ldm", "denoiser.dropout=1.5", r"'denoiser.dropout' is 1.5, out of range: must be >= 0.0 and < 1.0"),
        ("predictor/band_gap", "train.epochs=many", r"'train.epochs'"),
    ],
)
def test_other_programs_reject_bad_values(name, override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(name, [override])


def test_make_env_validates_before_loading_the_model(monkeypatch):
    import crystal_env.factory as factory

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(factory, "load_model", must_not_load)
    with pytest.raises(ConfigError, match="'env.group_size' is 0"):
        factory.make_env("ldm_mp20", reward=lambda s: None, group_size=0)
    with pytest.raises(ConfigError, match="multiple of env.group_size"):
        factory.make_env("ldm_mp20", reward=lambda s: None, batch_size=6, group_size=4)


def test_user_config_groups_through_the_hydra_search_path(tmp_path):
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "my_reinforce.yaml").write_text("_target_: agents.reinforce.ReinforceAgent\nlr: 3.0e-5\n")
    cfg = compose_config("train", [f"hydra.searchpath=[file://{tmp_path}]", "agent=my_reinforce", "run_dir=x"])
    assert cfg["agent"] == {"_target_": "agents.reinforce.ReinforceAgent", "lr": 3.0e-5}


def run_train_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_rejects_a_bad_value_in_one_line_and_leaves_no_run_directory(tmp_path):
    out = run_train_cli(tmp_path, "trainer.max_steps=abc")
    assert out.returncode != 0
    assert "error: Invalid value for config key 'trainer.max_steps'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "runs" / "train").glob("*"))


def test_a_run_failing_before_its_first_step_leaves_no_run_directory(tmp_path):
    out = run_train_cli(tmp_path, "env.model=missing/model.pt", "reward=atomic_density")
    assert out.returncode != 0 and "No model checkpoint" in out.stderr
    assert not list((tmp_path / "runs" / "train").glob("*"))


def test_console_dispatcher_lists_its_commands():
    from crystal_rl.cli import COMMANDS, main

    with pytest.raises(SystemExit, match="pretrain-vae"):
        main([])
    pyproject = (REPO / "pyproject.toml").read_text()
    for command, module in COMMANDS.items():
        assert f'crystal-rl-{command} = "{module}:main"' in pyproject
