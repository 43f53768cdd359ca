import math
import pickle

import numpy as np
import pytest
import torch
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure

from crystal_env.paths import cache_dir
from rewards import CompositeReward, Energy, Metastability, build_reward, load_reference
from rewards.hull import (
    FormationEnergyHull,
    elemental_reference_energies,
    formation_energy_per_atom,
    load_phase_diagram,
)
from rewards.metrics import RewardBatch
from rewards.mlip import get_mlip, resolve_mace_model
from tests.rewards_helpers import DNG_COMPONENTS, invalid_structures, rock_salt


def test_hand_built_hull_known_answers():
    hull = FormationEnergyHull(["NaCl"], [-1.0])  # Na and Cl at 0, NaCl at -1 eV/atom
    assert hull.e_above_hull_from_formation("NaCl", -0.8) == pytest.approx(0.2)
    assert hull.e_above_hull_from_formation("NaCl", -1.2) == pytest.approx(-0.2)  # below the hull
    # Na3Cl: on the tie-line Na (0) -- NaCl (-1) the hull is at -0.5 eV/atom
    assert hull.e_above_hull_from_formation("Na3Cl", -0.3) == pytest.approx(0.2)
    assert hull.e_above_hull_from_formation("NaCl2", 0.0) == pytest.approx(2 / 3)
    # a chemical system with no reference compound: the elements alone
    assert hull.e_above_hull_from_formation("KBr", -0.1) == pytest.approx(-0.1)
    assert math.isnan(hull.e_above_hull_from_formation("NaCl", float("nan")))


def test_formation_energy_uses_mp_elemental_references():
    refs = elemental_reference_energies()
    assert len(refs) == 89 and refs["Na"] < 0
    assert formation_energy_per_atom(Composition("Na2"), refs["Na"]) == pytest.approx(0.0)
    mu = (refs["Na"] + refs["Cl"]) / 2
    assert formation_energy_per_atom(Composition("NaCl"), mu - 0.3) == pytest.approx(-0.3)
    assert math.isnan(formation_energy_per_atom(Composition("Es"), -1.0))  # no reference for Es


def test_user_phase_diagram_pickle(tmp_path):
    refs = elemental_reference_energies()
    mu = {"Na": refs["Na"], "Cl": refs["Cl"]}
    entries = [PDEntry("Na", mu["Na"]), PDEntry("Cl", mu["Cl"]), PDEntry("NaCl", 2 * ((mu["Na"] + mu["Cl"]) / 2 - 2.0))]
    path = tmp_path / "ppd.pkl"
    path.write_bytes(pickle.dumps(PhaseDiagram(entries)))
    hull = load_phase_diagram(path)
    e = (mu["Na"] + mu["Cl"]) / 2 - 1.9
    assert hull.e_above_hull(Composition("NaCl"), e) == pytest.approx(0.1)
    assert math.isnan(hull.e_above_hull(Composition("KBr"), -3.0))  # outside the diagram


@pytest.fixture(scope="module")
def bundled_reference():
    return load_reference()


def test_reference_preprocessing_is_cached(bundled_reference):
    from rewards.reference import _load_reference

    _load_reference.cache_clear()
    again = load_reference()
    assert again is not bundled_reference and again.key == bundled_reference.key
    np.testing.assert_array_equal(again.amds, bundled_reference.amds)
    assert again.hull.formulas == bundled_reference.hull.formulas
    assert list((cache_dir() / "rewards").glob("amd-*.pkl")) and list((cache_dir() / "rewards").glob("hull-mp-*.pkl"))


