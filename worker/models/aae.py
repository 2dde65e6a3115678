"""The adversarial autoencoder (``aae``, Makhzani et al. 2015).

A deterministic autoencoder (the seed's encoder and decoder, MSE loss) plus a
discriminator MLP on codes that tells draws of the prior from codes of real
images. Every batch runs three phases, each with its own optimizer:

1. reconstruction: encoder and decoder minimise the MSE (learning rate ``lr``);
2. discriminator: learns prior draws → 1, codes → 0 (``disc_lr``);
3. generator: the encoder learns to make the discriminator say 1 for its
   codes (``gen_lr``), which pulls the codes' distribution onto the prior.

Reported per epoch: ``recon`` (the MSE), ``disc`` and ``gen`` (binary
cross-entropies) and ``disc_acc``, the discriminator's accuracy over both
halves of its batch: near 0.5 means the codes pass for prior draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.ae import AutoEncoder
from worker.models.base import ConfigError, LossParts, ModelConfig, register
from worker.models.priors import PRIORS, make_prior
from worker.models.trunk import adam, flatten_parameters, mlp


@dataclass(frozen=True)
class AAEConfig(ModelConfig):
    kind: str = "aae"
    prior: str = "gaussian"
    disc_hidden: tuple[int, ...] | None = None  # None: the trunk's widest layer, twice
    disc_lr: float | None = None  # None: the train spec's lr
    gen_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior not in PRIORS:
            raise ConfigError(f"prior: must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.disc_hidden is None:
            object.__setattr__(self, "disc_hidden", (max(self.hidden),) * 2)
        object.__setattr__(self, "disc_hidden", tuple(self.disc_hidden))
        if not self.disc_hidden or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in self.disc_hidden):
            raise ConfigError(f"disc_hidden: must be one or more positive integers, got {self.disc_hidden!r}")
        for name in ("disc_lr", "gen_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: must be a finite number > 0, got {value!r}")


class AdversarialAutoEncoder(AutoEncoder):
    def __init__(self, config: AAEConfig | None = None):
        config = config or AAEConfig()
        super().__init__(config)
        self.discriminator = nn.Sequential(*mlp([config.latent_dim, *config.disc_hidden, 1]))
        self.prior = make_prior(config.prior, config.latent_dim)

    def loss(self, x: torch.Tensor, progress: float = 0.0) -> LossParts:
        recon = F.mse_loss(self(x).reconstruction, x.flatten(1))
        return {"total": recon, "recon": recon}

    def objective(self) -> str:
        return "MSE, then discriminator and generator steps (three optimizers)"

    def make_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        # One flat buffer per part: the generator step updates the encoder alone.
        encoder, decoder = flatten_parameters(self.encoder), flatten_parameters(self.decoder)
        discriminator = flatten_parameters(self.discriminator)
        return {
            "recon": adam([encoder, decoder], lr),
            "disc": adam([discriminator], self.config.disc_lr or lr),
            "gen": adam([encoder], self.config.gen_lr or lr),
        }

    def discriminator_terms(self, prior_draws: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary cross-entropy, accuracy) of the discriminator on prior draws (→ 1) and codes (→ 0).

        Both halves go through the discriminator as one batch (the mean over it
        is the mean of the two halves' means when they are the same size).
        """
        logits = self.discriminator(torch.cat([prior_draws, codes]))
        targets = torch.cat([logits.new_ones(len(prior_draws), 1), logits.new_zeros(len(codes), 1)])
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        accuracy = ((logits > 0) == targets.bool()).float().mean()
        return loss, accuracy.detach()

    def train_step(self, x, optimizers, progress):
        parts = self.loss(x, progress)
        step(optimizers["recon"], parts["recon"])

        codes = self.encode(x)
        disc, accuracy = self.discriminator_terms(self.prior.sample(x.shape[0], device=x.device), codes.detach())
        step(optimizers["disc"], disc)

        fooled = self.discriminator(codes)
        gen = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        # Only the encoder's gradients: the discriminator's weight gradients are never computed.
        step(optimizers["gen"], gen, inputs=list(self.encoder.parameters()))
        return {**parts, "disc": disc.detach(), "gen": gen.detach(), "disc_acc": accuracy}


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> None:
    optimizer.zero_grad(set_to_none=False)  # in place: the gradients are views of one buffer
    loss.backward(inputs=inputs)
    optimizer.step()


register("aae", AdversarialAutoEncoder, AAEConfig,
         "adversarial autoencoder: a discriminator on codes matches them to a prior (gaussian or mixture)")
