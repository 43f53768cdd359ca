"""Train a property predictor on frozen VAE latents.

``crystal-rl-train-predictor [target=band_gap] [model=mp20_tiny] [train.epochs=2000]`` (in a checkout
also ``python scripts/train_predictor.py``) writes ``runs/predictor/<target>/predictor.pt`` (used by
``configs/reward/bandgap.yaml``) and prints the validation MAE next to the predict-the-mean baseline.
"""

import json

import hydra
from omegaconf import DictConfig

from crystal_rl.common import hydra_job_guard
from crystal_rl.config import CONFIG_DIR, PredictorSchema, validate


@hydra.main(config_path=str(CONFIG_DIR / "predictor"), config_name="band_gap", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with hydra_job_guard():
        c = validate(cfg, PredictorSchema)
        from rewards.predictor import train_predictor

        predictor, metrics = train_predictor(
            model=c["model"],
            dataset=c["dataset"],
            target=c["target"],
            max_atoms=c["max_atoms"],
            device=c["device"],
            **c["head"],
            **c["train"],
        )
        out = hydra.utils.to_absolute_path(c["out"])
        predictor.save(out)
    print(json.dumps(metrics, indent=2))
    print(
        f"{c['target']}: MAE validation {metrics['val_mae']:.3f} (baseline {metrics['baseline_val_mae']:.3f}), "
        f"test {metrics['test_mae']:.3f} (baseline {metrics['baseline_test_mae']:.3f}; baseline = predict the "
        f"train mean); checkpoint: {out}"
    )


if __name__ == "__main__":
    main()
