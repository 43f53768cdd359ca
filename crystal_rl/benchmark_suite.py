"""The agent benchmark as a task suite: ``crystal-rl-benchmark --suite default``.

A suite (``configs/benchmark/<name>.yaml``, or a path) lists agents, seeds and tasks. Every agent
trains on every task with every seed at the same budget of reward evaluations (crystals scored
during training), and each run answers two questions at curve points along its budget:

(a) **best within budget**: the mean task score of the ``top_k`` best *distinct* crystals among the
    first b crystals scored in training (the baseline: best-of-n, which never learns);
(b) **fresh samples**: the mean task score of ``fresh_samples`` unfiltered samples of the current
    policy, drawn with a validation seed fixed per seed (the baseline: the base model, which is what
    best-of-n's fresh samples are).

The task score of a crystal is ``Σ weight × raw reward component`` (``score:`` in the task), the raw
values the reward computed in its batch; invalid or failed crystals have the component's worst value.
At the end of a run the last fresh samples are evaluated (validity, uniqueness, novelty, E_hull,
M.S.U.N.) and the KL to the base model is estimated. Over seeds: mean and 95 % percentile bootstrap
confidence interval. Each run writes ``<out>/<task>/<agent>/seed<k>/result.json`` when it finishes; a
re-run skips runs whose result matches the configuration, so a killed suite resumes; ``--render``
rebuilds ``suite.json``, ``leaderboard.md``, ``leaderboard.csv`` and ``curves_<task>.png`` from the
results without running anything.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomic_io import atomic_write_bytes
from crystal_env.config import CONFIG_DIR, config_names, load_config
from crystal_rl.common import git_commit, machine_info, quiet_third_party
from crystal_rl.config import ConfigError, compose_config, validate_suite_config, validate_train_config
from crystal_rl.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, bootstrap_ci

SUITE_GROUP = "benchmark"
#: Crystals count as the same in (a) when their reduced formulas are equal and their scores round to
#: the same multiple of this.
DISTINCT_TOL = 1e-6
RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"  # the traceback of a run that failed (removed when it succeeds)
#: final-evaluation summary keys kept per run
FINAL_KEYS = (
    "n",
    "valid",
    "smact_valid",
    "unique",
    "novel",
    "novel_formula",
    "distinct_formulas",
    "hull_coverage",
    "mean_e_above_hull",
    "median_e_above_hull",
    "metastable",
    "stable",
    "msun",
    "sun",
)
#: aggregated per task × agent: key -> leaderboard column
METRICS = {
    "best_within_budget": "(a) best top-k within budget",
    "fresh_score": "(b) fresh samples at budget",
    "valid": "valid (final fresh)",
    "msun": "M.S.U.N. (final fresh)",
    "mean_e_above_hull": "mean E_hull (final fresh, eV/atom)",
    "kl_to_base": "KL to base",
    "wall_time_s": "training wall time (s)",
}
CONVENTIONS = {
    "score": "per crystal: sum over the task's score components of weight x raw reward component, as the reward "
    "computed it in its batch; invalid or failed crystals have the component's worst value (a fixed worst, "
    "or the lowest valid value of the batch for unbounded components such as atomic_density)",
    "best_within_budget": "mean score of the top_k best distinct crystals among the first b crystals scored in "
    f"training; distinct: different reduced formula, or scores rounded to multiples of {DISTINCT_TOL} differ; "
    "null while fewer than top_k distinct crystals exist",
    "fresh_score": "mean score of fresh_samples unfiltered samples of the policy at that point (the trainer's "
    "validation, seeded with trainer.val_seed + seed); evaluations 0 is the base model",
    "ci": f"{int(CI_LEVEL * 100)} % percentile bootstrap over seeds ({BOOTSTRAP_RESAMPLES} resamples, RNG seed "
    f"{BOOTSTRAP_SEED}); with few seeds it is coarse (with 3 seeds it is exactly the seeds' range)",
    "crossing": "first curve point from which the agent's mean exceeds the baseline's mean at every later "
    "point; never extrapolated",
}


# ---- per-crystal scores -------------------------------------------------------------------------------
class ScoreRecorder:
    """A reward callable that forwards every call and keeps each scored crystal's raw components,
    task score (``Σ weights[c] × raw[c]``) and reduced formula, in call order; with
    ``keep_structures``, also the last call's structures. Other attributes are the wrapped reward's."""

    def __init__(self, reward_fn: Any, weights: Mapping[str, float], keep_structures: bool = False):
        self.reward_fn = reward_fn
        self.weights = dict(weights)
        self.keep_structures = keep_structures
        self.calls: list[dict[str, Any]] = []
        self.last_structures: list | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "reward_fn":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.reward_fn, name)

    def __call__(self, structures: Sequence[Any]) -> Any:
        out = self.reward_fn(structures)
        raw_td = out["raw"] if hasattr(out, "keys") and "raw" in out.keys() else {}
        raw = {k: [float(v) for v in np.asarray(raw_td[k], dtype=float).reshape(-1)] for k in raw_td.keys()}
        missing = sorted(set(self.weights) - set(raw))
        if missing:
            raise KeyError(f"The reward gives no raw component(s) {missing} of the task score; it has {sorted(raw)}")
        n = len(structures)
        scores = [sum(w * raw[c][i] for c, w in self.weights.items()) for i in range(n)]
        self.calls.append({"score": scores, "formula": [_formula(s) for s in structures], "raw": raw})
        if self.keep_structures:
            self.last_structures = list(structures)
        return out

    def column(self, key: str) -> list:
        """``score`` or ``formula`` of every recorded crystal, in order."""
        return [x for call in self.calls for x in call[key]]

    def raw_columns(self) -> dict[str, list[float]]:
        names = self.calls[0]["raw"] if self.calls else {}
        return {k: [x for call in self.calls for x in call["raw"][k]] for k in names}


def _formula(structure: Any) -> str | None:
    if structure is None:
        return None
    try:
        return structure.composition.reduced_formula
    except Exception:  # noqa: BLE001 - a degenerate structure has no formula: it counts as formula None
        return None


def top_k_distinct(scores: Sequence[float], formulas: Sequence[str | None], k: int) -> list[int]:
    """Indices of the ``k`` best distinct crystals (highest score first; ties: earliest first).
    Distinct: a different (reduced formula, score rounded to :data:`DISTINCT_TOL`) key; the key's best
    crystal represents it. Non-finite scores rank last."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i] if math.isfinite(scores[i]) else math.inf)
    picked, seen = [], set()
    for i in order:
        if len(picked) == k:
            break
        key = (formulas[i], round(scores[i] / DISTINCT_TOL) if math.isfinite(scores[i]) else None)
        if key not in seen:
            seen.add(key)
            picked.append(i)
    return picked


