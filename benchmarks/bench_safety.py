"""Cost of the rewards' fault isolation on the common path (not a test).

    python benchmarks/bench_safety.py [--reward dng] [--num 64] [--repeats 5]

Scores the same batch of real crystals (MP-20 test rows, rattled copies, exact copies) with the
reward as shipped (per-crystal scopes and guarded metrics, 60 s budgets armed with SIGALRM), with
budgets off (``crystal_timeout: null``, error isolation only), and with the isolation layer
replaced by direct calls (the baseline). The three alternate within one process; medians of
``--repeats``. Also times one empty crystal scope. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

from crystal_env.data import load_dataset
from rewards import build_reward, safety


def crystals(num: int) -> list:
    """Test-split rows, a third of them rattled by 0.05 Å; repeats are exact copies."""
    base = load_dataset("mp20_sample", "test").structures
    out = []
    for i in range(num):
        s = base[i % len(base) // 2].copy()
        if i % 3 == 1:
            s.perturb(0.05, seed=i)
        out.append(s)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", default="dng")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    batch = crystals(args.num)
    guarded = build_reward(args.reward)
    no_budget = build_reward(args.reward, overrides=["crystal_timeout=null"])
    guarded(batch)  # warm up: models, reference, caches
    no_budget(batch)
    run_guarded, crystal_scope = safety.run_guarded, safety.crystal_scope

    def unguarded(structures):
        safety.run_guarded = lambda batch, label, fn: fn(batch)
        safety.crystal_scope = lambda i: nullcontext()
        import rewards.novelty as novelty

        novelty.crystal_scope = safety.crystal_scope
        try:
            return guarded(structures)
        finally:
            safety.run_guarded, safety.crystal_scope = run_guarded, crystal_scope
            novelty.crystal_scope = crystal_scope

    times: dict[str, list[float]] = {"baseline (no isolation)": [], "budgets off": [], "as shipped (60 s budgets)": []}
    fns = dict(zip(times, (unguarded, no_budget, guarded), strict=True))
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["baseline (no isolation)"])
    print(f"| {args.reward} reward, {args.num} crystals (median of {args.repeats}) | seconds | ratio |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.3f} |")

    from rewards.metrics import RewardBatch

    scope_batch = RewardBatch(batch[:1], crystal_timeout=60.0)
    n = 20000
    token = safety._ACTIVE.set(safety._Scope(scope_batch, "bench"))
    start = time.perf_counter()
    for _ in range(n):
        with safety.crystal_scope(0):
            pass
    per_scope = (time.perf_counter() - start) / n
    safety._ACTIVE.reset(token)
    print(f"\none crystal scope with an armed budget: {per_scope * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
