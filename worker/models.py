"""Autoencoder models.

``AutoEncoder`` with the default config is the seed notebook's model layer for
layer: the same module order (so the same initialisation from the same seed),
the same ``encoder.*`` / ``decoder.*`` state-dict names (so the notebook's
weights load) and ``forward`` returning (reconstruction, code).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn


class ConfigError(ValueError):
    """A model config field is invalid; the message names it."""


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "ae"
    input_shape: tuple[int, int] = (28, 28)
    latent_dim: int = 2
    hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_CLASSES:
            raise ConfigError(f"kind: unknown model {self.kind!r}; choose one of {sorted(MODEL_CLASSES)}")
        if len(self.input_shape) != 2 or any(int(s) < 1 for s in self.input_shape):
            raise ConfigError(f"input_shape: must be two positive sizes, got {self.input_shape}")
        if isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ConfigError(f"latent_dim: must be a positive integer, got {self.latent_dim!r}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden: must be positive integers, got {self.hidden!r}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def input_dim(self) -> int:
        return self.input_shape[0] * self.input_shape[1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(
            kind=data["kind"],
            input_shape=tuple(data["input_shape"]),
            latent_dim=data["latent_dim"],
            hidden=tuple(data["hidden"]),
        )


class AEOutput(NamedTuple):
    """Named model output; unpacks like the notebook's (reconstruction, code)."""

    reconstruction: torch.Tensor  # (B, input_dim), no output activation
    code: torch.Tensor  # (B, latent_dim)


def _mlp(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


class AutoEncoder(nn.Module):
    """MLP autoencoder: Flatten, Linear/ReLU stack, linear code; mirrored decoder."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        sizes = [self.config.input_dim, *self.config.hidden, self.config.latent_dim]
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(sizes))
        self.decoder = nn.Sequential(*_mlp(sizes[::-1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encoder(x)
        return AEOutput(self.decoder(code), code)


MODEL_CLASSES: dict[str, type[nn.Module]] = {"ae": AutoEncoder}


def build_model(config: ModelConfig) -> nn.Module:
    return MODEL_CLASSES[config.kind](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def encode_all(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Codes of every row of ``x``, in chunks, as a NumPy array."""
    return torch.cat([model.encode(part) for part in x.split(chunk)]).cpu().numpy()


@torch.no_grad()
def decode_points(model: nn.Module, points: np.ndarray | list, device: torch.device | str = "cpu") -> np.ndarray:
    """Decoder outputs (flat, unclipped) of latent points, as a NumPy array."""
    z = torch.as_tensor(np.asarray(points, dtype=np.float32), device=device)
    return model.decode(z).cpu().numpy()
