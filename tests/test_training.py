"""End-to-end training: the Hydra config, learning checks, exact resume, NaN handling, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.trainer import NaNLossError
from crystal_rl.config import compose_config
from crystal_rl.training import run_training

REPO = Path(__file__).resolve().parents[1]


def config(run_dir, *overrides):
    return compose_config("train", [f"run_dir={run_dir}", "trainer.progress=false", *overrides])


TINY = [
    "env.num_steps=4",
    "env.batch_size=8",
    "env.group_size=4",
    "trainer.val_batch_size=8",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
]


def val_density(history):
    return [h["val/atomic_density"] for h in history if "val/atomic_density" in h]


@pytest.mark.parametrize("agent", ["grpo", "reinforce"])
def test_policy_gradient_raises_atomic_density(agent, tmp_path):
    """The learning check: validation density up by >= 20 % in 15 steps (~20 s on a CPU), KL finite.

    Measured on 64 validation crystals (seed 0): GRPO 0.040 -> 0.059 (x 1.48), REINFORCE -> 0.055 (x 1.37)."""
    history = run_training(
        config(
            tmp_path,
            "reward=atomic_density",
            f"agent={agent}",
            "trainer.max_steps=15",
            "trainer.val_every=15",
            "trainer.checkpoint_every=15",
            "trainer.val_batch_size=64",
        )
    )
    before, after = val_density(history)
    kl = [h["train/kl_div"] for h in history if "train/kl_div" in h]
    assert all(torch.isfinite(torch.tensor(kl)))
    assert after >= 1.2 * before, (before, after)


def test_ppo_agent_completes_updates(tmp_path):
    history = run_training(config(tmp_path, "reward=atomic_density", "agent=ppo", "trainer.max_steps=3", *TINY))
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    assert all(h["train/skipped_updates"] == 0 for h in history[1:])


def with_composition_memory(cfg):
    """The density reward plus a CompositionUniqueness memory: a reward whose state a resume must restore."""
    memory = {"_target_": "rewards.CompositionUniqueness", "weight": 0.5, "memory": 64}
    cfg["reward"]["components"].append(memory)
    return cfg


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    common = ["reward=atomic_density", *TINY, "seed=3"]
    run_training(with_composition_memory(config(tmp_path / "full", *common, "trainer.max_steps=4")))
    run_training(with_composition_memory(config(tmp_path / "split", *common, "trainer.max_steps=2")))
    resume = config(tmp_path / "split", *common, "trainer.max_steps=4", f"resume={tmp_path / 'split'}")
    run_training(with_composition_memory(resume))
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert full["step"] == split["step"] == 4
    # the reward's memory (the valid crystals of the 4 training batches, no validation batch) came back
    memory = full["env_state"]["reward"]["composition_uniqueness"]["recent"]
    assert 0 < len(memory) <= 4 * 8 and split["env_state"] == full["env_state"]
    for key, value in full["agent"]["policy"].items():
        torch.testing.assert_close(value, split["agent"]["policy"][key], rtol=0, atol=0)
    assert [h["train/reward"] for h in full["history"][1:]] == [h["train/reward"] for h in split["history"][1:]]
    # the exported model loads like any other
    from crystal_env import load_model

    assert load_model(tmp_path / "full").max_atoms == 20


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_metric_exports_the_model_of_the_best_validation(mode, tmp_path):
    """``trainer.best_metric``: model_best.pt holds the weights of the validation with the best value
    (the first one, on ties) and says which; the checkpoint keeps it for a resume."""
    from crystal_rl.training import best_model_meta

    steps = ["trainer.max_steps=4", "trainer.val_every=1", "trainer.checkpoint_every=4"]
    cfg = config(tmp_path, "reward=atomic_density", *TINY, *steps, "trainer.best_metric=val/atomic_density")
    cfg["trainer"]["best_mode"] = mode
    history = run_training(cfg)
    vals = [h["val/atomic_density"] for h in history]
    expected = (max if mode == "max" else min)(vals)
    step = vals.index(expected)
    best = torch.load(tmp_path / "model_best.pt", weights_only=False)
    assert best["meta"] == {"metric": "val/atomic_density", "mode": mode, "value": expected, "step": step}
    assert best_model_meta(tmp_path) == best["meta"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["best"] == best["meta"]
    final = torch.load(tmp_path / "model.pt", weights_only=False)
    same = all(torch.equal(v, final["denoiser_state"][k]) for k, v in best["denoiser_state"].items())
    assert same == (step == 4), (step, same)  # saved when it was the best, not at the end
    assert step == (4 if mode == "max" else 0)  # density rises here: both ends are exercised
    if step == 0:  # the base model's weights
        from crystal_env import load_model

        base = load_model("mp20_tiny").denoiser.state_dict()
        assert all(torch.equal(v, base[k]) for k, v in best["denoiser_state"].items())


def test_resume_keeps_the_best_validation(tmp_path):
    """A resumed run compares with the best from before the resume (here the base model, step 0)."""
    common = ["reward=atomic_density", *TINY, "trainer.val_every=1", "trainer.best_metric=val/atomic_density"]
    common.append("trainer.best_mode=min")
    run_training(config(tmp_path / "full", *common, "trainer.max_steps=3"))
    run_training(config(tmp_path / "split", *common, "trainer.max_steps=1"))
    run_training(config(tmp_path / "split", *common, "trainer.max_steps=3", f"resume={tmp_path / 'split'}"))
    full, split = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["best"] for d in ("full", "split"))
    assert full == split and full["step"] == 0


def test_resume_with_another_best_mode_starts_the_best_over(tmp_path):
    """The trainer forgets a best of another metric or mode on resume; model_best.pt, and what the CLI
    (``best_model_line``) and the reproduce script report from it, then name a validation after the
    resume, although the whole history's minimum (the base model, step 0: density rises here) is older."""
    from crystal_rl.train import best_model_line
    from crystal_rl.training import best_model_meta

    common = ["reward=atomic_density", *TINY, "trainer.val_every=1", "trainer.best_metric=val/atomic_density"]
    run_training(config(tmp_path, *common, "trainer.best_mode=max", "trainer.max_steps=2"))
    assert best_model_meta(tmp_path)["mode"] == "max"
    history = run_training(
        config(tmp_path, *common, "trainer.best_mode=min", "trainer.max_steps=4", f"resume={tmp_path}")
    )
    best = best_model_meta(tmp_path)
    after = [h["val/atomic_density"] for h in history if h["step"] > 2]
    assert best == torch.load(tmp_path / "checkpoint.pt", weights_only=False)["best"]
    assert best["mode"] == "min" and best["step"] > 2 and best["value"] == min(after)
    assert min(h["val/atomic_density"] for h in history) < best["value"]  # the history alone would name step 0
    line = best_model_line(tmp_path)
    assert line == f"best: val/atomic_density={best['value']:.4g} at step {best['step']}: {tmp_path / 'model_best.pt'}"
    assert best_model_line(tmp_path / "nothing") is None


