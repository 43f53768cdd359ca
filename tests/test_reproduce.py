"""The README's results pipeline (crystal-rl-reproduce) in its tiny mode, so it cannot rot."""

import json

import pandas as pd

from crystal_rl import reproduce
from crystal_rl.sample import sample_to_folder


def test_reproduce_tiny_writes_results_tables_and_plots(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--tiny", "--out", str(out), "--work", str(work), "--no-progress"]
    reproduce.main(argv)
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["command"].startswith("crystal-rl-reproduce --tiny") and meta["tiny"]
    assert meta["commit"] and meta["seed"] == 1 and meta["train_seed"] == 0
    assert set(meta["wall_time_s"]) == {"training", "sampling and evaluation", "benchmark"}
    assert results["training"]["steps"] == [0, 1, 2]
    assert len(results["training"]["rows"]["val/reward"]) == 3
    for name in ("base", "grpo"):
        assert results["eval"][name]["n"] == 4 and results["eval"][name]["seed"] == 1
        for file in ("summary.json", "per_crystal.csv", "e_above_hull.png", "element_frequency.png"):
            assert (out / f"eval_{name}" / file).is_file()
        assert len(list((work / f"samples_{name}" / "cif").glob("*.cif"))) <= 4
    board = pd.read_csv(out / "benchmark" / "leaderboard.csv")
    assert sorted(board["agent"]) == ["best_of_n", "grpo"]
    assert (out / "training_curves.png").is_file() and (out / "benchmark" / "reward_vs_budget.png").is_file()

    table = (out / "results.md").read_text()
    assert meta["commit"] in table and meta["command"] in table
    assert "| `val/reward` |" in table and "| M.S.U.N. |" in table and "| best_of_n " in table
    assert table in capsys.readouterr().out  # printed too
    (out / "results.md").unlink()
    reproduce.main(["--render", "--out", str(out)])  # the tables come from results.json alone
    assert (out / "results.md").read_text() == table


def test_sampling_seed_fixes_the_crystals(tmp_path):
    kwargs = {"model": "mp20_tiny", "num": 3, "steps": 2, "progress": False}
    first = sample_to_folder(out=tmp_path / "a", seed=5, **kwargs)[1]
    again = sample_to_folder(out=tmp_path / "b", seed=5, **kwargs)[1]
    other = sample_to_folder(out=tmp_path / "c", seed=6, **kwargs)[1]
    pd.testing.assert_frame_equal(first, again)
    assert not first["volume"].equals(other["volume"])