def best_within_budget(
    scores: Sequence[float], formulas: Sequence[str | None], budgets: Sequence[int], k: int
) -> list[float | None]:
    """(a) at each budget b: the mean score of the top ``k`` distinct crystals among the first b
    (``None`` while fewer than ``k`` distinct crystals exist). Non-decreasing in b."""
    out: list[float | None] = []
    for b in budgets:
        top = top_k_distinct(scores[:b], formulas[:b], k)
        out.append(float(np.mean([scores[i] for i in top])) if len(top) == k else None)
    return out


# ---- statistics ---------------------------------------------------------------------------------------
def first_crossing(
    budgets: Sequence[int], agent: Sequence[float | None], baseline: Sequence[float | None]
) -> int | None:
    """The first budget from which ``agent`` exceeds ``baseline`` at every later measured point (a lead
    that is lost again does not count), else None."""
    crossing = None
    for b, a, base in zip(budgets, agent, baseline, strict=True):
        ahead = a is not None and base is not None and math.isfinite(a) and math.isfinite(base) and a > base
        if not ahead:
            crossing = None
        elif crossing is None:
            crossing = b
    return crossing


# ---- the suite ----------------------------------------------------------------------------------------
@dataclass
class AgentSpec:
    name: str  # the name in results and tables: the config name, or the YAML file's stem
    config: dict[str, Any] | None  # a YAML file's content; None: the bundled config group entry


