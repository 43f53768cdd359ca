"""crystal_env: crystals, datasets, the VAE + latent diffusion model and the RL environment."""

from crystal_env.models import CrystalLDM, load_model, registered_model_names

__all__ = ["CrystalLDM", "load_model", "registered_model_names"]
