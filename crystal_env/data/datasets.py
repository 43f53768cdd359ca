"""Named datasets: the bundled MP-20 sample (offline default) and the full MP-20 download."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from atomic_io import atomic_write_bytes
from crystal_env.data.csv_reader import CrystalDataset, file_sha256, load_crystal_csv
from crystal_env.paths import BUNDLED_DATA_DIR, data_dir

SPLITS = ("train", "val", "test")
MP20_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data/mp_20"
# Pinned sha256 of the published files. Empty until a maintainer records them from a verified
# download; until then the first download's hashes are written to MANIFEST and every later use
# is checked against it (trust on first use).
MP20_SHA256: dict[str, str] = {}
MANIFEST = "sha256.json"


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are neither present nor downloadable."""


def bundled_dataset_names() -> list[str]:
    return sorted(p.name for p in BUNDLED_DATA_DIR.iterdir() if p.is_dir())


def dataset_names() -> list[str]:
    return sorted([*bundled_dataset_names(), "mp20"])


def dataset_path(name: str, split: str) -> Path:
    """CSV path of ``split`` of dataset ``name`` (bundled sets, or ``mp20`` in the data dir)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid: {list(SPLITS)}")
    if name in bundled_dataset_names():
        candidates = [BUNDLED_DATA_DIR / name / f"{split}.csv"]
    elif name == "mp20":
        candidates = [data_dir() / "mp_20" / f"{split}.csv"]
    else:
        raise ValueError(f"Unknown dataset {name!r}; valid: {dataset_names()}")
    for path in candidates:
        if path.is_file():
            return path
    hint = " Run crystal_env.data.download_mp20() or place the files by hand." if name == "mp20" else ""
    raise DatasetUnavailableError(
        f"Split {split!r} of dataset {name!r} not found; looked in: {[str(c) for c in candidates]}.{hint}"
    )


def load_dataset(name: str = "mp20_sample", split: str = "train", max_atoms: int = 20, **kwargs) -> CrystalDataset:
    """Load a named dataset split with :func:`load_crystal_csv`."""
    path = dataset_path(name, split)
    if name == "mp20":
        verify_manifest(path.parent, [split])
    return load_crystal_csv(path, max_atoms=max_atoms, **kwargs)


def _read_manifest(manifest_file: Path) -> dict[str, str]:
    if not manifest_file.is_file():
        return {}
    try:
        recorded = json.loads(manifest_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Damaged hash manifest {manifest_file} ({exc}); delete it to record new hashes") from exc
    if not isinstance(recorded, dict):
        raise ValueError(f"Damaged hash manifest {manifest_file}: expected a JSON object of split -> sha256")
    return recorded


def verify_manifest(directory: Path, splits: list[str]) -> None:
    """Check files against pinned hashes, or against the manifest of the first download."""
    recorded = _read_manifest(directory / MANIFEST)
    for split in splits:
        expected = MP20_SHA256.get(split) or recorded.get(split)
        if expected is None:
            continue
        actual = file_sha256(directory / f"{split}.csv")
        if actual != expected:
            raise ValueError(
                f"sha256 mismatch for {directory / f'{split}.csv'}: expected {expected}, got {actual}. "
                "Delete the file and download it again."
            )


def download_mp20(
    target_dir: str | Path | None = None,
    base_url: str = MP20_URL,
    expected_sha256: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the full MP-20 train/val/test CSVs (CDVAE's ``data/mp_20``) with sha256 checks.

    Files already present and matching their hash are not fetched again. Without network access
    this raises :class:`DatasetUnavailableError` explaining how to place the files by hand.
    """
    target = Path(target_dir) if target_dir is not None else data_dir() / "mp_20"
    target.mkdir(parents=True, exist_ok=True)
    pinned = {**MP20_SHA256, **(expected_sha256 or {})}
    manifest_file = target / MANIFEST
    manifest = _read_manifest(manifest_file)
    for split in SPLITS:
        dest = target / f"{split}.csv"
        expected = pinned.get(split) or manifest.get(split)
        if dest.is_file() and (expected is None or file_sha256(dest) == expected):
            manifest.setdefault(split, file_sha256(dest))
            continue
        url = f"{base_url.rstrip('/')}/{split}.csv"
        tmp = dest.with_suffix(".csv.part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh)
        except (urllib.error.URLError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise DatasetUnavailableError(
                f"Could not download {url} ({exc}). Without network access, download train.csv, val.csv "
                f"and test.csv of CDVAE's data/mp_20 (https://github.com/txie-93/cdvae) on another "
                f"machine and copy them into {target} (or set CRYSTAL_ENV_DATA to their parent directory)."
            ) from exc
        actual = file_sha256(tmp)
        if expected is not None and actual != expected:
            tmp.unlink()
            raise ValueError(f"sha256 mismatch for {url}: expected {expected}, got {actual}")
        tmp.replace(dest)
        manifest[split] = actual
    atomic_write_bytes(manifest_file, json.dumps(manifest, indent=2).encode())
    return target
