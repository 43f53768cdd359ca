"""Plot training curves from a run's CSV logs: ``crystal-rl-plot-training RUN_DIR --out docs/``.

In a checkout, ``python scripts/plot_training.py ...`` is the same program.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def read_scalar(run_dir: Path, name: str) -> pd.DataFrame:
    path = run_dir / "logs" / "scalars" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"No log {path}")
    return pd.read_csv(path, header=None, names=["step", "value"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--out", default="docs")
    p.add_argument("--prefix", default="training")
    args = p.parse_args(argv)
    run, out = Path(args.run_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    train = read_scalar(run, "train/reward")
    axes[0].plot(train["step"], train["value"], alpha=0.3, label="train (batch mean)")
    axes[0].plot(train["step"], train["value"].rolling(20, min_periods=1).mean(), label="train (20-step mean)")
    val = read_scalar(run, "val/reward")
    axes[0].plot(val["step"], val["value"], "o-", label="validation (64 fixed-seed samples)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("reward")
    axes[0].legend()
    kl = read_scalar(run, "train/kl_div")
    axes[1].plot(kl["step"], kl["value"])
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("KL to the base model (k3, per entry)")
    fig.tight_layout()
    fig.savefig(out / f"{args.prefix}_curves.png", dpi=120)
    print(f"written {out / f'{args.prefix}_curves.png'}")


if __name__ == "__main__":
    main()
