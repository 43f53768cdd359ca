"""RL fine-tuning: ``python scripts/train.py env=ldm_mp20 reward=dng [agent=grpo] [key=value ...]``."""

import hydra
from omegaconf import DictConfig, OmegaConf

from crystal_env.training.rl import run_training


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["run_dir"] = hydra.utils.to_absolute_path(resolved["run_dir"])
    if resolved.get("resume"):
        resolved["resume"] = hydra.utils.to_absolute_path(resolved["resume"])
    history = run_training(resolved)
    last = history[-1] if history else {}
    print(f"run directory: {resolved['run_dir']}")
    print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith(("train/reward", "val/"))))


if __name__ == "__main__":
    main()