def load_suite(name: str) -> tuple[dict[str, Any], str]:
    """The validated suite ``configs/benchmark/<name>.yaml`` (or a path) and where it came from."""
    try:
        cfg = load_config(SUITE_GROUP, name)
    except ValueError as e:
        raise ConfigError(str(e).replace(f"Unknown {SUITE_GROUP} config", "Unknown benchmark suite")) from None
    path = Path(name)
    source = str(path) if path.suffix in (".yaml", ".yml") and path.is_file() else f"{CONFIG_DIR / SUITE_GROUP}/{name}"
    return validate_suite_config(cfg), source


def resolve_agent(entry: str) -> AgentSpec:
    """A bundled agent config name, or the path of an agent YAML file (one ``_target_`` + arguments)."""
    path = Path(entry).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"Config key 'agents': no agent YAML file at {entry!r}")
        cfg = load_config("agent", path)
        if not isinstance(cfg, dict) or "_target_" not in cfg:
            raise ConfigError(f"Config key 'agents': {entry!r} must be a mapping with a _target_ (the agent class)")
        return AgentSpec(path.stem, cfg)
    if entry not in config_names("agent"):
        raise ConfigError(
            f"Config key 'agents': unknown agent {entry!r}; valid: {config_names('agent')}, or a path to an agent .yaml"
        )
    return AgentSpec(entry, None)


def compose_run(task: dict, agent: AgentSpec, overrides: Sequence[str]) -> dict[str, Any]:
    """The validated training config of one run."""
    from hydra.errors import HydraException

    choice = [] if agent.config is not None else [f"agent={agent.name}"]
    try:
        cfg = compose_config("train", [f"env={task['env']}", f"reward={task['reward']}", *choice, *overrides])
    except HydraException as e:
        raise ConfigError(f"task {task['name']!r}, agent {agent.name!r}: {str(e).splitlines()[0]}") from None
    if agent.config is not None:
        cfg["agent"] = copy.deepcopy(agent.config)
        cfg = validate_train_config(cfg)
    return cfg


def run_plan(task: dict, batch_size: int, scale: float, index: int) -> dict[str, Any]:
    """Training steps, curve spacing (steps) and curve points (evaluations) of a task.

    At scale 1 the budget and the curve spacing must be multiples of the batch (crystals per step);
    otherwise each is scaled and rounded to whole steps (at least one)."""
    prefix = f"tasks.{index}."
    if scale == 1.0:
        for key in ("budget", "curve_every"):
            if task[key] % batch_size:
                raise ConfigError(
                    f"Config key {prefix + key!r} ({task[key]}) must be a multiple of env.batch_size ({batch_size}), "
                    "the crystals scored per training step"
                )
        steps, every = task["budget"] // batch_size, task["curve_every"] // batch_size
    else:
        steps = max(1, round(task["budget"] * scale / batch_size))
        every = min(steps, max(1, round(task["curve_every"] * scale / batch_size)))
    points = sorted({*range(every, steps + 1, every), steps})
    if task["top_k"] > points[0] * batch_size:
        raise ConfigError(
            f"Config key {prefix + 'top_k'!r} ({task['top_k']}) exceeds the crystals scored by the first curve "
            f"point ({points[0] * batch_size})"
        )
    return {"steps": steps, "every": every, "batch_size": batch_size, "points": [p * batch_size for p in points]}


def slug(name: str) -> str:
    return name.replace("/", "_")


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(_clean(data), indent=1, allow_nan=False) + "\n").encode())


@dataclass
class Run:
    task: dict
    agent: AgentSpec
    seed: int
    cfg: dict[str, Any]
    plan: dict[str, Any]
    learns: bool
    key: dict[str, Any]  # what a finished result must match to be reused
    dir: Path


