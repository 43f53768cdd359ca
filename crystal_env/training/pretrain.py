"""Pretraining of the VAE and of the latent diffusion model (called by ``scripts/pretrain_*.py``)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from crystal_env.crystals.batch import ATOM_KEYS, structures_to_batch
from crystal_env.data import load_dataset
from crystal_env.models.denoiser import DenoiserConfig, DiTDenoiser
from crystal_env.models.diffusion import SamplerConfig
from crystal_env.models.ldm import VAE_FORMAT, CrystalLDM, load_vae_state
from crystal_env.models.vae import CrystalVAE, VAEConfig
from crystal_env.training.loop import LoopConfig, save_torch_atomic, train_loop

log = logging.getLogger(__name__)


def _dataset_batch(name: str, split: str, max_atoms: int) -> TensorDict:
    ds = load_dataset(name, split, max_atoms=max_atoms)
    return structures_to_batch(ds.structures, max_atoms)


def pretrain_vae(
    dataset: str,
    max_atoms: int,
    vae: dict[str, Any],
    loop: dict[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    device: str = "cpu",
) -> Path:
    """Train a :class:`CrystalVAE` on ``dataset``'s train split on ``device``; write ``out_dir/vae.pt``."""
    out = Path(out_dir)
    loop_cfg = LoopConfig(**loop)
    torch.manual_seed(loop_cfg.seed)
    train, val = (_dataset_batch(dataset, s, max_atoms) for s in ("train", "val"))
    model = CrystalVAE(VAEConfig(**vae))
    model.set_lattice_statistics(train)
    start = time.perf_counter()
    history = train_loop(
        model,
        list(model.parameters()),
        model.loss,
        train,
        val,
        loop_cfg,
        out / "vae_train_state.pt",
        resume,
        device=device,
        atom_keys=ATOM_KEYS,
    )
    save_torch_atomic(
        {
            "format": VAE_FORMAT,
            "vae_config": asdict(model.config),
            "vae_state": {k: v.cpu() for k, v in model.state_dict().items()},
            "meta": {
                "dataset": dataset,
                "max_atoms": max_atoms,
                "history": history,
                "seconds": time.perf_counter() - start,
            },
        },
        out / "vae.pt",
    )
    log.info("VAE written to %s", out / "vae.pt")
    return out / "vae.pt"


@torch.no_grad()
def encode_dataset(vae: CrystalVAE, batch: TensorDict, chunk: int = 1024) -> torch.Tensor:
    """Encoder means (B, N, L) of a whole dataset batch, on the VAE's device in chunks; on the CPU."""
    device = next(vae.parameters()).device
    parts = [vae.encode(batch[i : i + chunk].to(device))[0].cpu() for i in range(0, batch.batch_size[0], chunk)]
    return torch.cat(parts)


def pretrain_ldm(
    dataset: str,
    max_atoms: int,
    vae_checkpoint: str | Path,
    denoiser: dict[str, Any],
    sampler: dict[str, Any],
    loop: dict[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    device: str = "cpu",
) -> Path:
    """Train the denoiser on the VAE latents of ``dataset`` on ``device``; write the full pair to
    ``out_dir/ldm.pt``."""
    out = Path(out_dir)
    loop_cfg = LoopConfig(**loop)
    torch.manual_seed(loop_cfg.seed)
    vae_path = Path(vae_checkpoint)
    if not vae_path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {vae_path.resolve()}")
    vae = load_vae_state(torch.load(vae_path, map_location="cpu", weights_only=False)).to(device)
    train, val = (_dataset_batch(dataset, s, max_atoms) for s in ("train", "val"))
    mu_train = encode_dataset(vae, train)  # on the CPU, like the statistics below
    real = mu_train[train["mask"]]
    counts = torch.bincount(train["num_atoms"], minlength=max_atoms + 1).float()
    model = CrystalLDM(
        vae,
        DiTDenoiser(DenoiserConfig(latent_dim=vae.latent_dim, **denoiser), max_atoms=max_atoms),
        latent_mean=real.mean(0),
        latent_std=real.std(0).clamp_min(1e-4),
        num_atoms_counts=counts,
        sampler=SamplerConfig(**sampler),
    ).to(device)
    mean, std = model.latent_mean.cpu(), model.latent_std.cpu()

    def latents(batch: TensorDict) -> TensorDict:
        z = (encode_dataset(vae, batch) - mean) / std * batch["mask"][..., None]
        return TensorDict({"z": z, "mask": batch["mask"]}, batch_size=batch.batch_size)

    def loss_fn(b: TensorDict) -> dict[str, torch.Tensor]:
        return {"loss": model.diffusion_loss(b["z"], b["mask"])}

    start = time.perf_counter()
    history = train_loop(
        model,
        list(model.denoiser.parameters()),
        loss_fn,
        latents(train),
        latents(val),
        loop_cfg,
        out / "ldm_train_state.pt",
        resume,
        device=device,
        atom_keys=("z", "mask"),
    )
    meta = {
        "dataset": dataset,
        "vae_checkpoint": str(vae_path),
        "history": history,
        "seconds": time.perf_counter() - start,
    }
    model.save(out / "ldm.pt", meta=meta)
    log.info("LDM (with its VAE) written to %s", out / "ldm.pt")
    return out / "ldm.pt"
