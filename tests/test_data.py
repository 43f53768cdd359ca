import logging

import numpy as np
import pandas as pd
import pytest

from crystal_env.data import (
    DatasetUnavailableError,
    csv_reader,
    download_mp20,
    load_crystal_csv,
    load_dataset,
)
from crystal_env.data.datasets import dataset_path

from .conftest import SHARED_DATA

EMPTY_CIF = """data_empty
_cell_length_a 3.0
_cell_length_b 3.0
_cell_length_c 3.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
"""


@pytest.fixture
def messy_csv(tmp_path):
    good = pd.read_csv(dataset_path("mp20_sample", "train")).iloc[:4].copy()
    big = good.iloc[0].copy()
    big["material_id"] = "too-big"
    rows = [good.iloc[i] for i in range(3)]
    bad_cif, nan_prop, empty = (good.iloc[3].copy() for _ in range(3))
    bad_cif["material_id"], bad_cif["cif"] = "bad-cif", "this is not a CIF"
    nan_prop["material_id"], nan_prop["band_gap"] = "nan-prop", np.nan
    empty["material_id"], empty["cif"] = "empty", EMPTY_CIF
    frame = pd.DataFrame([*rows, bad_cif, nan_prop, empty, big])
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_bad_rows_are_skipped_counted_and_logged(messy_csv, caplog):
    path, frame = messy_csv
    with caplog.at_level(logging.WARNING):
        ds = load_crystal_csv(path, max_atoms=100, use_cache=False)
    assert [r.material_id for r in ds] == list(frame["material_id"].iloc[:3]) + ["too-big"]
    assert ds.skipped == {"unparseable_cif": 1, "nan_property": 1, "zero_sites": 1}
    assert "Skipped 3 bad row" in caplog.text
    n_big = len(ds[3].structure)
    small = load_crystal_csv(path, max_atoms=n_big - 1, use_cache=False)
    assert small.skipped["too_many_atoms"] >= 1
    assert all(len(r.structure) < n_big for r in small)


def test_properties_are_kept_and_structures_niggli_reduced(messy_csv):
    path, frame = messy_csv
    ds = load_crystal_csv(path, use_cache=False)
    rec = ds[0]
    assert rec.properties["band_gap"] == pytest.approx(frame["band_gap"].iloc[0])
    assert rec.properties["formation_energy_per_atom"] == pytest.approx(frame["formation_energy_per_atom"].iloc[0])
    assert "material_id" not in rec.properties and "cif" not in rec.properties
    reduced = rec.structure.get_reduced_structure()
    np.testing.assert_allclose(rec.structure.lattice.abc, reduced.lattice.abc, atol=1e-6)
    assert ds.property_values("band_gap").shape == (len(ds),)
    with pytest.raises(KeyError, match="band_gap"):
        ds.property_values("nope")


def test_second_load_reads_the_cache_without_parsing_cifs(messy_csv, monkeypatch, tmp_path):
    path, _ = messy_csv
    monkeypatch.setenv("CRYSTAL_ENV_CACHE", str(tmp_path / "cache"))
    first = load_crystal_csv(path)

    def fail(_cif):
        raise AssertionError("CIF parsed despite a cache hit")

    monkeypatch.setattr(csv_reader, "_parse_cif", fail)
    second = load_crystal_csv(path)
    assert [r.material_id for r in second] == [r.material_id for r in first]
    assert second.skipped == first.skipped
    assert second[0].structure == first[0].structure


def test_missing_file_and_unknown_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_crystal_csv(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match="mp20_sample"):
        load_dataset("no_such_set")


