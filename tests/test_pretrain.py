import torch

from crystal_env import load_model
from crystal_env.training.pretrain import pretrain_ldm, pretrain_vae

TINY_VAE = {"latent_dim": 4, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "num_freqs": 2}
TINY_DEN = {"d_model": 32, "num_layers": 1}


def _loop(epochs):
    return {
        "epochs": epochs,
        "batch_size": 128,
        "lr": 1e-3,
        "val_every": 1,
        "checkpoint_every": 1,
        "progress": False,
        "seed": 3,
    }


def test_pretrain_vae_then_ldm_gives_a_loadable_pair(tmp_path):
    vae_path = pretrain_vae("mp20_sample", 20, TINY_VAE, _loop(2), tmp_path)
    state = torch.load(vae_path, weights_only=False)
    history = state["meta"]["history"]
    assert len(history) == 2 and "val/loss" in history[-1]
    ldm_path = pretrain_ldm("mp20_sample", 20, vae_path, TINY_DEN, {"num_steps": 5}, _loop(2), tmp_path)
    model = load_model(ldm_path)
    assert model.latent_dim == 4 and model.max_atoms == 20
    assert model.num_atoms_counts.sum() == 243
    torch.testing.assert_close(model.vae.state_dict()["to_latent.weight"], state["vae_state"]["to_latent.weight"])
    assert len(model.sample(3, generator=torch.Generator().manual_seed(0))) == 3


def test_vae_pretraining_resumes_exactly(tmp_path):
    full = pretrain_vae("mp20_sample", 20, TINY_VAE, _loop(4), tmp_path / "full")
    pretrain_vae("mp20_sample", 20, TINY_VAE, _loop(2), tmp_path / "split")
    resumed = pretrain_vae("mp20_sample", 20, TINY_VAE, _loop(4), tmp_path / "split", resume=True)
    a = torch.load(full, weights_only=False)["vae_state"]
    b = torch.load(resumed, weights_only=False)["vae_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_dataloader_workers_give_the_same_training_and_throughput_is_logged(tmp_path):
    serial = pretrain_vae("mp20_sample", 20, TINY_VAE, _loop(2), tmp_path / "serial")
    workers = pretrain_vae("mp20_sample", 20, TINY_VAE, {**_loop(2), "num_workers": 2}, tmp_path / "workers")
    a, b = (torch.load(p, weights_only=False) for p in (serial, workers))
    for key in a["vae_state"]:
        torch.testing.assert_close(a["vae_state"][key], b["vae_state"][key], rtol=0, atol=0)
    history = b["meta"]["history"]
    assert all(r["crystals_per_second"] > 0 for r in history)
    assert [r["val/loss"] for r in history] == [r["val/loss"] for r in a["meta"]["history"]]
