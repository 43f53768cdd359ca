"""Reproduce the README's result tables: ``crystal-rl-reproduce [--tiny] [--out docs/results]``.

One pipeline, every seed explicit: GRPO fine-tuning of ``mp20_tiny`` on the DNG reward (the default
training command, training seed ``--train-seed``) → 500 samples of the base and of the fine-tuned
model (sampling seed ``--seed``) → evaluation of both (same seed) → the agent benchmark on
``atomic_density`` (seed ``--benchmark-seed``). It writes to ``--out``:

* ``results.json``: every number (training curve, both evaluations, the leaderboard) with the commit,
  the command, the machine and each stage's wall time;
* ``results.md``: the README's tables, rendered from ``results.json`` (``--render`` re-renders them
  without running anything);
* ``training_curves.png``, ``eval_base/`` and ``eval_grpo/`` (summary, per-crystal CSV, plots) and
  ``benchmark/`` (leaderboard, reward-vs-budget plot).

Runs, checkpoints and samples go to ``--work``. ``--tiny`` runs the same pipeline with tiny sizes in
well under a minute (for the test suite; its numbers mean nothing). Wall times depend on the machine
and its load. In a checkout, ``python scripts/reproduce_results.py`` is the same program.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from crystal_rl.common import git_commit, non_negative_int, positive_int, quiet_third_party

#: Training-table rows: (label, history key); KL at step 0 is taken from step 1 (no update before it).
TRAINING_ROWS = (
    ("`val/reward`", "val/reward"),
    ("`val/creativity` (raw)", "val/creativity"),
    ("`val/energy` (raw, −clamp(E_hull, 0, 1))", "val/energy"),
    ("`train/kl_div`", "train/kl_div"),
)
#: Evaluation-table rows: (label, summary key, is a fraction)
EVAL_ROWS = (
    ("structurally valid", "valid", True),
    ("SMACT valid", "smact_valid", True),
    ("unique", "unique", True),
    ("novel (vs the training crystals)", "novel", True),
    ("mean E_hull (CHGNet, eV/atom)", "mean_e_above_hull", False),
    ("metastable (E_hull ≤ 0.1)", "metastable", True),
    ("M.S.U.N.", "msun", True),
    ("S.U.N.", "sun", True),
    ("structure diversity 1/(1+FD)", "structure_diversity", False),
    ("composition diversity 1/(1+FD)", "composition_diversity", False),
)
TINY = {
    "train": [
        "trainer.max_steps=2",
        "trainer.val_every=1",
        "trainer.checkpoint_every=2",
        "trainer.val_batch_size=4",
        "env.num_steps=2",
        "env.batch_size=4",
        "env.group_size=2",
    ],
    "num_samples": 4,
    "benchmark": {"agents": "best_of_n,grpo", "budget": 4, "final_samples": 4},
    "benchmark_overrides": ["env.num_steps=2", "env.batch_size=4", "env.group_size=2", "trainer.val_batch_size=4"],
}
FULL = {
    "train": [],
    "num_samples": 500,
    "benchmark": {"agents": "best_of_n,reinforce,grpo,ppo", "budget": 1280, "final_samples": 64},
    "benchmark_overrides": [],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the pipeline in well under a minute")
    p.add_argument("--out", default=None, help="results folder (default: docs/results, or runs/reproduce_tiny/results)")
    p.add_argument("--work", default=None, help="runs and samples (default: runs/reproduce[_tiny])")
    p.add_argument("--train-seed", type=non_negative_int, default=0, help="seed of the GRPO training run")
    p.add_argument("--seed", type=non_negative_int, default=1, help="seed of sampling and evaluation")
    p.add_argument("--benchmark-seed", type=non_negative_int, default=0)
    p.add_argument("--num-samples", type=positive_int, default=None, help="samples per model (default 500; tiny: 4)")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--render", action="store_true", help="only re-render results.md from --out/results.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def training_table(history: list[dict[str, float]], every: int) -> dict[str, Any]:
    """Validation steps and, per row, the value at each (KL at step 0: that of step 1)."""
    steps = [h["step"] for h in history if "val/reward" in h]
    by_step = {h["step"]: h for h in history}
    rows = {}
    for _, key in TRAINING_ROWS:
        rows[key] = [by_step.get(max(s, 1) if key == "train/kl_div" else s, {}).get(key) for s in steps]
    return {"steps": steps, "rows": rows, "val_every": every}


def _fmt(value: Any, fraction: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{100 * value:.1f} %" if fraction else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    """The README's result tables as markdown, from ``results.json``."""
    meta = results["meta"]
    lines = [
        "<!-- generated by crystal-rl-reproduce from results.json; do not edit by hand -->",
        f"Generated by `{meta['command']}` at commit `{meta['commit']}` on {meta['date']}, "
        f"{meta['machine']}. Wall times (machine- and load-dependent): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in meta["wall_time_s"].items())
        + ".",
        "",
        f"### GRPO on DNG: training ({meta['train_command']}, training seed {meta['train_seed']})",
        "",
    ]
    table = results["training"]
    lines.append("| step | " + " | ".join(str(s) for s in table["steps"]) + " |")
    lines.append("|---|" + "---|" * len(table["steps"]))
    for label, key in TRAINING_ROWS:
        cells = [_fmt(v) for v in table["rows"][key]]
        if key == "train/kl_div" and cells:
            cells[0] += " (step 1)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base, tuned = results["eval"]["base"], results["eval"]["grpo"]
    lines += [
        "",
        f"### Base model vs GRPO fine-tuned ({base['n']} samples each, {meta['sampler']}, seed {meta['seed']})",
        "",
        "| metric | base | GRPO, `reward=dng` |",
        "|---|---|---|",
    ]
    for label, key, fraction in EVAL_ROWS:
        lines.append(f"| {label} | {_fmt(base.get(key), fraction)} | {_fmt(tuned.get(key), fraction)} |")
    if results.get("benchmark"):
        bench = results["benchmark"]
        lines += [
            "",
            f"### Agent benchmark ({bench['command']}, seed {bench['seed']})",
            "",
            bench["leaderboard_md"].rstrip(),
        ]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    import torch

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    )


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from crystal_env.training.rl import run_training
    from crystal_rl import benchmark, plot_training
    from crystal_rl.config import compose_config
    from crystal_rl.evaluate import evaluate_to_folder
    from crystal_rl.sample import sample_to_folder

    sizes = TINY if args.tiny else FULL
    out, work = Path(args.out), Path(args.work)
    num = args.num_samples or sizes["num_samples"]
    progress = not args.no_progress
    train_overrides = ["env=ldm_mp20", "reward=dng", f"seed={args.train_seed}", *sizes["train"]]
    cfg = compose_config(
        "train", [*train_overrides, f"run_dir={work / 'train'}", f"trainer.progress={progress}"]
    )  # validated before anything runs
    out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}

    start = time.perf_counter()
    history = run_training(cfg)
    wall["training"] = time.perf_counter() - start
    plot_training.main([str(work / "train"), "--out", str(out), "--prefix", "training"])

    env = cfg["env"]
    start = time.perf_counter()
    summaries = {}
    for name, model in (("base", env["model"]), ("grpo", str(work / "train"))):  # as crystal-rl-sample / -evaluate
        structures, _ = sample_to_folder(
            model,
            num,
            work / f"samples_{name}",
            args.seed,
            env["sampler"],
            env["num_steps"],
            env["eta"],
            progress=progress,
        )
        summaries[name] = evaluate_to_folder(
            structures, out / f"eval_{name}", model=env["model"], seed=args.seed, progress=progress
        )
    wall["sampling and evaluation"] = time.perf_counter() - start

    bench_result = None
    if not args.skip_benchmark:
        b = sizes["benchmark"]
        bench_argv = [
            "--env=ldm_mp20",
            "--reward=atomic_density",
            f"--agents={b['agents']}",
            f"--budget={b['budget']}",
            f"--final-samples={b['final_samples']}",
            f"--seed={args.benchmark_seed}",
            f"--out={out / 'benchmark'}",
            *(["--no-progress"] if not progress else []),
            *sizes["benchmark_overrides"],
        ]
        start = time.perf_counter()
        board = benchmark.run(benchmark.parser().parse_args(bench_argv))
        wall["benchmark"] = time.perf_counter() - start
        bench_result = {
            "command": "crystal-rl-benchmark " + " ".join(a for a in bench_argv if not a.startswith("--out=")),
            "seed": args.benchmark_seed,
            "leaderboard": board.to_dict(orient="records"),
            "leaderboard_md": board.to_markdown(index=False, floatfmt=".4g"),
        }

    return {
        "meta": {
            "command": "crystal-rl-reproduce" + (" " + shlex.join(argv) if argv else ""),
            "commit": git_commit(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": _machine(),
            "tiny": args.tiny,
            "train_command": "`crystal-rl-train " + " ".join(train_overrides) + "`",
            "train_seed": args.train_seed,
            "seed": args.seed,
            "sampler": f"{env['sampler']}, {env['num_steps']} steps, eta {env['eta']}",
            "wall_time_s": wall,
        },
        "training": training_table(history, cfg["trainer"]["val_every"]),
        "eval": summaries,
        "benchmark": bench_result,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    suffix = "_tiny" if args.tiny else ""
    args.out = args.out or ("runs/reproduce_tiny/results" if args.tiny else "docs/results")
    args.work = args.work or f"runs/reproduce{suffix}"
    out = Path(args.out)
    if args.render:
        results = json.loads((out / "results.json").read_text())
    else:
        with quiet_third_party():
            results = run(args, argv)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render(results))
    print(render(results))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
