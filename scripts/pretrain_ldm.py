"""Pretrain the latent diffusion model: ``python scripts/pretrain_ldm.py vae_checkpoint=PATH``."""

import hydra
from omegaconf import DictConfig, OmegaConf

from crystal_env.training.pretrain import pretrain_ldm


@hydra.main(config_path="../configs/pretrain", config_name="ldm", version_base="1.3")
def main(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    path = pretrain_ldm(
        c["dataset"],
        c["max_atoms"],
        hydra.utils.to_absolute_path(c["vae_checkpoint"]),
        c["denoiser"],
        c["sampler"],
        c["loop"],
        hydra.utils.to_absolute_path(c["out_dir"]),
        resume=c["resume"],
        device=c["device"],
    )
    print(f"LDM checkpoint (VAE + denoiser): {path}")


if __name__ == "__main__":
    main()
