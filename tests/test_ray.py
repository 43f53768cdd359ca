"""Smoke test of TorchRL's Ray backend on the env (runs only where ``ray`` is installed:
``pip install -e ".[ray]"``)."""

import functools

import pytest
import torch

ray = pytest.importorskip("ray")


def density_reward(structures):
    return torch.tensor([0.0 if s is None else len(s) / s.volume for s in structures])


def test_ray_collector_yields_whole_trajectories():
    from torchrl.collectors.distributed import RayCollector

    from crystal_env import load_model, make_env
    from crystal_env.policy import make_policy

    factory = functools.partial(
        make_env, "ldm_mp20", reward=density_reward, batch_size=4, group_size=2, num_steps=3, seed=0
    )
    collector = RayCollector(
        [factory],
        make_policy(load_model("mp20_tiny")),
        frames_per_batch=12,
        total_frames=24,
        ray_init_config={"num_cpus": 2, "include_dashboard": False},
        remote_configs={"num_cpus": 1},
        collector_kwargs={"auto_register_policy_transforms": False},
    )
    batches = []
    try:
        for batch in collector:  # not list(): RayCollector in torchrl 0.14.1 has no working __len__
            batches.append(batch)
    finally:
        collector.shutdown()
        ray.shutdown()
    assert len(batches) == 2
    assert batches[0].numel() == 12
    assert batches[0]["next", "done"].sum() == 4  # every crystal's episode ended once
