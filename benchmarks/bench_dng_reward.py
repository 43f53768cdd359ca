"""The DNG reward on batches of model samples: this tree against a baseline commit, same verdicts.

    python benchmarks/bench_dng_reward.py [--baseline-ref 1a2b3c4] [--crystals 64] [--batches 3] [--rounds 3]

The baseline is the code of ``--baseline-ref`` (default: the commit before the reward-throughput
work of issue 9: serial, AMD fingerprints for every crystal), extracted with ``git archive`` into a
temporary directory; the current tree is the working copy. Each variant runs in a fresh process that
warms up on one batch (reference set, CHGNet, numba kernels, worker pool) and then times the reward
on ``--batches`` further batches of ``--crystals`` fresh samples of ``mp20_tiny`` (DDIM, 10 steps,
η = 1; the same crystals for both). Variants alternate for ``--rounds`` rounds; the medians of the
per-batch times are compared, and every per-crystal output (total, raw components, failure flags)
must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_REF = "4d095ed"  # issue-9 branch after merging main, before the reward-throughput changes

WORKER = r"""
import json, pickle, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from rewards import build_reward
batches = pickle.load(open(sys.argv[1], "rb"))
overrides = json.loads(sys.argv[4])
reward = build_reward("dng", overrides)
reward(batches[0])  # warm-up: reference set, CHGNet, numba kernels, worker pool
seconds, outputs = [], []
for batch in batches[1:]:
    start = time.perf_counter()
    out = reward(batch)
    seconds.append(time.perf_counter() - start)
    outputs.append({
        "total": out["total"].tolist(),
        "raw": {k: v.tolist() for k, v in out["raw"].items()},
        "failed": {k: v.tolist() for k, v in out["failed"].items()},
        "metric_seconds": reward.last_info["metric_seconds"],
    })
pickle.dump({"seconds": seconds, "outputs": outputs}, open(sys.argv[2], "wb"))
"""


def sample_batches(crystals: int, batches: int, seed: int) -> list:
    from crystal_env import load_model
    from crystal_env.sampling import generate

    model = load_model("mp20_tiny")
    model.configure_sampler("ddim", 10, 1.0)
    samples = generate(model, crystals * (batches + 1), seed=seed, progress=False)
    return [samples[i * crystals : (i + 1) * crystals] for i in range(batches + 1)]


def run_variant(root: Path, data: Path, threads: int, overrides: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as fh:
        result = Path(fh.name)
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-c", WORKER, str(data), str(result), str(threads), json.dumps(overrides)]
    subprocess.run(cmd, cwd=root, env=env, check=True)
    with open(result, "rb") as fh:
        out = pickle.load(fh)
    result.unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", default=BASELINE_REF)
    p.add_argument("--crystals", type=int, default=64)
    p.add_argument("--batches", type=int, default=3, help="timed batches per process (after one warm-up batch)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per variant, alternating")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("override", nargs="*", help="reward overrides for the current tree, e.g. num_workers=0")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.baseline_ref], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        data = tmp / "batches.pkl"
        with open(data, "wb") as fh:
            pickle.dump(sample_batches(args.crystals, args.batches, args.seed), fh)
        runs: dict[str, list[dict]] = {"baseline": [], "current": []}
        load = os.getloadavg()
        for _ in range(args.rounds):
            runs["baseline"].append(run_variant(baseline, data, args.threads, []))
            runs["current"].append(run_variant(REPO, data, args.threads, args.override))
        load_after = os.getloadavg()
    outputs = {k: [o for r in v for o in r["outputs"]] for k, v in runs.items()}
    identical = all(
        {key: a[key] for key in ("total", "raw", "failed")} == {key: b[key] for key in ("total", "raw", "failed")}
        for a, b in zip(outputs["baseline"], outputs["current"], strict=True)
    )
    median = {k: statistics.median(s for r in v for s in r["seconds"]) for k, v in runs.items()}
    print(
        f"DNG reward, {args.crystals} mp20_tiny samples per batch, {args.batches} batches x {args.rounds} rounds, "
        f"{len(os.sched_getaffinity(0))} cores, {args.threads} torch threads, load average {load[0]:.2f} -> "
        f"{load_after[0]:.2f}"
    )
    for name in ("baseline", "current"):
        per_metric: dict[str, list[float]] = {}
        for o in outputs[name]:
            for k, v in o["metric_seconds"].items():
                per_metric.setdefault(k, []).append(v)
        metrics = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in per_metric.items())
        print(f"{name:9s}: median {median[name]:.3f} s per batch  ({metrics})")
    print(f"speed-up baseline/current: {median['baseline'] / median['current']:.2f}x; identical outputs: {identical}")


if __name__ == "__main__":
    main()
