"""Padding cost of the denoiser: the packed forward against the padded computation it replaced.

    python benchmarks/bench_denoiser.py [--model mp20_tiny] [--rows 160] [--group 8] [--repeats 15]

The baseline is the former DiT forward, reproduced here: every layer on the batch padded to
``max_atoms``, attention through ``nn.MultiheadAttention`` with a key padding mask. The current
forward (``DiTDenoiser.forward``) runs token-wise layers on the real atoms only and attention on the
batch padded to its largest crystal. Same weights, same batch (numbers of atoms drawn per group of
``--group`` rows from the model's histogram, like the env); outputs are checked equal. Times are the
CPU time of this thread (``time.thread_time``, one torch thread), so other jobs on the machine
barely move them; the two variants alternate, medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crystal_env import load_model
from crystal_env.models.layers import sinusoidal_embedding


def padded_forward(den, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The denoiser computed on the whole padded batch (the implementation before packing)."""
    num_atoms = mask.sum(1).clamp_max(den.size_embedding.num_embeddings - 1)
    c = den.time_mlp(sinusoidal_embedding(t, den.config.d_model)) + den.size_embedding(num_atoms)
    x = den.inp(z)
    for block in den.blocks:
        sh1, sc1, g1, sh2, sc2, g2 = block.ada(c).chunk(6, dim=-1)
        h = block.norm1(x) * (1 + sc1[:, None]) + sh1[:, None]
        h, _ = block.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        x = x + g1[:, None] * h
        x = x + g2[:, None] * block.mlp(block.norm2(x) * (1 + sc2[:, None]) + sh2[:, None])
    shift, scale = den.final_ada(c).chunk(2, dim=-1)
    out = den.out(den.final_norm(x) * (1 + scale[:, None]) + shift[:, None])
    return out * mask[..., None].to(z.dtype)


def cpu_seconds(fn, backward: bool) -> float:
    start = time.thread_time()
    if backward:
        fn().square().sum().backward()
    else:
        with torch.no_grad():
            fn()
    return time.thread_time() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mp20_tiny")
    p.add_argument("--rows", type=int, default=160, help="rows per forward (160 = a GRPO minibatch: 16 x 10 steps)")
    p.add_argument("--group", type=int, default=8, help="rows sharing a number of atoms")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model)
    den = model.denoiser
    g = torch.Generator().manual_seed(args.seed)
    num_atoms = model.sample_num_atoms(args.rows // args.group, g).repeat_interleave(args.group)
    z, mask = model.prior(num_atoms, g)
    t = torch.randint(0, 1000, (len(num_atoms),), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(den(z, t, mask), padded_forward(den, z, t, mask), rtol=1e-4, atol=1e-5)
    variants = {"padded": lambda: padded_forward(den, z, t, mask), "packed": lambda: den(z, t, mask)}
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            for backward in (False, True):
                times.setdefault((name, backward), []).append(cpu_seconds(fn, backward))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(
        f"{args.model}: {len(num_atoms)} rows, {int(num_atoms.sum())} real atoms of {z.shape[0] * z.shape[1]} "
        f"padded slots (mean {num_atoms.float().mean():.1f} atoms, largest {int(num_atoms.max())}, "
        f"max_atoms {z.shape[1]}); CPU ms, median of {args.repeats}"
    )
    for backward, label in ((False, "forward"), (True, "forward + backward")):
        a, b = med[("padded", backward)], med[("packed", backward)]
        print(f"{label:20s} padded {a:8.1f}   packed {b:8.1f}   ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()
