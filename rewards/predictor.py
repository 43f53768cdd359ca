"""Property predictors: a small MLP head on frozen, pooled VAE latents (trained by scripts/train_predictor.py)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from pymatgen.core import Structure
from torch import nn

from atomic_io import atomic_write_bytes
from rewards.features import encodable, get_model
from rewards.metrics import RewardBatch, register_metric
from rewards.safety import suspended

PREDICTOR_FORMAT = "rewards.predictor/1"
REPO_DIR = Path(__file__).resolve().parents[1]


@torch.no_grad()
def pooled_latents(model, structures: Sequence[Structure | None], chunk: int = 256) -> torch.Tensor:
    """(n, 4L + 1): mean, std, min and max over atoms of the normalised latent means, and log N.

    NaN rows for ``None`` crystals and those the VAE cannot encode (:func:`rewards.features.encodable`).
    """
    dim = 4 * model.latent_dim + 1
    out = torch.full((len(structures), dim), float("nan"))
    keep = encodable(structures, model)
    for start in range(0, len(keep), chunk):
        idx = keep[start : start + chunk]
        z, mask = model.encode([structures[i] for i in idx])
        m = mask[..., None].to(z.dtype)
        n = m.sum(1)
        mean = (z * m).sum(1) / n
        std = (((z - mean[:, None]) ** 2 * m).sum(1) / n).sqrt()
        big = torch.finfo(z.dtype).max
        zmin = torch.where(mask[..., None], z, big).amin(1)
        zmax = torch.where(mask[..., None], z, -big).amax(1)
        out[idx] = torch.cat([mean, std, zmin, zmax, n.log()], dim=-1).float().cpu()
    return out


class PropertyHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 64, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        blocks: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.SiLU(), nn.Dropout(dropout)]
            d = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(d, 1))
        self.config = {"in_dim": in_dim, "hidden": hidden, "layers": layers, "dropout": dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class PropertyPredictor:
    """Frozen VAE (by name or path) + trained head; predictions in the property's own units."""

    def __init__(self, model: str, head: PropertyHead, target: str, mean: float, std: float, meta: dict | None = None):
        self.model_name = str(model)
        self.head = head.eval()
        self.target, self.mean, self.std = target, float(mean), float(std)
        self.meta = meta or {}

    @torch.no_grad()
    def predict(self, structures: Sequence[Structure | None], device: str = "cpu") -> torch.Tensor:
        """(n,) predictions; NaN where the crystal cannot be encoded. The VAE encodes on ``device``;
        the small head runs on the CPU."""
        feats = pooled_latents(get_model(self.model_name, device), structures)
        ok = torch.isfinite(feats).all(1)
        out = torch.full((len(structures),), float("nan"))
        if ok.any():
            out[ok] = self.head(feats[ok]) * self.std + self.mean
        return out

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "format": PREDICTOR_FORMAT,
                "model": self.model_name,
                "target": self.target,
                "mean": self.mean,
                "std": self.std,
                "head_config": self.head.config,
                "head_state": self.head.state_dict(),
                "meta": self.meta,
            },
            buf,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> PropertyPredictor:
        path = Path(path).expanduser()
        if not path.is_file() and not path.is_absolute():
            path = REPO_DIR / path if (REPO_DIR / path).is_file() else path  # e.g. runs/predictor/...
        if not path.is_file():
            raise FileNotFoundError(
                f"Predictor checkpoint not found: {path}. Train one with `crystal-rl-train-predictor` (in a "
                "checkout: python scripts/train_predictor.py; config: crystal_rl/configs/predictor/) or point "
                "`checkpoint:` at an existing file."
            )
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != PREDICTOR_FORMAT:
            raise ValueError(f"{path} is not a rewards predictor checkpoint (format {PREDICTOR_FORMAT!r})")
        head = PropertyHead(**state["head_config"])
        head.load_state_dict(state["head_state"])
        return cls(state["model"], head, state["target"], state["mean"], state["std"], state.get("meta"))


@lru_cache(maxsize=8)
def get_predictor(checkpoint: str) -> PropertyPredictor:
    """A predictor checkpoint, loaded once per process."""
    return PropertyPredictor.load(checkpoint)


@register_metric("property_prediction")
def _property_prediction(batch: RewardBatch, checkpoint: str, device: str | None = None) -> torch.Tensor:
    with suspended():
        predictor = get_predictor(checkpoint)
    return predictor.predict(batch.valid_structures, device or batch.device)


def train_predictor(
    model: str = "mp20_tiny",
    dataset: str = "mp20_sample",
    target: str = "band_gap",
    max_atoms: int = 20,
    hidden: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
    epochs: int = 2000,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[PropertyPredictor, dict[str, float]]:
    """Fit a head on the frozen VAE's pooled latents of the train split (target standardised with
    the train mean/std); keep the weights of the best validation MAE. Returns the predictor and
    its validation and test MAE next to the predict-the-train-mean baseline (the test split plays
    no part in training or model selection). The VAE encodes and the head trains on ``device``.
    """
    from crystal_env.data import load_dataset

    torch.manual_seed(seed)
    vae = get_model(model, device)
    splits = {s: load_dataset(dataset, s, max_atoms=max_atoms) for s in ("train", "val", "test")}
    data = {}
    for split, ds in splits.items():
        x = pooled_latents(vae, ds.structures)
        y = torch.as_tensor(ds.property_values(target), dtype=torch.float32)
        ok = torch.isfinite(x).all(1) & torch.isfinite(y)
        data[split] = (x[ok].to(device), y[ok].to(device))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
    mean, std = float(y_tr.mean()), float(y_tr.std().clamp_min(1e-6))
    head = PropertyHead(x_tr.shape[1], hidden, layers, dropout).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = (float("inf"), 0, {k: v.clone() for k, v in head.state_dict().items()})
    for epoch in range(epochs):
        head.train()
        loss = nn.functional.mse_loss(head(x_tr), (y_tr - mean) / std)
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            val_mae = float((head(x_va) * std + mean - y_va).abs().mean())
        if val_mae < best[0]:
            best = (val_mae, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    head.eval()
    y_tr, y_va, y_te = y_tr.cpu(), y_va.cpu(), y_te.cpu()
    x_te = x_te.cpu()
    head.cpu()  # predictions (and the checkpoint) use the head on the CPU
    with torch.no_grad():
        test_mae = float((head(x_te) * std + mean - y_te).abs().mean())
    metrics = {
        "val_mae": best[0],
        "baseline_val_mae": float((y_va - mean).abs().mean()),
        "test_mae": test_mae,
        "baseline_test_mae": float((y_te - mean).abs().mean()),
        "best_epoch": best[1],
        "train_size": len(y_tr),
        "val_size": len(y_va),
        "test_size": len(y_te),
        "mean": mean,
        "std": std,
    }
    meta = {"dataset": dataset, "metrics": metrics}
    return PropertyPredictor(str(model), head.eval(), target, mean, std, meta), metrics