def test_bundled_mp20_sample_loads_all_rows():
    sizes = {s: len(load_dataset("mp20_sample", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 243, "val": 123, "test": 142}


@pytest.mark.parametrize("name,column", [("perov5", "heat_ref"), ("carbon24", "energy_per_atom")])
def test_other_benchmark_sets_use_the_same_reader(name, column, tmp_path):
    src = SHARED_DATA / name / "val.csv"
    if not src.is_file():
        pytest.skip(f"{src} not present")
    head = pd.read_csv(src).iloc[:20]
    head.to_csv(tmp_path / "head.csv", index=False)
    ds = load_crystal_csv(tmp_path / "head.csv", max_atoms=24, use_cache=False)
    assert len(ds) + sum(ds.skipped.values()) == 20
    assert len(ds) >= 15
    assert column in ds.property_names


def _fake_remote(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    for split in ("train", "val", "test"):
        pd.read_csv(dataset_path("mp20_sample", split)).iloc[:5].to_csv(remote / f"{split}.csv", index=False)
    return remote


def test_download_mp20_from_a_local_source_with_checks(tmp_path, monkeypatch):
    remote = _fake_remote(tmp_path)
    target = download_mp20(tmp_path / "data", base_url=remote.as_uri())
    assert sorted(p.name for p in target.glob("*.csv")) == ["test.csv", "train.csv", "val.csv"]
    assert (target / "sha256.json").is_file()
    # second call: nothing fetched (the remote is gone), hashes still verified
    for f in remote.iterdir():
        f.unlink()
    download_mp20(tmp_path / "data", base_url=remote.as_uri())
    # tampering is detected on load through the manifest
    (target / "val.csv").write_text((target / "val.csv").read_text() + "\n")
    monkeypatch.setenv("CRYSTAL_ENV_DATA", str(tmp_path / "d2"))
    (tmp_path / "d2").mkdir()
    target.rename(tmp_path / "d2" / "mp_20")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_dataset("mp20", "val")
    assert len(load_dataset("mp20", "train")) == 5


def test_download_mp20_rejects_wrong_hash_and_explains_offline(tmp_path):
    remote = _fake_remote(tmp_path)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        download_mp20(tmp_path / "a", base_url=remote.as_uri(), expected_sha256={"train": "0" * 64})
    with pytest.raises(DatasetUnavailableError, match="copy them into"):
        download_mp20(tmp_path / "b", base_url=(tmp_path / "missing").as_uri())


def test_missing_mp20_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_ENV_DATA", str(tmp_path))
    with pytest.raises(DatasetUnavailableError, match=str(tmp_path)):
        load_dataset("mp20", "train")


def _one_row_csv(tmp_path, name, cif):
    row = pd.read_csv(dataset_path("mp20_sample", "train")).iloc[[0]].copy()
    row["cif"] = cif
    path = tmp_path / f"{name}.csv"
    row.to_csv(path, index=False)
    return path


def test_pathological_rows_are_skipped_by_reason(tmp_path):
    """Issue 11: a disordered CIF, a NaN cell length, dummy species, a zero-volume cell and non-UTF-8
    bytes each crashed the loader; now each row is skipped and counted by its reason."""
    from pymatgen.core import DummySpecies, Lattice, Structure

    first = pd.read_csv(dataset_path("mp20_sample", "train")).iloc[0]
    tiny = Structure(Lattice.cubic(0.3), ["Na"], [[0, 0, 0]])  # 0.027 Å^3 per atom
    cases = {
        "disordered": Structure(Lattice.cubic(3), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).to(fmt="cif"),
        "non_finite": first["cif"].replace("_cell_length_a   7.97762755", "_cell_length_a   nan"),
        "dummy_species": Structure(Lattice.cubic(4), [DummySpecies("X"), "O"], [[0, 0, 0], [0.5] * 3]).to(fmt="cif"),
        "degenerate_lattice": tiny.to(fmt="cif"),
    }
    for reason, cif in cases.items():
        ds = load_crystal_csv(_one_row_csv(tmp_path, reason, cif), use_cache=False)
        assert len(ds) == 0 and ds.skipped == {reason: 1}, (reason, ds.skipped)
    # oxidation-state-decorated species are ordinary crystals
    ox = Structure(Lattice.cubic(4), ["Fe3+", "O2-"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    ds = load_crystal_csv(_one_row_csv(tmp_path, "ox", ox), use_cache=False)
    assert len(ds) == 1 and ds[0].structure.composition.reduced_formula == "FeO"
    # bytes that are not UTF-8 in one row: that row is skipped, the other 242 load
    raw = dataset_path("mp20_sample", "train").read_bytes()
    at = raw.index(b"mp-1221227")
    (tmp_path / "latin.csv").write_bytes(raw[:at] + b"\xff\xfe" + raw[at:])
    ds = load_crystal_csv(tmp_path / "latin.csv", use_cache=False)
    assert len(ds) == 242 and ds.skipped == {"invalid_utf8": 1}


def test_unreadable_files_raise_an_error_naming_the_file(tmp_path):
    from crystal_env.data import CrystalDataError

    raw = dataset_path("mp20_sample", "train").read_bytes()
    files = {"empty.csv": b"", "truncated.csv": raw[: len(raw) // 2], "columns.csv": b"a,b\n1,2\n"}
    reasons = {"empty.csv": "empty", "truncated.csv": "not a readable CSV", "columns.csv": "lacks required column"}
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CrystalDataError, match=reasons[name]) as err:
            load_crystal_csv(tmp_path / name, use_cache=False)
        assert str(tmp_path / name) in str(err.value)


def test_damaged_cache_files_are_rebuilt_never_trusted(messy_csv, monkeypatch, tmp_path, caplog):
    """Issue 11: a truncated, emptied or garbage cache crashed every later load, and 123 of 200
    single-bit flips loaded altered data silently. Every damaged cache must be detected and rebuilt."""
    path, _ = messy_csv
    monkeypatch.setenv("CRYSTAL_ENV_CACHE", str(tmp_path / "cache"))
    reference = load_crystal_csv(path, max_atoms=100)
    (cache_file,) = (tmp_path / "cache" / "datasets").glob("*.pkl")
    intact = cache_file.read_bytes()

    def snapshot(ds):
        return [(r.material_id, r.structure.as_dict(), r.properties) for r in ds], dict(ds.skipped)

    expected = snapshot(reference)
    rng = np.random.default_rng(0)
    flips = [(int(b), int(rng.integers(8))) for b in np.linspace(0, len(intact) - 1, 40)]
    damaged = [intact[: len(intact) // 2], b"", b"garbage" * 50]
    for byte, bit in flips:
        blob = bytearray(intact)
        blob[byte] ^= 1 << bit
        damaged.append(bytes(blob))
    for blob in damaged:
        cache_file.write_bytes(blob)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert snapshot(load_crystal_csv(path, max_atoms=100)) == expected
        assert "is damaged" in caplog.text and str(cache_file) in caplog.text
        assert cache_file.read_bytes() == intact  # rebuilt


def test_atomic_writes_remove_temp_files_of_dead_writers(tmp_path):
    import subprocess
    import sys

    from atomic_io import atomic_write_bytes

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "file.bin"
    stale = tmp_path / f".file.bin.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a file")
    alive = tmp_path / ".file.bin.1.tmp"  # pid 1 is always running: a writer still at work
    alive.write_bytes(b"in progress")
    atomic_write_bytes(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".file.bin.1.tmp", "file.bin"]


def test_damaged_hash_manifest_is_named(tmp_path, monkeypatch):
    remote = _fake_remote(tmp_path)
    target = download_mp20(tmp_path / "data" / "mp_20", base_url=remote.as_uri())
    (target / "sha256.json").write_text('{"train": ')
    monkeypatch.setenv("CRYSTAL_ENV_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="Damaged hash manifest .*sha256.json"):
        load_dataset("mp20", "train")
