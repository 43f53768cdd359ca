"""Pretrain the crystal VAE: ``python scripts/pretrain_vae.py [dataset=mp20_sample] [loop.epochs=600]``."""

import hydra
from omegaconf import DictConfig, OmegaConf

from crystal_env.training.pretrain import pretrain_vae


@hydra.main(config_path="../configs/pretrain", config_name="vae", version_base="1.3")
def main(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    path = pretrain_vae(
        c["dataset"],
        c["max_atoms"],
        c["vae"],
        c["loop"],
        hydra.utils.to_absolute_path(c["out_dir"]),
        resume=c["resume"],
        device=c["device"],
    )
    print(f"VAE checkpoint: {path}")


if __name__ == "__main__":
    main()
