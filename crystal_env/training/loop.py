"""A minimal epoch loop with validation, atomic checkpoints and exact resume, for pretraining."""

from __future__ import annotations

import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from tqdm.auto import tqdm

from atomic_io import atomic_write_bytes
from crystal_env.crystals.batch import trim_atoms
from crystal_env.models.layers import used_length

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0
    progress: bool = True
    keep_best: bool = True  # end with the weights of the lowest validation loss
    bf16: bool = False  # bfloat16 autocast of the forward passes (for GPUs; the weights stay float32)
    num_workers: int = 0  # DataLoader worker processes that slice and collate minibatches


class _Rows(torch.utils.data.Dataset):
    """Item ``idx`` (a tensor of row indices) = those rows of ``data``, trimmed to the largest crystal
    among them along the per-atom entries ``atom_keys``."""

    def __init__(self, data: TensorDict, atom_keys: Sequence[str]):
        self.data, self.atom_keys = data, atom_keys

    def __len__(self) -> int:
        return self.data.batch_size[0]

    def __getitem__(self, idx: torch.Tensor) -> TensorDict:
        batch = self.data[idx]
        return trim_atoms(batch, used_length(batch["mask"]), self.atom_keys)


class _EpochOrder(torch.utils.data.Sampler):
    """Yields the minibatches (row-index tensors) of the current epoch; the training loop sets
    ``order`` in the main process from the checkpointed RNG, so minibatches, and resume, do not
    depend on the number of workers."""

    def __init__(self) -> None:
        self.order: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


_FORK = "fork" if sys.platform == "linux" else None  # macOS has fork, but it is unsafe there


def _identity(x: TensorDict) -> TensorDict:
    return x


def _loader(data: TensorDict, atom_keys: Sequence[str], cfg: LoopConfig, device: torch.device):
    sampler = _EpochOrder()
    loader = torch.utils.data.DataLoader(
        _Rows(data, atom_keys),
        sampler=sampler,
        batch_size=None,  # each index is a whole minibatch already
        collate_fn=_identity,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        # fork on Linux: torchrl's import makes spawn the default, and a spawned worker
        # re-imports torch, pymatgen and the package (seconds each) only to slice tensors
        multiprocessing_context=_FORK if cfg.num_workers > 0 else None,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # worker seeds: leave the global RNG stream alone
    )
    return loader, sampler


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():  # GPU training draws its noise from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch_atomic(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_loop(
    module: torch.nn.Module,
    parameters: list[torch.nn.Parameter],
    loss_fn: Callable[[TensorDict], dict[str, torch.Tensor]],
    train_data: TensorDict,
    val_data: TensorDict | None,
    cfg: LoopConfig,
    checkpoint_path: Path,
    resume: bool = False,
    device: str | torch.device = "cpu",
    atom_keys: Sequence[str] = ("mask",),
) -> list[dict]:
    """Train ``parameters`` of ``module`` on minibatches of ``train_data``; return the history.

    ``module`` is moved to ``device``; minibatches (trimmed to their largest crystal along the
    per-atom entries ``atom_keys``) follow it. The training checkpoint (module state, optimizer,
    epoch, RNG states, history) is rewritten atomically every ``checkpoint_every`` epochs and at
    the end; ``resume`` continues from it. Each history record has the epoch's training
    throughput, ``crystals_per_second``.
    """
    device = torch.device(device)
    module.to(device)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    best: dict = {"loss": math.inf, "state": None}
    if resume and checkpoint_path.is_file():
        try:
            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)  # RNG states stay on the CPU
        except Exception as exc:  # noqa: BLE001 - a truncated or damaged file: say which one
            raise RuntimeError(
                f"Training checkpoint {checkpoint_path} is damaged or truncated ({type(exc).__name__}: {exc}); "
                "delete it to start over"
            ) from exc
        module.load_state_dict(ckpt["module"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        log.info("Resumed from %s at epoch %d", checkpoint_path, start_epoch)
    elif resume:
        raise FileNotFoundError(f"Cannot resume: no training checkpoint at {checkpoint_path}")

    def save(epoch: int) -> None:
        save_torch_atomic(
            {
                "module": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "rng": rng_state(),
                "history": history,
                "best": best,
            },
            checkpoint_path,
        )

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    n = train_data.batch_size[0]
    train_loader, train_order = _loader(train_data, atom_keys, cfg, device)
    if val_data is not None:
        val_loader, val_order = _loader(val_data, atom_keys, cfg, device)
        val_order.order = list(torch.arange(val_data.batch_size[0]).split(cfg.batch_size))
    bar = tqdm(range(start_epoch, cfg.epochs), disable=not cfg.progress, desc="epochs", unit="epoch")
    for epoch in bar:
        module.train()
        start = time.perf_counter()
        train_order.order = list(torch.randperm(n).split(cfg.batch_size))
        sums: dict[str, float] = {}
        for batch in train_loader:
            batch = batch.to(device, non_blocking=True)
            with autocast():
                losses = loss_fn(batch)
            if not math.isfinite(losses["loss"].item()):
                log.warning("Non-finite loss at epoch %d; update skipped", epoch)
                continue
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() * batch.batch_size[0] / n
        speed = n / (time.perf_counter() - start)
        record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in sums.items()}, "crystals_per_second": speed}
        if val_data is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            module.eval()
            with torch.no_grad(), autocast():
                record.update({f"val/{k}": v for k, v in _evaluate(loss_fn, val_loader, device).items()})
            if record["val/loss"] < best["loss"]:
                best = {
                    "loss": record["val/loss"],
                    "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
                }
        history.append(record)
        bar.set_postfix(
            loss=f"{sums.get('loss', float('nan')):.4f}",
            val=f"{record.get('val/loss', float('nan')):.4f}",
            crystals_per_s=f"{speed:.0f}",
        )
        if (epoch + 1) % cfg.checkpoint_every == 0:
            save(epoch + 1)
    save(cfg.epochs)
    if cfg.keep_best and best["state"] is not None:
        module.load_state_dict(best["state"])
        log.info("Kept the weights of epoch %d (lowest validation loss %.4f)", best["epoch"], best["loss"])
    module.eval()
    return history


def _evaluate(
    loss_fn: Callable[[TensorDict], dict[str, torch.Tensor]],
    loader: torch.utils.data.DataLoader,
    device: torch.device,
) -> dict[str, float]:
    """Losses over the loader's minibatches, averaged weighted by their number of crystals."""
    n = len(loader.dataset)
    sums: dict[str, float] = {}
    for batch in loader:
        for k, v in loss_fn(batch.to(device, non_blocking=True)).items():
            sums[k] = sums.get(k, 0.0) + v.item() * batch.batch_size[0] / n
    return sums
