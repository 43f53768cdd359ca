import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_with_a_tiny_budget(tmp_path):
    cmd = [
        sys.executable,
        "scripts/benchmark.py",
        "--agents",
        "best_of_n,grpo",
        "--budget",
        "16",
        "--final-samples",
        "8",
        "--out",
        str(tmp_path),
        "env.num_steps=4",
        "env.batch_size=8",
        "env.group_size=4",
        "trainer.val_batch_size=8",
    ]
    out = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(board["agent"]) == ["best_of_n", "grpo"]
    assert (board["reward_calls"] == 16).all()  # equal budgets
    assert board.loc[board["agent"] == "best_of_n", "kl_to_base"].item() == 0.0
    assert math.isfinite(board.loc[board["agent"] == "grpo", "kl_to_base"].item())
    for col in ("final_val_reward", "msun", "mean_e_above_hull", "novel", "wall_time_s"):
        assert col in board.columns
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "reward_vs_budget.png").is_file()
