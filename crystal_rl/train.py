"""RL fine-tuning: ``crystal-rl-train env=ldm_mp20 reward=dng [agent=grpo] [key=value ...]``.

In a checkout, ``python scripts/train.py ...`` is the same program. The composed config is validated
(types, ranges, agent and reward arguments) before anything loads; a run that fails before its first
training step leaves no run directory behind. ``resume=<run_dir> [key=value ...]`` continues a run in
its own directory with its saved configuration; only the keys given on the command line change.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crystal_rl.common import hydra_job_guard, quiet_third_party
from crystal_rl.config import CONFIG_DIR, validate_train_config


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec} s" if minutes else f"{sec} s"


def best_model_line(run_dir: str | Path) -> str | None:
    """The run's ``best:`` line, from what its ``model_best.pt`` holds (also after a resume that did not
    repeat ``trainer.best_metric``: the run continues with the saved config); None without that file."""
    from crystal_rl.training import BEST_MODEL_NAME, best_model_meta

    best = best_model_meta(run_dir)
    if best is None:
        return None
    return f"best: {best['metric']}={best['value']:.4g} at step {best['step']}: {Path(run_dir) / BEST_MODEL_NAME}"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    with hydra_job_guard(), quiet_third_party():  # run_training removes a run dir that never started
        resolved = validate_train_config(cfg)
        from crystal_rl.training import default_run_dir, explicit_keys, run_training

        baseline = validate_train_config(hydra.compose("train"))  # the same config without command-line overrides
        explicit = explicit_keys(HydraConfig.get().overrides.task, resolved, baseline)
        if resolved.get("resume"):
            resolved["resume"] = hydra.utils.to_absolute_path(resolved["resume"])
        run_dir = resolved["run_dir"] or default_run_dir(resolved["resume"])
        resolved["run_dir"] = hydra.utils.to_absolute_path(str(run_dir))
        history = run_training(resolved, explicit)
    last = history[-1] if history else {}
    print(f"run directory: {resolved['run_dir']}")
    print(f"elapsed: {_duration(time.perf_counter() - start)} (times depend on the machine and its load)")
    print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith(("train/reward", "val/"))))
    line = best_model_line(resolved["run_dir"])
    if line:
        print(line)


if __name__ == "__main__":
    main()