def test_chgnet_e_above_hull_of_reference_crystals_is_small(bundled_reference):
    from crystal_env.data import load_dataset

    val = {r.material_id: r.structure for r in load_dataset("mp20_sample", "val")}
    train = {r.material_id: r.structure for r in load_dataset("mp20_sample", "train")}
    crystals = [val["mp-631"], train["mp-2133"], val["mp-1487"]]  # rock-salt TiC, wurtzite ZnO, B2 AlNi
    es = Structure(Lattice.cubic(4.0), ["Es", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # no MLIP/ref data for Es
    structures = [*crystals, es, *invalid_structures()[:3]]
    components = [Energy(normalize_fn="norm"), Metastability(), Metastability(threshold=-0.5, name="deep")]
    reward = CompositeReward(components, reference=bundled_reference)
    out = reward(structures)
    e_hull = RewardBatch(structures, bundled_reference).metric("e_above_hull")
    assert np.all(np.abs(e_hull[:3]) < 0.1), e_hull[:3]
    assert np.isnan(e_hull[3:]).all()
    raw = out["raw", "energy"]
    assert (raw[:3] > -0.1).all() and (raw[:3] <= 0).all()
    assert raw[3:].tolist() == [-1.0] * 4
    assert out["failed", "energy"].tolist() == [False] * 3 + [True] * 4
    assert reward.last_info["num_invalid"] == 3 and reward.last_info["num_failed"]["energy"] == 4
    # DFT-relaxed MP crystals are metastable (E_hull <= 0.1); none is 0.5 eV/atom below the hull;
    # the crystal without an energy and the invalid ones are failures that score 0
    assert out["raw", "metastability"].tolist() == [1.0] * 3 + [0.0] * 4
    assert out["raw", "deep"].tolist() == [0.0] * 7
    assert out["failed", "metastability"].tolist() == [False] * 3 + [True] * 4


def test_mlip_failure_penalises_only_that_crystal():
    chgnet = get_mlip("chgnet")
    assert get_mlip("chgnet") is chgnet  # loaded once per process
    bad = Structure(Lattice.cubic(4.0), ["Es", "Es"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # Z=99: CHGNet has no embedding
    energies = chgnet.raw_energies([rock_salt(), bad, rock_salt(4.3, "K", "Cl")], batch_size=8)
    assert np.isfinite(energies[[0, 2]]).all() and np.isnan(energies[1])


def test_chgnet_formation_energy_matches_dft(bundled_reference):
    from crystal_env.data import load_dataset

    rows = [r for r in load_dataset("mp20_sample", "test") if len(r.structure) <= 8][:24]
    energies = get_mlip("chgnet").energies([r.structure for r in rows])
    pred = np.array(
        [formation_energy_per_atom(r.structure.composition, e) for r, e in zip(rows, energies, strict=True)]
    )
    dft = np.array([r.properties["formation_energy_per_atom"] for r in rows])
    ok = np.isfinite(pred)
    mae = np.abs(pred[ok] - dft[ok]).mean()
    print(f"CHGNet vs DFT formation energy: MAE {mae:.3f} eV/atom on {ok.sum()} crystals")
    assert ok.sum() >= 22 and mae < 0.1
    assert np.corrcoef(pred[ok], dft[ok])[0, 1] > 0.95


def _tiny_mace(path, zs=(8, 11, 17, 19, 35)):
    import mace  # noqa: F401 - sets up e3nn's torch.load before e3nn is imported
    from e3nn import o3
    from mace import modules

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=4,
            num_polynomial_cutoff=5,
            max_ell=1,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=1,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps("8x0e"),
            MLP_irreps=o3.Irreps("4x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=np.linspace(-3.0, -1.0, len(zs)),
            avg_num_neighbors=8.0,
            atomic_numbers=list(zs),
            correlation=2,
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(previous)
    torch.save(model, path)
    return path


def test_mace_backend_with_a_small_saved_model(tmp_path):
    path = _tiny_mace(tmp_path / "tiny.model")
    from rewards.mlip import MACEBackend

    backend = MACEBackend(path)
    crystals = [rock_salt(), rock_salt(6.3, "K", "Br")]
    raw = backend.raw_energies(crystals, batch_size=2)
    one_by_one = np.array([backend.raw_energies([c])[0] for c in crystals])
    assert np.isfinite(raw).all()
    np.testing.assert_allclose(raw, one_by_one, rtol=1e-8)
    # MP2020 anion corrections (Cl, Br) lower the energies of these halides
    corrected = backend.energies(crystals)
    assert (corrected < raw).all()
    # an element the model does not know fails only that crystal
    mixed = backend.raw_energies([crystals[0], rock_salt(4.0, "Ti", "C")])
    assert np.isfinite(mixed[0]) and np.isnan(mixed[1])
    assert torch.get_default_dtype() == torch.float32  # MACE's dtype switching does not leak
    relaxed = backend.relax([crystals[0]], steps=2)
    assert len(relaxed) == 1 and np.isfinite(relaxed[0].lattice.matrix).all()
    # through the reward, selected in config
    out = CompositeReward([Energy(mlip="mace", model=str(path))], reference=load_reference())(crystals)
    assert torch.isfinite(out["total"]).all()


def test_mace_offline_without_a_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither a file nor a MACE-MP"):
        resolve_mace_model("no-such-model")
    try:
        path = resolve_mace_model("small")  # downloads when online / cached
    except RuntimeError as err:
        assert "could not be downloaded" in str(err) and "model: /path/to/file.model" in str(err)
    else:
        assert path.is_file()


def test_full_dng_reward_from_config(tmp_path, tiny_model, bundled_reference):
    from crystal_env.data import load_dataset

    model_path = tmp_path / "ldm.pt"
    tiny_model.save(model_path)  # the diversity features only need *a* VAE
    reward = build_reward("dng", overrides=[f"components.2.model={model_path}", f"components.3.model={model_path}"])
    reward._reference = load_reference(novelty_splits=["train"])  # the test rows are new to it
    new = [s for s in load_dataset("mp20_sample", "test").structures if len(s) <= 8][:4]
    known = bundled_reference.structures[0]
    structures = [*new, new[0].copy(), known.copy(), None]
    out = reward(structures)
    assert reward.component_names == DNG_COMPONENTS
    for key in out.keys(include_nested=True, leaves_only=True):
        assert torch.isfinite(out[key].float()).all(), key
    assert out["raw", "creativity"].tolist()[:4] == [1.0] * 4
    assert out["raw", "creativity"][4] == 0.0 and out["raw", "creativity"][6] == 0.0
    assert out["invalid"].tolist() == [False] * 6 + [True]
    assert out["raw", "energy"][6] == -3.0 and out["energy"][6] == 0.0  # norm: the worst (-max_e_hull) maps to 0
    assert set(reward.last_info["metric_seconds"]) >= {"unique", "novel", "e_above_hull", "vae_structure_features"}
    advantages = reward.normalize(out["total"], torch.tensor([0, 0, 0, 1, 1, 1, 1]))
    assert abs(float(advantages[:3].mean())) < 1e-5 and abs(float(advantages[3:].mean())) < 1e-5


def test_shared_metastability_splits_the_bonus_among_copies(bundled_reference):
    from crystal_env.data import load_dataset

    val = {r.material_id: r.structure for r in load_dataset("mp20_sample", "val")}
    tic, aln = val["mp-631"], val["mp-1487"]  # DFT-relaxed: metastable under CHGNet (test above)
    shared = Metastability(share_memory=4, name="shared")
    reward = CompositeReward([Metastability(), shared], reference=bundled_reference)
    first = reward([tic, tic.copy(), aln, None])
    assert first["raw", "metastability"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert first["raw", "shared"].tolist() == [0.5, 0.5, 1.0, 0.0]  # TiC's bonus split between its 2 copies
    with reward.frozen():  # validation batches read the memory without adding to it
        assert reward([tic])["raw", "shared"].tolist() == [pytest.approx(1 / 3)]
    assert reward([tic])["raw", "shared"].tolist() == [pytest.approx(1 / 3)]  # + 2 remembered copies
    assert shared.state_dict() == {"recent": ["TiC", "TiC", "AlNi", "TiC"]}
    assert reward([aln])["raw", "shared"].tolist() == [0.5]
    assert shared.state_dict() == {"recent": ["TiC", "AlNi", "TiC", "AlNi"]}  # the last 4 metastable crystals
    restored = Metastability(share_memory=4)
    restored.load_state_dict(shared.state_dict())
    assert restored([tic], reference=bundled_reference).tolist() == [pytest.approx(1 / 3)]
    plain = Metastability()
    assert plain.state_dict() == {}
    plain.load_state_dict(plain.state_dict())  # a round trip without sharing
    with pytest.raises(ValueError, match="share_memory"):
        Metastability(share_memory=-1)
