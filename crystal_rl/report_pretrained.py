"""Measure a pretrained model: held-out VAE reconstruction and validity of unconditional samples.

``crystal-rl-report-pretrained --model mp20_tiny --dataset mp20_sample --split test --num 200`` (in a
checkout also ``python scripts/report_pretrained.py``).
"""

from __future__ import annotations

import argparse
import json

from crystal_env import load_model
from crystal_env.data import load_dataset
from crystal_env.sampling import generate
from crystal_env.training.report import reconstruction_match_rate, sample_report
from crystal_rl.common import non_negative_int, positive_int, quiet_third_party


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mp20_tiny")
    p.add_argument("--dataset", default="mp20_sample")
    p.add_argument("--split", default="test", help="held-out split for reconstruction")
    p.add_argument("--num", type=positive_int, default=200, help="number of unconditional samples")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="optional JSON output path")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, ...)")
    args = p.parse_args(argv)
    with quiet_third_party():
        model = load_model(args.model, device=args.device)
        held_out = load_dataset(args.dataset, args.split, max_atoms=model.max_atoms).structures
        train = load_dataset(args.dataset, "train", max_atoms=model.max_atoms).structures
        report = {
            "model": args.model,
            "sampler": vars(model.sampler) if hasattr(model.sampler, "__dict__") else str(model.sampler),
            "reconstruction_held_out": reconstruction_match_rate(model, held_out),
            "reconstruction_train": reconstruction_match_rate(model, train),
            "samples": sample_report(generate(model, args.num, seed=args.seed), train),
        }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