def plan_runs(
    suite: dict, agents: list[AgentSpec], out: Path, extra: Sequence[str], scale: float, progress: bool
) -> list[Run]:
    """Every run of the suite, composed and validated before the first one starts."""
    from hydra.utils import get_class

    from crystal_env.factory import build_reward_fn

    runs = []
    for index, task in enumerate(suite["tasks"]):
        components = None
        for agent in agents:
            overrides = [*suite["overrides"], *task["overrides"], *extra]
            probe = compose_run(task, agent, [*overrides, "run_dir=null"])
            if components is None:  # building the reward loads no model: cheap
                components = list(getattr(build_reward_fn(probe["reward"]), "component_names", []))
                unknown = sorted(set(task["score"]) - set(components))
                if unknown:
                    raise ConfigError(
                        f"Config key 'tasks.{index}.score' names {unknown}, not raw components of reward "
                        f"{task['reward']!r}; valid: {components}"
                    )
            plan = run_plan(task, probe["env"]["batch_size"], scale, index)
            learns = bool(getattr(get_class(probe["agent"]["_target_"]), "learns", True))
            for seed in suite["seeds"]:
                run_dir = out / slug(task["name"]) / agent.name / f"seed{seed}"
                cfg = compose_run(
                    task,
                    agent,
                    [
                        *overrides,
                        f"seed={seed}",
                        f"run_dir={run_dir / 'run'}",
                        f"trainer.max_steps={plan['steps']}",
                        # an agent that never learns samples the base model throughout: validate at 0 and the end
                        f"trainer.val_every={plan['every'] if learns else plan['steps']}",
                        f"trainer.checkpoint_every={plan['steps']}",
                        f"trainer.val_batch_size={task['fresh_samples']}",
                        f"trainer.val_seed={probe['trainer']['val_seed'] + seed}",
                        f"trainer.progress={progress}",
                    ],
                )
                stable = {k: v for k, v in cfg.items() if k != "run_dir"}
                stable["trainer"] = {k: v for k, v in cfg["trainer"].items() if k != "progress"}
                key = {
                    "train_config": stable,
                    "task": {k: task[k] for k in ("reference", "score", "top_k", "fresh_samples")},
                    "plan": plan,
                    "kl_samples": suite["kl_samples"],
                }
                runs.append(Run(task, agent, seed, cfg, plan, learns, json.loads(json.dumps(key)), run_dir))
    return runs


def read_result(run: Run) -> dict[str, Any] | None:
    """The run's finished result if it matches the run's configuration."""
    path = run.dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("key") == run.key else None


