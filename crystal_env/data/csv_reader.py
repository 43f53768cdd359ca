"""Read CDVAE/MP-20-format CSV files (``material_id``, ``cif``, property columns) into structures.

Parsing CIFs is the slow part, so the parsed dataset is cached on disk keyed by the source file's
sha256 and the reader options; a second load reads the cache and parses no CIF.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import DummySpecies, Lattice, Structure
from pymatgen.io.cif import CifParser

from crystal_env.crystals.validity import MIN_VOLUME_PER_ATOM
from crystal_env.paths import cache_dir, cached

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
NON_PROPERTY_COLUMNS = {"", "material_id", "cif", "pretty_formula", "formula", "elements"}


@dataclass
class CrystalRecord:
    """One crystal of a dataset: its id, Niggli-reduced structure and numeric properties."""

    material_id: str
    structure: Structure
    properties: dict[str, float]


class CrystalDataError(ValueError):
    """A dataset file that cannot be read at all (empty, not a CSV, missing columns)."""


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


def _bad_text(value: object) -> bool:
    """A field holding bytes that were not UTF-8 (read with ``surrogateescape``)."""
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _parse_row(cif: str, max_atoms: int, niggli: bool) -> tuple[Structure | None, str | None]:
    """The row's structure, or ``None`` and the reason it is skipped."""
    try:
        structure = _parse_cif(cif)
    except Exception:  # noqa: BLE001 - any parser failure means an unusable row
        # pymatgen refuses a cell without an atom-site loop; count it as the empty crystal it is
        no_sites = "_cell_length_a" in cif and "_atom_site" not in cif
        return None, "zero_sites" if no_sites else "unparseable_cif"
    if len(structure) == 0:
        return None, "zero_sites"
    if not structure.is_ordered:
        return None, "disordered"
    if any(isinstance(sp, DummySpecies) for sp in structure.species):
        return None, "dummy_species"
    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        return None, "non_finite"
    if not structure.volume / len(structure) > MIN_VOLUME_PER_ATOM:
        return None, "degenerate_lattice"
    if len(structure) > max_atoms:
        return None, "too_many_atoms"
    if niggli:
        try:
            structure = structure.get_reduced_structure()
        except Exception:  # noqa: BLE001 - pymatgen gives up on some pathological cells
            return None, "niggli_failed"
    return structure, None


def _parse_rows(
    frame: pd.DataFrame, properties: list[str], max_atoms: int, niggli: bool
) -> tuple[list[tuple], Counter]:
    rows: list[tuple] = []
    skipped: Counter = Counter()
    numeric = {p: pd.to_numeric(frame[p], errors="coerce") for p in properties}
    for i, (mid, cif) in enumerate(zip(frame["material_id"], frame["cif"], strict=True)):
        props = {p: float(numeric[p].iloc[i]) for p in properties}
        if _bad_text(mid) or _bad_text(cif):
            skipped["invalid_utf8"] += 1
            continue
        if any(not math.isfinite(v) for v in props.values()):
            skipped["nan_property"] += 1
            continue
        try:
            structure, reason = _parse_row(str(cif), max_atoms, niggli)
            if structure is not None:
                row = (
                    str(mid),
                    structure.lattice.matrix.copy(),
                    np.array(structure.atomic_numbers, dtype=np.int64),
                    structure.frac_coords.copy(),
                    props,
                )
        except Exception as exc:  # noqa: BLE001 - whatever else a hand-made row can do wrong
            structure, reason = None, f"error:{type(exc).__name__}"
        if structure is None:
            skipped[reason] += 1
            continue
        rows.append(row)
    return rows, skipped


def _read_frame(path: Path) -> pd.DataFrame:
    """The CSV as a frame; bytes that are not UTF-8 survive as surrogates (their rows are skipped)."""
    try:
        return pd.read_csv(path, keep_default_na=True, encoding="utf-8", encoding_errors="surrogateescape")
    except pd.errors.EmptyDataError as exc:
        raise CrystalDataError(f"Cannot read {path}: the file is empty") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise CrystalDataError(f"Cannot read {path}: not a readable CSV ({exc})") from exc


def load_crystal_csv(
    path: str | Path,
    max_atoms: int = 20,
    properties: Sequence[str] | None = None,
    niggli: bool = True,
    use_cache: bool = True,
) -> CrystalDataset:
    """Load a CDVAE-format CSV into a :class:`CrystalDataset`.

    ``properties`` selects the property columns (default: every numeric column). Bad rows (an
    unparseable or disordered CIF, dummy species, a non-finite or degenerate cell, no sites, more
    than ``max_atoms`` sites, a NaN property, bytes that are not UTF-8) are skipped and counted by
    reason in ``dataset.skipped``; loading never fails on them. A file that cannot be read at all
    (empty, not a CSV, no ``material_id``/``cif`` column) raises :class:`CrystalDataError` naming it.
    The parsed rows are cached in a checksummed file (see :func:`crystal_env.paths.cached`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Crystal CSV not found: {path.resolve()}")
    key_src = f"{file_sha256(path)}|{max_atoms}|{niggli}|{list(properties or [])}|{CACHE_FORMAT_VERSION}"
    cache_file = cache_dir() / "datasets" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.pkl"

    def parse() -> tuple[list[tuple], Counter]:
        frame = _read_frame(path)
        missing = {"material_id", "cif"} - set(frame.columns)
        if missing:
            raise CrystalDataError(f"{path} lacks required column(s) {sorted(missing)}; found {list(frame.columns)}")
        props = list(properties) if properties is not None else _detect_property_columns(frame)
        unknown = [p for p in props if p not in frame.columns]
        if unknown:
            raise CrystalDataError(f"Property column(s) {unknown} not in {path}; columns: {list(frame.columns)}")
        return _parse_rows(frame, props, max_atoms, niggli)

    rows, skipped = cached(cache_file, parse) if use_cache else parse()
    if skipped:
        log.warning("Skipped %d bad row(s) of %s: %s", sum(skipped.values()), path.name, dict(skipped))
    records = [CrystalRecord(mid, Structure(Lattice(lat), z, frac), props) for mid, lat, z, frac, props in rows]
    return CrystalDataset(records=records, source=str(path), skipped=Counter(skipped))
