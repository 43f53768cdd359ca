"""Compare two evaluations with confidence intervals: ``crystal-rl-compare eval_base/ eval_grpo/``.

Reads the ``per_crystal.csv`` that ``crystal-rl-evaluate`` (or ``crystal-rl-reproduce``) wrote for
each model and reports, per metric, both values and their difference (second minus first) with a
95 % confidence interval: for shares (valid, unique, metastable, M.S.U.N., ...) Newcombe's score
interval for a difference of two proportions, over all evaluated crystals as in ``summary.json``;
for mean E_hull a percentile bootstrap over the crystals that have one (the valid ones — with
different validity the two means are over different crystals). A difference whose interval excludes
0 is marked ``*``. With 500 samples a share of 1 % (5 crystals) cannot be told from 0.2 % (1): the
intervals say which differences a sample of that size resolves. What they do not cover: the spread
between training seeds (each evaluation is one trained model; compare seeds for that), the
set-level nature of uniqueness (a crystal's "unique" depends on the others; it is treated as a
per-crystal yes/no), and the number of metrics compared (no multiplicity correction: among 15
unrelated metrics one false ``*`` in 20 is expected). ``--out`` also writes the table as markdown
and the numbers as JSON. In a checkout, ``python scripts/compare.py`` is the same program.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atomic_io import atomic_write_bytes
from crystal_rl.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    bootstrap_difference_ci,
    share_difference_ci,
)

PER_CRYSTAL = "per_crystal.csv"
#: (label, per-crystal column, kind): "share" = mean of a yes/no column over all crystals (a missing
#: value counts as no); "mean" = mean of a numeric column over the crystals that have a finite value.
METRICS = (
    ("structurally valid", "valid", "share"),
    ("SMACT valid (charge-balanced)", "smact_valid", "share"),
    ("unique", "unique", "share"),
    ("novel", "novel", "share"),
    ("novel formula (vs the Materials Project)", "novel_formula", "share"),
    ("mean E_hull, unrelaxed (eV/atom)", "e_above_hull", "mean"),
    ("metastable (E_hull ≤ 0.1), unrelaxed", "metastable", "share"),
    ("stable (E_hull ≤ 0), unrelaxed", "stable", "share"),
    ("M.S.U.N., unrelaxed", "msun", "share"),
    ("S.U.N., unrelaxed", "sun", "share"),
    ("mean E_hull, relaxed (eV/atom)", "e_above_hull_relaxed", "mean"),
    ("metastable, relaxed", "metastable_relaxed", "share"),
    ("stable, relaxed", "stable_relaxed", "share"),
    ("M.S.U.N., relaxed", "msun_relaxed", "share"),
    ("S.U.N., relaxed", "sun_relaxed", "share"),
)
CONVENTION = (
    f"{int(CI_LEVEL * 100)} % confidence interval in brackets: shares (in percentage points, over all crystals) "
    "by Newcombe's score interval for a difference of proportions, mean E_hull (over the crystals that have one, "
    f"the valid ones) by a percentile bootstrap over crystals ({BOOTSTRAP_RESAMPLES} resamples of each set, RNG "
    f"seed {BOOTSTRAP_SEED}); * = the interval excludes 0; the spread between training seeds is not included"
)


def read_per_crystal(folder: Path) -> pd.DataFrame:
    """An evaluation's ``per_crystal.csv`` (``folder`` may also be the CSV itself)."""
    path = folder / PER_CRYSTAL if folder.is_dir() else folder
    if not path.is_file():
        raise FileNotFoundError(f"no {PER_CRYSTAL} at {path}: pass a folder written by crystal-rl-evaluate")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty: pass a per_crystal.csv written by crystal-rl-evaluate") from None


