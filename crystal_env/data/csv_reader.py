"""Read CDVAE/MP-20-format CSV files (``material_id``, ``cif``, property columns) into structures.

Parsing CIFs is the slow part, so the parsed dataset is cached on disk keyed by the source file's
sha256 and the reader options; a second load reads the cache and parses no CIF.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser

from crystal_env.paths import atomic_write_bytes, cache_dir

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
NON_PROPERTY_COLUMNS = {"", "material_id", "cif", "pretty_formula", "formula", "elements"}


@dataclass
class CrystalRecord:
    """One crystal of a dataset: its id, Niggli-reduced structure and numeric properties."""

    material_id: str
    structure: Structure
    properties: dict[str, float]


@dataclass
class CrystalDataset:
    """A parsed dataset. ``skipped`` counts the rows that were dropped, by reason."""

    records: list[CrystalRecord]
    source: str
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CrystalRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> CrystalRecord:
        return self.records[i]

    @property
    def structures(self) -> list[Structure]:
        return [r.structure for r in self.records]

    @property
    def property_names(self) -> list[str]:
        return list(self.records[0].properties) if self.records else []

    def property_values(self, name: str) -> np.ndarray:
        if name not in self.property_names:
            raise KeyError(f"Unknown property {name!r}; this dataset has {self.property_names}")
        return np.array([r.properties[name] for r in self.records], dtype=np.float64)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _detect_property_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns other than ids, CIFs, formulas and the unnamed index."""
    props = []
    for col in frame.columns:
        if col in NON_PROPERTY_COLUMNS or str(col).startswith("Unnamed"):
            continue
        if pd.to_numeric(frame[col], errors="coerce").notna().any():
            props.append(col)
    return props


def _parse_cif(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = CifParser.from_str(cif).parse_structures(primitive=False)
    if not structures:
        raise ValueError("CIF holds no structure")
    return structures[0]


def _parse_rows(
    frame: pd.DataFrame, properties: list[str], max_atoms: int, niggli: bool
) -> tuple[list[tuple], Counter]:
    rows: list[tuple] = []
    skipped: Counter = Counter()
    numeric = {p: pd.to_numeric(frame[p], errors="coerce") for p in properties}
    for i, (mid, cif) in enumerate(zip(frame["material_id"], frame["cif"], strict=True)):
        props = {p: float(numeric[p].iloc[i]) for p in properties}
        if any(not math.isfinite(v) for v in props.values()):
            skipped["nan_property"] += 1
            continue
        try:
            structure = _parse_cif(str(cif))
        except Exception:  # noqa: BLE001 - any parser failure means an unusable row
            # pymatgen refuses a cell without an atom-site loop; count it as the empty crystal it is
            no_sites = "_cell_length_a" in str(cif) and "_atom_site" not in str(cif)
            skipped["zero_sites" if no_sites else "unparseable_cif"] += 1
            continue
        if len(structure) == 0:
            skipped["zero_sites"] += 1
            continue
        if len(structure) > max_atoms:
            skipped["too_many_atoms"] += 1
            continue
        if niggli:
            structure = structure.get_reduced_structure()
        rows.append(
            (
                str(mid),
                structure.lattice.matrix.copy(),
                np.array(structure.atomic_numbers, dtype=np.int64),
                structure.frac_coords.copy(),
                props,
            )
        )
    return rows, skipped


def load_crystal_csv(
    path: str | Path,
    max_atoms: int = 20,
    properties: Sequence[str] | None = None,
    niggli: bool = True,
    use_cache: bool = True,
) -> CrystalDataset:
    """Load a CDVAE-format CSV into a :class:`CrystalDataset`.

    ``properties`` selects the property columns (default: every numeric column). Rows with an
    unparseable CIF, no sites, more than ``max_atoms`` sites or a NaN property are skipped and
    counted in ``dataset.skipped``; loading never fails on them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Crystal CSV not found: {path.resolve()}")
    key_src = f"{file_sha256(path)}|{max_atoms}|{niggli}|{list(properties or [])}|{CACHE_FORMAT_VERSION}"
    cache_file = cache_dir() / "datasets" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.pkl"
    if use_cache and cache_file.is_file():
        with open(cache_file, "rb") as fh:
            rows, skipped = pickle.load(fh)
    else:
        frame = pd.read_csv(path, keep_default_na=True)
        missing = {"material_id", "cif"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path} lacks required column(s) {sorted(missing)}; found {list(frame.columns)}")
        props = list(properties) if properties is not None else _detect_property_columns(frame)
        unknown = [p for p in props if p not in frame.columns]
        if unknown:
            raise ValueError(f"Property column(s) {unknown} not in {path}; columns: {list(frame.columns)}")
        rows, skipped = _parse_rows(frame, props, max_atoms, niggli)
        if use_cache:
            atomic_write_bytes(cache_file, pickle.dumps((rows, skipped)))
    if skipped:
        log.warning("Skipped %d bad row(s) of %s: %s", sum(skipped.values()), path.name, dict(skipped))
    records = [CrystalRecord(mid, Structure(Lattice(lat), z, frac), props) for mid, lat, z, frac, props in rows]
    return CrystalDataset(records=records, source=str(path), skipped=Counter(skipped))
