"""The LoRA VAE: normalised canonical vectors <-> a small latent (m = 512 at real scale)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraVAEConfig:
    data_dim: int
    latent_dim: int = 512
    hidden: int = 1024
    depth: int = 2  # residual blocks on each side
    kl_weight: float = 1e-4
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualMLP(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class LoraVAE(nn.Module):
    def __init__(self, config: LoraVAEConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.encoder = nn.Sequential(
            nn.Linear(config.data_dim, h),
            *(ResidualMLP(h, config.dropout) for _ in range(config.depth)),
            nn.LayerNorm(h),
        )
        self.to_stats = nn.Linear(h, 2 * config.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(config.latent_dim, h),
            *(ResidualMLP(h, config.dropout) for _ in range(config.depth)),
            nn.LayerNorm(h),
            nn.Linear(h, config.data_dim),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance."""
        mean, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=-1)
        return mean, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction from a posterior sample (given standard-normal `noise`), mean, log-var."""
        mean, logvar = self.encode(x)
        return self.decode(mean + torch.exp(0.5 * logvar) * noise), mean, logvar

    def loss(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        noise = torch.randn(x.shape[0], self.config.latent_dim, generator=generator)
        return vae_loss(self(x, noise), x, self.config.kl_weight)


def vae_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor, kl_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction MSE (per coordinate) + kl_weight * KL (per latent dim), and both parts."""
    recon_x, mean, logvar = outputs
    recon = torch.nn.functional.mse_loss(recon_x, x)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return recon + kl_weight * kl, {"recon": recon, "kl": kl}
