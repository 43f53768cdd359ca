"""Pretrain the crystal VAE: ``crystal-rl-pretrain-vae [dataset=mp20_sample] [loop.epochs=600]``.

In a checkout, ``python scripts/pretrain_vae.py ...`` is the same program.
"""

import hydra
from omegaconf import DictConfig

from crystal_rl.common import hydra_job_guard
from crystal_rl.config import CONFIG_DIR, PretrainVAESchema, validate


@hydra.main(config_path=str(CONFIG_DIR / "pretrain"), config_name="vae", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with hydra_job_guard():
        c = validate(cfg, PretrainVAESchema)
        from crystal_env.training.pretrain import pretrain_vae

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
