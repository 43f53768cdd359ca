"""Crystal VAE: per-atom tokens → per-atom diagonal-Gaussian latents → atom types, coords, lattice."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from crystal_env.crystals.batch import MAX_ATOMIC_NUMBER, make_batch, trim_atoms
from crystal_env.models.elements import element_descriptors
from crystal_env.models.layers import masked_mean, pad_atoms, periodic_features, transformer_encoder, used_length


@dataclass
class VAEConfig:
    latent_dim: int = 8
    d_model: int = 128
    num_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    num_freqs: int = 8
    dropout: float = 0.0
    kl_weight: float = 1e-3
    type_weight: float = 1.0
    coord_weight: float = 10.0
    lattice_weight: float = 1.0
    translate_augment: bool = True


def lattice_features(lengths: torch.Tensor, angles: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Lattice as 6 roughly unit-scale numbers: log(length / N^(1/3)) and (angle − 90°) / 30°."""
    scale = num_atoms.to(lengths.dtype).clamp_min(1.0).pow(1.0 / 3.0)[:, None]
    return torch.cat([torch.log(lengths.clamp_min(1e-3) / scale), (angles - 90.0) / 30.0], dim=-1)


def lattice_from_features(feats: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = num_atoms.to(feats.dtype).clamp_min(1.0).pow(1.0 / 3.0)[:, None]
    lengths = torch.exp(feats[:, :3].clamp(-3.0, 3.0)) * scale
    angles = (90.0 + 30.0 * feats[:, 3:]).clamp(30.0, 150.0)
    return lengths, angles


class CrystalVAE(nn.Module):
    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        d = cfg.d_model
        # Element table = MLP(fixed chemical descriptors) + a small learned residual. It embeds atom
        # types in the encoder and scores them in the decoder (tied), so elements that are rare in
        # the training set borrow from chemically similar ones.
        self.register_buffer("element_desc", element_descriptors().clone())
        self.element_mlp = nn.Sequential(nn.Linear(self.element_desc.shape[1], d), nn.SiLU(), nn.Linear(d, d))
        self.atom_embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, d)
        nn.init.normal_(self.atom_embedding.weight, std=0.1)
        self.coord_proj = nn.Linear(6 * cfg.num_freqs, d)
        self.lattice_proj = nn.Linear(6, d)
        self.encoder = transformer_encoder(d, cfg.num_heads, cfg.encoder_layers, cfg.dropout)
        self.to_latent = nn.Linear(d, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, d)
        self.decoder = transformer_encoder(d, cfg.num_heads, cfg.decoder_layers, cfg.dropout)
        self.type_head = nn.Linear(d, d)
        self.type_bias = nn.Parameter(torch.zeros(MAX_ATOMIC_NUMBER + 1))
        self.coord_head = nn.Linear(d, 6)
        self.lattice_head = nn.Sequential(nn.Linear(d + 1, d), nn.SiLU(), nn.Linear(d, 6))
        # Standardisation of lattice features, set from the training set before training.
        self.register_buffer("lattice_mean", torch.zeros(6))
        self.register_buffer("lattice_std", torch.ones(6))

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def element_table(self) -> torch.Tensor:
        """(101, d_model) embedding of every atom type (row 0 is padding)."""
        return self.element_mlp(self.element_desc) + self.atom_embedding.weight

    def set_lattice_statistics(self, batch: TensorDict) -> None:
        feats = lattice_features(batch["lengths"], batch["angles"], batch["num_atoms"])
        self.lattice_mean.copy_(feats.mean(0))
        self.lattice_std.copy_(feats.std(0).clamp_min(1e-3))

    def encode(self, batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom latent mean and log-variance, each (B, N, latent_dim); padding rows are zero.

        Computed on the batch trimmed to its largest crystal, then padded back to N.
        """
        n_pad, n = batch["mask"].shape[1], used_length(batch["mask"])
        mu, logvar = self._encode(trim_atoms(batch, n))
        return pad_atoms(mu, n_pad), pad_atoms(logvar, n_pad)

    def _encode(self, batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["mask"]
        lat = lattice_features(batch["lengths"], batch["angles"], batch["num_atoms"]) - self.lattice_mean
        lat = lat / self.lattice_std
        tokens = (
            F.embedding(batch["atom_types"], self.element_table())
            + self.coord_proj(periodic_features(batch["frac_coords"], self.config.num_freqs))
            + self.lattice_proj(lat)[:, None, :]
        )
        h = self.encoder(tokens, src_key_padding_mask=~mask)
        mu, logvar = self.to_latent(h).chunk(2, dim=-1)
        keep = mask[..., None].to(mu.dtype)
        return mu * keep, logvar.clamp(-12.0, 6.0) * keep

    def decode_logits(self, z: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.decoder(self.from_latent(z), src_key_padding_mask=~mask)
        pooled = masked_mean(h, mask)
        log_n = torch.log(mask.sum(1, keepdim=True).to(h.dtype).clamp_min(1.0))
        return {
            "type_logits": self.type_head(h) @ self.element_table().T + self.type_bias,
            "coord_cs": self.coord_head(h).view(*h.shape[:2], 3, 2),
            "lattice": self.lattice_head(torch.cat([pooled, log_n], dim=-1)),
        }

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> TensorDict:
        """Latents → crystal batch (most likely atom type, coordinates, lattice), padded like ``mask``."""
        n_pad, n = mask.shape[1], used_length(mask)
        z, mask = z[:, :n], mask[:, :n]
        out = self.decode_logits(z, mask)
        logits = out["type_logits"].clone()
        logits[..., 0] = -math.inf  # never predict padding for a real atom
        atom_types = logits.argmax(-1) * mask
        cs = out["coord_cs"]
        frac = torch.remainder(torch.atan2(cs[..., 1], cs[..., 0]) / (2 * math.pi), 1.0) * mask[..., None]
        num_atoms = mask.sum(1)
        feats = out["lattice"] * self.lattice_std + self.lattice_mean
        lengths, angles = lattice_from_features(feats, num_atoms)
        return make_batch(pad_atoms(atom_types, n_pad), pad_atoms(frac, n_pad), lengths, angles, pad_atoms(mask, n_pad))

    def loss(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """Negative ELBO terms: type cross-entropy, periodic coordinate loss, lattice MSE, KL."""
        cfg = self.config
        mask = batch["mask"]
        if cfg.translate_augment and self.training:
            shift = torch.rand(batch.batch_size[0], 1, 3, device=mask.device)
            batch = batch.clone()
            batch["frac_coords"] = torch.remainder(batch["frac_coords"] + shift, 1.0) * mask[..., None]
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        out = self.decode_logits(z, mask)
        m = mask.to(mu.dtype)
        n_real = m.sum()
        type_ce = F.cross_entropy(out["type_logits"][mask], batch["atom_types"][mask])
        angle = 2 * math.pi * batch["frac_coords"]
        target_cs = torch.stack([angle.cos(), angle.sin()], dim=-1)
        coord = ((out["coord_cs"] - target_cs) ** 2).sum((-1, -2)).mul(m).sum() / n_real
        lat_target = lattice_features(batch["lengths"], batch["angles"], batch["num_atoms"])
        lat_target = (lat_target - self.lattice_mean) / self.lattice_std
        lattice = F.mse_loss(out["lattice"], lat_target)
        kl = (0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)).sum(-1).mul(m).sum() / n_real
        total = cfg.type_weight * type_ce + cfg.coord_weight * coord + cfg.lattice_weight * lattice
        total = total + cfg.kl_weight * kl
        return {"loss": total, "type_ce": type_ce, "coord": coord, "lattice": lattice, "kl": kl}

    def hparams(self) -> dict:
        return asdict(self.config)
