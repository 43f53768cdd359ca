"""Env overhead: a TorchRL Collector rollout vs a bare loop of ``transition`` + sampling, same work.

``python benchmarks/bench_env.py [--crystals 64 --steps 50 --repeats 3]``. Each run is a fresh
process (so peak RSS is its own) and the two variants alternate; the reward is a no-op so only the
env/collector plumbing and the denoiser are timed. Prints the time ratio collector / bare loop (target ≤ 1.15).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch


def zero_reward(structures):
    return torch.zeros(len(structures))


def _bare_loop(crystals: int, steps: int, seed: int) -> float:
    from crystal_env import load_model

    model = load_model("mp20_tiny")
    model.configure_sampler("ddim", steps, 1.0)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        n = model.sample_num_atoms(crystals // 4, gen).repeat_interleave(4)
        z, mask = model.prior(n, gen)
        for k in range(steps):
            mean, std = model.transition(z, k, mask)
            z = (mean + std * torch.randn(z.shape)) * mask[..., None]
        zero_reward(model.decode_structures(z, mask))
    return time.perf_counter() - start


def _collector(crystals: int, steps: int, seed: int) -> float:
    from torchrl.collectors import Collector

    from crystal_env import make_env
    from crystal_env.policy import make_policy

    env = make_env("ldm_mp20", reward=zero_reward, batch_size=crystals, group_size=4, num_steps=steps, seed=seed)
    policy = make_policy(env.model)
    collector = Collector(
        env,
        policy,
        frames_per_batch=crystals * steps,
        total_frames=crystals * steps,
        auto_register_policy_transforms=False,
    )
    start = time.perf_counter()
    for batch in collector:
        assert batch.shape == (crystals, steps)
    elapsed = time.perf_counter() - start
    collector.shutdown()
    return elapsed


def _run(name: str, crystals: int, steps: int, seed: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    fn = {"bare": _bare_loop, "collector": _collector}[name]
    fn(crystals, 2, seed)  # warm-up: model load, first-call overheads
    elapsed = fn(crystals, steps, seed)
    queue.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(name: str, crystals: int, steps: int, seed: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(name, crystals, steps, seed, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crystals", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "collector": []}
    for seed in range(args.repeats):  # interleaved, so machine noise hits both alike
        for name in runs:
            runs[name].append(measure(name, args.crystals, args.steps, seed))
    bare_t, coll_t = (statistics.median(t for t, _ in runs[n]) for n in ("bare", "collector"))
    bare_mem, coll_mem = (max(m for _, m in runs[n]) for n in ("bare", "collector"))
    print(f"{args.crystals} crystals x {args.steps} steps (median of {args.repeats})")
    print(f"bare transition loop : {bare_t:7.2f} s   peak RSS {bare_mem:7.0f} MiB")
    print(f"TorchRL Collector    : {coll_t:7.2f} s   peak RSS {coll_mem:7.0f} MiB")
    print(f"ratio collector/bare : {coll_t / bare_t:7.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
