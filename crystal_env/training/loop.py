"""A minimal epoch loop with validation, atomic checkpoints and exact resume, for pretraining."""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from tqdm.auto import tqdm

from crystal_env.paths import atomic_write_bytes

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


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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
) -> list[dict]:
    """Train ``parameters`` of ``module`` on minibatches of ``train_data``; return the history.

    The training checkpoint (module state, optimizer, epoch, RNG states, history) is rewritten
    atomically every ``checkpoint_every`` epochs and at the end; ``resume`` continues from it.
    """
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    best: dict = {"loss": math.inf, "state": None}
    if resume and checkpoint_path.is_file():
        try:
            ckpt = torch.load(checkpoint_path, weights_only=False)
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

    n = train_data.batch_size[0]
    bar = tqdm(range(start_epoch, cfg.epochs), disable=not cfg.progress, desc="epochs")
    for epoch in bar:
        module.train()
        perm = torch.randperm(n)
        sums: dict[str, float] = {}
        for i in range(0, n, cfg.batch_size):
            losses = loss_fn(train_data[perm[i : i + cfg.batch_size]])
            if not math.isfinite(losses["loss"].item()):
                log.warning("Non-finite loss at epoch %d; update skipped", epoch)
                continue
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() * min(cfg.batch_size, n - i) / n
        record = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in sums.items()}}
        if val_data is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            module.eval()
            with torch.no_grad():
                record.update({f"val/{k}": v.item() for k, v in loss_fn(val_data).items()})
            if record["val/loss"] < best["loss"]:
                best = {
                    "loss": record["val/loss"],
                    "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
                }
        history.append(record)
        bar.set_postfix(loss=f"{sums.get('loss', float('nan')):.4f}", val=f"{record.get('val/loss', float('nan')):.4f}")
        if (epoch + 1) % cfg.checkpoint_every == 0:
            save(epoch + 1)
    save(cfg.epochs)
    if cfg.keep_best and best["state"] is not None:
        module.load_state_dict(best["state"])
        log.info("Kept the weights of epoch %d (lowest validation loss %.4f)", best["epoch"], best["loss"])
    module.eval()
    return history
