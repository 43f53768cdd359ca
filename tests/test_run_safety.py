"""Training runs are safe to kill, resume and share (issue 11): saved configuration restored on
resume, run-directory lock, no duplicated log rows, checked checkpoints, kill-and-resume exactness."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from agents.checkpoint import (
    CheckpointError,
    RunDirLock,
    RunDirLockedError,
    load_checkpoint,
    save_checkpoint,
)
from crystal_rl.config import compose_train_config
from crystal_rl.training import resume_config, run_training

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "reward=atomic_density",
    "env.num_steps=4",
    "env.batch_size=8",
    "env.group_size=4",
    "trainer.val_batch_size=8",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
    "seed=3",
]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def train(*overrides):
    cfg, explicit = compose_train_config(list(overrides))
    return run_training(cfg, explicit)


def scalar_rows(run_dir, name="train/reward"):
    path = Path(run_dir) / "logs" / "scalars" / f"{name}.csv"
    return [tuple(line.split(",")) for line in path.read_text().splitlines()]


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_resume_restores_the_saved_configuration(tmp_path):
    """Issue 11: a run started with reward=atomic_density env.batch_size=8 and resumed with only
    resume= continued with the dng reward and batch 32. Now only explicit overrides change."""
    run = tmp_path / "run"
    train(f"run_dir={run}", *TINY, "trainer.max_steps=1")
    history = train(f"resume={run}", "trainer.max_steps=2")  # no reward/env overrides: the saved ones
    state = load_checkpoint(run)
    assert state["step"] == 2
    assert state["config"]["env"]["batch_size"] == 8 and state["config"]["env"]["num_steps"] == 4
    assert state["config"]["reward"]["components"][0]["_target_"] == "rewards.AtomicDensity"
    assert state["config"]["trainer"]["max_steps"] == 2
    assert "train/atomic_density" in history[-1]
    assert (run / "config.yaml").read_text().count("AtomicDensity") == 1
    # changing what makes the run exact needs an explicit flag
    with pytest.raises(ValueError, match=r"env.batch_size: 8 -> 16.*resume_allow_changes=true"):
        train(f"resume={run}", "trainer.max_steps=3", "env.batch_size=16")
    with pytest.raises(ValueError, match="reward.components"):
        train(f"resume={run}", "trainer.max_steps=3", "reward=energy")


def test_resume_config_merging_rules():
    saved = {
        "env": {"batch_size": 8, "eta": 1.0},
        "agent": {"_target_": "PPO", "lr": 1},
        "seed": 3,
        "trainer": {"x": 1},
    }
    current = {"env": {"batch_size": 32, "eta": 0.5}, "agent": {"_target_": "GRPO", "clip": 0.2}, "seed": 0}
    current |= {"trainer": {"x": 2}, "run_dir": "/r", "resume": "/r", "resume_allow_changes": False, "new_key": 1}
    merged = resume_config(saved, current, ["trainer.x"])
    assert merged["agent"] == saved["agent"] and merged["env"] == saved["env"] and merged["seed"] == 3
    assert merged["trainer"] == {"x": 2} and merged["run_dir"] == "/r" and merged["new_key"] == 1
    with pytest.raises(ValueError, match="env.eta"):
        resume_config(saved, current, ["env.eta"])
    allowed = resume_config(saved, {**current, "resume_allow_changes": True}, ["env.eta", "agent"])
    assert allowed["env"] == {"batch_size": 8, "eta": 0.5} and allowed["agent"] == current["agent"]


def test_resuming_a_ppo_run_rebuilds_the_saved_agent(tmp_path):
    """Issue 11: resume=<a ppo run> crashed loading the PPO value net into a rebuilt GRPO agent, and
    wrote into a new timestamped directory instead of its own."""
    run = tmp_path / "ppo"
    train(f"run_dir={run}", *TINY, "agent=ppo", "trainer.max_steps=1")
    cfg, explicit = compose_train_config([f"resume={run}", "trainer.max_steps=2"])
    assert cfg["run_dir"] is None  # the default: the resumed run's own directory
    history = run_training(cfg, explicit)
    assert history[-1]["step"] == 2
    state = load_checkpoint(run)
    assert state["step"] == 2 and state["config"]["agent"]["_target_"] == "agents.ppo.PPOAgent"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppo"]


def test_run_dir_lock_fails_fast_and_stale_locks_are_taken_over(tmp_path):
    """Issue 11: two runs with the same run_dir both ran. The second must fail naming the holder."""
    run = tmp_path / "run"
    script = (
        f"import time; from agents.checkpoint import RunDirLock; lock = RunDirLock({str(run)!r}).acquire(); "
        "print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError, match=rf"in use by another run \(pid {holder.pid}"):
            train(f"run_dir={run}", *TINY, "trainer.max_steps=1")
        assert not (run / "checkpoint.pt").exists() and not (run / "logs").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").read_text().split()[0] == str(holder.pid)  # the dead holder's pid stays behind
    train(f"run_dir={run}", *TINY, "trainer.max_steps=1")  # ... and its lock is taken over
    assert f"Took over the stale lock of {run / '.lock'} (pid {holder.pid}" in (run / "train.log").read_text()
    with RunDirLock(run), pytest.raises(RunDirLockedError):  # in-process: a second lock is refused too
        RunDirLock(run).acquire()


def test_a_fresh_run_refuses_a_directory_holding_a_run(tmp_path):
    train(f"run_dir={tmp_path}", *TINY, "trainer.max_steps=1")
    with pytest.raises(FileExistsError, match=f"resume={tmp_path}"):
        train(f"run_dir={tmp_path}", *TINY, "trainer.max_steps=1")


def test_resume_after_a_crash_logs_each_step_once_and_removes_stale_temp_files(tmp_path, monkeypatch):
    """Issue 11: after resume, steps logged after the last checkpoint appeared twice in the CSV logs,
    and a kill during the checkpoint write left a `.checkpoint.pt.<pid>.tmp` that was never removed."""
    from agents.trainer import Trainer

    run = tmp_path / "run"
    original = Trainer.save

    def crash_at_step_3(self):
        if self.step == 3:
            raise RuntimeError("simulated crash")
        original(self)

    monkeypatch.setattr(Trainer, "save", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):  # steps 1-3 logged, checkpoint of step 2
        train(f"run_dir={run}", *TINY, "trainer.max_steps=3", "trainer.checkpoint_every=1")
    monkeypatch.setattr(Trainer, "save", original)
    assert [r[0] for r in scalar_rows(run)] == ["1", "2", "3"]
    stale = run / f".checkpoint.pt.{dead_pid()}.tmp"
    stale.write_bytes(b"half a checkpoint")
    (run / "logs" / "scalars" / "train" / "reward.csv").open("a").write("4,0.1")  # a torn last line
    train(f"resume={run}", "trainer.max_steps=4")
    assert [r[0] for r in scalar_rows(run)] == ["1", "2", "3", "4"]
    assert [r[0] for r in scalar_rows(run, "val/reward")] == ["0", "2", "4"]
    assert not stale.exists()
    assert "Dropped" in (run / "train.log").read_text()


def test_damaged_checkpoints_raise_an_error_naming_the_file(tmp_path):
    """Issue 11: a truncated or zero-byte checkpoint.pt gave `central directory` / EOFError errors
    without naming the file; single-bit flips loaded silently."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 7, "weights": torch.arange(1000.0)})
    intact = path.read_bytes()
    assert load_checkpoint(tmp_path)["step"] == 7
    assert torch.load(path, weights_only=False)["step"] == 7  # still a plain torch.save file
    flipped = bytearray(intact)
    flipped[len(intact) // 2] ^= 0x10
    for blob in (b"", intact[: len(intact) // 2], bytes(flipped), intact[:-10]):
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        train(f"resume={tmp_path}", "trainer.max_steps=1")


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Kill a real training process with SIGKILL mid-run, resume it with nothing but resume=<dir>,
    and compare with an uninterrupted run: identical weights, identical log rows, no duplicates."""
    steps = 8
    full = tmp_path / "full"
    train(f"run_dir={full}", *TINY, f"trainer.max_steps={steps}")

    killed = tmp_path / "killed"
    cmd = [sys.executable, "scripts/train.py", f"run_dir={killed}", *TINY, f"trainer.max_steps={steps}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=SUBPROCESS_ENV)
    log = killed / "logs" / "scalars" / "train" / "reward.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(killed)["step"]
    assert 2 <= interrupted_at < steps

    out = subprocess.run(
        [sys.executable, "scripts/train.py", f"resume={killed}"], cwd=REPO, capture_output=True, text=True,
        env=SUBPROCESS_ENV, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resuming {killed} from step {interrupted_at}" in (killed / "train.log").read_text()
    a, b = load_checkpoint(full), load_checkpoint(killed)
    assert a["step"] == b["step"] == steps
    for key, value in a["agent"]["policy"].items():
        torch.testing.assert_close(value, b["agent"]["policy"][key], rtol=0, atol=0)
    for name in ("train/reward", "train/kl_div", "val/reward"):
        assert scalar_rows(full, name) == scalar_rows(killed, name), name
    frame = pd.read_csv(killed / "logs" / "scalars" / "train" / "reward.csv", header=None)
    assert frame[0].tolist() == list(range(1, steps + 1))


def test_damaged_model_and_pretraining_checkpoints_name_the_file(tmp_path):
    from crystal_env import load_model
    from crystal_env.training.loop import LoopConfig, train_loop

    broken = tmp_path / "model.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match=f"Model checkpoint {broken} is damaged"):
        load_model(broken)
    ckpt = tmp_path / "vae_train_state.pt"
    ckpt.write_bytes(b"")
    module = torch.nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match=f"Training checkpoint {ckpt} is damaged"):
        train_loop(module, list(module.parameters()), None, None, None, LoopConfig(), ckpt, resume=True)
