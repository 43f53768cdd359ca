"""crystal_env: crystals, datasets, the VAE + latent diffusion model and the RL environment."""

from crystal_env.env import CrystalDiffusionEnv
from crystal_env.factory import make_env
from crystal_env.gym_env import register as _register_gym
from crystal_env.models import CrystalLDM, load_model, registered_model_names

_register_gym()

__all__ = ["CrystalDiffusionEnv", "CrystalLDM", "load_model", "make_env", "registered_model_names"]
