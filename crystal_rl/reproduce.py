"""Reproduce the README's result tables: ``crystal-rl-reproduce [--tiny] [--out docs/results]``.

One pipeline, every seed explicit. For each experiment (``--experiments``, default all):
GRPO fine-tuning (training seed ``--train-seed``) → 500 samples of the base and of the fine-tuned
model (sampling seed ``--seed``) → evaluation of both (same seed; unrelaxed and, with
``--relax-steps``, relaxed) → top compositions. Experiments: ``dng_mp20`` (the default training
command, ``env=ldm_mp20 reward=dng``) and ``stability_perov5`` (``env=ldm_perov5 reward=stability``).
Then the agent benchmark suite (``crystal-rl-benchmark --suite default``: every agent, task and
seed, see that command). It writes to ``--out``:

* ``results.json``: every number (training curves, evaluations, the fine-tuned − base differences
  with 95 % confidence intervals over crystals as ``crystal-rl-compare`` computes them, the
  leaderboard) with the commit, the command, the machine and each stage's wall time, assembled from
  ``<name>/experiment.json``, the per-crystal CSVs and ``suite/suite.json``: running a subset (even
  concurrently, in separate processes) replaces only its own parts;
* ``results.md``: the README's tables, rendered from ``results.json`` (``--render`` re-renders them
  without running anything; it recomputes the differences from the CSVs and writes them back into
  ``results.json``);
* per experiment ``<name>/training_curves.png``, ``<name>/eval_base/`` and ``<name>/eval_grpo/``
  (summary, per-crystal CSV, plots), and ``suite/`` (the suite's leaderboard and budget curves; its
  runs, with their per-run ``result.json``, stay under ``--work``).

Runs, checkpoints and samples go to ``--work``. ``--tiny`` runs the same pipeline with tiny sizes in
a few minutes (for the test suite; its numbers mean nothing). Wall times depend on the machine
and its load. In a checkout, ``python scripts/reproduce_results.py`` is the same program.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from atomic_io import atomic_write_bytes
from crystal_rl.common import git_commit, machine_info, non_negative_int, positive_int, quiet_third_party
from crystal_rl.compare import CONVENTION, compare_evaluations, difference_cell

#: experiment name -> env, reward and the dataset its samples are evaluated against
EXPERIMENTS = {
    "dng_mp20": {"env": "ldm_mp20", "reward": "dng", "reference": "mp20_sample"},
    "stability_perov5": {
        "env": "ldm_perov5",
        "reward": "stability",
        "reference": "perov5",
        # ~12 min on 2 idle cores; the fine-tuned model evaluated is the one of the best validation
        # share <= 0.1 eV/atom (256 validation crystals every 50 steps, fixed noise; README "Results")
        "overrides": ["trainer.max_steps=1000", "trainer.val_batch_size=256", "trainer.best_metric=val/metastability"],
    },
}
#: Evaluation-table rows: (label, summary key, is a fraction)
EVAL_ROWS = (
    ("structurally valid", "valid", True),
    ("SMACT valid (charge-balanced)", "smact_valid", True),
    ("unique", "unique", True),
    ("novel (vs all splits of the reference dataset)", "novel", True),
    ("novel formula (vs all Materials Project compositions)", "novel_formula", True),
    ("distinct formulas (valid crystals)", "distinct_formulas", False),
    ("hull coverage", "hull_coverage", True),
    ("mean E_hull, unrelaxed (CHGNet, eV/atom)", "mean_e_above_hull", False),
    ("median E_hull, unrelaxed", "median_e_above_hull", False),
    ("metastable (E_hull ≤ 0.1), unrelaxed", "metastable", True),
    ("stable (E_hull ≤ 0), unrelaxed", "stable", True),
    ("M.S.U.N., unrelaxed", "msun", True),
    ("S.U.N., unrelaxed", "sun", True),
    ("mean E_hull, relaxed", "mean_e_above_hull_relaxed", False),
    ("median E_hull, relaxed", "median_e_above_hull_relaxed", False),
    ("metastable, relaxed", "metastable_relaxed", True),
    ("stable, relaxed", "stable_relaxed", True),
    ("M.S.U.N., relaxed", "msun_relaxed", True),
    ("S.U.N., relaxed", "sun_relaxed", True),
    ("structure diversity 1/(1+FD)", "structure_diversity", False),
    ("composition diversity 1/(1+FD)", "composition_diversity", False),
)
#: summary key -> the per-crystal column its difference is computed from (others: the same name)
SUMMARY_TO_COLUMN = {"mean_e_above_hull": "e_above_hull", "mean_e_above_hull_relaxed": "e_above_hull_relaxed"}
TOP_COMPOSITIONS = 8
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
    "relax_steps": 2,
    "suite": "tiny",
}
FULL = {
    "train": [],
    "num_samples": 500,
    "relax_steps": 20,
    "suite": "default",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the pipeline in a few minutes")
    p.add_argument("--out", default=None, help="results folder (default: docs/results, or runs/reproduce_tiny/results)")
    p.add_argument("--work", default=None, help="runs and samples (default: runs/reproduce[_tiny])")
    p.add_argument("--train-seed", type=non_negative_int, default=0, help="seed of the GRPO training run")
    p.add_argument("--seed", type=non_negative_int, default=1, help="seed of sampling and evaluation")
    p.add_argument("--num-samples", type=positive_int, default=None, help="samples per model (default 500; tiny: 4)")
    p.add_argument(
        "--experiments", default=",".join(EXPERIMENTS), help=f"comma-separated subset of {list(EXPERIMENTS)}"
    )
    p.add_argument(
        "--relax-steps", type=non_negative_int, default=None, help="FIRE steps of the relaxed evaluation (default 20)"
    )
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument(
        "--render",
        action="store_true",
        help="only re-render results.md from --out/results.json (differences recomputed from the CSVs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def training_table(history: list[dict[str, float]], every: int) -> dict[str, Any]:
    """Validation steps and, per row (``val/reward``, each raw ``val/<component>``, ``train/kl_div``),
    the value at each step (KL at step 0: that of step 1, as no update precedes it)."""
    steps = [h["step"] for h in history if "val/reward" in h]
    by_step = {h["step"]: h for h in history}
    not_rows = ("/weighted/", "/failed/")  # the components' contributions and failure shares

    def is_row(key: str) -> bool:
        return key.startswith("val/") and key != "val/reward" and not any(n in key for n in not_rows)

    keys = ["val/reward"] + sorted({k for h in history for k in h if is_row(k)})
    rows = {key: [by_step.get(s, {}).get(key) for s in steps] for key in keys}
    rows["train/kl_div"] = [by_step.get(max(s, 1), {}).get("train/kl_div") for s in steps]
    return {"steps": steps, "rows": rows, "val_every": every}


def top_compositions(per_crystal: Path, k: int = TOP_COMPOSITIONS) -> list[list]:
    """The ``k`` most frequent reduced formulas of the valid crystals: [formula, share of valid]."""
    import pandas as pd

    frame = pd.read_csv(per_crystal)
    valid = frame[frame["valid"]]
    counts = valid["formula"].value_counts()
    return [[f, float(c / max(len(valid), 1))] for f, c in counts.head(k).items()]


def _fmt(value: Any, fraction: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, int) and not fraction:
        return str(value)
    return f"{100 * value:.1f} %" if fraction else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    """The README's result tables as markdown, from ``results.json``."""
    meta = results["meta"]
    lines = [
        "<!-- generated by crystal-rl-reproduce from results.json; do not edit by hand -->",
        f"Assembled by `{meta['command']}` at commit `{meta['commit']}` on {meta['date']}, {meta['machine']}.",
    ]
    for name, exp in results["experiments"].items():
        em = exp["meta"]
        lines += [
            "",
            f"### `{name}`: {em['train_command']} (training seed {em['train_seed']})",
            "",
            f"Produced by `{em['command']}` at commit `{em['commit']}` ({em['machine']}).",
            "",
            *([f"Fine-tuned model evaluated: {em['fine_tuned_model']}.", ""] if "fine_tuned_model" in em else []),
            "Wall times (machine- and load-dependent): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in em["wall_time_s"].items())
            + ".",
            "",
        ]
        table = exp["training"]
        lines.append("| step | " + " | ".join(str(s) for s in table["steps"]) + " |")
        lines.append("|---|" + "---|" * len(table["steps"]))
        for key, values in table["rows"].items():
            cells = [_fmt(v) for v in values]
            if key == "train/kl_div" and cells:
                cells[0] += " (step 1)"
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        base, tuned = exp["eval"]["base"], exp["eval"]["grpo"]
        lines += [
            "",
            f"{base['n']} samples each ({em['sampler']}, seed {em['seed']}); relaxed: CHGNet FIRE, "
            f"{em['relax_steps']} steps, positions and cell; novelty against `{em['reference']}`:",
            "",
            "| metric | base | GRPO | GRPO − base [95 % CI] |",
            "|---|---|---|---|",
        ]
        differences = exp.get("difference", {})
        for label, key, fraction in EVAL_ROWS:
            if key in base or key in tuned:
                row = differences.get(SUMMARY_TO_COLUMN.get(key, key))
                lines.append(
                    f"| {label} | {_fmt(base.get(key), fraction)} | {_fmt(tuned.get(key), fraction)} | "
                    f"{difference_cell(row) if row else '–'} |"
                )
        if differences:
            lines.append(f"\nGRPO − base: {CONVENTION}.")
        for model in ("base", "grpo"):
            top = ", ".join(f"{f} {100 * x:.1f} %" for f, x in exp["top_compositions"][model])
            lines.append(f"\nTop compositions ({model}, share of valid crystals): {top}")
    if results.get("suite"):
        suite = results["suite"]
        lines += [
            "",
            f"### Agent benchmark suite (`{suite['command']}`, commit `{suite['commit']}`)",
            "",
            suite["leaderboard_md"].rstrip(),
        ]
    return "\n".join(lines) + "\n"


