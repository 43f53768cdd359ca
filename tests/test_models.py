import math

import pytest
import torch

from crystal_env import load_model
from crystal_env.crystals import structures_to_batch
from crystal_env.models.diffusion import NUM_TRAIN_TIMESTEPS, SamplerConfig, cosine_alphas_cumprod
from crystal_env.models.registry import registered_model_names


def test_vae_shapes_loss_and_decode(tiny_model, mp20_train):
    structures = [s for s in mp20_train.structures if len(s) <= 8][:6]
    batch = structures_to_batch(structures, 8)
    vae = tiny_model.vae.requires_grad_(True)  # frozen inside CrystalLDM; trainable on its own
    mu, logvar = vae.encode(batch)
    assert mu.shape == logvar.shape == (6, 8, 4)
    assert not mu[~batch["mask"]].any()
    vae.train()
    losses = vae.loss(batch)
    assert set(losses) == {"loss", "type_ce", "coord", "lattice", "kl"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    vae.eval()
    out = vae.decode(mu, batch["mask"])
    assert out["atom_types"].shape == (6, 8)
    assert (out["atom_types"][batch["mask"]] >= 1).all() and not out["atom_types"][~batch["mask"]].any()
    assert ((out["frac_coords"] >= 0) & (out["frac_coords"] < 1)).all()


def test_padding_never_influences_real_atoms(tiny_model, mp20_train):
    structures = [s for s in mp20_train.structures if len(s) <= 6][:4]
    batch = structures_to_batch(structures, 8)
    garbage = batch.clone()
    pad = ~batch["mask"]
    garbage["atom_types"][pad] = 26
    garbage["frac_coords"][pad] = 0.37
    mu, _ = tiny_model.vae.encode(batch)
    mu2, _ = tiny_model.vae.encode(garbage)
    torch.testing.assert_close(mu[batch["mask"]], mu2[batch["mask"]])
    # denoiser: junk in padded latent rows leaves real rows unchanged
    z, mask = tiny_model.prior(batch["num_atoms"], torch.Generator().manual_seed(0))
    z2 = z.clone()
    z2[~mask] = 3.0
    t = torch.full((4,), 500)
    torch.testing.assert_close(tiny_model.denoiser(z, t, mask)[mask], tiny_model.denoiser(z2, t, mask)[mask])
    # VAE decoder: same invariance
    d1 = tiny_model.vae.decode_logits(z, mask)
    d2 = tiny_model.vae.decode_logits(z2, mask)
    torch.testing.assert_close(d1["coord_cs"][mask], d2["coord_cs"][mask])
    torch.testing.assert_close(d1["lattice"], d2["lattice"])


def test_prior_shapes_and_range(tiny_model):
    z, mask = tiny_model.prior(torch.tensor([1, 3, 8]))
    assert z.shape == (3, 8, 4) and mask.sum(1).tolist() == [1, 3, 8]
    assert not z[~mask].any()
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        tiny_model.prior(torch.tensor([9]))
    with pytest.raises(ValueError):
        tiny_model.prior(torch.tensor([0]))


def test_ddim_eta1_transition_is_the_ddpm_posterior(tiny_model):
    """With K = 1000 steps, DDIM(η=1) must equal the textbook DDPM posterior q(z_{t-1}|z_t, x̂_0)."""
    model = tiny_model
    model.configure_sampler("ddim", NUM_TRAIN_TIMESTEPS, 1.0)
    ab = cosine_alphas_cumprod().float()
    betas = 1 - ab / torch.cat([torch.ones(1), ab[:-1]])
    z, mask = model.prior(torch.tensor([3, 5]), torch.Generator().manual_seed(1))
    for k in (0, 300, 998):
        t = NUM_TRAIN_TIMESTEPS - 1 - k
        mean, std = model.transition(z, k, mask)
        eps = model.denoiser(z, torch.full((2,), t), mask)
        x0 = ((z - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-model.x0_clip, model.x0_clip)
        coef1 = betas[t] * ab[t - 1].sqrt() / (1 - ab[t])
        coef2 = (1 - ab[t - 1]) * (1 - betas[t]).sqrt() / (1 - ab[t])
        var = betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        torch.testing.assert_close(mean, (coef1 * x0 + coef2 * z) * mask[..., None], rtol=2e-3, atol=2e-4)
        torch.testing.assert_close(std[mask], var.sqrt().expand_as(std[mask]), rtol=1e-3, atol=1e-6)


def test_transition_log_prob_matches_gaussian_density_and_has_gradients(tiny_model):
    model = tiny_model
    model.configure_sampler("ddim", 10, 1.0)
    z, mask = model.prior(torch.tensor([2, 4]), torch.Generator().manual_seed(2))
    mean, std = model.transition(z, 3, mask)
    x = mean + std * torch.randn_like(mean)
    dist = torch.distributions.Normal(mean[mask], std[mask])
    direct = -0.5 * ((x[mask] - mean[mask]) / std[mask]) ** 2 - std[mask].log() - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(dist.log_prob(x[mask]), direct)
    dist.log_prob(x[mask].detach()).sum().backward()
    grads = [p.grad for p in model.denoiser.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.vae.parameters())


def test_last_ddim_step_is_deterministic_and_eta0_everywhere(tiny_model):
    tiny_model.configure_sampler("ddim", 5, 1.0)
    z, mask = tiny_model.prior(torch.tensor([3]))
    assert tiny_model.transition(z, 4, mask)[1].abs().max() == 0
    assert tiny_model.transition(z, 0, mask)[1].min() > 0
    tiny_model.configure_sampler("ddim", 5, 0.0)
    assert all(tiny_model.transition(z, k, mask)[1].abs().max() == 0 for k in range(5))
    with pytest.raises(IndexError):
        tiny_model.transition(z, 5, mask)
    with pytest.raises(ValueError, match="ddim"):
        SamplerConfig(kind="euler")


def test_sampler_is_deterministic_under_a_seed(tiny_model):
    tiny_model.configure_sampler("ddpm", 8)
    a = tiny_model.sample(4, generator=torch.Generator().manual_seed(5))
    b = tiny_model.sample(4, generator=torch.Generator().manual_seed(5))
    c = tiny_model.sample(4, generator=torch.Generator().manual_seed(6))
    assert [s.as_dict() for s in a] == [s.as_dict() for s in b]
    assert [s.as_dict() for s in a] != [s.as_dict() for s in c]


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.configure_sampler("ddim", 7, 0.5)
    tiny_model.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.sampler == tiny_model.sampler
    z, mask = tiny_model.prior(torch.tensor([2, 3]))
    for a, b in zip(tiny_model.transition(z, 1, mask), loaded.transition(z, 1, mask), strict=True):
        torch.testing.assert_close(a, b)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        load_model("no_such_model")
    for name in registered_model_names():
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.pt")):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_model(tmp_path)


def test_bundled_model_samples_decodable_crystals():
    model = load_model("mp20_tiny")
    model.configure_sampler("ddim", 20, 1.0)
    structures = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert len(structures) == 8
    assert all(s is not None and len(s) >= 1 for s in structures)
    assert all(math.isfinite(s.volume) and s.volume > 0 for s in structures)


def test_packed_denoiser_equals_each_crystal_alone():
    """The batched forward (token-wise layers on the real atoms only, attention padded to the largest
    crystal, not to max_atoms) gives every crystal what it gets alone, without any padding."""
    model = load_model("mp20_tiny")  # trained weights: the zero-initialised output layers of a fresh model hide errors
    g = torch.Generator().manual_seed(0)
    num_atoms = torch.tensor([3, 7, 7, 12, 1])
    z, mask = model.prior(num_atoms, g)
    assert z.shape[1] == 20  # padded to max_atoms
    t = torch.tensor([999, 500, 10, 250, 0])
    with torch.no_grad():
        batched = model.denoiser(z, t, mask)
        assert batched.shape == z.shape and not batched[~mask].any()
        for i, n in enumerate(num_atoms.tolist()):
            alone = model.denoiser(z[i : i + 1, :n], t[i : i + 1], mask[i : i + 1, :n])
            torch.testing.assert_close(batched[i, :n], alone[0], rtol=1e-4, atol=1e-5)


def test_vae_computes_on_the_batch_trimmed_to_its_largest_crystal(mp20_train):
    from crystal_env.crystals.batch import trim_atoms

    model = load_model("mp20_tiny")
    structures = [s for s in mp20_train.structures if len(s) <= 6][:5]
    padded = structures_to_batch(structures, 20)
    tight = structures_to_batch(structures)  # padded to the largest crystal only
    assert tight["mask"].shape[1] == max(len(s) for s in structures) < 20
    mu, logvar = model.vae.encode(padded)
    mu_tight, _ = model.vae._encode(tight)
    assert mu.shape == (5, 20, 8) and not mu[:, tight["mask"].shape[1] :].any()
    torch.testing.assert_close(mu[:, : tight["mask"].shape[1]], mu_tight)
    decoded = model.vae.decode(mu, padded["mask"])
    assert decoded["atom_types"].shape == (5, 20)
    reference = model.vae.decode_logits(mu, padded["mask"])  # the untrimmed computation
    assert torch.equal(
        decoded["atom_types"][padded["mask"]], reference["type_logits"][padded["mask"]][:, 1:].argmax(-1) + 1
    )
    assert trim_atoms(padded, 20) is padded


def test_schedule_tables_are_buffers_that_follow_the_model(tiny_model):
    tiny_model.configure_sampler("ddim", 10, 1.0)
    buffers = dict(tiny_model.named_buffers())
    assert {"schedule.timesteps", "schedule.sigma", "schedule.sqrt_ab"} <= set(buffers)
    assert not any(k.startswith("schedule.") for k in tiny_model.state_dict())  # rebuilt, never saved
    moved = tiny_model.to("meta")
    assert moved.schedule.timesteps.device.type == "meta" and moved.schedule.dir_coef.device.type == "meta"


def _perturbed(model, scale: float = 0.1):
    """A copy of ``model`` with every floating denoiser weight shifted: a stand-in for a fine-tuned one."""
    import copy

    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.denoiser.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return tuned


def test_interpolation_is_the_base_the_tuned_model_and_the_line_between(tiny_model):
    from crystal_env.models.interpolate import interpolate_models

    tuned = _perturbed(tiny_model)
    base_w, tuned_w = tiny_model.denoiser.state_dict(), tuned.denoiser.state_dict()
    for weight, expected in ((0.0, base_w), (1.0, tuned_w)):
        got = interpolate_models(tiny_model, tuned, weight).denoiser.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in got)
    half = interpolate_models(tiny_model, tuned, 0.5)
    for k, v in half.denoiser.state_dict().items():
        torch.testing.assert_close(v, (base_w[k] + tuned_w[k]) / 2)
    assert all(torch.equal(v, tuned_w[k]) for k, v in tuned.denoiser.state_dict().items())  # inputs untouched
    assert half.latent_mean is not tuned.latent_mean  # a new model, not a view of the tuned one
    z = torch.randn(2, tiny_model.max_atoms, tiny_model.denoiser.config.latent_dim)
    mask = torch.ones(2, tiny_model.max_atoms, dtype=torch.bool)
    t = torch.full((2,), 500)
    with torch.no_grad():  # the denoiser of w = 0.5 is a different function from both ends
        outs = [m.denoiser(z, t, mask) for m in (tiny_model, half, tuned)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_interpolation_refuses_models_of_another_base_and_bad_weights(tiny_model):
    from crystal_env.models.interpolate import interpolate_models

    other = load_model("perov5_tiny")
    with pytest.raises(ValueError, match="Cannot interpolate these models: different"):
        interpolate_models(tiny_model, other, 0.5)
    shifted = _perturbed(tiny_model)
    shifted.latent_std.mul_(2)
    with pytest.raises(ValueError, match="different latent_std"):
        interpolate_models(tiny_model, shifted, 0.5)
    other_vae = _perturbed(tiny_model)
    with torch.no_grad():
        next(other_vae.vae.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="different VAE weights"):
        interpolate_models(tiny_model, other_vae, 0.5)
    other_counts = _perturbed(tiny_model)
    other_counts.num_atoms_counts.add_(1)
    with pytest.raises(ValueError, match="different num_atoms_counts"):
        interpolate_models(tiny_model, other_counts, 0.5)
    for weight in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            interpolate_models(tiny_model, _perturbed(tiny_model), weight)


def test_interpolate_cli_writes_a_loadable_model(tmp_path):
    from crystal_rl.interpolate import main

    tuned = _perturbed(load_model("mp20_tiny"))
    tuned.save(tmp_path / "tuned.pt", meta={"step": 7})
    main(
        [
            "--base",
            "mp20_tiny",
            "--tuned",
            str(tmp_path / "tuned.pt"),
            "--weight",
            "0.25",
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    assert state["meta"]["interpolated"]["weight"] == 0.25
    assert state["meta"]["interpolated"]["tuned"] == [str(tmp_path / "tuned.pt")]
    merged, base = load_model(tmp_path / "m.pt").denoiser.state_dict(), load_model("mp20_tiny").denoiser.state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(v, 0.75 * base[k] + 0.25 * tuned.denoiser.state_dict()[k])
    with pytest.raises(SystemExit, match="different"):
        main(
            [
                "--base",
                "perov5_tiny",
                "--tuned",
                str(tmp_path / "tuned.pt"),
                "--weight",
                "1",
                "--out",
                str(tmp_path / "x.pt"),
            ]
        )
    assert not (tmp_path / "x.pt").exists()
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for bad, why in ((tmp_path / "missing.pt", "looked at"), (tmp_path / "tensor.pt", "Not a crystal_env LDM")):
        with pytest.raises(SystemExit, match=why):
            main(["--base", "mp20_tiny", "--tuned", str(bad), "--weight", "1", "--out", str(tmp_path / "x.pt")])


def test_average_models_is_the_mean_of_the_denoisers(tiny_model, tmp_path):
    from crystal_env.models.interpolate import average_models
    from crystal_rl.interpolate import main

    runs = [_perturbed(tiny_model, scale) for scale in (0.1, 0.2, 0.6)]
    states = [r.denoiser.state_dict() for r in runs]
    soup = average_models(runs).denoiser.state_dict()
    for k, v in soup.items():
        torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3)
    one = average_models(runs[:1]).denoiser.state_dict()
    assert all(torch.equal(v, states[0][k]) for k, v in one.items())
    with pytest.raises(ValueError, match="model 1 vs model 0: different"):
        average_models([runs[0], load_model("perov5_tiny")])
    with pytest.raises(ValueError, match="at least one"):
        average_models([])
    base = load_model("mp20_tiny")  # the CLI: base + weight * (mean of the runs - base)
    paths = []
    for i, scale in enumerate((0.1, 0.3)):
        _perturbed(base, scale).save(tmp_path / f"run{i}.pt")
        paths.append(str(tmp_path / f"run{i}.pt"))
    main(["--base", "mp20_tiny", "--tuned", *paths, "--weight", "0.5", "--out", str(tmp_path / "soup.pt")])
    got = load_model(tmp_path / "soup.pt").denoiser.state_dict()
    ends = [load_model(p).denoiser.state_dict() for p in paths]
    for k, v in base.denoiser.state_dict().items():
        torch.testing.assert_close(got[k], 0.5 * v + 0.25 * ends[0][k] + 0.25 * ends[1][k])
    assert torch.load(tmp_path / "soup.pt", weights_only=False)["meta"]["interpolated"]["tuned"] == paths
