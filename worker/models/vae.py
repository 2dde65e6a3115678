"""The variational autoencoder (``vae``) and the β-VAE (``beta_vae``): one model, two defaults.

The encoder's trunk ends in two heads, the posterior's mean and log-variance;
a code is drawn by reparameterisation (``mean + std * eps``), so the loss is
differentiable in the encoder. The loss is a negative ELBO with the KL term
weighted (Higgins et al.):

    loss = recon + β · KL(q(z|x) ‖ N(0, I))

or, with a capacity schedule (Burgess et al. 2018, "Understanding
disentangling in β-VAE"):

    loss = recon + γ · |KL − C(t)|,   C(t) = capacity_max · min(1, t / capacity_epochs)

where t is training time in epochs, counted per batch (t = 2.5 halfway
through the third epoch), so C grows linearly from 0 to ``capacity_max`` nats
over the first ``capacity_epochs`` epochs and then stays there.

All terms are nats per image: sums over pixels and latent dimensions, means
over the batch. ``recon`` is the decoder's negative log-likelihood:
``bernoulli`` (the decoder outputs logits; binary cross-entropy against grey
levels in [0, 1], as Kingma & Welling did on MNIST) or ``gaussian`` (a fixed
standard deviation σ: squared error / 2σ² plus the normaliser, an MSE whose
scale σ sets against the KL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.base import ConfigError, LatentModel, LossParts, ModelConfig, register
from worker.models.priors import StandardNormal
from worker.models.trunk import mlp

LIKELIHOODS = ("bernoulli", "gaussian")
ELBO_SEED = 0  # held-out ELBO draws its codes from its own generator: evaluating never moves training's stream


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    kind: str = "vae"
    likelihood: str = "bernoulli"
    gaussian_std: float = 0.1
    beta: float = 1.0
    capacity_max: float | None = None  # nats; with capacity_epochs: Burgess et al.'s objective
    capacity_epochs: int | None = None
    gamma: float = 1000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood: must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"beta: must be a finite number ≥ 0, got {self.beta!r}")
        if not (math.isfinite(self.gaussian_std) and self.gaussian_std > 0):
            raise ConfigError(f"gaussian_std: must be a finite number > 0, got {self.gaussian_std!r}")
        if (self.capacity_max is None) != (self.capacity_epochs is None):
            raise ConfigError("capacity_max: capacity_max and capacity_epochs go together")
        if self.capacity_max is not None and not (math.isfinite(self.capacity_max) and self.capacity_max >= 0):
            raise ConfigError(f"capacity_max: must be a finite number ≥ 0, got {self.capacity_max!r}")
        if self.capacity_epochs is not None and not (isinstance(self.capacity_epochs, int) and self.capacity_epochs >= 1):
            raise ConfigError(f"capacity_epochs: must be a positive integer, got {self.capacity_epochs!r}")

    @property
    def uses_capacity(self) -> bool:
        return self.capacity_max is not None

    def capacity(self, progress: float) -> float:
        """C(t) in nats after ``progress`` epochs of training."""
        if not self.uses_capacity:
            return 0.0
        return float(self.capacity_max) * min(1.0, max(0.0, progress) / int(self.capacity_epochs))

    def objective(self) -> str:
        if self.uses_capacity:
            return (f"{self.likelihood} recon + {self.gamma:g}·|KL − C(t)|, C rising to {self.capacity_max:g} nats"
                    f" over {self.capacity_epochs} epochs")
        return f"{self.likelihood} recon + {self.beta:g}·KL"


class VAEOutput(NamedTuple):
    reconstruction: torch.Tensor  # decoder output at the drawn code (logits for bernoulli)
    code: torch.Tensor  # the drawn code
    mean: torch.Tensor
    logvar: torch.Tensor


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) per sample, in nats."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


class VAE(LatentModel):
    loss_unit = "loss (nats per image)"
    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig()
        sizes = [config.input_dim, *config.hidden]
        self.encoder = nn.Sequential(nn.Flatten(), *mlp(sizes, last_activation=True))
        # One head for both: [mean, log-variance] side by side (one matmul, not two).
        self.posterior_head = nn.Linear(config.hidden[-1], 2 * config.latent_dim)
        self.decoder = nn.Sequential(*mlp([config.latent_dim, *reversed(config.hidden), config.input_dim]))
        self.prior = StandardNormal(config.latent_dim)

    @property
    def output(self) -> str:  # type: ignore[override]
        return "sigmoid" if self.config.likelihood == "bernoulli" else "identity"

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance."""
        mean, logvar = self.posterior_head(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mean, logvar = self.posterior(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        code = mean + std * eps
        return VAEOutput(self.decoder(code), code, mean, logvar)

    def recon_nll(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The decoder's negative log-likelihood of ``x`` per sample, in nats."""
        x = x.flatten(1)
        if self.config.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(raw, x, reduction="none").sum(dim=1)
        sigma = self.config.gaussian_std
        squared = (raw - x).pow(2).sum(dim=1)
        return squared / (2 * sigma**2) + x.shape[1] * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

    def penalty(self, kl: torch.Tensor, progress: float) -> torch.Tensor:
        """The KL term of the objective: β·KL, or γ·|KL − C(t)| under a capacity schedule."""
        if self.config.uses_capacity:
            return self.config.gamma * (kl - self.config.capacity(progress)).abs()
        return self.config.beta * kl

    def loss(self, x: torch.Tensor, progress: float = 0.0) -> LossParts:
        out = self(x)
        batch = x.shape[0]
        if self.config.likelihood == "bernoulli":  # summed in one kernel: fewer launches per step on a GPU
            recon = F.binary_cross_entropy_with_logits(out.reconstruction, x.flatten(1), reduction="sum") / batch
        else:
            recon = self.recon_nll(out.reconstruction, x).mean()
        kl = gaussian_kl(out.mean, out.logvar).sum() / batch
        return {"total": recon + self.penalty(kl, progress), "recon": recon, "kl": kl}

    def derived_metrics(self, terms: dict[str, float]) -> dict[str, float]:
        return {"elbo": -(terms["recon"] + terms["kl"])}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        mean, logvar = self.posterior(x)
        kl = gaussian_kl(mean, logvar)
        generator = torch.Generator(device=x.device).manual_seed(ELBO_SEED)
        sampled = self.recon_nll(self(x, generator=generator).reconstruction, x)
        at_mean = self.decoder(mean)
        return {
            "loss": sampled + self.penalty(kl, progress),  # the training objective, per image
            "recon": self.recon_nll(at_mean, x),  # at the posterior mean
            "kl": kl,
            "elbo": -(sampled + kl),  # one-sample estimate of the evidence lower bound
            "mse": (self.likelihood_mean(at_mean) - x.flatten(1)).pow(2).mean(dim=1),
        }

    def objective(self) -> str:
        return self.config.objective()

    def epoch_metrics(self, progress: float) -> dict[str, float]:
        return {"capacity": self.config.capacity(progress)} if self.config.uses_capacity else {}


@dataclass(frozen=True)
class BetaVAEConfig(VAEConfig):
    kind: str = "beta_vae"
    beta: float = 4.0


register("vae", VAE, VAEConfig, "variational autoencoder: Gaussian posterior, N(0, I) prior, recon + β·KL")
register("beta_vae", VAE, BetaVAEConfig,
         "β-VAE: the VAE with β = 4 by default, or Burgess et al.'s capacity schedule")