def run_experiment(name: str, args: argparse.Namespace, sizes: dict, out: Path, work: Path) -> dict[str, Any]:
    """Train, sample base and fine-tuned, evaluate both: one entry of ``results["experiments"]``."""
    from crystal_rl import plot_training
    from crystal_rl.config import compose_config
    from crystal_rl.evaluate import evaluate_to_folder
    from crystal_rl.sample import sample_to_folder
    from crystal_rl.training import BEST_MODEL_NAME, best_model_meta, run_training

    spec = EXPERIMENTS[name]
    out, work = out / name, work / name
    num = args.num_samples or sizes["num_samples"]
    relax = sizes["relax_steps"] if args.relax_steps is None else args.relax_steps
    progress = not args.no_progress
    train_overrides = [
        f"env={spec['env']}",
        f"reward={spec['reward']}",
        f"seed={args.train_seed}",
        *spec.get("overrides", []),
        *sizes["train"],
    ]
    cfg = compose_config(
        "train", [*train_overrides, f"run_dir={work / 'train'}", f"trainer.progress={progress}"]
    )  # validated before anything runs
    out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}

    start = time.perf_counter()
    history = run_training(cfg)
    wall["training"] = time.perf_counter() - start
    plot_training.main([str(work / "train"), "--out", str(out), "--prefix", "training"])

    env, trainer = cfg["env"], cfg["trainer"]
    best = best_model_meta(work / "train") if trainer["best_metric"] else None
    tuned = work / "train" / BEST_MODEL_NAME if best else work / "train"  # with best_metric: its model
    start = time.perf_counter()
    summaries, tops = {}, {}
    for label, model in (("base", env["model"]), ("grpo", str(tuned))):  # as crystal-rl-sample / -evaluate
        structures, _ = sample_to_folder(
            model,
            num,
            work / f"samples_{label}",
            args.seed,
            env["sampler"],
            env["num_steps"],
            env["eta"],
            progress=progress,
        )
        summaries[label] = evaluate_to_folder(
            structures,
            out / f"eval_{label}",
            reference=spec["reference"],
            model=env["model"],
            seed=args.seed,
            progress=progress,
            relax_steps=relax,
        )
        tops[label] = top_compositions(out / f"eval_{label}" / "per_crystal.csv")
    wall["sampling and evaluation"] = time.perf_counter() - start
    return {
        "meta": {
            "train_command": "`crystal-rl-train " + " ".join(train_overrides) + "`",
            "train_seed": args.train_seed,
            "fine_tuned_model": (
                f"{BEST_MODEL_NAME}: best {best['metric']} ({best['value']:.4g}) at step {best['step']}"
                if best
                else f"model.pt: step {history[-1]['step']}"
            ),
            "seed": args.seed,
            "reference": spec["reference"],
            "relax_steps": relax,
            "sampler": f"{env['sampler']}, {env['num_steps']} steps, eta {env['eta']}",
            "wall_time_s": wall,
        },
        "training": training_table(history, cfg["trainer"]["val_every"]),
        "eval": summaries,
        "top_compositions": tops,
    }


