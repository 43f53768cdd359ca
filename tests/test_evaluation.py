import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal_env.data import load_dataset
from rewards.evaluation import evaluate_structures, frechet_distance, read_structures

REPO = Path(__file__).resolve().parents[1]


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=g)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shifted = x + torch.tensor([2.0, 0.0, 0.0])
    assert frechet_distance(x, shifted) == pytest.approx(4.0, rel=1e-3)


@pytest.fixture(scope="module")
def hand_made_set():
    ref = load_dataset("mp20_sample", "train").structures
    new = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # CsCl-type MgO: not in the sample
    overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    na2cl = Structure(Lattice.cubic(5.6), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5]])
    structures = [ref[0], ref[0].copy(), new, new.copy(), overlapping, na2cl, None]
    frame, summary = evaluate_structures(structures)
    return frame, summary


def test_per_crystal_flags(hand_made_set):
    frame, _ = hand_made_set
    assert frame["valid"].tolist() == [True, True, True, True, False, True, False]
    assert frame["problem"][4] == "overlapping_atoms" and frame["problem"][6] == "undecodable"
    assert frame["unique"].tolist() == [True, False, True, False, False, True, False]
    assert frame["novel"].tolist() == [False, False, True, True, False, True, False]
    assert frame["smact_valid"][2] and not frame["smact_valid"][5]
    # a real DFT-relaxed reference crystal sits near its own hull
    assert abs(frame["e_above_hull"][0]) < 0.15
    assert np.isnan(frame["e_above_hull"][4]) and np.isnan(frame["e_above_hull"][6])
    assert frame["msun"].tolist() == list(frame["metastable"] & frame["unique"] & frame["novel"] & frame["valid"])


def test_summary(hand_made_set):
    frame, summary = hand_made_set
    assert summary["n"] == 7
    assert summary["valid"] == pytest.approx(5 / 7)
    assert summary["unique"] == pytest.approx(3 / 7)
    assert 0 < summary["structure_diversity"] <= 1 and 0 < summary["composition_diversity"] <= 1


def test_evaluate_script_end_to_end(tmp_path):
    ref = load_dataset("mp20_sample", "test").structures[:4]
    for i, s in enumerate(ref):
        s.to(filename=str(tmp_path / f"{i}.cif"))
    (tmp_path / "broken.cif").write_text("not a cif")
    assert len(read_structures(tmp_path)) == 5
    out = subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(tmp_path), "--out", str(tmp_path / "eval")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 5 and summary["valid"] == pytest.approx(0.8)
    assert summary["novel"] == 0.0  # test-split crystals: novelty is judged against all splits
    assert summary["settings"]["novelty_splits"] == "train,val,test" and "e_above_hull" in summary["conventions"]
    for name in ("per_crystal.csv", "e_above_hull.png", "element_frequency.png", "num_atoms.png"):
        assert (tmp_path / "eval" / name).is_file()
