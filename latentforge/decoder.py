"""A trained model's decoder as a torch module (what ``Client.load_decoder`` returns). Imports torch."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from worker.checkpoint import load_model


class LatentDecoder(nn.Module):
    """Latent points in, images out: ``decoder(z)`` with ``z`` of shape (N, latent_dim) gives (N, height,
    width), and a single point (latent_dim,) gives one image (height, width).

    The images are the likelihood's mean, as the gallery's figures show them
    (the sigmoid of the logits for Bernoulli models). ``decoder`` is the
    trained ``nn.Sequential`` itself (raw output, flat), ``config`` the
    checkpoint's config.json.
    """

    def __init__(self, model: Any, config: dict[str, Any]):
        super().__init__()
        self.decoder: nn.Sequential = model.decoder
        self.latent_dim: int = model.config.latent_dim
        self.image_shape: tuple[int, int] = tuple(model.config.input_shape)  # type: ignore[assignment]
        self.config = config
        self._likelihood_mean = model.likelihood_mean  # the raw output's map to the mean (the model's kind)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "LatentDecoder":
        """From a checkpoint folder (config.json and model.safetensors), on ``device``, for decoding: in eval
        mode with its weights frozen, so images come out as plain tensors (``.requires_grad_()`` to train it)."""
        model, config = load_model(folder, device)
        return cls(model, config).eval().requires_grad_(False)

    def forward(self, z: Any) -> torch.Tensor:
        weight = next(self.decoder.parameters())
        z = torch.as_tensor(z, dtype=weight.dtype, device=weight.device)
        single = z.dim() == 1
        if single:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent points must have shape (N, {self.latent_dim}) or ({self.latent_dim},),"
                             f" got {tuple(z.shape) if not single else tuple(z.shape[1:])}")
        images = self._likelihood_mean(self.decoder(z)).reshape(-1, *self.image_shape)
        return images[0] if single else images
