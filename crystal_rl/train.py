"""RL fine-tuning: ``crystal-rl-train env=ldm_mp20 reward=dng [agent=grpo] [key=value ...]``.

In a checkout, ``python scripts/train.py ...`` is the same program. The composed config is validated
(types, ranges, agent and reward arguments) before anything loads; a run that fails before its first
training step leaves no run directory behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crystal_rl.common import hydra_job_guard, quiet_third_party
from crystal_rl.config import CONFIG_DIR, validate_train_config


def _started(run_dir: Path) -> bool:
    """Whether a training step finished (its metrics are logged) or a checkpoint was written."""
    return (run_dir / "checkpoint.pt").exists() or (run_dir / "logs" / "scalars" / "train").is_dir()


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec} s" if minutes else f"{sec} s"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    with hydra_job_guard(started=_started), quiet_third_party():
        resolved = validate_train_config(cfg)
        resolved["run_dir"] = hydra.utils.to_absolute_path(resolved["run_dir"])
        if resolved.get("resume"):
            resolved["resume"] = hydra.utils.to_absolute_path(resolved["resume"])
        from crystal_env.training.rl import run_training

        history = run_training(resolved)
    last = history[-1] if history else {}
    print(f"run directory: {resolved['run_dir']}")
    print(f"elapsed: {_duration(time.perf_counter() - start)} (times depend on the machine and its load)")
    print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith(("train/reward", "val/"))))


if __name__ == "__main__":
    main()