def run(args: argparse.Namespace, argv: list[str]) -> None:
    """Run the selected experiments (and the benchmark); each writes its own JSON part under ``--out``."""
    from crystal_rl import benchmark_suite

    sizes = TINY if args.tiny else FULL
    out, work = Path(args.out), Path(args.work)
    progress = not args.no_progress
    names = [n for n in args.experiments.split(",") if n]
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise SystemExit(f"error: unknown experiment(s) {unknown}; valid: {list(EXPERIMENTS)}")
    command = "crystal-rl-reproduce" + (" " + shlex.join(argv) if argv else "")
    commit = git_commit()  # the code the runs start from
    for name in names:
        result = run_experiment(name, args, sizes, out, work)
        result["meta"].update(command=command, commit=commit, machine=machine_info(), tiny=args.tiny)
        atomic_write_bytes(out / name / "experiment.json", (json.dumps(result, indent=2, default=str) + "\n").encode())

    if not args.skip_benchmark:
        suite_argv = [
            "--suite",
            sizes["suite"],
            "--out",
            str(work / "suite"),
            *(["--no-progress"] if not progress else []),
        ]
        benchmark_suite.run_suite(benchmark_suite.parser().parse_args(suite_argv), suite_argv)
        (out / "suite").mkdir(parents=True, exist_ok=True)
        for path in (work / "suite").iterdir():  # the aggregates; the runs stay in --work
            if path.is_file():
                shutil.copy2(path, out / "suite" / path.name)