def test_snapshots_save_the_model_every_n_steps_for_weight_averaging(tmp_path):
    """``trainer.snapshot_every=2``: ``snapshots/step_00002.pt`` and ``step_00004.pt``, loadable models of
    those steps (the last is ``model.pt``), which ``average_models`` turns into their mean."""
    from crystal_env.models import load_model
    from crystal_env.models.interpolate import average_models

    run_training(config(tmp_path, "reward=atomic_density", *TINY, "trainer.max_steps=4", "trainer.snapshot_every=2"))
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["step_00002.pt", "step_00004.pt"]
    early, last, final = (load_model(p) for p in (*sorted((tmp_path / "snapshots").iterdir()), tmp_path / "model.pt"))
    weights = [m.denoiser.state_dict() for m in (early, last, final)]
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[2])
    moved = [k for k, v in weights[1].items() if v.is_floating_point() and not torch.equal(weights[0][k], v)]
    assert moved  # trained in between
    mean = average_models([early, last]).denoiser.state_dict()
    k = moved[0]
    torch.testing.assert_close(mean[k], (weights[0][k] + weights[1][k]) / 2)


def test_resume_drops_snapshots_after_the_checkpointed_step(tmp_path):
    """Snapshots newer than the checkpoint a run resumes from belong to a discarded trajectory: they
    are removed (here the resumed run snapshots every 2nd step, so step 3 would otherwise stay), so a
    step range of snapshots never mixes two runs."""
    common = ["reward=atomic_density", *TINY, "trainer.snapshot_every=1", "trainer.checkpoint_every=2"]
    run_training(config(tmp_path, *common, "trainer.max_steps=2"))
    stale = tmp_path / "snapshots" / "step_00003.pt"  # as left by a run killed after step 3
    stale.write_bytes((tmp_path / "snapshots" / "step_00002.pt").read_bytes())
    before = (tmp_path / "snapshots" / "step_00002.pt").read_bytes()
    run_training(config(tmp_path, *common, "trainer.max_steps=4", "trainer.snapshot_every=2", f"resume={tmp_path}"))
    assert sorted(p.name for p in stale.parent.iterdir()) == ["step_00001.pt", "step_00002.pt", "step_00004.pt"]
    assert (tmp_path / "snapshots" / "step_00002.pt").read_bytes() == before  # kept


