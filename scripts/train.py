"""RL fine-tuning: ``python scripts/train.py env=ldm_mp20 reward=dng [agent=grpo] [key=value ...]``.

``python scripts/train.py resume=<run_dir> [trainer.max_steps=...]`` continues a run in its own
directory with its saved configuration; only the keys given on the command line change.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from crystal_env.training.rl import default_run_dir, explicit_keys, run_training


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    baseline = OmegaConf.to_container(hydra.compose("train"), resolve=True)  # no command-line overrides
    explicit = explicit_keys(HydraConfig.get().overrides.task, resolved, baseline)
    if resolved.get("resume"):
        resolved["resume"] = hydra.utils.to_absolute_path(resolved["resume"])
    resolved["run_dir"] = hydra.utils.to_absolute_path(str(resolved["run_dir"] or default_run_dir(resolved["resume"])))
    history = run_training(resolved, explicit)
    last = history[-1] if history else {}
    print(f"run directory: {resolved['run_dir']}")
    print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith(("train/reward", "val/"))))


if __name__ == "__main__":
    main()
