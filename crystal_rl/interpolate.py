"""Interpolate fine-tuned models with their base:
``crystal-rl-interpolate --base perov5_tiny --tuned runs/x/model_best.pt --weight 0.75 --out merged.pt``.

Writes a model file (``load_model``, ``crystal-rl-sample --model merged.pt``) whose denoiser weights
are ``(1 - weight) * base + weight * tuned`` (WiSE-FT style): 0 is the base, 1 the fine-tuned model,
values in between pick a point between the two without retraining, values above 1 extrapolate. With
several ``--tuned`` models (e.g. the runs of several training seeds) ``tuned`` is their weight average
(a uniform model soup). In a checkout, ``python scripts/interpolate.py`` is the same program.
"""

from __future__ import annotations

import argparse

from crystal_rl.common import non_negative_float


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="registered name or checkpoint path of the base model")
    p.add_argument(
        "--tuned",
        required=True,
        nargs="+",
        help="fine-tuned model(s): checkpoint paths (e.g. <run_dir>/model_best.pt); a run directory means its model.pt",
    )
    p.add_argument("--weight", type=non_negative_float, required=True, help="0: base, 1: fine-tuned")
    p.add_argument("--out", required=True, help="model file to write (e.g. merged.pt)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from crystal_env import load_model
    from crystal_env.models.interpolate import average_models, interpolate_models
    from crystal_env.models.registry import resolve_model_path

    try:
        tuned = average_models([load_model(t) for t in args.tuned])
        merged = interpolate_models(load_model(args.base), tuned, args.weight)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # wrong models, missing or damaged files
        raise SystemExit(f"crystal-rl-interpolate: {exc}") from exc
    sources = {"base": str(resolve_model_path(args.base)), "tuned": [str(resolve_model_path(t)) for t in args.tuned]}
    merged.save(args.out, meta={"interpolated": {**sources, "weight": args.weight}})
    what = "fine-tuned" if len(args.tuned) == 1 else f"mean of {len(args.tuned)} fine-tuned"
    print(f"wrote {args.out}: denoiser = {1 - args.weight:g} x base + {args.weight:g} x {what}")


if __name__ == "__main__":
    main()
