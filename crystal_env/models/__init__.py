"""VAE, DiT denoiser, diffusion schedules and the combined :class:`CrystalLDM`."""

from crystal_env.models.diffusion import SamplerConfig
from crystal_env.models.ldm import CrystalLDM
from crystal_env.models.registry import load_model, registered_model_names
from crystal_env.models.vae import CrystalVAE, VAEConfig

__all__ = ["CrystalLDM", "CrystalVAE", "SamplerConfig", "VAEConfig", "load_model", "registered_model_names"]
