"""Env overhead: a TorchRL Collector rollout vs a bare loop of ``transition`` + sampling, same work.

``python benchmarks/bench_env.py [--crystals 64 --steps 50 --repeats 3]``. Each variant runs in a
fresh process (so peak RSS is its own); the reward is a no-op so only the env/collector plumbing
and the denoiser are timed. Prints the time ratio collector / bare loop (target ≤ 1.15).
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

    env = make_env(
        "ldm_mp20", reward=zero_reward, batch_size=crystals, group_size=4, num_steps=steps, seed=seed
    )
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


def _run(name: str, crystals: int, steps: int, repeats: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    fn = {"bare": _bare_loop, "collector": _collector}[name]
    fn(crystals, 2, 0)  # warm-up: model load, first-call overheads
    times = [fn(crystals, steps, seed) for seed in range(repeats)]
    queue.put((statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(name: str, crystals: int, steps: int, repeats: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(name, crystals, steps, repeats, queue))
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
    bare_t, bare_mem = measure("bare", args.crystals, args.steps, args.repeats)
    coll_t, coll_mem = measure("collector", args.crystals, args.steps, args.repeats)
    print(f"{args.crystals} crystals x {args.steps} steps (median of {args.repeats})")
    print(f"bare transition loop : {bare_t:7.2f} s   peak RSS {bare_mem:7.0f} MiB")
    print(f"TorchRL Collector    : {coll_t:7.2f} s   peak RSS {coll_mem:7.0f} MiB")
    print(f"ratio collector/bare : {coll_t / bare_t:7.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
