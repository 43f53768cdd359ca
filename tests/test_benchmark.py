"""The agent benchmark: the single-task leaderboard and the task suite (tiny sizes, in-process, so the
reference sets and the MLIP load once for the whole file)."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from crystal_rl import benchmark
from crystal_rl.benchmark import kl_to_base
from crystal_rl.benchmark_suite import (
    best_within_budget,
    first_crossing,
    load_suite,
    plan_runs,
    resolve_agent,
    top_k_distinct,
)

TINY = ["env.num_steps=4", "env.batch_size=4", "env.group_size=2", "++reward.num_workers=0"]
# at most 6 atoms: SMACT screening in the final evaluation is combinatorial in the number of elements
# (a 10-element composition of an untrained 4-step sample took 24 s)
SMALL = "env.max_atoms=6"
SUITE = f"""
agents: [best_of_n, grpo, my_agent.yaml]   # my_agent.yaml: the README's one-file + one-YAML agent
seeds: [0, 1]
kl_samples: 4
overrides: {json.dumps(TINY)}
tasks:
  - name: ldm_mp20/atomic_density
    env: ldm_mp20
    reward: atomic_density
    reference: mp20_sample
    budget: 12
    curve_every: 4
    score: {{atomic_density: 1.0}}
    top_k: 2
    fresh_samples: 4
    overrides: [{SMALL}]
  - name: ldm_perov5/energy
    env: ldm_perov5
    reward: energy
    reference: perov5
    budget: 8
    curve_every: 4
    score: {{energy: 1.0}}
    top_k: 2
    fresh_samples: 4
