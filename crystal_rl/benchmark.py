"""The environment as a benchmark for agents: equal reward-evaluation budgets, fixed seeds.

Two modes (in a checkout also ``python scripts/benchmark.py``):

* ``crystal-rl-benchmark --suite default``: the task suite, several seeds, bootstrap confidence
  intervals, best-within-budget and fresh-sample curves (see :mod:`crystal_rl.benchmark_suite`;
  ``--suite default --help`` lists its options);
* ``crystal-rl-benchmark --env ldm_mp20 --reward atomic_density --agents best_of_n,reinforce,grpo,ppo``:
  one task, one seed, described below.

Every agent gets the same env, reward, seed and number of reward evaluations (crystals scored during
training = steps x crystals per step). Afterwards each agent's final crystals are evaluated the same
way: ``--final-samples`` fresh samples of the fine-tuned model (for best_of_n: the best crystals it
kept), and all agents' final crystals are scored together in one reward call. Writes
``leaderboard.md``, ``leaderboard.csv`` and ``reward_vs_budget.png`` to ``--out``. Progress: one line
per agent (agent, seed, steps) and the trainer's bar (step, reward, KL, elapsed and remaining time).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from agents.checkpoint import load_checkpoint  # noqa: E402
from crystal_env import load_model  # noqa: E402
from crystal_env.factory import build_reward_fn  # noqa: E402
from crystal_env.policy import make_policy, make_reference_policy  # noqa: E402
from crystal_env.sampling import generate  # noqa: E402
from crystal_rl.common import non_negative_int, positive_int, quiet_third_party  # noqa: E402
from crystal_rl.config import ConfigError, compose_config  # noqa: E402
from crystal_rl.training import run_training  # noqa: E402
from rewards.evaluation import evaluate_structures  # noqa: E402


def agent_config(env: str, reward: str, agent: str, run_dir: Path, overrides: list[str]) -> dict:
    """The validated training config of one benchmark entry."""
    return compose_config(
        "train", [f"env={env}", f"reward={reward}", f"agent={agent}", f"run_dir={run_dir}", *overrides]
    )


@torch.no_grad()
def kl_to_base(run_dir: Path, base_name: str, cfg: dict, num: int, seed: int) -> float:
    """Monte-Carlo KL(π_θ ‖ π_base) per stochastic transition (mean over latent entries, like the
    policy log-probs): E over π_θ's own trajectories of log π_θ(a) − log π_base(a). ``seed`` fixes
    the trajectories (z_T and the policy's noise), whatever ran before in the process."""
    from crystal_env import CrystalDiffusionEnv

    with torch.random.fork_rng():  # the caller's RNG state is left as it was
        tuned = load_model(run_dir) if (run_dir / "model.pt").is_file() else load_model(base_name)
        base = load_model(base_name)
        env_cfg = cfg["env"]
        policy_cfg = dict(cfg.get("policy", {}))
        env = CrystalDiffusionEnv(
            tuned,
            lambda s: torch.zeros(len(s)),
            batch_size=num,
            group_size=1,
            num_steps=env_cfg["num_steps"],
            eta=env_cfg["eta"],
            sampler=env_cfg["sampler"],
        )
        base.configure_sampler(env_cfg["sampler"], env_cfg["num_steps"], env_cfg["eta"])
        env.set_seed(seed)  # also seeds torch's global RNG, which the policy's noise draws from
        traj = env.rollout(10**6, make_policy(tuned, **policy_cfg)).reshape(-1)
        ref = make_reference_policy(base, **policy_cfg)
        active = traj["stochastic"].reshape(-1)
        diff = traj["action_log_prob"] - ref.get_dist(traj).log_prob(traj["action"])
        return float(diff[active].mean())


def final_crystals(agent: str, run_dir: Path, base_name: str, cfg: dict, num: int, seed: int) -> list:
    if agent == "best_of_n":
        best = load_checkpoint(run_dir)["agent"]["best"]
        return list(best["next", "crystals"])[:num]
    model = load_model(run_dir) if (run_dir / "model.pt").is_file() else load_model(base_name)
    env_cfg = cfg["env"]
    model.configure_sampler(env_cfg["sampler"], env_cfg["num_steps"], env_cfg["eta"])
    return generate(model, num, seed=seed, progress=False)


def run(args: argparse.Namespace) -> pd.DataFrame:
    out = Path(args.out)
    agents = args.agents.split(",")
    configs = {}
    for agent in agents:  # every config is composed and validated before the first run starts
        run_dir = out / agent
        probe = agent_config(args.env, args.reward, agent, run_dir, args.override)
        crystals_per_step = probe["env"]["batch_size"]
        steps = max(1, args.budget // crystals_per_step)
        overrides = [
            f"trainer.max_steps={steps}",
            f"trainer.val_every={steps}",
            f"trainer.checkpoint_every={steps}",
            f"trainer.progress={not args.no_progress}",
            f"seed={args.seed}",
            *args.override,
        ]
        if agent == "best_of_n":
            overrides.append(f"agent.keep={args.final_samples}")
        configs[agent] = (agent_config(args.env, args.reward, agent, run_dir, overrides), steps, crystals_per_step)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, finals = [], {}, {}
    for i, agent in enumerate(agents, 1):
        cfg, steps, crystals_per_step = configs[agent]
        run_dir = Path(cfg["run_dir"])
        print(
            f"[{i}/{len(agents)}] agent={agent} seed={args.seed}: {steps} steps x {crystals_per_step} crystals "
            f"= {steps * crystals_per_step} reward evaluations",
            flush=True,
        )
        if (run_dir / "checkpoint.pt").is_file():  # a previous benchmark's run: this one starts afresh
            shutil.rmtree(run_dir)
        start = time.perf_counter()
        history = run_training(cfg)
        wall = time.perf_counter() - start
        print(f"[{i}/{len(agents)}] agent={agent}: evaluating {args.final_samples} final crystals", flush=True)
        crystals = final_crystals(agent, run_dir, cfg["env"]["model"], cfg, args.final_samples, args.seed)
        finals[agent] = crystals
        frame, summary = evaluate_structures(crystals, model=cfg["env"]["model"], progress=not args.no_progress)
        row = {
            "agent": agent,
            "final_val_reward": history[-1].get("val/reward", float("nan")),
            "msun": summary["msun"],
            "mean_e_above_hull": summary["mean_e_above_hull"],
            "novel": summary["novel"],
            "valid": summary["valid"],
            "kl_to_base": 0.0 if agent == "best_of_n" else kl_to_base(run_dir, cfg["env"]["model"], cfg, 32, args.seed),
            "wall_time_s": wall,
            "reward_calls": steps * crystals_per_step,
        }
        rows.append(row)
        curves[agent] = (
            [h["step"] * crystals_per_step for h in history if "train/reward" in h],
            [h["train/reward"] for h in history if "train/reward" in h],
        )
        print(
            f"[{i}/{len(agents)}] agent={agent} seed={args.seed}: final val reward {row['final_val_reward']:.4g}, "
            f"M.S.U.N. {row['msun']:.3f}, KL {row['kl_to_base']:.3g}, {wall:.0f} s",
            flush=True,
        )
    # score every agent's final crystals in one reward call, so batch-relative normalisations
    # (e.g. min-max "norm") put all agents on the same scale
    reward_fn = build_reward_fn(cfg["reward"], dataset=cfg["env"].get("dataset"))
    everything = [s for agent in finals for s in finals[agent]]
    scored = reward_fn(everything)
    start = 0
    for row in rows:
        n = len(finals[row["agent"]])
        row["final_samples_reward"] = float(scored["total"][start : start + n].mean())
        for name, values in scored["raw"].items():
            row[f"final_{name}"] = float(values[start : start + n].mean())
        start += n
    board = pd.DataFrame(rows).sort_values("final_samples_reward", ascending=False)
    board.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.md").write_text(board.to_markdown(index=False, floatfmt=".4g") + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for agent, (x, y) in curves.items():
        ax.plot(x, pd.Series(y).rolling(max(1, len(y) // 10), min_periods=1).mean(), label=agent)
    ax.set_xlabel("reward evaluations (crystals scored)")
    ax.set_ylabel("mean training-batch reward (smoothed)")
    ax.set_title(f"{args.env}, reward={args.reward}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_vs_budget.png", dpi=120)
    plt.close(fig)
    return board


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", help="run a task suite instead (a name in configs/benchmark/ or a YAML path)")
    p.add_argument("--env", default="ldm_mp20")
    p.add_argument("--reward", default="atomic_density")
    p.add_argument("--agents", default="best_of_n,reinforce,grpo,ppo")
    p.add_argument("--budget", type=positive_int, default=1920, help="reward evaluations (crystals scored) per agent")
    p.add_argument("--final-samples", type=positive_int, default=64)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the per-agent lines remain)")
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every agent, e.g. env.num_steps=10")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--suite" or a.startswith("--suite=") for a in argv):
        from crystal_rl import benchmark_suite

        benchmark_suite.main(argv)
        return
    args = parser().parse_args(argv)
    try:
        with quiet_third_party():
            board = run(args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(board.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
