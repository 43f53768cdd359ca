"""Reverse diffusion as a batched TorchRL environment: one step = one denoising transition."""

from __future__ import annotations

from typing import Any

import torch
from pymatgen.core import Structure
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase

from crystal_env.models.ldm import CrystalLDM
from crystal_env.reward_protocol import RewardFn, component_names, evaluate_reward


class CrystalDiffusionEnv(EnvBase):
    """B crystals denoised in lockstep from z_T ~ N(0, I) to z_0 in K steps, then decoded and scored.

    Observation: ``latent`` (B, N, L), ``mask`` (B, N), ``step_index`` (B, 1) in [0, K],
    ``timestep`` (B, 1) the diffusion timestep of ``latent`` (-1 once at z_0), ``group_id`` (B, 1),
    ``failed`` (B, 1) crystals whose trajectory was corrupted by a non-finite action.
    Action: ``action`` = the next latent (B, N, L). Reward: 0 until the K-th step, then the reward
    callable's total; per-component values under ``("reward_components", name)`` (contribution to
    the total), ``("reward_raw", name)`` (the raw metric) and ``("reward_failed", name)`` (True for
    the crystals the component could not score: the reward's ``failed`` mask, else non-finite raw
    values; :class:`rewards.CompositeReward` marks invalid crystals, MLIP failures and timeouts and
    gives them the component's worst value), and the decoded
    crystals as pymatgen ``Structure`` objects under ``"crystals"`` (None when undecodable or
    before the end; ``structure.to(fmt="cif")`` gives the CIF).

    Members of a group (``group_size`` consecutive crystals) share their number of atoms, so
    group-relative advantages compare like with like.
    """

    batch_locked = True

    def __init__(
        self,
        model: CrystalLDM,
        reward_fn: RewardFn,
        batch_size: int = 8,
        group_size: int = 4,
        sampler: str = "ddim",
        num_steps: int = 50,
        eta: float = 1.0,
        max_atoms: int | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ):
        if batch_size % group_size:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of group_size ({group_size})")
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.model = model.to(device).eval().requires_grad_(False)
        self.model.configure_sampler(sampler, num_steps, eta)
        self.reward_fn = reward_fn
        self.group_size = group_size
        self.num_steps = num_steps
        self.max_atoms = max_atoms if max_atoms is not None else model.max_atoms
        if not 1 <= self.max_atoms <= model.max_atoms:
            raise ValueError(f"max_atoms must be in [1, {model.max_atoms}] for this model, got {self.max_atoms}")
        self.component_names = component_names(reward_fn)
        self.rng = torch.Generator()
        self.rng.manual_seed(int(seed) if seed is not None else int(torch.empty((), dtype=torch.int64).random_()))
        self.num_invalid_actions = 0
        self.rng_state_at_last_reset = self.rng.get_state()
        self._make_specs()

    # ---- checkpoint state ---------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """The reward's state (e.g. :class:`rewards.CompositionUniqueness`'s memory) if it has a
        ``state_dict``: what a training checkpoint must hold for a resumed run to continue exactly."""
        state_dict = getattr(self.reward_fn, "state_dict", None)
        return {"reward": state_dict()} if callable(state_dict) else {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if "reward" in state:
            self.reward_fn.load_state_dict(state["reward"])

    # ---- specs --------------------------------------------------------------------------------------
    def _make_specs(self) -> None:
        B, N, L, K = self.batch_size[0], self.model.max_atoms, self.model.latent_dim, self.num_steps
        self.observation_spec = Composite(
            latent=Unbounded((B, N, L)),
            mask=Binary(n=N, shape=(B, N), dtype=torch.bool),
            step_index=Bounded(0, K, (B, 1), dtype=torch.int64),
            timestep=Bounded(-1, 999, (B, 1), dtype=torch.int64),
            group_id=Bounded(0, max(B // self.group_size - 1, 0), (B, 1), dtype=torch.int64),
            num_atoms=Bounded(1, N, (B, 1), dtype=torch.int64),
            failed=Categorical(2, (B, 1), dtype=torch.bool),
            reward_components=Composite({k: Unbounded((B, 1)) for k in self.component_names}, shape=(B,)),
            reward_raw=Composite({k: Unbounded((B, 1)) for k in self.component_names}, shape=(B,)),
            reward_failed=Composite(
                {k: Categorical(2, (B, 1), dtype=torch.bool) for k in self.component_names}, shape=(B,)
            ),
            crystals=NonTensor(shape=(B,)),
            shape=(B,),
        )
        self.action_spec = Unbounded((B, N, L))
        self.reward_spec = Unbounded((B, 1))
        self.done_spec = Composite(
            {k: Categorical(2, (B, 1), dtype=torch.bool) for k in ("done", "terminated", "truncated")},
            shape=(B,),
        )

    # ---- episode logic -------------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        """Seed the env's generator (z_T, numbers of atoms) and torch's global RNG, which the
        policy's sampling noise draws from, so a seed fixes the whole trajectory."""
        seed = int(seed) if seed is not None else 0
        self.rng.manual_seed(seed)
        torch.manual_seed(seed)

    def _observation(
        self,
        z: torch.Tensor,
        mask: torch.Tensor,
        step: torch.Tensor,
        group_id: torch.Tensor,
        failed: torch.Tensor,
        components: dict[str, torch.Tensor] | None = None,
        raw: dict[str, torch.Tensor] | None = None,
        component_failed: dict[str, torch.Tensor] | None = None,
        crystals: list[Structure | None] | None = None,
    ) -> TensorDict:
        B = z.shape[0]
        timesteps = self.model.schedule.timesteps  # a buffer: on the model's (= the env's) device
        t = torch.where(step < self.num_steps, timesteps[step.clamp_max(self.num_steps - 1)], -1)
        comps = components or {k: torch.zeros(B, device=self.device) for k in self.component_names}
        raw = raw or {k: torch.zeros(B, device=self.device) for k in self.component_names}
        component_failed = component_failed or {
            k: torch.zeros(B, dtype=torch.bool, device=self.device) for k in self.component_names
        }
        return TensorDict(
            {
                "latent": z,
                "mask": mask,
                "step_index": step,
                "timestep": t,
                "group_id": group_id,
                "num_atoms": mask.sum(1, keepdim=True),
                "failed": failed,
                "reward_components": TensorDict({k: v.reshape(B, 1) for k, v in comps.items()}, [B]),
                "reward_raw": TensorDict({k: v.reshape(B, 1) for k, v in raw.items()}, [B]),
                "reward_failed": TensorDict({k: v.reshape(B, 1) for k, v in component_failed.items()}, [B]),
                # one shared None before the end (cheap to copy), one structure per crystal at the end
                "crystals": NonTensorStack(*crystals) if crystals else NonTensorData(None, batch_size=[B]),
            },
            batch_size=[B],
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, seed: int | None = None, **kwargs) -> TensorDictBase:
        if seed is not None:
            self.set_seed(seed)
        # the generator state this reset starts from: restoring it and resetting again redraws the
        # same episode (trainers use it to resume exactly when a collector has already reset)
        self.rng_state_at_last_reset = self.rng.get_state()
        B, G = self.batch_size[0], self.group_size
        n_groups = B // G
        num_atoms_groups = self.model.sample_num_atoms(n_groups, self.rng).clamp(1, self.max_atoms)
        num_atoms = num_atoms_groups.repeat_interleave(G)
        z, mask = self.model.prior(num_atoms, self.rng)  # drawn on the CPU generator, then moved
        dev = self.device
        group_id = torch.arange(B, device=dev).div(G, rounding_mode="floor").unsqueeze(-1)
        zeros = torch.zeros(B, 1, dtype=torch.int64, device=dev)
        failed = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        return self._observation(z.to(dev), mask.to(dev), zeros, group_id, failed)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict["action"]
        z, mask = tensordict["latent"], tensordict["mask"]
        if action.shape != z.shape:
            raise ValueError(
                f"action must have shape {tuple(z.shape)} (batch, atoms, latent_dim), got {tuple(action.shape)}"
            )
        step = tensordict["step_index"]
        if bool((step != step.flatten()[0]).any()):
            raise ValueError(
                f"All crystals of a batch are denoised in lockstep, but step_index holds different values "
                f"{sorted(set(step.flatten().tolist()))}; pass the tensordict returned by reset()/step()"
            )
        if bool((step < 0).any()):
            raise ValueError(f"step_index must be in [0, {self.num_steps - 1}], got {int(step.min())}")
        if bool((step >= self.num_steps).any()):
            raise RuntimeError("The episode is finished (step_index == num_steps); call reset() first")
        keep = mask[..., None].to(action.dtype)
        # padding entries are ignored (they are zeroed below), so a NaN there does not fail a crystal
        finite = (torch.isfinite(action) | ~mask[..., None]).flatten(1).all(1, keepdim=True)
        failed = tensordict["failed"] | ~finite
        self.num_invalid_actions += int((~finite & ~tensordict["failed"]).sum())
        # a corrupted trajectory keeps its last finite latent, is never decoded, and gets the penalty
        z_next = torch.where(failed[..., None], z, torch.nan_to_num(action) * keep)
        step = step + 1
        done = step >= self.num_steps
        B = z.shape[0]
        reward = torch.zeros(B, 1, device=self.device)
        components, raw, component_failed, crystals = None, None, None, None
        if bool(done.all()):
            reward, components, raw, component_failed, crystals = self._score(z_next, mask, failed.squeeze(-1))
        out = self._observation(
            z_next, mask, step, tensordict["group_id"], failed, components, raw, component_failed, crystals
        )
        out.set("reward", reward)
        out.set("done", done.clone())
        out.set("terminated", done.clone())
        out.set("truncated", torch.zeros_like(done))
        return out

    def _score(
        self, z0: torch.Tensor, mask: torch.Tensor, failed: torch.Tensor
    ) -> tuple[torch.Tensor, dict, dict, dict, list[Structure | None]]:
        """The (B, 1) reward, per component its weighted and raw values and failure mask, the crystals."""
        structures = self.model.decode_structures(z0, mask)
        structures = [None if bad else s for s, bad in zip(structures, failed.tolist(), strict=True)]
        total, *per_component = evaluate_reward(self.reward_fn, structures)
        comps, raw, component_failed = ({k: v.to(self.device) for k, v in d.items()} for d in per_component)
        return total.reshape(-1, 1).to(self.device), comps, raw, component_failed, structures