def test_unknown_best_metric_lists_the_validation_metrics(tmp_path):
    cfg = config(tmp_path, "reward=atomic_density", *TINY, "trainer.max_steps=2", "trainer.best_metric=val/nope")
    with pytest.raises(ValueError, match=r"val/nope.*valid: .*'val/reward'"):
        run_training(cfg)


def test_missing_resume_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked at"):
        run_training(config(tmp_path / "run", "reward=atomic_density", *TINY, f"resume={tmp_path / 'nothing'}"))


def test_nan_losses_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    from agents import grpo_loss

    original = grpo_loss.GroupPolicyLoss.forward

    def poisoned(self, td):
        out = original(self, td)
        out["loss_objective"] = out["loss_objective"] * float("nan")
        return out

    monkeypatch.setattr(grpo_loss.GroupPolicyLoss, "forward", poisoned)
    with pytest.raises(NaNLossError, match="3 consecutive"):
        run_training(config(tmp_path, "reward=atomic_density", *TINY, "trainer.max_steps=10"))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert [h["train/skipped_updates"] for h in state["history"][1:]] == [2.0, 2.0, 2.0]


def test_unknown_config_names_list_the_valid_ones(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/train.py", "agent=nope", f"run_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "grpo" in out.stderr and "reinforce" in out.stderr


def test_torchrun_data_parallel_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "scripts/train.py",
        "reward=atomic_density",
        f"run_dir={tmp_path}",
        "trainer.max_steps=2",
        "trainer.progress=false",
        *TINY,
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2


def test_wandb_logger_goes_offline_without_an_api_key(tmp_path, monkeypatch):
    from crystal_rl.training import make_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    loggers = make_loggers({"backend": "wandb", "project": "crystal-rl-test", "mode": "auto"}, tmp_path)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "WandbLogger"]
    for lg in loggers:
        lg.log_scalar("train/reward", 1.0, step=1)
    loggers[1].experiment.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "logs" / "scalars" / "train" / "reward.csv").is_file()


def test_ctrl_c_finishes_the_step_and_writes_a_checkpoint(tmp_path):
    import signal
    import time

    cmd = [
        sys.executable,
        "scripts/train.py",
        "reward=atomic_density",
        f"run_dir={tmp_path}",
        "trainer.max_steps=500",
        "trainer.checkpoint_every=1000",
        "trainer.val_every=1000",
        "trainer.progress=false",
        *TINY[:3],
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = tmp_path / "logs" / "scalars" / "train" / "reward.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert 2 <= state["step"] < 500
    assert len(state["history"]) == state["step"] + 1  # validation at step 0, then one record per step
