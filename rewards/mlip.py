"""Machine-learned interatomic potentials behind one batched interface (CHGNet, MACE).

Every backend returns *MP2020-compatible* total energies per atom, so they compare directly with
Materials Project formation energies and hulls: CHGNet is trained on MP2020-corrected energies
(used as they are); MACE-MP is trained on uncorrected energies, so pymatgen's
``MaterialsProject2020Compatibility`` is applied to its energies.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

log = logging.getLogger(__name__)

MLIP_NAMES = ("chgnet", "mace")
DEFAULT_MACE_MODEL = "medium"
GPA = 0.006241509125883258  # eV/Å³ per GPa (ase.units.GPa)


class MLIPBackend:
    """Energies of many crystals at once; a crystal the model fails on gets NaN, not an exception."""

    name = ""
    needs_mp2020_correction = False
    _warned_unrelaxed = False  # set on the instance by the first relaxation failure

    def _batch_energies(self, structures: Sequence[Structure], batch_size: int) -> np.ndarray:
        """Raw energies per atom (eV/atom) of a batch; may raise."""
        raise NotImplementedError

    def ase_calculator(self):
        raise NotImplementedError

    def raw_energies(self, structures: Sequence[Structure], batch_size: int = 16) -> np.ndarray:
        """Model energies per atom, batched; if a batch fails, its crystals are retried one by one."""
        out = np.full(len(structures), np.nan)
        for start in range(0, len(structures), batch_size):
            chunk = list(structures[start : start + batch_size])
            try:
                out[start : start + len(chunk)] = self._batch_energies(chunk, batch_size)
                continue
            except Exception as exc:  # noqa: BLE001 - isolate the crystal that broke the batch
                log.debug("%s batch failed (%s); retrying crystals one by one", self.name, exc)
            for j, s in enumerate(chunk):
                try:
                    out[start + j] = self._batch_energies([s], 1)[0]
                except Exception as exc:  # noqa: BLE001 - this crystal gets NaN (the worst reward)
                    log.debug("%s failed on %s: %s", self.name, s.composition.reduced_formula, exc)
        return out

    def energies(self, structures: Sequence[Structure], batch_size: int = 16) -> np.ndarray:
        """MP2020-compatible energies per atom (eV/atom); NaN where the model or correction failed."""
        raw = self.raw_energies(structures, batch_size)
        if not self.needs_mp2020_correction:
            return raw
        return np.array([mp2020_corrected(s, e) for s, e in zip(structures, raw, strict=True)])

    def _batch_efs(
        self, structures: Sequence[Structure], batch_size: int
    ) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Total energy (eV), forces (eV/Å) and stress (3×3, eV/Å³, ASE sign) of a batch; may raise.

        Backends without a batched implementation relax one crystal at a time through ASE.
        """
        raise NotImplementedError

    def _safe_efs(self, structures: Sequence[Structure], batch_size: int) -> list[tuple | None]:
        try:
            return list(self._batch_efs(structures, batch_size))
        except Exception as exc:  # noqa: BLE001 - isolate the crystal that broke the batch
            log.debug("%s batched forces failed (%s); retrying crystals one by one", self.name, exc)
        out: list[tuple | None] = []
        for s in structures:
            try:
                out.append(self._batch_efs([s], 1)[0])
            except Exception:  # noqa: BLE001 - this crystal stays unrelaxed
                out.append(None)
        return out

    def relax(
        self, structures: Sequence[Structure], steps: int, fmax: float = 0.1, batch_size: int = 16
    ) -> list[Structure]:
        """FIRE relaxation of positions and cell (ASE ``FIRE`` on a ``FrechetCellFilter``), at most
        ``steps`` steps or until every force (and stress term) is below ``fmax`` eV/Å.

        All crystals advance in lockstep: each FIRE step is one batched MLIP call for the crystals
        not yet converged. A crystal whose relaxation fails (or goes non-finite) is returned unrelaxed,
        with a warning. Forces are energy gradients, so autograd is switched on here: a reward called
        inside ``torch.no_grad()`` (an env rollout) would otherwise fail every force call.
        """
        with torch.inference_mode(False), torch.enable_grad():
            out = self._relax(structures, steps, fmax, batch_size)
        failed = sum(r is s for r, s in zip(out, structures, strict=True))
        if failed:  # a warning once per backend: a training run would repeat it every step
            level = logging.DEBUG if self._warned_unrelaxed else logging.WARNING
            self._warned_unrelaxed = True
            log.log(
                level,
                "%s relaxation failed for %d of %d crystals: scored unrelaxed (later failures are logged at DEBUG; "
                "counted per call in a reward's last_info['num_unrelaxed'], per crystal in the evaluation's "
                "'problem' column)",
                self.name,
                failed,
                len(structures),
            )
        return out

    def _relax(self, structures: Sequence[Structure], steps: int, fmax: float, batch_size: int) -> list[Structure]:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        try:
            self._batch_efs([], batch_size)
        except NotImplementedError:
            return [self._relax_one(s, steps, fmax) for s in structures]
        atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
        filters = [FrechetCellFilter(a) for a in atoms]
        optimizers = [FIRE(f, logfile=None) for f in filters]
        failed: set[int] = set()
        active = list(range(len(structures)))
        for step in range(steps + 1):
            if not active:
                break
            current = [AseAtomsAdaptor.get_structure(atoms[i]) for i in active]
            still = []
            for i, result in zip(active, self._safe_efs(current, batch_size), strict=True):
                if result is None or not all(np.isfinite(np.asarray(x)).all() for x in result):
                    failed.add(i)
                    continue
                energy, forces, stress = result
                atoms[i].calc = SinglePointCalculator(
                    atoms[i], energy=energy, free_energy=energy, forces=forces, stress=stress
                )
                if step == steps or np.linalg.norm(filters[i].get_forces(), axis=1).max() < fmax:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optimizers[i].step()
                still.append(i)
            active = still
        out = []
        for i, s in enumerate(structures):
            relaxed = None if i in failed else AseAtomsAdaptor.get_structure(atoms[i])
            ok = relaxed is not None and np.isfinite(relaxed.lattice.matrix).all() and relaxed.volume > 0
            out.append(relaxed if ok else s)
        return out

    def _relax_one(self, s: Structure, steps: int, fmax: float) -> Structure:
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE

        try:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = self.ase_calculator()
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=fmax, steps=steps)
            relaxed = AseAtomsAdaptor.get_structure(atoms)
            return relaxed if np.isfinite(relaxed.lattice.matrix).all() else s
        except Exception as exc:  # noqa: BLE001 - keep the unrelaxed crystal
            log.debug("relaxation failed on %s: %s", s.composition.reduced_formula, exc)
            return s