def execute(run: Run, progress: bool) -> dict[str, Any]:
    """Train one (task, agent, seed), record its curves, evaluate its final fresh samples."""
    from crystal_rl.benchmark import kl_to_base
    from crystal_rl.training import run_training
    from rewards.evaluation import evaluate_structures
    from rewards.reference import load_reference

    task, plan = run.task, run.plan
    if run.dir.exists():  # an unfinished or outdated run: start afresh
        shutil.rmtree(run.dir)
    recorders: dict[str, ScoreRecorder] = {}

    def wrap(reward_fn: Any, role: str) -> ScoreRecorder:
        recorders[role] = ScoreRecorder(reward_fn, task["score"], keep_structures=role == "validation")
        return recorders[role]

    start = time.perf_counter()
    history = run_training(run.cfg, reward_wrapper=wrap)
    train_wall = time.perf_counter() - start
    train, val = recorders["train"], recorders["validation"]
    scores, formulas = train.column("score"), train.column("formula")
    evaluations = plan["steps"] * plan["batch_size"]
    if len(scores) != evaluations:
        raise RuntimeError(f"{run.dir}: {len(scores)} crystals were scored in training, expected {evaluations}")
    fresh = [float(np.mean(call["score"])) for call in val.calls]
    if not run.learns:  # the policy never changes: the same fresh samples at every point
        fresh = [fresh[0]] * (len(plan["points"]) + 1)
    if len(fresh) != len(plan["points"]) + 1:
        raise RuntimeError(f"{run.dir}: {len(fresh)} validations, expected {len(plan['points']) + 1}")
    validations = [h for h in history if "val/reward" in h]
    val_components = {c: [h.get(f"val/{c}") for h in validations] for c in task["score"]}
    start = time.perf_counter()
    env = run.cfg["env"]
    _, summary = evaluate_structures(
        val.last_structures, reference=load_reference(task["reference"]), model=env["model"], progress=progress
    )
    kl = 0.0 if not run.learns else kl_to_base(run.dir / "run", env["model"], run.cfg, run.key["kl_samples"], run.seed)
    top = top_k_distinct(scores, formulas, task["top_k"])
    return {
        "key": run.key,
        "task": task["name"],
        "agent": run.agent.name,
        "seed": run.seed,
        "evaluations": evaluations,
        "best_curve": {
            "evaluations": plan["points"],
            "score": best_within_budget(scores, formulas, plan["points"], task["top_k"]),
        },
        "fresh_curve": {"evaluations": [0, *plan["points"]], "score": fresh},
        "val_reward": [h["val/reward"] for h in validations],  # the trainer's, at the validation steps
        "val_components": val_components,  # its raw component means (their weighted sum = the fresh score)
        "final": {k: summary.get(k) for k in FINAL_KEYS},
        "kl_to_base": kl,
        "wall_time_s": {"training": train_wall, "evaluation": time.perf_counter() - start},
        "top": [{"formula": formulas[i], "score": scores[i], "index": i} for i in top],
        "crystals": {"formula": formulas, "score": scores, "raw": train.raw_columns()},
        "commit": git_commit(),
        "machine": machine_info(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# ---- aggregation --------------------------------------------------------------------------------------
def _per_seed(result: dict[str, Any]) -> dict[str, float | None]:
    return {
        "best_within_budget": result["best_curve"]["score"][-1],
        "fresh_score": result["fresh_curve"]["score"][-1],
        "base_fresh_score": result["fresh_curve"]["score"][0],
        "valid": result["final"].get("valid"),
        "msun": result["final"].get("msun"),
        "mean_e_above_hull": result["final"].get("mean_e_above_hull"),
        "kl_to_base": result["kl_to_base"],
        "wall_time_s": result["wall_time_s"]["training"],
    }


def _curve_stats(curves: list[list[float | None]]) -> dict[str, list]:
    stats = [bootstrap_ci(column, seed=BOOTSTRAP_SEED) for column in zip(*curves, strict=True)]
    return {name: [s[i] for s in stats] for i, name in enumerate(("mean", "ci_low", "ci_high"))}


def aggregate(suite: dict, agents: list[str], runs: list[Run], results: dict[tuple, dict]) -> dict[str, Any]:
    """Per task × agent over seeds: metrics and curves with bootstrap CIs; crossings with the baseline."""
    tasks: dict[str, Any] = {}
    crossings = []
    baseline = suite["baseline"]
    for task in suite["tasks"]:
        name = task["name"]
        plan = next(r.plan for r in runs if r.task["name"] == name)
        entry: dict[str, Any] = {"task": task, "plan": plan, "agents": {}}
        for agent in agents:
            seeds = [r.seed for r in runs if r.task["name"] == name and r.agent.name == agent]
            done = {s: results[(name, agent, s)] for s in seeds if (name, agent, s) in results}
            per_seed = {s: _per_seed(r) for s, r in done.items()}
            metrics = {}
            for key in (*METRICS, "base_fresh_score"):
                values = [per_seed[s][key] for s in done]
                mean, low, high = bootstrap_ci(values, seed=BOOTSTRAP_SEED)
                metrics[key] = {"mean": mean, "ci_low": low, "ci_high": high, "per_seed": values}
            curves = {}
            for curve in ("best_curve", "fresh_curve"):
                x = plan["points"] if curve == "best_curve" else [0, *plan["points"]]
                ys = [done[s][curve]["score"] for s in done]
                curves[curve] = {"evaluations": x, **(_curve_stats(ys) if ys else {})}
            entry["agents"][agent] = {
                "seeds": sorted(done),
                "missing_seeds": sorted(set(seeds) - set(done)),
                "metrics": metrics,
                "curves": curves,
                "runs": {str(s): {k: v for k, v in r.items() if k not in ("crystals", "key")} for s, r in done.items()},
            }
        tasks[name] = entry
        base = entry["agents"].get(baseline)
        for agent in agents:
            if agent == baseline or base is None or not base["seeds"] or not entry["agents"][agent]["seeds"]:
                continue
            curves, base_best = entry["agents"][agent]["curves"], base["curves"]["best_curve"]["mean"]
            crossings.append(
                {
                    "task": name,
                    "agent": agent,
                    "baseline": baseline,
                    "budget": plan["points"][-1],
                    "best_beats_baseline_at": first_crossing(plan["points"], curves["best_curve"]["mean"], base_best),
                    "fresh_beats_baseline_top_k_at": first_crossing(
                        plan["points"], curves["fresh_curve"]["mean"][1:], base_best
                    ),
                }
            )
    return {"tasks": tasks, "crossings": crossings}


def _cell(m: dict[str, Any], fmt: str = ".4g") -> str:
    if m["mean"] is None or not math.isfinite(m["mean"]):
        return "–"
    return f"{m['mean']:{fmt}} [{m['ci_low']:{fmt}}, {m['ci_high']:{fmt}}]"


def render_markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [
        f"Suite `{meta['suite']}` at commit `{meta['commit']}` ({meta['machine']}), {meta['date']}; "
        f"budget scale {meta['budget_scale']}. Cells: mean over seeds [{int(CI_LEVEL * 100)} % bootstrap CI "
        f"over seeds, {BOOTSTRAP_RESAMPLES} resamples; coarse with few seeds].",
    ]
    for name, entry in summary["tasks"].items():
        task, plan = entry["task"], entry["plan"]
        score = " + ".join(f"{w:g}·{c}" for c, w in task["score"].items())
        lines += [
            "",
            f"### {name}",
            "",
            f"Budget {plan['points'][-1]} reward evaluations ({plan['steps']} steps × {plan['batch_size']} crystals); "
            f"score = {score}; (a) top {task['top_k']} distinct crystals found in training; "
            f"(b) {task['fresh_samples']} fresh unfiltered samples (base model: "
            f"{_cell(next(iter(entry['agents'].values()))['metrics']['base_fresh_score'])}).",
            "",
            "| agent | seeds | " + " | ".join(METRICS.values()) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for agent, a in entry["agents"].items():
            seeds = ",".join(map(str, a["seeds"])) + (f" (missing {a['missing_seeds']})" if a["missing_seeds"] else "")
            cells = [_cell(a["metrics"][k], ".3g" if k in ("kl_to_base", "wall_time_s") else ".4g") for k in METRICS]
            lines.append(f"| {agent} | {seeds} | " + " | ".join(cells) + " |")
    if summary["crossings"]:
        lines += [
            "",
            "### Where the learning agents cross the baseline and stay ahead (means; never extrapolated)",
            "",
            "| task | agent | (a) best within budget > baseline's from | (b) fresh samples > baseline's top-k from |",
            "|---|---|---|---|",
        ]
        for c in summary["crossings"]:
            cells = [
                f"{c[k]} evaluations" if c[k] is not None else f"not within budget ({c['budget']})"
                for k in ("best_beats_baseline_at", "fresh_beats_baseline_top_k_at")
            ]
            lines.append(f"| {c['task']} | {c['agent']} (vs {c['baseline']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, entry in summary["tasks"].items():
        for agent, a in entry["agents"].items():
            row: dict[str, Any] = {"task": name, "agent": agent, "seeds": len(a["seeds"])}
            row["evaluations"] = entry["plan"]["points"][-1]
            for key in (*METRICS, "base_fresh_score"):
                for stat in ("mean", "ci_low", "ci_high"):
                    row[f"{key}_{stat}"] = a["metrics"][key][stat]
            rows.append(row)
    return rows


def plot_curves(entry: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    titles = ("(a) best within budget: top-k distinct", "(b) fresh samples of the policy, unfiltered")
    for ax, curve, title in zip(axes, ("best_curve", "fresh_curve"), titles, strict=True):
        for i, (agent, a) in enumerate(entry["agents"].items()):
            c = a["curves"][curve]
            if "mean" not in c:
                continue
            x = np.asarray(c["evaluations"], dtype=float)
            mean, low, high = (np.asarray(c[k], dtype=float) for k in ("mean", "ci_low", "ci_high"))
            color = f"C{i}"
            ax.plot(x, mean, marker="o", ms=3, color=color, label=f"{agent} (n={len(a['seeds'])})")
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("reward evaluations (crystals scored in training)")
        ax.set_title(title, fontsize=10)
    score = " + ".join(f"{w:g}·{c}" for c, w in entry["task"]["score"].items())
    axes[0].set_ylabel(f"task score ({score})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{entry['task']['name']}: mean over seeds, shaded {int(CI_LEVEL * 100)} % bootstrap CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(summary: dict[str, Any], out: Path) -> None:
    import pandas as pd

    _write_json(out / "suite.json", summary)
    atomic_write_bytes(out / "leaderboard.md", render_markdown(summary).encode())
    atomic_write_bytes(out / "leaderboard.csv", pd.DataFrame(leaderboard_rows(summary)).to_csv(index=False).encode())
    for name, entry in summary["tasks"].items():
        plot_curves(entry, out / f"curves_{slug(name)}.png")


# ---- command line -------------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be > 0")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 0, e.g. 0,1,2")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crystal-rl-benchmark --suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", required=True, help=f"a suite name ({config_names(SUITE_GROUP)}) or a YAML path")
    p.add_argument("--seeds", type=_int_list, default=None, help="comma-separated seeds (default: the suite's)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's task names")
    p.add_argument("--agents", default=None, help="comma-separated agent config names or agent YAML paths")
    p.add_argument("--out", default="runs/benchmark_suite")
    p.add_argument(
        "--budget-scale",
        type=_positive_float,
        default=1.0,
        help="multiply budgets and curve spacing (rounded to whole steps), for quick runs",
    )
    p.add_argument("--render", action="store_true", help="only rebuild the aggregate files from the results in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the per-run lines remain)")
    p.add_argument("override", nargs="*", help="extra Hydra overrides for every run, e.g. device=cuda")
    return p


def select(suite: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The suite with the command line's ``--seeds``, ``--tasks`` and ``--agents`` applied, revalidated."""
    suite = copy.deepcopy(suite)
    if args.seeds is not None:
        suite["seeds"] = args.seeds
    if args.agents is not None:
        suite["agents"] = [a for a in args.agents.split(",") if a]
    if args.tasks is not None:
        wanted = [t for t in args.tasks.split(",") if t]
        names = [t["name"] for t in suite["tasks"]]
        unknown = [t for t in wanted if t not in names]
        if unknown:
            raise ConfigError(f"--tasks: unknown task(s) {unknown}; valid: {names}")
        suite["tasks"] = [t for t in suite["tasks"] if t["name"] in wanted]
    return validate_suite_config(suite)


def run_suite(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or with ``--render`` only collect) every run of the suite; write the aggregate files."""
    suite, source = load_suite(args.suite)
    if Path(source).is_file():  # agent YAML paths in a suite file are relative to that file
        here = Path(source).parent
        suite["agents"] = [
            str(here / a) if (here / a).is_file() and not Path(a).is_absolute() else a for a in suite["agents"]
        ]
    suite = select(suite, args)
    agents = [resolve_agent(a) for a in suite["agents"]]
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ConfigError(f"Config key 'agents': two agents share a name {names}")
    out = Path(args.out)
    progress = not args.no_progress
    runs = plan_runs(suite, agents, out, args.override, args.budget_scale, progress)
    results: dict[tuple, dict] = {}
    failed: list[dict[str, Any]] = []
    for i, run in enumerate(runs, 1):
        label = (
            f"[{i}/{len(runs)}] {run.task['name']} agent={run.agent.name} seed={run.seed}: "
            f"{run.plan['steps']} steps x {run.plan['batch_size']} crystals = "
            f"{run.plan['steps'] * run.plan['batch_size']} reward evaluations"
        )
        result = read_result(run)
        if result is None and not args.render:
            print(label, flush=True)
            try:
                result = execute(run, progress)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken run must not cost the others: reported, exit 1
                failed.append(record_failure(run, exc))
                print(f"[{i}/{len(runs)}] failed: {failed[-1]['error']} (traceback in {failed[-1]['log']})", flush=True)
                continue
            _write_json(run.dir / RESULT_NAME, result)
            result = json.loads((run.dir / RESULT_NAME).read_text())
            print(
                f"[{i}/{len(runs)}] done: best top-{run.task['top_k']} {_fmt(result['best_curve']['score'][-1])}, "
                f"fresh {_fmt(result['fresh_curve']['score'][-1])} (base {_fmt(result['fresh_curve']['score'][0])}), "
                f"KL {_fmt(result['kl_to_base'])}, {result['wall_time_s']['training']:.0f} s",
                flush=True,
            )
        elif result is not None:
            print(f"{label}: done before, skipped", flush=True)
        elif (run.dir / ERROR_NAME).is_file():
            failed.append(failure_from_log(run))
            print(f"{label}: failed before ({failed[-1]['error']})", flush=True)
        else:
            print(f"{label}: no result yet", flush=True)
        if result is not None:
            (run.dir / ERROR_NAME).unlink(missing_ok=True)  # a retry succeeded
            results[(run.task["name"], run.agent.name, run.seed)] = result
    summary = aggregate(suite, names, runs, results)
    summary["meta"] = {
        "command": "crystal-rl-benchmark " + shlex.join(argv),
        "suite": source,
        "commit": git_commit(),
        "machine": machine_info(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "budget_scale": args.budget_scale,
        "overrides": list(args.override),
        "runs": len(runs),
        "runs_done": len(results),
        "runs_failed": failed,
        "conventions": CONVENTIONS,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": CI_LEVEL},
    }
    summary["suite"] = suite
    summary = {k: summary[k] for k in ("meta", "suite", "tasks", "crossings")}
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(summary, out)
    return summary


def record_failure(run: Run, exc: Exception) -> dict[str, Any]:
    """Write the traceback of a failed run next to where its result would be; describe the failure."""
    run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.dir / ERROR_NAME, traceback.format_exc().encode())
    return _failure(run, f"{type(exc).__name__}: {exc}")


def failure_from_log(run: Run) -> dict[str, Any]:
    """The failure of an earlier invocation (``--render``): the last line of its traceback."""
    lines = [line for line in (run.dir / ERROR_NAME).read_text(errors="replace").splitlines() if line.strip()]
    return _failure(run, lines[-1].strip() if lines else "unknown error")


def _failure(run: Run, error: str) -> dict[str, Any]:
    return {
        "task": run.task["name"],
        "agent": run.agent.name,
        "seed": run.seed,
        "error": error,
        "log": str(run.dir / ERROR_NAME),
    }


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        with quiet_third_party():
            summary = run_suite(args, argv)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(render_markdown(summary))
    print(f"written to {args.out}: suite.json, leaderboard.md, leaderboard.csv, curves_<task>.png")
    if failed := summary["meta"]["runs_failed"]:
        runs = "; ".join(f"{f['task']} {f['agent']} seed {f['seed']}: {f['error']}" for f in failed)
        raise SystemExit(
            f"error: {len(failed)} run(s) failed ({runs}); the rest are in the leaderboard. "
            "Run the same command again to retry only those."
        )