def _suite_part(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "suite.json").read_text())["meta"]
    return {
        "command": meta["command"],
        "commit": meta["commit"],
        "machine": meta["machine"],
        "runs_done": meta["runs_done"],
        "runs": meta["runs"],
        "leaderboard_md": (folder / "leaderboard.md").read_text(),
    }


def add_differences(experiments: dict[str, Any], out: Path) -> None:
    """Each experiment's fine-tuned − base differences with 95 % CIs, from the per-crystal CSVs
    under ``out`` (experiments whose CSVs are not there keep what they have)."""
    for name, exp in experiments.items():
        base, tuned = out / name / "eval_base", out / name / "eval_grpo"
        if (base / "per_crystal.csv").is_file() and (tuned / "per_crystal.csv").is_file():
            exp["difference"] = compare_evaluations(base, tuned)


def assemble(out: Path, argv: list[str]) -> dict[str, Any]:
    """``results.json`` from the parts under ``out`` (experiments in :data:`EXPERIMENTS` order)."""
    experiments = {
        name: json.loads((out / name / "experiment.json").read_text())
        for name in EXPERIMENTS
        if (out / name / "experiment.json").is_file()
    }
    add_differences(experiments, out)
    suite = out / "suite" / "suite.json"
    return {
        "meta": {
            "command": "crystal-rl-reproduce" + (" " + shlex.join(argv) if argv else ""),
            "commit": git_commit(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(),
        },
        "experiments": experiments,
        "suite": _suite_part(out / "suite") if suite.is_file() else None,
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
        add_differences(results["experiments"], out)
    else:
        with quiet_third_party():
            run(args, argv)
        results = assemble(out, argv)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=str) + "\n").encode())
    tables = render(results)
    atomic_write_bytes(out / "results.md", tables.encode())
    print(tables)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
