import os
import tempfile
from pathlib import Path

import pytest
import torch

# Keep every test's caches away from the user's home and from each other's sessions.
os.environ.setdefault("CRYSTAL_ENV_CACHE", tempfile.mkdtemp(prefix="crystal_env_cache_"))
# compiled numba kernels (the amd package's) are keyed by their source, not by data: share them across
# sessions instead of recompiling (~15 s) in every fresh cache directory
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "crystal_env_numba_cache"))
torch.set_num_threads(1)  # small models: threads only add contention

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mp20_train():
    from crystal_env.data import load_dataset

    return load_dataset("mp20_sample", "train")


@pytest.fixture
def tiny_model():
    """A randomly initialised, very small VAE + LDM pair (fast; not the bundled model)."""
    from crystal_env.models.denoiser import DenoiserConfig, DiTDenoiser
    from crystal_env.models.ldm import CrystalLDM
    from crystal_env.models.vae import CrystalVAE, VAEConfig

    torch.manual_seed(0)
    vae = CrystalVAE(VAEConfig(latent_dim=4, d_model=32, encoder_layers=1, decoder_layers=1, num_freqs=2))
    den = DiTDenoiser(DenoiserConfig(latent_dim=4, d_model=32, num_layers=1), max_atoms=8)
    counts = torch.tensor([0, 1, 2, 3, 2, 1, 1, 0, 1], dtype=torch.float)
    return CrystalLDM(vae, den, torch.zeros(4), torch.ones(4), counts).eval()


@pytest.fixture(autouse=True)
def no_deadline_outlives_its_test():
    """Every reward time budget is removed when its block ends, whatever struck inside it: a deadline
    left behind would stay expired and fail every later crystal of the process."""
    yield
    from rewards import safety

    leaked, safety._CLOCK.frames = safety._CLOCK.frames, []
    if leaked:  # clean up first, so that only the test that leaked fails
        safety._CLOCK.reset()
    assert leaked == [], "a time budget outlived its block"
