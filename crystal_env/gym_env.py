"""A single-crystal Gymnasium view of :class:`CrystalDiffusionEnv` (id ``CrystalEnv/LDM-MP20-v0``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from crystal_env.env import CrystalDiffusionEnv

GYM_ID = "CrystalEnv/LDM-MP20-v0"


class CrystalGymEnv(gym.Env):
    """One crystal denoised step by step; observation ``{latent, mask, step_index}``, action = next latent.

    The reward is 0 until the last step, then the reward callable's score of the decoded crystal;
    ``info["crystal"]`` holds the pymatgen ``Structure`` (None if undecodable), ``info["reward_components"]``
    each component's contribution and ``info["reward_failed"]`` the components that could not score it.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: str = "ldm_mp20", reward: Any = "dng", **overrides: Any):
        from crystal_env.factory import make_env

        self.inner: CrystalDiffusionEnv = make_env(env, reward, batch_size=1, group_size=1, **overrides)
        n, dim, k = self.inner.model.max_atoms, self.inner.model.latent_dim, self.inner.num_steps
        self.observation_space = spaces.Dict(
            {
                "latent": spaces.Box(-np.inf, np.inf, (n, dim), np.float32),
                "mask": spaces.MultiBinary(n),
                "step_index": spaces.Box(0, k, (1,), np.int64),
            }
        )
        self.action_space = spaces.Box(-np.inf, np.inf, (n, dim), np.float32)
        self._td = None

    def _obs(self) -> dict[str, np.ndarray]:
        td = self._td
        return {
            "latent": td["latent"][0].cpu().numpy().astype(np.float32),
            "mask": td["mask"][0].cpu().numpy().astype(np.int8),
            "step_index": td["step_index"][0].cpu().numpy().astype(np.int64),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.inner.set_seed(seed)
        self._td = self.inner.reset()
        return self._obs(), {}

    def step(self, action: np.ndarray):
        if self._td is None:
            raise RuntimeError("Call reset() before step()")
        td = self._td.clone()
        action = torch.as_tensor(np.asarray(action, dtype=np.float32), device=td["latent"].device)
        td["action"] = action.reshape(td["latent"].shape)
        nxt = self.inner.step(td)["next"]
        self._td = nxt
        terminated = bool(nxt["terminated"].item())
        info: dict[str, Any] = {"failed": bool(nxt["failed"].item())}
        if terminated:
            info["crystal"] = nxt["crystals"][0]
            info["reward_components"] = {k: float(v) for k, v in nxt["reward_components"].items()}
            info["reward_failed"] = [k for k, v in nxt["reward_failed"].items() if bool(v)]
        return self._obs(), float(nxt["reward"].item()), terminated, False, info


def register() -> None:
    if GYM_ID not in gym.registry:
        gym.register(id=GYM_ID, entry_point="crystal_env.gym_env:CrystalGymEnv", kwargs={"env": "ldm_mp20"})