class CHGNetBackend(MLIPBackend):
    """CHGNet; its pretrained weights ship with the package, so it works offline."""

    name = "chgnet"

    def __init__(self, model: str | None = None, device: str = "cpu"):
        from chgnet.model import CHGNet

        with contextlib.redirect_stdout(io.StringIO()):
            if model is not None and Path(model).is_file():
                self.model = CHGNet.from_file(model).to(device)
            else:
                self.model = CHGNet.load(model_name=model or "0.3.0", use_device=device, verbose=False)
        self.model.eval()

    def _batch_energies(self, structures: Sequence[Structure], batch_size: int) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = self.model.predict_structure(list(structures), task="e", batch_size=batch_size)
        preds = [preds] if isinstance(preds, dict) else preds
        return np.array([float(p["e"]) for p in preds])  # CHGNet predicts eV/atom

    def _batch_efs(
        self, structures: Sequence[Structure], batch_size: int
    ) -> list[tuple[float, np.ndarray, np.ndarray]]:
        if not structures:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = self.model.predict_structure(list(structures), task="efs", batch_size=batch_size)
        preds = [preds] if isinstance(preds, dict) else preds
        # eV/atom → eV; stress GPa → eV/Å³ (the factor CHGNetCalculator uses)
        return [
            (float(p["e"]) * len(s), np.asarray(p["f"], dtype=np.float64), np.asarray(p["s"], dtype=np.float64) * GPA)
            for s, p in zip(structures, preds, strict=True)
        ]

    def ase_calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):
            return CHGNetCalculator(self.model)


