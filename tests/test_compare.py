"""Bootstrap confidence intervals and the two-evaluation comparison (crystal-rl-compare)."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from crystal_rl import compare
from crystal_rl.compare import compare_evaluations
from crystal_rl.stats import bootstrap_ci, bootstrap_difference_ci, share_difference_ci, wilson_interval

REPO = Path(__file__).resolve().parents[1]


def test_bootstrap_ci_known_answers():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    # two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> the CI spans both
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # [0, 0, 3]: P(mean = 0) = 8/27 > 2.5 %, P(mean = 3) = 1/27 > 2.5 %
    assert bootstrap_ci([0.0, 0.0, 3.0]) == (1.0, 0.0, 3.0)
    # three seeds: each extreme has probability 1/27 > 2.5 % of filling a resample -> the CI is the range
    assert bootstrap_ci([1.0, 2.0, 7.0]) == (pytest.approx(10 / 3), 1.0, 7.0)
    mean, low, high = bootstrap_ci(list(range(100)))
    assert mean == 49.5 and 43 < low < 46 and 53 < high < 56  # ~ mean ± 1.96 σ/√n = 49.5 ± 5.7
    assert bootstrap_ci([1.0, None, float("nan")]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.3, 0.9, 0.1, 0.5]) == bootstrap_ci([0.3, 0.9, 0.1, 0.5])  # fixed RNG seed


def test_bootstrap_difference_ci_known_answers():
    assert bootstrap_difference_ci([1.0] * 5, [3.0] * 7) == (2.0, 2.0, 2.0)  # no spread: the interval is a point
    # shares of 500: 5 % vs 10 %; normal approximation of the difference: 0.05 ± 1.96 * 0.0164 = [0.018, 0.082]
    diff, low, high = bootstrap_difference_ci([1.0] * 25 + [0.0] * 475, [1.0] * 50 + [0.0] * 450)
    assert diff == pytest.approx(0.05) and 0.012 < low < 0.024 and 0.076 < high < 0.088
    # 1 % vs 0.2 % of 500 (5 vs 1 crystals): the interval includes 0, the sample cannot resolve it
    diff, low, high = bootstrap_difference_ci([1.0] * 5 + [0.0] * 495, [1.0] * 1 + [0.0] * 499)
    assert diff == pytest.approx(-0.008) and low < -0.008 < high and high >= 0.0
    assert bootstrap_difference_ci([1.0, None, float("nan")], [2.0]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_difference_ci([], [1.0]))


def test_share_difference_ci_matches_newcombes_worked_examples():
    """Newcombe (1998, Stat. Med. 17: 873), method 10: his examples (a) and (h)."""
    for (a, n_a, b, n_b), (low, high) in {
        (48, 80, 56, 70): (0.0524, 0.3339),
        (0, 29, 5, 56): (-0.0381, 0.1926),
    }.items():
        diff, lo, hi = share_difference_ci(a, n_a, b, n_b)
        assert diff == pytest.approx(b / n_b - a / n_a) and (lo, hi) == (
            pytest.approx(low, abs=1e-4),
            pytest.approx(high, abs=1e-4),
        )
    low, high = wilson_interval(0, 500)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.007 < high < 0.008  # no hits is not "exactly 0"
    # 0 vs 4 of 500: Fisher's exact p = 0.12 -- not resolved (the bootstrap would say it is)
    assert share_difference_ci(0, 500, 4, 500)[1] < 0 < bootstrap_difference_ci([0.0] * 500, [1.0] * 4 + [0.0] * 496)[1]
    assert all(math.isnan(x) for x in share_difference_ci(0, 0, 1, 2))


def _per_crystal(path: Path, n: int, valid: int, metastable: int, energies: list[float]) -> Path:
    rows = [
        {
            "formula": f"X{i}",
            "valid": i < valid,
            "metastable": i < metastable,
            "msun": i < metastable,
            "e_above_hull": energies[i] if i < valid else None,  # invalid crystals have no energy
        }
        for i in range(n)
    ]
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path / "per_crystal.csv", index=False)
    return path


def test_compare_evaluations_shares_over_all_crystals_and_means_over_valid(tmp_path):
    base = _per_crystal(tmp_path / "base", 200, valid=50, metastable=2, energies=[2.0] * 200)
    tuned = _per_crystal(tmp_path / "tuned", 200, valid=150, metastable=40, energies=[1.0] * 200)
    rows = compare_evaluations(base, tuned)
    assert set(rows) == {"valid", "e_above_hull", "metastable", "msun"}  # relaxed columns absent: left out
    valid = rows["valid"]
    assert (valid["first"], valid["second"], valid["n_first"]) == (0.25, 0.75, 200)
    assert valid["difference"] == pytest.approx(0.5) and valid["low"] > 0.4 and valid["resolved"]
    energy = rows["e_above_hull"]  # over the crystals that have an energy: 50 and 150
    assert (energy["first"], energy["second"], energy["n_first"], energy["n_second"]) == (2.0, 1.0, 50, 150)
    assert (energy["difference"], energy["low"], energy["high"]) == (-1.0, -1.0, -1.0) and energy["resolved"]
    assert rows["metastable"]["difference"] == pytest.approx(0.19) and rows["metastable"]["resolved"]

    same = compare_evaluations(base, base)  # a model against itself: nothing resolved
    assert all(r["difference"] == 0.0 and not r["resolved"] for r in same.values())


def test_compare_on_the_committed_dng_evaluations():
    """The shipped DNG results (500 samples each): relaxed M.S.U.N. is resolved upwards, the unrelaxed
    metastable share (5 vs 2 crystals) is not resolved either way."""
    results = REPO / "docs" / "results" / "dng_mp20"
    rows = compare_evaluations(results / "eval_base", results / "eval_grpo")
    assert rows["msun_relaxed"]["resolved"] and rows["msun_relaxed"]["low"] > 0
    assert rows["valid"]["resolved"] and rows["valid"]["second"] == pytest.approx(0.682)
    assert not rows["metastable"]["resolved"] and rows["metastable"]["first"] == pytest.approx(0.01)
    summary = json.loads((results / "eval_grpo" / "summary.json").read_text())
    assert rows["e_above_hull_relaxed"]["second"] == pytest.approx(summary["mean_e_above_hull_relaxed"])


def test_compare_cli_writes_markdown_and_json(tmp_path, capsys):
    base = _per_crystal(tmp_path / "base", 20, valid=10, metastable=1, energies=[2.0] * 20)
    tuned = _per_crystal(tmp_path / "tuned", 20, valid=15, metastable=3, energies=[1.5] * 20)
    compare.main([str(base), str(tuned / "per_crystal.csv"), "--names", "base,GRPO", "--out", str(tmp_path / "c")])
    text = (tmp_path / "c" / "comparison.md").read_text()
    assert "| structurally valid | 50.0 % | 75.0 % | +25.0 pts [" in text and text in capsys.readouterr().out
    assert "| mean E_hull, unrelaxed (eV/atom) | 2.000 | 1.500 | -0.500 [-0.500, -0.500] * |" in text
    payload = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert payload["metrics"]["valid"]["n_second"] == 20 and "bootstrap" in payload["convention"]
    with pytest.raises(SystemExit, match="no per_crystal.csv at .*missing"):
        compare.main([str(base), str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="two comma-separated names"):
        compare.main([str(base), str(tuned), "--names", "only-one"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SystemExit, match="empty.csv is empty"):
        compare.main([str(base), str(tmp_path / "empty.csv")])
    pd.DataFrame({"index": [0], "formula": ["NaCl"]}).to_csv(tmp_path / "samples.csv", index=False)  # not an evaluation
    with pytest.raises(SystemExit, match="no metric columns in common"):
        compare.main([str(tmp_path / "samples.csv"), str(tmp_path / "samples.csv")])
