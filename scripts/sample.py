"""Sample crystals: ``python scripts/sample.py --model mp20_tiny --num 100 --out samples/``."""

from __future__ import annotations

import argparse

from crystal_env import load_model
from crystal_env.sampling import generate, write_samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="mp20_tiny", help="registered name or checkpoint path (base or fine-tuned)")
    p.add_argument("--num", type=int, default=100, help="number of crystals")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=50, help="sampling steps K")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1, ...)")
    args = p.parse_args(argv)
    model = load_model(args.model, device=args.device)
    model.configure_sampler(args.sampler, args.steps, args.eta)
    structures = generate(model, args.num, args.batch_size, args.seed)
    frame = write_samples(structures, args.out)
    valid = (frame["problem"] == "").mean()
    print(f"wrote {len(frame)} crystals to {args.out} ({valid:.1%} structurally valid)")


if __name__ == "__main__":
    main()