def resolve_mace_model(model: str | Path | None) -> Path:
    """A local MACE model file, or a MACE-MP foundation model name (downloaded when online)."""
    if model is not None and Path(model).expanduser().is_file():
        return Path(model).expanduser()
    from mace.calculators.foundations_models import download_mace_mp_checkpoint, mace_mp_names

    name = model or DEFAULT_MACE_MODEL
    if name not in mace_mp_names:
        raise FileNotFoundError(
            f"MACE model {name!r} is neither a file nor a MACE-MP foundation model name "
            f"({[n for n in mace_mp_names if n]})"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            path = Path(download_mace_mp_checkpoint(name))
    except Exception as exc:  # noqa: BLE001 - any download failure means "offline"
        raise RuntimeError(
            f"MACE-MP model {name!r} is not cached locally and could not be downloaded ({exc}). Offline, "
            "download the model file on another machine and set `model: /path/to/file.model`, or use the "
            "`chgnet` backend, whose weights ship with the package."
        ) from exc
    if not path.is_file():
        raise RuntimeError(f"MACE-MP model {name!r} download produced no file at {path}")
    return path


class MACEBackend(MLIPBackend):
    """A MACE model (file or MACE-MP foundation name); energies of whole batches in one forward pass."""

    name = "mace"
    needs_mp2020_correction = True

    def __init__(self, model: str | Path | None = None, device: str = "cpu", mp2020_correction: bool = True):
        from mace.tools.utils import AtomicNumberTable

        self.path = resolve_mace_model(model)
        self.device = device
        self.needs_mp2020_correction = mp2020_correction
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = torch.load(self.path, map_location=device, weights_only=False).eval()
        self.model.requires_grad_(False)
        self.dtype = next(self.model.parameters()).dtype
        self.z_table = AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        self.r_max = float(self.model.r_max)
        self.heads = getattr(self.model, "heads", None)

    def _batch_energies(self, structures: Sequence[Structure], batch_size: int) -> np.ndarray:
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        previous = torch.get_default_dtype()  # mace's context manager does not restore it on errors
        try:
            with torch_tools.default_dtype(self.dtype):
                graphs = [
                    mace_data.AtomicData.from_config(
                        mace_data.config_from_atoms(AseAtomsAdaptor.get_atoms(s)),
                        z_table=self.z_table,
                        cutoff=self.r_max,
                        heads=self.heads,
                    )
                    for s in structures
                ]
        finally:
            torch.set_default_dtype(previous)
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
        energies = []
        for batch in loader:
            out = self.model(batch.to(self.device).to_dict(), training=False, compute_force=False)
            energies.append(out["energy"].detach().double().cpu())
        totals = torch.cat(energies).numpy()
        return totals / np.array([len(s) for s in structures])

    def ase_calculator(self):
        from mace.calculators import MACECalculator

        previous = torch.get_default_dtype()  # MACECalculator sets the global default dtype
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return MACECalculator(models=self.model, device=self.device, default_dtype=str(self.dtype)[6:])
        finally:
            torch.set_default_dtype(previous)


# Hubbard U (eV) of the Materials Project GGA+U calculations (MPRelaxSet), by anion then metal.
_MP_U_ANIONS = ("O", "F")


@lru_cache(maxsize=1)
def _mp_hubbard_u() -> dict[str, dict[str, float]]:
    from pymatgen.io.vasp.sets import MPRelaxSet

    return {anion: dict(values) for anion, values in MPRelaxSet.CONFIG["INCAR"]["LDAUU"].items()}


def mp2020_corrected(structure: Structure, energy_per_atom: float) -> float:
    """Apply MaterialsProject2020Compatibility to an uncorrected (MACE-MP) energy; NaN if it refuses."""
    if not np.isfinite(energy_per_atom):
        return float("nan")
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    elements = {el.symbol for el in structure.composition.elements}
    hubbards: dict[str, float] = {}
    for anion in _MP_U_ANIONS:
        if anion in elements:
            u = _mp_hubbard_u().get(anion, {})
            if elements & set(u):
                hubbards = {el: float(u.get(el, 0.0)) for el in elements}
                break
    is_u = any(v > 0 for v in hubbards.values())
    entry = ComputedStructureEntry(
        structure,
        energy_per_atom * len(structure),
        parameters={"run_type": "GGA+U" if is_u else "GGA", "hubbards": hubbards, "is_hubbard": is_u},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed = _compatibility().process_entry(entry)
    return float("nan") if processed is None else processed.energy / len(structure)


@lru_cache(maxsize=1)
def _compatibility():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


@lru_cache(maxsize=8)
def get_mlip(name: str = "chgnet", model: str | None = None, device: str = "cpu") -> MLIPBackend:
    """The backend ``name`` (``chgnet`` or ``mace``), loaded once per process."""
    if name == "chgnet":
        return CHGNetBackend(model, device)
    if name == "mace":
        return MACEBackend(model, device)
    raise ValueError(f"Unknown MLIP backend {name!r}; valid: {list(MLIP_NAMES)}")
