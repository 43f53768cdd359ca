"""Train a property predictor on frozen VAE latents.

``python scripts/train_predictor.py [target=band_gap] [model=mp20_tiny] [train.epochs=2000]``
writes ``runs/predictor/<target>/predictor.pt`` (used by ``configs/reward/bandgap.yaml``) and prints
the validation MAE next to the predict-the-mean baseline.
"""

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from rewards.predictor import train_predictor


@hydra.main(config_path="../configs/predictor", config_name="band_gap", version_base="1.3")
def main(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
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
