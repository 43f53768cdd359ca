"""Evaluate generated crystals: ``crystal-rl-evaluate samples/ --seed 0 --out eval/``.

Input: a folder of CIFs (e.g. the output of crystal-rl-sample) or a CSV with a ``cif`` column.
Writes ``per_crystal.csv``, ``summary.json`` and PNG plots (e_hull histogram vs the reference set,
element frequencies, number of atoms). Files that cannot be read or hold disordered sites or dummy
species are skipped, counted in the summary (``skipped_files``, ``skipped_reasons``) and listed in
``skipped.csv``. In a checkout, ``python scripts/evaluate.py`` is the same program.
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
import pandas as pd  # noqa: E402

from crystal_env.data import load_dataset  # noqa: E402
from crystal_rl.common import non_negative_int, quiet_third_party, seed_everything  # noqa: E402
from rewards.evaluation import CONVENTIONS, evaluate_structures, read_crystal_files  # noqa: E402
from rewards.reference import load_reference  # noqa: E402

E_HULL_RANGE = (-0.2, 3.0)  # eV/atom shown bin by bin; values above go to a labelled overflow bin
E_HULL_BIN = 0.1


def e_hull_histogram(ax, samples: dict[str, np.ndarray]) -> None:
    """Histograms (fraction of each set's crystals per bin) of E_hull over ``E_HULL_RANGE``, values
    below it in the first bin and values above it in an explicit overflow bin labelled "> hi"."""
    lo, hi = E_HULL_RANGE
    edges = np.append(np.arange(lo, hi + E_HULL_BIN / 2, E_HULL_BIN), hi + 2 * E_HULL_BIN)
    for label, values in samples.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        above = float((values > hi).mean())
        ax.hist(
            np.clip(values, lo, hi + E_HULL_BIN),
            bins=edges,
            weights=np.full(len(values), 1.0 / len(values)),
            alpha=0.6,
            label=f"{label}: n = {len(values)}, {above:.0%} > {hi:g}",
        )
    ax.axvline(hi, color="grey", linewidth=0.8, linestyle=":")
    ticks = list(np.arange(0.0, hi - E_HULL_BIN, 1.0))  # not hi itself: its label would hit the overflow's
    ax.set_xticks([*ticks, hi + E_HULL_BIN], [f"{t:g}" for t in ticks] + [f"> {hi:g}"])
    ax.set_xlabel("energy above hull (eV/atom)")
    ax.set_ylabel("fraction of crystals per bin")


def plot(frame, structures, reference_dataset: str, out: Path) -> None:
    ref = load_dataset(reference_dataset, "train")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sets = {"generated (MLIP)": frame["e_above_hull"].to_numpy()}
    if "e_above_hull_relaxed" in frame:
        sets["generated, relaxed (MLIP)"] = frame["e_above_hull_relaxed"].to_numpy()
    if "e_above_hull" in ref.property_names:  # e.g. Perov-5 has no such column
        sets[f"{reference_dataset} (DFT)"] = np.asarray(ref.property_values("e_above_hull"))
    e_hull_histogram(ax, sets)
    ax.legend(fontsize=8)
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
    ax.set_ylabel("fraction of crystals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "num_atoms.png", dpi=120)
    plt.close(fig)


def evaluate_to_folder(
    structures: list,
    out: Path,
    reference: str = "mp20_sample",
    model: str = "mp20_tiny",
    mlip: str = "chgnet",
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
    novelty_splits: str = "train,val,test",
    hull: str = "mp",
    phase_diagram: str | None = None,
    relax_steps: int = 0,
    fmax: float = 0.1,
    smact_set: str = "smact14",
    names: list[str] | None = None,
    skipped: dict[str, str] | None = None,
    device: str = "cpu",
) -> dict:
    """Evaluate ``structures`` and write ``per_crystal.csv``, ``summary.json`` (with the settings, the
    seed and the metrics' conventions) and the plots. ``names``: the crystals' file names (a ``file``
    column); ``skipped``: files left out (name → reason), counted in the summary and ``skipped.csv``."""
    seed_everything(seed)
    out.mkdir(parents=True, exist_ok=True)
    skipped = skipped or {}
    if skipped:
        print(f"skipped {len(skipped)} file(s): {dict(Counter(skipped.values()))} (list in skipped.csv)")
        pd.DataFrame({"file": list(skipped), "reason": list(skipped.values())}).to_csv(out / "skipped.csv", index=False)
    if not structures:
        raise SystemExit(f"No readable crystal to evaluate; skipped: {dict(Counter(skipped.values()))}")
    ref = load_reference(reference, novelty_splits=novelty_splits.split(","), hull=hull, phase_diagram=phase_diagram)
    frame, summary = evaluate_structures(
        structures, ref, model, mlip, relax_steps, fmax, smact_set, progress=progress, device=device
    )
    summary["seed"] = seed
    summary["skipped_files"] = len(skipped)
    summary["skipped_reasons"] = dict(Counter(skipped.values()))
    settings = dict(
        reference=reference,
        model=model,
        mlip=mlip,
        novelty_splits=novelty_splits,
        hull=hull,
        phase_diagram=phase_diagram,
        relax_steps=relax_steps,
        fmax=fmax,
        smact_set=smact_set,
    )
    if names is not None:
        frame.insert(0, "file", names)
    frame.to_csv(out / "per_crystal.csv", index=False)
    record = {**summary, "settings": settings, "conventions": CONVENTIONS}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    if plots:
        plot(frame, structures, reference, out)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of CIFs, or a CSV with a 'cif' column")
    p.add_argument("--out", default=None, help="output folder (default: <input>/eval)")
    p.add_argument("--model", default="mp20_tiny", help="VAE for the diversity features")
    p.add_argument("--reference", default="mp20_sample", help="reference dataset (novelty, hull, plots)")
    p.add_argument("--mlip", default="chgnet", choices=["chgnet", "mace"])
    p.add_argument("--novelty-splits", default="train,val,test", help="reference splits novelty is judged against")
    p.add_argument("--hull", default="mp", choices=["mp", "dataset"], help="mp: all of the Materials Project")
    p.add_argument("--phase-diagram", default=None, help="pickled PatchedPhaseDiagram to use as the hull instead")
    p.add_argument(
        "--relax-steps", type=non_negative_int, default=0, help="> 0: also report E_hull etc. after FIRE relaxation"
    )
    p.add_argument("--fmax", type=float, default=0.1, help="relaxation force threshold (eV/Å)")
    p.add_argument("--smact-set", default="smact14", help="SMACT oxidation-state set (smact14, icsd24, ...)")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the global RNGs (recorded in summary.json)"
    )
    p.add_argument("--device", default="cpu", help="where the MLIP and the VAE run (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    out = Path(args.out) if args.out else Path(args.input) / "eval"
    with quiet_third_party():
        files = read_crystal_files(args.input)
        summary = evaluate_to_folder(
            files.structures,
            out,
            args.reference,
            args.model,
            args.mlip,
            args.seed,
            plots=not args.no_plots,
            progress=not args.no_progress,
            novelty_splits=args.novelty_splits,
            hull=args.hull,
            phase_diagram=args.phase_diagram,
            relax_steps=args.relax_steps,
            fmax=args.fmax,
            smact_set=args.smact_set,
            names=files.names,
            skipped=files.skipped,
            device=args.device,
        )
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
