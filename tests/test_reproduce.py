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
    assert meta["command"].startswith("crystal-rl-reproduce --tiny") and meta["commit"]
    assert set(results["experiments"]) == {"dng_mp20", "stability_perov5"}
    for name, exp in results["experiments"].items():
        em = exp["meta"]
        assert em["seed"] == 1 and em["train_seed"] == 0 and em["relax_steps"] == 2 and em["commit"] and em["tiny"]
        assert set(em["wall_time_s"]) == {"training", "sampling and evaluation"}
        assert exp["training"]["steps"] == [0, 1, 2]
        best = name == "stability_perov5"  # its protocol evaluates the model of the best validation
        expected = "model_best.pt: best val/metastability" if best else "model.pt: step 2"
        assert em["fine_tuned_model"].startswith(expected)
        assert (work / name / "train" / "model_best.pt").is_file() == best
        assert len(exp["training"]["rows"]["val/reward"]) == 3 and "val/energy" in exp["training"]["rows"]
        for label in ("base", "grpo"):
            summary = exp["eval"][label]
            assert summary["n"] == 4 and summary["seed"] == 1 and "mean_e_above_hull_relaxed" in summary
            for file in ("summary.json", "per_crystal.csv", "e_above_hull.png", "element_frequency.png"):
                assert (out / name / f"eval_{label}" / file).is_file()
            assert len(list((work / name / f"samples_{label}" / "cif").glob("*.cif"))) <= 4
            assert sum(share for _, share in exp["top_compositions"][label]) <= 1.0 + 1e-9
        assert (out / name / "training_curves.png").is_file()
        msun = exp["difference"]["msun_relaxed"]  # GRPO - base, from the per-crystal CSVs
        assert msun["n_first"] == msun["n_second"] == 4 and msun["low"] <= msun["difference"] <= msun["high"]
    suite = json.loads((out / "suite" / "suite.json").read_text())
    assert suite["meta"]["runs_done"] == suite["meta"]["runs"] == 4  # 1 task x 2 agents x 2 seeds
    assert (out / "suite" / "curves_ldm_mp20_atomic_density.png").is_file()
    assert not (out / "suite" / "ldm_mp20_atomic_density").exists()  # the runs stay in --work
    assert results["suite"]["commit"] == meta["commit"]

    table = (out / "results.md").read_text()
    assert meta["commit"] in table and meta["command"] in table
    assert "| `val/reward` |" in table and "| M.S.U.N., relaxed |" in table and "Agent benchmark suite" in table
    assert "Top compositions (grpo" in table and "| GRPO − base [95 % CI] |" in table
    assert table in capsys.readouterr().out  # printed too
    (out / "results.md").unlink()
    reproduce.main(["--render", "--out", str(out)])  # results.json and the per-crystal CSVs, nothing run
    assert (out / "results.md").read_text() == table


def test_sampling_seed_fixes_the_crystals(tmp_path):
    kwargs = {"model": "mp20_tiny", "num": 3, "steps": 2, "progress": False}
    first = sample_to_folder(out=tmp_path / "a", seed=5, **kwargs)[1]
    again = sample_to_folder(out=tmp_path / "b", seed=5, **kwargs)[1]
    other = sample_to_folder(out=tmp_path / "c", seed=6, **kwargs)[1]
    pd.testing.assert_frame_equal(first, again)
    assert not first["volume"].equals(other["volume"])


def test_training_table_rows_are_the_raw_validation_metrics():
    """Components' contributions (``/weighted/``) and failure shares (``/failed/``) are logged but are
    not rows of the results table; KL at step 0 is step 1's."""
    history = [
        {"step": 0, "val/reward": 1.0, "val/energy": -1.0, "val/weighted/energy": -0.5, "val/failed/energy": 0.25},
        {"step": 1, "train/kl_div": 0.01, "train/failed/energy": 0.5},
    ]
    table = reproduce.training_table(history, every=1)
    assert table["steps"] == [0]
    assert table["rows"] == {"val/reward": [1.0], "val/energy": [-1.0], "train/kl_div": [0.01]}
