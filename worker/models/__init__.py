"""The model kinds, one module each, registered by name in :data:`MODELS`.

``ae`` (the seed notebook's autoencoder), ``vae`` and ``beta_vae`` (one model,
see vae.py) and ``aae``. A new kind is one module here that calls
:func:`register`, imported below.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.models.base import MODELS, ConfigError, LatentModel, LossParts, ModelConfig, build_model, register
from worker.models.ae import AEOutput, AutoEncoder
from worker.models.vae import VAE, BetaVAEConfig, VAEConfig
from worker.models.aae import AAEConfig, AdversarialAutoEncoder

__all__ = ["MODELS", "AAEConfig", "AEOutput", "AdversarialAutoEncoder", "AutoEncoder", "BetaVAEConfig",
           "ConfigError", "LatentModel", "LossParts", "ModelConfig", "VAE", "VAEConfig", "build_model",
           "count_parameters", "decode_points", "encode_all", "register"]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def encode_all(model: LatentModel, x: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Codes (posterior means) of every row of ``x``, in chunks, as a NumPy array."""
    return torch.cat([model.encode(part) for part in x.split(chunk)]).cpu().numpy()


@torch.no_grad()
def decode_points(model: LatentModel, points: np.ndarray | list, device: torch.device | str = "cpu") -> np.ndarray:
    """The likelihood's mean (flat, unclipped) at each latent point, as a NumPy array."""
    z = torch.as_tensor(np.asarray(points, dtype=np.float32), device=device)
    return model.decode_mean(z).cpu().numpy()
