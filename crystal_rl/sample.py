"""Sample crystals: ``crystal-rl-sample --model mp20_tiny --num 100 --seed 0 --out samples/``.

Writes ``cif/<index>.cif`` per decodable crystal (index zero-padded to 5 digits, e.g.
``cif/00042.cif``), ``samples.extxyz`` and ``samples.csv``. In a checkout, ``python scripts/sample.py``
is the same program.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from crystal_rl.common import non_negative_float, non_negative_int, positive_int, quiet_third_party

if TYPE_CHECKING:
    import pandas as pd


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mp20_tiny", help="registered name or checkpoint path (base or fine-tuned)")
    p.add_argument("--num", type=positive_int, default=100, help="number of crystals")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps K")
    p.add_argument("--eta", type=non_negative_float, default=1.0, help="DDIM eta")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the sampling noise (same seed: same crystals)"
    )
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def sample_to_folder(
    model: str,
    num: int,
    out: str | Path,
    seed: int = 0,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 1.0,
    batch_size: int = 100,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[list, pd.DataFrame]:
    """``num`` crystals of ``model`` (a registered name, checkpoint or run directory, run on ``device``)
    written to ``out``."""
    from crystal_env import load_model
    from crystal_env.sampling import generate, write_samples

    ldm = load_model(model, device=device)
    ldm.configure_sampler(sampler, steps, eta)
    structures = generate(ldm, num, batch_size, seed, progress=progress)
    return structures, write_samples(structures, out, progress=progress)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with quiet_third_party():
        _, frame = sample_to_folder(
            args.model,
            args.num,
            args.out,
            args.seed,
            args.sampler,
            args.steps,
            args.eta,
            args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
    valid = (frame["problem"] == "").mean()
    print(f"wrote {len(frame)} crystals to {args.out} ({valid:.1%} structurally valid; seed {args.seed})")


if __name__ == "__main__":
    main()
