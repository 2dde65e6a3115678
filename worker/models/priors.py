"""Distributions over the latent space that models train towards and samplers draw from.

Apart from the models (as in pythae) so that a sampler can draw from any
model's prior and a figure can draw its density contours without knowing
the kind. Draws use the given generator, or torch's global one inside
training (whose state the checkpoint saves, so a resumed run draws the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MIXTURE_COMPONENTS = 10
MIXTURE_RADIUS = 4.0
MIXTURE_STD = 0.5


@dataclass(frozen=True)
class Gaussian2D:
    """One Gaussian's first two coordinates, for drawing its contours."""

    mean: tuple[float, float]
    cov: tuple[tuple[float, float], tuple[float, float]]


class Prior:
    name: str

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def components_2d(self) -> list[Gaussian2D]:
        """The prior's Gaussians in the first two latent dimensions (for density contours)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class StandardNormal(Prior):
    name = "gaussian"

    def sample(self, n, *, generator=None, device="cpu"):
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def components_2d(self):
        return [Gaussian2D((0.0, 0.0), ((1.0, 0.0), (0.0, 1.0)))]

    def describe(self):
        return f"N(0, I) in {self.latent_dim} dimensions"


def circle_means(latent_dim: int) -> torch.Tensor:
    """Ten means evenly on a circle of radius 4 in the first two dimensions (zero in the others)."""
    angles = torch.arange(MIXTURE_COMPONENTS, dtype=torch.float64) * (2 * math.pi / MIXTURE_COMPONENTS)
    means = torch.zeros(MIXTURE_COMPONENTS, latent_dim, dtype=torch.float64)
    means[:, 0] = MIXTURE_RADIUS * torch.cos(angles)
    if latent_dim > 1:
        means[:, 1] = MIXTURE_RADIUS * torch.sin(angles)
    return means.to(torch.float32)


class CircleMixture(Prior):
    """The adversarial autoencoder paper's 2-D prior: 10 equal Gaussians on a circle (std 0.5 each).

    In more than two dimensions the other coordinates are N(0, 0.5²) too.
    """

    name = "mixture"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.means = circle_means(latent_dim)

    def sample(self, n, *, generator=None, device="cpu"):
        component = torch.randint(MIXTURE_COMPONENTS, (n,), generator=generator, device=device)
        noise = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.means.to(device)[component] + MIXTURE_STD * noise

    def components_2d(self):
        var = MIXTURE_STD**2
        means = self.means.numpy()
        second = means[:, 1] if self.latent_dim > 1 else np.zeros(MIXTURE_COMPONENTS)
        return [Gaussian2D((float(x), float(y)), ((var, 0.0), (0.0, var))) for x, y in zip(means[:, 0], second)]

    def describe(self):
        return (f"a mixture of {MIXTURE_COMPONENTS} Gaussians (std {MIXTURE_STD}) on a circle of radius"
                f" {MIXTURE_RADIUS:g} in {self.latent_dim} dimensions")


PRIORS: dict[str, type[Prior]] = {"gaussian": StandardNormal, "mixture": CircleMixture}


def make_prior(name: str, latent_dim: int) -> Prior:
    return PRIORS[name](latent_dim)
