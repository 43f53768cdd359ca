"""Every stage on a CUDA GPU: env + specs, DNG reward, GRPO and PPO updates, training with resume,
pretraining (VAE and LDM, bf16, DataLoader workers), sampling and evaluation. Skipped without CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchrl.envs.utils import check_env_specs

from crystal_env import load_model, make_env
from crystal_env.config import CONFIG_DIR
from crystal_env.policy import make_policy, make_reference_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def density_reward(structures):
    return torch.tensor([0.0 if s is None else len(s) / s.volume for s in structures])


def config(run_dir, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", "trainer.progress=false", "device=cuda", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_env_rollout_and_specs_on_cuda():
    env = make_env("ldm_mp20", reward=density_reward, batch_size=8, group_size=4, num_steps=5, seed=0, device="cuda")
    check_env_specs(env)
    assert env.model.schedule.timesteps.device.type == "cuda"
    policy = make_policy(env.model)
    env.set_seed(1)
    with torch.no_grad():
        traj = env.rollout(100, policy)
    assert traj.shape == (8, 5) and traj.device.type == "cuda"
    assert traj["latent"].device.type == "cuda" and traj["next", "reward"].device.type == "cuda"
    assert traj["timestep"][:, 0].eq(env.model.schedule.timesteps[0]).all()
    final = traj[:, -1]["next"]
    assert sum(s is not None for s in final["crystals"]) >= 6
    assert torch.isfinite(final["reward"]).all()
    # z_T is drawn on the CPU generator: the same seed gives the same start on any device
    cpu_env = make_env("ldm_mp20", reward=density_reward, batch_size=8, group_size=4, num_steps=5, seed=0)
    cpu_env.set_seed(1)
    torch.testing.assert_close(traj["latent"][:, 0].cpu(), cpu_env.reset()["latent"])


def test_dng_reward_runs_its_models_on_the_env_device():
    from rewards.features import get_model
    from rewards.mlip import get_mlip

    env = make_env("ldm_mp20", reward="dng", batch_size=8, group_size=4, num_steps=5, seed=0, device="cuda")
    assert env.reward_fn.device == "cuda"
    with torch.no_grad():
        traj = env.rollout(100, make_policy(env.model))
    final = traj[:, -1]["next"]
    assert torch.isfinite(final["reward"]).all()
    names = set(env.reward_fn.component_names)
    assert set(final["reward_raw"].keys()) == names
    assert {"creativity", "energy", "structure_diversity", "composition_diversity"} <= names
    assert next(get_mlip("chgnet", None, "cuda").model.parameters()).device.type == "cuda"
    assert get_model("mp20_tiny", "cuda").latent_mean.device.type == "cuda"


@pytest.mark.parametrize("agent", ["grpo", "ppo"])
def test_one_update_on_cuda(agent, tmp_path):
    from agents.factory import build_agent

    env = make_env("ldm_mp20", reward=density_reward, batch_size=8, group_size=4, num_steps=4, seed=0, device="cuda")
    model = env.model
    policy, reference = make_policy(model), make_reference_policy(model)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "agent" / f"{agent}.yaml"), resolve=True)
    learner = build_agent(cfg, policy, reference, latent_dim=model.latent_dim, num_steps=env.num_steps)
    with torch.no_grad():
        batch = env.rollout(100, policy)
    before = [p.detach().clone() for p in model.denoiser.parameters()]
    metrics = learner.update(batch)
    assert metrics["skipped_updates"] == 0 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.denoiser.parameters(), strict=True))
    assert all(p.device.type == "cuda" for p in learner.params)


def test_training_on_cuda_resumes_exactly(tmp_path):
    from crystal_rl.training import run_training

    common = [
        "reward=atomic_density",
        "env.num_steps=4",
        "env.batch_size=8",
        "env.group_size=4",
        "trainer.val_batch_size=8",
        "trainer.val_every=2",
        "trainer.checkpoint_every=2",
        "seed=3",
    ]
    full = run_training(config(tmp_path / "full", *common, "trainer.max_steps=4"))
    run_training(config(tmp_path / "split", *common, "trainer.max_steps=2"))
    resumed = run_training(config(tmp_path / "split", *common, "trainer.max_steps=4", f"resume={tmp_path / 'split'}"))
    # CUDA reductions (index_add in the backward of the packed denoiser) are not bitwise deterministic
    assert [h["train/reward"] for h in resumed[1:]] == pytest.approx([h["train/reward"] for h in full[1:]], rel=1e-4)
    assert load_model(tmp_path / "full").latent_mean.device.type == "cpu"  # checkpoints load anywhere


def test_pretraining_two_epochs_on_cuda(tmp_path):
    from crystal_env.training.pretrain import pretrain_ldm, pretrain_vae

    vae = {"latent_dim": 4, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "num_freqs": 2}
    loop = {"epochs": 2, "batch_size": 64, "val_every": 1, "checkpoint_every": 1, "progress": False, "seed": 3}
    gpu_loop = {**loop, "bf16": True, "num_workers": 2}
    vae_path = pretrain_vae("mp20_sample", 20, vae, gpu_loop, tmp_path, device="cuda")
    state = torch.load(vae_path, weights_only=False)
    assert all(v.device.type == "cpu" for v in state["vae_state"].values())
    assert all(
        r["crystals_per_second"] > 0 and torch.isfinite(torch.tensor(r["val/loss"])) for r in state["meta"]["history"]
    )
    ldm_path = pretrain_ldm(
        "mp20_sample",
        20,
        vae_path,
        {"d_model": 32, "num_layers": 1},
        {"num_steps": 5},
        gpu_loop,
        tmp_path,
        device="cuda",
    )
    model = load_model(ldm_path, device="cuda")
    assert len(model.sample(4, generator=torch.Generator().manual_seed(0))) == 4
    # fp32 on the GPU resumes exactly, CUDA RNG included
    pretrain_vae("mp20_sample", 20, vae, {**loop, "epochs": 1}, tmp_path / "split", device="cuda")
    resumed = pretrain_vae("mp20_sample", 20, vae, loop, tmp_path / "split", resume=True, device="cuda")
    full = pretrain_vae("mp20_sample", 20, vae, loop, tmp_path / "full", device="cuda")
    a, b = (torch.load(p, weights_only=False)["vae_state"] for p in (full, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)  # up to CUDA reduction order


def test_sampling_and_evaluation_scripts_on_cuda(tmp_path):
    for args in (
        ["scripts/sample.py", "--num", "16", "--steps", "5", "--out", str(tmp_path), "--device", "cuda"],
        ["scripts/evaluate.py", str(tmp_path), "--out", str(tmp_path / "eval"), "--device", "cuda", "--no-plots"],
    ):
        out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "cif").glob("*.cif"))) >= 12
    assert (tmp_path / "eval" / "summary.json").is_file()
    model = load_model("mp20_tiny", device="cuda")
    model.configure_sampler("ddim", 5, 1.0)
    assert model.schedule.sigma.device.type == "cuda"
    with torch.no_grad():
        z, mask = model.prior(torch.tensor([4, 8]), torch.Generator().manual_seed(0))
        mean, std = model.transition(z, 0, mask)
    assert mean.device.type == "cuda" and std.device.type == "cuda"