def _values(frame: pd.DataFrame, column: str, kind: str) -> np.ndarray:
    if kind == "share":
        yes = frame[column].map({True: 1.0, False: 0.0, "True": 1.0, "False": 0.0})
        return pd.to_numeric(yes, errors="coerce").fillna(0.0).to_numpy(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def compare_evaluations(first: Path, second: Path) -> dict[str, dict[str, Any]]:
    """Per metric (keyed by its per-crystal column): both values, their counts, and the difference
    (second - first) with its interval. Metrics missing from either CSV (an unrelaxed-only evaluation
    has no relaxed columns) are left out: :func:`one_sided_metrics` names them."""
    return compare_frames(read_per_crystal(first), read_per_crystal(second))


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """:func:`compare_evaluations` on two per-crystal tables already read."""
    out: dict[str, dict[str, Any]] = {}
    for label, column, kind in METRICS:
        if column not in a.columns or column not in b.columns:
            continue
        x, y = _values(a, column, kind), _values(b, column, kind)
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        if kind == "share":
            diff, low, high = share_difference_ci(int(x.sum()), len(x), int(y.sum()), len(y))
        else:
            diff, low, high = bootstrap_difference_ci(x, y, seed=BOOTSTRAP_SEED)
        out[column] = {
            "label": label,
            "kind": kind,
            "first": float(x.mean()) if len(x) else None,
            "second": float(y.mean()) if len(y) else None,
            "n_first": int(len(x)),
            "n_second": int(len(y)),
            "difference": diff,
            "low": low,
            "high": high,
            "resolved": bool(low > 0 or high < 0),
        }
    return out


def one_sided_metrics(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Metric columns present in only one of two per-crystal tables (left out of the comparison)."""
    return [column for _, column, _ in METRICS if (column in a.columns) != (column in b.columns)]


def _cell(value: float | None, kind: str) -> str:
    if value is None or value != value:
        return "–"
    return f"{100 * value:.1f} %" if kind == "share" else f"{value:.3f}"


def difference_cell(row: dict[str, Any]) -> str:
    """``+3.6 pts [+0.2, +7.0] *``: the difference with its interval (percentage points for shares)."""
    if row["difference"] is None or row["difference"] != row["difference"]:
        return "–"
    scale, digits, unit = (100, 1, " pts") if row["kind"] == "share" else (1, 3, "")
    interval = f"[{scale * row['low']:+.{digits}f}, {scale * row['high']:+.{digits}f}]"
    return f"{scale * row['difference']:+.{digits}f}{unit} {interval}" + (" *" if row["resolved"] else "")


def render_markdown(rows: dict[str, dict[str, Any]], first_name: str, second_name: str) -> str:
    lines = [
        f"| metric | {first_name} | {second_name} | {second_name} − {first_name} [95 % CI] |",
        "|---|---|---|---|",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['label']} | {_cell(row['first'], row['kind'])} | {_cell(row['second'], row['kind'])} | "
            f"{difference_cell(row)} |"
        )
    return "\n".join(lines) + f"\n\n{second_name} − {first_name}: {CONVENTION}.\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crystal-rl-compare", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "first", type=Path, help="evaluation folder (or its per_crystal.csv) of the baseline, e.g. the base model"
    )
    p.add_argument("second", type=Path, help="evaluation folder (or its per_crystal.csv) of the model compared with it")
    p.add_argument("--names", default="base,fine-tuned", help="column names of the two models (comma-separated)")
    p.add_argument("--out", type=Path, default=None, help="folder for comparison.md and comparison.json")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    names = [n.strip() for n in args.names.split(",")]
    if len(names) != 2 or not all(names):
        raise SystemExit(f"error: --names takes two comma-separated names, got {args.names!r}")
    try:
        a, b = read_per_crystal(args.first), read_per_crystal(args.second)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    rows, one_sided = compare_frames(a, b), one_sided_metrics(a, b)
    if not rows:
        raise SystemExit(
            f"error: no metric columns in common ({[c for _, c, _ in METRICS]}): are both per_crystal.csv files "
            "written by crystal-rl-evaluate?"
        )
    if one_sided:
        print(f"note: in only one evaluation, left out: {one_sided}", file=sys.stderr)
    text = render_markdown(rows, *names)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out / "comparison.md", text.encode())
        payload = {"first": str(args.first), "second": str(args.second), "convention": CONVENTION, "metrics": rows}
        atomic_write_bytes(args.out / "comparison.json", (json.dumps(payload, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
