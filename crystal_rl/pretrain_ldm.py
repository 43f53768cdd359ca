"""Pretrain the latent diffusion model: ``crystal-rl-pretrain-ldm [vae_checkpoint=PATH] [loop.epochs=800]``.

In a checkout, ``python scripts/pretrain_ldm.py ...`` is the same program.
"""

import hydra
from omegaconf import DictConfig

from crystal_rl.common import hydra_job_guard
from crystal_rl.config import CONFIG_DIR, PretrainLDMSchema, validate


@hydra.main(config_path=str(CONFIG_DIR / "pretrain"), config_name="ldm", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with hydra_job_guard():
        c = validate(cfg, PretrainLDMSchema)
        from crystal_env.training.pretrain import pretrain_ldm

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
