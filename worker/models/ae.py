"""The plain autoencoder (``ae``): the seed notebook's model.

With the default config it is the notebook's model layer for layer: the same
module order (so the same initialisation from the same seed), the same
``encoder.*`` / ``decoder.*`` state-dict names (so the notebook's weights
load), ``forward`` returning (reconstruction, code), and the same loss
(``F.mse_loss``, so the seed preset's losses are the notebook's, bit for bit).
It has no prior: its samples come from a mixture fitted to its codes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.base import LatentModel, LossParts, ModelConfig, register
from worker.models.trunk import mlp


class AEOutput(NamedTuple):
    """Named model output; unpacks like the notebook's (reconstruction, code)."""

    reconstruction: torch.Tensor  # (B, input_dim), no output activation
    code: torch.Tensor  # (B, latent_dim)


class AutoEncoder(LatentModel):
    """MLP autoencoder: Flatten, Linear/ReLU stack, linear code; mirrored decoder."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        sizes = [self.config.input_dim, *self.config.hidden, self.config.latent_dim]
        self.encoder = nn.Sequential(nn.Flatten(), *mlp(sizes))
        self.decoder = nn.Sequential(*mlp(sizes[::-1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encoder(x)
        return AEOutput(self.decoder(code), code)

    def loss(self, x: torch.Tensor, progress: float = 0.0) -> LossParts:
        reconstruction, _ = self(x)
        loss = F.mse_loss(reconstruction, x)
        return {"total": loss, "recon": loss}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        return {"loss": (self(x).reconstruction - x.flatten(1)).pow(2).mean(dim=1)}


register("ae", AutoEncoder, ModelConfig, "the plain autoencoder of the seed notebook (MSE loss, no prior)")
