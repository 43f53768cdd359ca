"""Reward benchmarks (not tests): novelty prefilter, batched MLIP, full DNG reward, CHGNet vs DFT.

    python benchmarks/bench_rewards.py [--carbon-dir /work/shared/data/carbon24] [--model mp20_tiny]

Novelty uses Carbon-24 (every crystal is "C", so every reference is a same-formula candidate).
Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from crystal_env.data import load_crystal_csv, load_dataset
from rewards import build_reward
from rewards.hull import formation_energy_per_atom
from rewards.mlip import get_mlip
from rewards.novelty import ReducedStructures, amd_vectors, default_matcher, first_match, naive_first_match, scale_free

DEFAULT_CARBON = Path(__file__).resolve().parents[2] / "shared" / "data" / "carbon24"


def rattle(structure, sigma: float, rng: np.random.Generator):
    s = structure.copy()
    for i, shift in enumerate(rng.normal(0.0, sigma, (len(s), 3))):
        s.translate_sites([i], shift, frac_coords=False)
    return s


def bench_novelty(carbon_dir: Path, n_ref: int, n_copies: int, n_rattled: int, n_new: int) -> dict:
    rng = np.random.default_rng(0)
    ref = load_crystal_csv(carbon_dir / "val.csv", max_atoms=24).structures[:n_ref]
    new = load_crystal_csv(carbon_dir / "test.csv", max_atoms=24).structures[:n_new]
    picks = rng.integers(0, len(ref), n_copies + n_rattled)
    queries = [ref[i].copy() for i in picks[:n_copies]]
    queries += [rattle(ref[i], 0.03, rng) for i in picks[n_copies:]]
    queries += new
    ref_amds = scale_free(amd_vectors(ref), ref)  # reference preprocessing (cached on disk in the package)
    matcher = default_matcher()
    start = time.perf_counter()
    reference = ReducedStructures(ref, matcher)  # reduced lazily, once per reference crystal
    everything = list(range(len(ref)))
    fast = []
    for q in queries:
        q_amd = scale_free(amd_vectors([q]), [q])[0]
        q_reduced = ReducedStructures([q], matcher)[0]
        fast.append(first_match(q_reduced, q_amd, reference, everything, ref_amds, matcher) is not None)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    naive = [naive_first_match(q, ref, matcher) is not None for q in queries]
    t_naive = time.perf_counter() - start
    return {
        "queries": len(queries),
        "references": len(ref),
        "known": int(sum(naive)),
        "identical_verdicts": fast == naive,
        "disagreements": int(sum(a != b for a, b in zip(fast, naive, strict=True))),
        "prefilter_s": t_fast,
        "naive_s": t_naive,
        "speedup": t_naive / t_fast,
    }


def bench_energy(structures) -> dict:
    backend = get_mlip("chgnet")
    backend.energies(structures[:4])  # warm-up
    start = time.perf_counter()
    batched = backend.energies(structures)
    t_batched = time.perf_counter() - start
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = backend.ase_calculator()
    start = time.perf_counter()
    single = []
    for s in structures:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calc
        single.append(atoms.get_potential_energy() / len(atoms))
    t_single = time.perf_counter() - start
    return {
        "crystals": len(structures),
        "batched_s": t_batched,
        "ase_s": t_single,
        "speedup": t_single / t_batched,
        "max_abs_diff_eV_per_atom": float(np.nanmax(np.abs(batched - np.array(single)))),
    }


def dng_model(name: str) -> str:
    """The VAE for the diversity rewards; a randomly initialised one of the default size if absent."""
    from crystal_env.models.registry import resolve_model_path

    try:
        resolve_model_path(name)
        return name
    except (FileNotFoundError, ValueError):
        from crystal_env.models.denoiser import DenoiserConfig, DiTDenoiser
        from crystal_env.models.ldm import CrystalLDM
        from crystal_env.models.vae import CrystalVAE, VAEConfig

        print(f"(model {name!r} unavailable: timing the DNG reward with a random VAE of the default size)")
        model = CrystalLDM(
            CrystalVAE(VAEConfig()),
            DiTDenoiser(DenoiserConfig(latent_dim=8), max_atoms=20),
            torch.zeros(8),
            torch.ones(8),
            torch.ones(21),
        )
        path = Path(tempfile.mkdtemp()) / "random_ldm.pt"
        model.save(path)
        return str(path)


def bench_dng(structures, model: str) -> dict:
    reward = build_reward("dng", overrides=[f"components.2.model={model}", f"components.3.model={model}"])
    reward(structures[:8])  # warm-up: loads the reference, CHGNet and the VAE once
    start = time.perf_counter()
    out = reward(structures)
    elapsed = time.perf_counter() - start
    assert all(torch.isfinite(out[k]).all() for k in ["total", *reward.component_names])
    return {
        "crystals": len(structures),
        "seconds": elapsed,
        "ms_per_crystal": 1e3 * elapsed / len(structures),
        "metric_seconds": reward.last_info["metric_seconds"],
    }


def bench_formation_mae() -> dict:
    rows = [r for split in ("train", "val", "test") for r in load_dataset("mp20_sample", split)]
    energies = get_mlip("chgnet").energies([r.structure for r in rows])
    pred = np.array(
        [formation_energy_per_atom(r.structure.composition, e) for r, e in zip(rows, energies, strict=True)]
    )
    dft = np.array([r.properties["formation_energy_per_atom"] for r in rows])
    ok = np.isfinite(pred)
    err = np.abs(pred[ok] - dft[ok])
    return {
        "crystals": int(ok.sum()),
        "of": len(rows),
        "mae": float(err.mean()),
        "median": float(np.median(err)),
        "pearson_r": float(np.corrcoef(pred[ok], dft[ok])[0, 1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carbon-dir", type=Path, default=DEFAULT_CARBON)
    parser.add_argument("--model", default="mp20_tiny")
    parser.add_argument("--n-ref", type=int, default=250)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    rng = np.random.default_rng(1)
    test = load_dataset("mp20_sample", "test").structures
    train = load_dataset("mp20_sample", "train").structures
    mix = test[:40] + train[:12] + [rattle(s, 0.03, rng) for s in train[12:24]]

    nov = bench_novelty(args.carbon_dir, args.n_ref, n_copies=150, n_rattled=150, n_new=200)
    print(
        f"| novelty (AMD prefilter + StructureMatcher vs naive scan) | {nov['queries']} queries x "
        f"{nov['references']} same-formula refs, {nov['known']} known | {nov['prefilter_s']:.1f} s vs "
        f"{nov['naive_s']:.1f} s | **{nov['speedup']:.0f}x**, identical verdicts: {nov['identical_verdicts']} |"
    )
    en = bench_energy(test[:64])
    print(
        f"| energy (CHGNet batched vs per-structure ASE calculator) | {en['crystals']} crystals | "
        f"{en['batched_s']:.1f} s vs {en['ase_s']:.1f} s | **{en['speedup']:.1f}x** "
        f"(max diff {en['max_abs_diff_eV_per_atom']:.1e} eV/atom) |"
    )
    dng = bench_dng(mix, dng_model(args.model))
    per_metric = ", ".join(f"{k} {v:.2f} s" for k, v in dng["metric_seconds"].items())
    print(
        f"| full DNG reward | {dng['crystals']} crystals | {dng['seconds']:.1f} s | "
        f"**{dng['ms_per_crystal']:.0f} ms/crystal** ({per_metric}) |"
    )
    mae = bench_formation_mae()
    print(
        f"| CHGNet vs DFT formation energy (bundled MP-20, all splits) | {mae['crystals']}/{mae['of']} crystals | "
        f"MAE {mae['mae']:.3f} eV/atom, median {mae['median']:.3f}, r = {mae['pearson_r']:.3f} | |"
    )


if __name__ == "__main__":
    main()
