"""Evaluate generated crystals: ``python scripts/evaluate.py samples/ --out eval/``.

Input: a folder of CIFs (e.g. the output of scripts/sample.py) or a CSV with a ``cif`` column.
Writes ``per_crystal.csv``, ``summary.json`` and PNG plots (e_hull histogram vs the reference set,
element frequencies, number of atoms).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crystal_env.data import load_dataset  # noqa: E402
from rewards.evaluation import CONVENTIONS, evaluate_structures, read_structures  # noqa: E402
from rewards.reference import load_reference  # noqa: E402


def plot(frame, structures, reference_dataset: str, out: Path) -> None:
    ref = load_dataset(reference_dataset, "train")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(-0.2, 3.0, 33)
    ax.hist(
        np.clip(frame["e_above_hull"].dropna(), -0.2, 3.0), bins=bins, alpha=0.6, density=True, label="generated (MLIP)"
    )
    ax.hist(
        np.clip(ref.property_values("e_above_hull"), -0.2, 3.0),
        bins=bins,
        alpha=0.6,
        density=True,
        label=f"{reference_dataset} (DFT)",
    )
    ax.set_xlabel("energy above hull (eV/atom)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "e_above_hull.png", dpi=120)
    plt.close(fig)

    gen_el = Counter(str(el) for s in structures if s is not None for el in s.composition.elements)
    ref_el = Counter(str(el) for s in ref.structures for el in s.composition.elements)
    top = [el for el, _ in (gen_el + ref_el).most_common(30)]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = np.arange(len(top))
    n_gen = max(sum(s is not None for s in structures), 1)
    ax.bar(x - 0.2, [gen_el[e] / n_gen for e in top], 0.4, label="generated")
    ax.bar(x + 0.2, [ref_el[e] / len(ref) for e in top], 0.4, label=reference_dataset)
    ax.set_xticks(x, top, rotation=90)
    ax.set_ylabel("fraction of crystals containing")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "element_frequency.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.arange(0.5, 21.5)
    ax.hist(frame["num_atoms"][frame["num_atoms"] > 0], bins=bins, alpha=0.6, density=True, label="generated")
    ax.hist([len(s) for s in ref.structures], bins=bins, alpha=0.6, density=True, label=reference_dataset)
    ax.set_xlabel("atoms per cell")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "num_atoms.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of CIFs, or a CSV with a 'cif' column")
    p.add_argument("--out", default=None, help="output folder (default: <input>/eval)")
    p.add_argument("--model", default="mp20_tiny", help="VAE for the diversity features")
    p.add_argument("--reference", default="mp20_sample", help="reference dataset (novelty, hull, plots)")
    p.add_argument("--mlip", default="chgnet", choices=["chgnet", "mace"])
    p.add_argument("--novelty-splits", default="train,val,test", help="reference splits novelty is judged against")
    p.add_argument("--hull", default="mp", choices=["mp", "dataset"], help="mp: all of the Materials Project")
    p.add_argument("--phase-diagram", default=None, help="pickled PatchedPhaseDiagram to use as the hull instead")
    p.add_argument("--relax-steps", type=int, default=0, help="> 0: also report E_hull etc. after FIRE relaxation")
    p.add_argument("--fmax", type=float, default=0.1, help="relaxation force threshold (eV/Å)")
    p.add_argument("--smact-set", default="smact14", help="SMACT oxidation-state set (smact14, icsd24, ...)")
    p.add_argument("--device", default="cpu", help="where the MLIP and the VAE run (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    structures = read_structures(args.input)
    out = Path(args.out) if args.out else Path(args.input) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    reference = load_reference(
        args.reference,
        novelty_splits=args.novelty_splits.split(","),
        hull=args.hull,
        phase_diagram=args.phase_diagram,
    )
    frame, summary = evaluate_structures(
        structures, reference, args.model, args.mlip, args.relax_steps, args.fmax, args.smact_set, device=args.device
    )
    frame.to_csv(out / "per_crystal.csv", index=False)
    settings = {k: v for k, v in vars(args).items() if k not in ("input", "out", "no_plots")}
    record = {**summary, "settings": settings, "conventions": CONVENTIONS}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    if not args.no_plots:
        plot(frame, structures, args.reference, out)
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