"""
AGENT_YAML = "_target_: tests.example_agent.MyAgent\nlr: 1.0e-4\nmy_param: 0.5\n"  # the README's example agent
AGENTS = ["best_of_n", "grpo", "my_agent"]
TASKS = {"ldm_mp20/atomic_density": 12, "ldm_perov5/energy": 8}


def test_single_task_benchmark_with_a_tiny_budget(tmp_path):
    argv = ["--agents", "best_of_n,grpo", "--budget", "16", "--final-samples", "8", "--out", str(tmp_path)]
    benchmark.main([*argv, "--no-progress", "env.num_steps=4", "env.batch_size=8", "env.group_size=4", SMALL])
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(board["agent"]) == ["best_of_n", "grpo"]
    assert (board["reward_calls"] == 16).all()  # equal budgets
    assert board.loc[board["agent"] == "best_of_n", "kl_to_base"].item() == 0.0
    assert math.isfinite(board.loc[board["agent"] == "grpo", "kl_to_base"].item())
    for col in ("final_val_reward", "msun", "mean_e_above_hull", "novel", "wall_time_s"):
        assert col in board.columns
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "reward_vs_budget.png").is_file()


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    (folder / "suite.yaml").write_text(SUITE)
    (folder / "my_agent.yaml").write_text(AGENT_YAML)
    argv = ["--suite", str(folder / "suite.yaml"), "--out", str(folder / "out"), "--no-progress"]
    benchmark.main(argv)
    return folder, argv


def results(out):
    return {(r["task"], r["agent"], r["seed"]): r for r in map(json.load, map(open, out.glob("*/*/seed*/result.json")))}


def test_suite_runs_every_agent_at_an_equal_budget(suite_run):
    folder, _ = suite_run
    runs = results(folder / "out")
    assert set(runs) == {(t, a, s) for t in TASKS for a in AGENTS for s in (0, 1)}
    for (task, agent, seed), r in runs.items():
        points = list(range(4, TASKS[task] + 1, 4))
        assert r["evaluations"] == TASKS[task] == len(r["crystals"]["score"])  # every training crystal recorded
        assert r["best_curve"]["evaluations"] == points and len(r["best_curve"]["score"]) == len(points)
        assert r["fresh_curve"]["evaluations"] == [0, *points] and len(r["fresh_curve"]["score"]) == len(points) + 1
        best = [x for x in r["best_curve"]["score"] if x is not None]
        assert best == sorted(best)  # best within budget never decreases
        top = [t["score"] for t in r["top"]]
        assert top == sorted(top, reverse=True) and top[0] == max(r["crystals"]["score"])
        # the recorder's fresh-sample score is the weighted sum of the trainer's raw validation means
        name = "atomic_density" if "density" in task else "energy"
        if agent != "best_of_n":
            assert r["fresh_curve"]["score"] == pytest.approx(r["val_components"][name], abs=1e-5)
        assert r["kl_to_base"] == 0.0 if agent == "best_of_n" else math.isfinite(r["kl_to_base"])
        assert 0.0 <= r["final"]["valid"] <= 1.0 and r["final"]["n"] == 4
        # step 0 is the base model for every agent of a seed: same validation seed, same crystals
        assert r["fresh_curve"]["score"][0] == runs[(task, "best_of_n", seed)]["fresh_curve"]["score"][0]
    for task in TASKS:  # best-of-n never learns: its fresh samples are the base model's at every point
        for seed in (0, 1):
            assert len(set(runs[(task, "best_of_n", seed)]["fresh_curve"]["score"])) == 1


def test_suite_aggregates_with_confidence_intervals(suite_run):
    folder, _ = suite_run
    out = folder / "out"
    summary = json.loads((out / "suite.json").read_text())
    assert {"meta", "suite", "tasks", "crossings"} <= set(summary)
    assert summary["meta"]["runs"] == summary["meta"]["runs_done"] == 12
    for task, entry in summary["tasks"].items():
        assert set(entry["agents"]) == set(AGENTS)
        for a in entry["agents"].values():
            assert a["seeds"] == [0, 1] and not a["missing_seeds"]
            for m in a["metrics"].values():
                if m["mean"] is not None:
                    assert m["ci_low"] - 1e-12 <= m["mean"] <= m["ci_high"] + 1e-12
                    assert len(m["per_seed"]) == 2
            for curve in a["curves"].values():
                for low, mean, high in zip(curve["ci_low"], curve["mean"], curve["ci_high"], strict=True):
                    assert mean is None or low - 1e-12 <= mean <= high + 1e-12
        assert (out / f"curves_{task.replace('/', '_')}.png").stat().st_size > 0
    assert {(c["task"], c["agent"]) for c in summary["crossings"]} == {
        (t, a) for t in TASKS for a in ("grpo", "my_agent")
    }
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 6 and (board["evaluations"] == board["task"].map(TASKS)).all()
    md = (out / "leaderboard.md").read_text()
    assert "### ldm_perov5/energy" in md and "cross the baseline" in md and "my_agent" in md


def test_suite_resumes_and_renders_without_rerunning(suite_run, capsys):
    folder, argv = suite_run
    out = folder / "out"
    victim = out / "ldm_perov5_energy" / "grpo" / "seed1" / "result.json"
    kept = out / "ldm_perov5_energy" / "grpo" / "seed0" / "result.json"
    before, kept_mtime = json.loads(victim.read_text()), kept.stat().st_mtime_ns
    victim.unlink()
    (out / "leaderboard.md").unlink()
    capsys.readouterr()
    benchmark.main(argv)
    log = capsys.readouterr().out
    assert log.count("done before, skipped") == 11 and log.count("] done: ") == 1
    assert kept.stat().st_mtime_ns == kept_mtime
    again = json.loads(victim.read_text())
    assert again["crystals"] == before["crystals"]  # seeded: the re-run scores the same crystals
    assert (out / "leaderboard.md").is_file()
    (out / "leaderboard.md").unlink()
    benchmark.main([*argv, "--render"])
    log = capsys.readouterr().out
    assert log.count("done before, skipped") == 12 and "] done: " not in log
    assert (out / "leaderboard.md").is_file()


def test_a_failing_run_is_reported_and_the_others_still_aggregate(suite_run, monkeypatch, capsys):
    from crystal_rl import benchmark_suite

    folder, argv = suite_run
    out = folder / "out"
    victim = out / "ldm_mp20_atomic_density" / "best_of_n" / "seed1"
    saved = (victim / "result.json").read_text()
    (victim / "result.json").unlink()

    def broken(run, progress):
        raise RuntimeError("MLIP server went away")

    monkeypatch.setattr(benchmark_suite, "execute", broken)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit, match=r"1 run\(s\) failed \(ldm_mp20/atomic_density best_of_n seed 1: Runt"):
            benchmark.main(argv)
        log = capsys.readouterr().out
        assert log.count("done before, skipped") == 11
        assert "failed: RuntimeError: MLIP server went away (traceback in" in log
        assert "MLIP server went away" in (victim / "error.txt").read_text()
        meta = json.loads((out / "suite.json").read_text())["meta"]
        assert meta["runs_done"] == 11 and [f["seed"] for f in meta["runs_failed"]] == [1]
        with pytest.raises(SystemExit, match="1 run"):  # --render reports it too, from error.txt
            benchmark.main([*argv, "--render"])
        assert "failed before (RuntimeError: MLIP server went away)" in capsys.readouterr().out
    finally:
        (victim / "result.json").write_text(saved)  # the other tests read the full suite
    monkeypatch.undo()
    benchmark.main(argv)  # the result is back: nothing to run, no failure
    assert json.loads((out / "suite.json").read_text())["meta"]["runs_failed"] == []
    assert not (victim / "error.txt").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (("budget: 12", "budgte: 12"), r"Unknown config key 'tasks.0.budgte'; valid keys here: \[.*'budget'"),
        (("budget: 12", "budget: 10"), r"'tasks.0.budget' \(10\) must be a multiple of tasks.0.curve_every \(4\)"),
        (("{energy: 1.0}", "{e_hull: 1.0}"), r"'tasks.1.score' names \['e_hull'\].*valid: \['energy'\]"),
        (("top_k: 2", "top_k: 9"), r"'tasks.0.top_k' \(9\) exceeds the crystals scored by the first curve point"),
        (("seeds: [0, 1]", "seeds: [0, 0]"), r"'seeds' lists \['0'\] more than once"),
        (("[best_of_n, grpo", "[best_of_m, grpo"), r"unknown agent 'best_of_m'; valid: \[.*'best_of_n'"),
        (("curve_every: 4", "curve_every: -4"), r"'tasks.0.curve_every' is -4, out of range"),
        (("kl_samples: 4", "kl_samples: many"), r"'kl_samples'"),
    ],
)
def test_bad_suite_files_are_rejected_naming_the_key(tmp_path, edit, message):
    assert edit[0] in SUITE
    (tmp_path / "suite.yaml").write_text(SUITE.replace(*edit, 1))
    (tmp_path / "my_agent.yaml").write_text(AGENT_YAML)
    with pytest.raises(SystemExit, match=message):
        benchmark.main(["--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_unknown_suites_tasks_and_agent_files_list_the_valid_ones(tmp_path):
    with pytest.raises(SystemExit, match=r"Unknown benchmark suite 'nope'; valid: \['default', 'long', 'tiny'\]"):
        benchmark.main(["--suite", "nope"])
    with pytest.raises(SystemExit, match=r"--tasks: unknown task\(s\) \['mp20'\]; valid: \['ldm_mp20/atomic_density'"):
        benchmark.main(["--suite", "default", "--tasks", "mp20", "--render", "--out", str(tmp_path)])
    with pytest.raises(Exception, match="no agent YAML file at"):
        resolve_agent(str(tmp_path / "missing.yaml"))


def test_default_suite_plans_equal_budgets(tmp_path):
    suite, _ = load_suite("default")
    assert suite["agents"] == ["best_of_n", "reinforce", "grpo", "ppo"] and suite["seeds"] == [0, 1, 2]
    suite["seeds"] = [0, 2]  # composing every run takes a while: two agents, two seeds
    runs = plan_runs(suite, [resolve_agent(a) for a in ("best_of_n", "ppo")], tmp_path, [], 1.0, False)
    assert len(runs) == 3 * 2 * 2
    budgets = {"ldm_mp20/atomic_density": 3200, "ldm_perov5/energy": 1280, "ldm_mp20/dng": 1280}
    for run in runs:
        assert run.plan["steps"] * run.plan["batch_size"] == budgets[run.task["name"]]
        assert run.plan["points"] == list(range(320, budgets[run.task["name"]] + 1, 320))
        assert run.cfg["trainer"]["val_batch_size"] == 64 and run.cfg["seed"] == run.seed
    quick = plan_runs(suite, [resolve_agent("grpo")], tmp_path, [], 0.05, False)
    assert {r.plan["steps"] for r in quick} == {5, 2}  # 3200 x 0.05 / 32, 1280 x 0.05 / 32


def test_long_suite_plans_its_larger_budget(tmp_path):
    suite, _ = load_suite("long")
    assert suite["agents"] == ["best_of_n", "reinforce", "grpo"] and suite["seeds"] == [0, 1, 2]
    suite["seeds"] = [1]
    (run,) = plan_runs(suite, [resolve_agent("grpo")], tmp_path, [], 1.0, False)
    assert run.task["name"] == "ldm_perov5/energy" and run.plan["steps"] * run.plan["batch_size"] == 5120
    assert run.plan["points"] == list(range(640, 5121, 640))


def test_top_k_distinct_and_best_within_budget():
    scores = [1.0, 5.0, 5.0, 5.0000000001, 3.0, 4.0, float("nan")]
    formulas = ["A", "B", "B", "B", "C", "B", "D"]
    # the two B crystals at 5.0 (and the one 1e-10 above) are one crystal; B at 4.0 is another
    assert top_k_distinct(scores, formulas, 3) == [3, 5, 4]
    assert len(top_k_distinct(scores, formulas, 10)) == 5  # A, B@5, B@4, C, D (NaN last)
    assert top_k_distinct([2.0, 2.0], ["A", "B"], 2) == [0, 1]  # same score, different formulas
    curve = best_within_budget(scores, formulas, [1, 2, 3, 5, 6], 2)
    assert curve[0] is None and curve[1:] == pytest.approx([3.0, 3.0, 4.0, 4.5])  # None until two distinct exist
    assert first_crossing([1, 2, 3], [0.0, 2.0, 5.0], [1.0, 3.0, 4.0]) == 3
    assert first_crossing([1, 2], [0.0, None], [1.0, 0.0]) is None
    assert first_crossing([1, 2, 3], [2.0, 0.0, 5.0], [1.0, 1.0, 4.0]) == 3  # the lead at 1 is lost at 2
    assert first_crossing([1, 2], [2.0, 0.0], [1.0, 1.0]) is None


def test_kl_to_base_does_not_depend_on_what_ran_before(suite_run):
    """The suite's KL estimate is seeded (z_T and the policy's noise): the same value whatever state
    earlier runs left torch's global RNG in (a suite's second run in a process got another KL), and
    that state is restored afterwards."""
    folder, _ = suite_run
    run_dir = folder / "out" / "ldm_mp20_atomic_density" / "grpo" / "seed1" / "run"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    recorded = results(folder / "out")[("ldm_mp20/atomic_density", "grpo", 1)]["kl_to_base"]
    values = []
    for state in (3, 4):
        torch.manual_seed(state)
        expected = torch.rand(1)
        torch.manual_seed(state)
        values.append(kl_to_base(run_dir, cfg["env"]["model"], cfg, 4, 1))
        assert torch.equal(torch.rand(1), expected)  # the caller's RNG state is left as it was
    assert values == [recorded, recorded] and recorded != 0.0
