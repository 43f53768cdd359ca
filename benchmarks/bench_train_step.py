"""One full GRPO training step, phase by phase: rollout, decode, each reward metric, update.

    python benchmarks/bench_train_step.py --preset reference            # 32 crystals x 10 DDIM steps, DNG, CPU
    python benchmarks/bench_train_step.py --preset paper --device cuda  # 320 x 50 (experiment=paper) on a GPU
    python benchmarks/bench_train_step.py --preset reference reward=atomic_density agent.lr=3e-5   # + overrides

The step is exactly what ``scripts/train.py`` runs (same config composition, env, policy, agent):
a TorchRL ``Collector`` batch of whole trajectories, then ``agent.update``. Phases:

* ``rollout``: the collector's batch minus decode and reward — the denoiser transitions, the
  policy's sampling and the env/collector plumbing;
* ``decode``: VAE decoding of z_0 into pymatgen structures;
* ``reward/<metric>``: the self time of each shared reward metric (``CompositeReward.last_info``);
  ``reward/other``: the rest of the reward call (validity checks, components, normalisation);
* ``update``: the agent's update (advantages, loss forward/backward, optimiser steps).

``--warmup`` steps (model and reference loading, first-call costs) are not timed; the table
shows the mean over ``--steps`` timed steps, each phase's share of the step and the crystals per
second. Wall-clock on a shared machine is noisy: the load average is printed with the results.

``--baseline-ref REF`` also runs the same workload on the code of git commit ``REF`` (extracted
with ``git archive``): the two alternate in fresh processes for ``--rounds`` rounds, and the
ratio of their median step times is printed (e.g. the step before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchrl.collectors import Collector

from agents.factory import build_agent
from crystal_env.config import CONFIG_DIR
from crystal_env.factory import build_reward_fn, make_env
from crystal_env.policy import make_policy, make_reference_policy

REPO = Path(__file__).resolve().parents[1]

PRESETS = {
    # the workload of the side-by-side with the reference implementation (its RL step at equal model size)
    "reference": [
        "experiment=cpu",
        "env=ldm_mp20",
        "reward=dng",
        "env.batch_size=32",
        "env.group_size=8",
        "env.num_steps=10",
        "agent.num_inner_batch=2",
    ],
    "paper": ["experiment=paper", "env=ldm_mp20", "reward=dng"],
}


def compose_config(preset: str, device: str, overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*PRESETS[preset], f"device={device}", "run_dir=unused", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


class _Timed:
    """Wraps a callable and adds its wall time (synchronising CUDA first) to ``seconds[name]``."""

    def __init__(self, fn, name: str, seconds: dict[str, float], device: torch.device):
        self.fn, self.name, self.seconds, self.device = fn, name, seconds, device
        self.component_names = getattr(fn, "component_names", None)  # the env reads it from reward callables

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        _sync(self.device)
        self.seconds[self.name] += time.perf_counter() - start
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg: dict[str, Any], seed: int):
    """Env and agent as ``scripts/train.py`` builds them, from the public pieces only (so that the
    benchmark also runs on older commits' code, for ``--baseline-ref``)."""
    device = cfg["device"]
    reward_fn = build_reward_fn(cfg["reward"], **({"device": device} if device != "cpu" else {}))
    env = make_env(dict(cfg["env"]), reward=reward_fn, seed=seed, device=device)
    policy_cfg = dict(cfg.get("policy", {}))
    policy = make_policy(env.model, **policy_cfg)
    reference = make_reference_policy(env.model, **policy_cfg)
    agent = build_agent(
        dict(cfg["agent"]),
        policy,
        reference,
        latent_dim=env.model.latent_dim,
        num_steps=env.num_steps,
        reward_normalizer=getattr(reward_fn, "normalize", None),
    )
    return agent, env


def run(cfg: dict[str, Any], steps: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    device = torch.device(cfg["device"])
    torch.manual_seed(seed)
    agent, env = build(cfg, seed)
    reward_fn = env.reward_fn
    seconds: dict[str, float] = defaultdict(float)
    env.model.decode_structures = _Timed(env.model.decode_structures, "decode", seconds, device)
    env.reward_fn = _Timed(reward_fn, "reward", seconds, device)
    collector = Collector(
        env,
        agent.policy,
        frames_per_batch=env.batch_size.numel() * env.num_steps,
        total_frames=-1,
        auto_register_policy_transforms=False,
    )
    batches = iter(collector)
    records: list[dict[str, float]] = []
    try:
        for i in range(warmup + steps):
            seconds.clear()
            _sync(device)
            start = time.perf_counter()
            batch = next(batches)
            _sync(device)
            collected = time.perf_counter() - start
            start = time.perf_counter()
            agent.update(batch)
            _sync(device)
            update = time.perf_counter() - start
            if i < warmup:
                continue
            metric_seconds = dict(getattr(reward_fn, "last_info", {}).get("metric_seconds", {}))
            record = {
                "rollout": collected - seconds["decode"] - seconds["reward"],
                "decode": seconds["decode"],
                **{f"reward/{k}": v for k, v in metric_seconds.items()},
                "reward/other": seconds["reward"] - sum(metric_seconds.values()),
                "update": update,
            }
            record["step"] = collected + update
            records.append(record)
    finally:
        collector.shutdown()
    phases = list(dict.fromkeys(k for r in records for k in r))
    mean = {k: statistics.fmean(r.get(k, 0.0) for r in records) for k in phases}
    crystals = env.batch_size.numel()
    return {
        "crystals": crystals,
        "num_steps": env.num_steps,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
        "timed_steps": steps,
        "mean_seconds": mean,
        "median_step_seconds": statistics.median(r["step"] for r in records),
        "crystals_per_second": crystals / mean["step"],
        "load_average": os.getloadavg(),
    }


def table(result: dict[str, Any]) -> str:
    mean = result["mean_seconds"]
    step = mean["step"]
    rows = ["| phase | seconds | share |", "|---|---|---|"]
    rows += [f"| {k} | {v:.3f} | {100 * v / step:.1f} % |" for k, v in mean.items() if k != "step"]
    rows.append(f"| **step** | **{step:.3f}** | 100 % |")
    return "\n".join(rows)


def run_in_tree(root: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """This benchmark on the code under ``root`` (a fresh process; results through a JSON file)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--device", args.device]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--json", str(out)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([*cmd, *args.override], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
        for i in range(args.rounds):  # alternating, so machine noise hits both alike
            runs["baseline"].append(run_in_tree(baseline, args, tmp / f"baseline{i}.json"))
            runs["current"].append(run_in_tree(REPO, args, tmp / f"current{i}.json"))
    steps = {k: statistics.median(r["median_step_seconds"] for r in v) for k, v in runs.items()}
    for name, results in runs.items():
        best = min(results, key=lambda r: abs(r["median_step_seconds"] - steps[name]))
        label = args.baseline_ref if name == "baseline" else "current tree"
        print(f"{name} ({label}), the round with the median step:")
        print(table(best))
        loads = ", ".join(f"{r['load_average'][0]:.2f}" for r in results)
        print(f"median step over {args.rounds} rounds: {steps[name]:.3f} s; load averages: {loads}\n")
    print(f"step time baseline / current: {steps['baseline'] / steps['current']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (loading, first calls)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--baseline-ref", default=None, help="git commit to compare with (alternating fresh processes)")
    p.add_argument("--rounds", type=int, default=3, help="processes per variant with --baseline-ref")
    p.add_argument("override", nargs="*", help="Hydra overrides of the training config, e.g. env.num_steps=20")
    args = p.parse_args(argv)
    if args.baseline_ref:
        compare(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(args.preset, args.device, args.override)
    load_before = os.getloadavg()
    result = run(cfg, args.steps, args.warmup, seed=int(cfg.get("seed", 0)))
    result.update(preset=args.preset, overrides=args.override, load_average_before=load_before)
    print(
        f"GRPO step, preset {args.preset}: {result['crystals']} crystals x {result['num_steps']} steps on "
        f"{result['device']} ({result['cores']} cores, {result['torch_threads']} torch threads), "
        f"mean of {args.steps} steps after {args.warmup} warm-up"
    )
    print(table(result))
    print(
        f"crystals/s: {result['crystals_per_second']:.1f}   median step: {result['median_step_seconds']:.3f} s   "
        f"load average before/after: {load_before[0]:.2f} / {result['load_average'][0]:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
