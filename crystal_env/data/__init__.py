"""Crystal datasets: CDVAE-format CSV reader, bundled sets and the MP-20 download."""

from crystal_env.data.csv_reader import CrystalDataError, CrystalDataset, CrystalRecord, load_crystal_csv
from crystal_env.data.datasets import (
    DatasetUnavailableError,
    dataset_names,
    dataset_path,
    download_mp20,
    load_dataset,
)

__all__ = [
    "CrystalDataError",
    "CrystalDataset",
    "CrystalRecord",
    "DatasetUnavailableError",
    "dataset_names",
    "dataset_path",
    "download_mp20",
    "load_crystal_csv",
    "load_dataset",
]
