"""What every model kind is: a config dataclass, a module that owns its loss, and a registry row.

A model kind is one module in this package that defines a config (a
:class:`ModelConfig` subclass with its own fields) and a :class:`LatentModel`
subclass, and calls :func:`register` once. The training loop only calls
``model.train_step``, ``model.evaluate`` and ``model.epoch_metrics``; figures
and samplers call ``encode``, ``decode_mean`` and the model's ``prior``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from worker.models.priors import Prior
from worker.models.trunk import adam, flatten_parameters

# Named loss terms of one batch: "total" (what the step minimised), "recon",
# and the kind's own terms ("kl", "disc", ...). Values are 0-d tensors.
LossParts = dict[str, torch.Tensor]

OUTPUTS = ("identity", "sigmoid")  # how a decoder's raw output becomes the likelihood's mean


class ConfigError(ValueError):
    """A model config field is invalid; the message names it."""


@dataclass(frozen=True)
class ModelConfig:
    """The fields every kind has; a kind's config subclass adds its own."""

    kind: str = "ae"
    input_shape: tuple[int, int] = (28, 28)
    latent_dim: int = 2
    hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ConfigError(f"kind: unknown model {self.kind!r}; choose one of {sorted(MODELS)}")
        if not isinstance(self, MODELS[self.kind].config):
            raise ConfigError(f"kind: {self.kind!r} needs a {MODELS[self.kind].config.__name__}")
        if len(self.input_shape) != 2 or any(int(s) < 1 for s in self.input_shape):
            raise ConfigError(f"input_shape: must be two positive sizes, got {self.input_shape}")
        if not _positive_int(self.latent_dim):
            raise ConfigError(f"latent_dim: must be a positive integer, got {self.latent_dim!r}")
        if not self.hidden or not all(_positive_int(h) for h in self.hidden):
            raise ConfigError(f"hidden: must be positive integers, got {self.hidden!r}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def input_dim(self) -> int:
        return self.input_shape[0] * self.input_shape[1]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """The config of the kind ``data["kind"]``, its own fields included (checkpoints store this)."""
        kind = data.get("kind", "ae")
        if kind not in MODELS:
            raise ConfigError(f"kind: unknown model {kind!r}; choose one of {sorted(MODELS)}")
        config_cls = MODELS[kind].config
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a field of a {kind} model")
        return config_cls(**data)  # __post_init__ turns JSON lists back into tuples

    @classmethod
    def from_spec(cls, spec: Any, input_shape: tuple[int, int]) -> "ModelConfig":
        """The config a train spec asks for: every config field the spec has, by name."""
        config_cls = MODELS[spec.model].config
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(config_cls)
                  if f.name not in ("kind", "input_shape") and getattr(spec, f.name, None) is not None}
        return config_cls(kind=spec.model, input_shape=tuple(input_shape), **values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class LatentModel(nn.Module):
    """An encoder, a decoder, and the loss that trains them (plus whatever else the kind needs).

    Subclasses set ``encoder`` and ``decoder`` (an ``nn.Sequential`` of Linear
    and ReLU layers: the explorer runs it in the browser) and implement
    ``encode`` and ``loss``.
    """

    output: ClassVar[str] = "identity"  # the decoder output's map to the likelihood's mean
    loss_unit: ClassVar[str] = "MSE loss"  # what the loss curve's axis says
    prior: Prior | None = None  # the distribution the kind trains its codes towards; None for a plain AE
    config: ModelConfig
    decoder: nn.Sequential

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of ``x``: the posterior mean where the encoder is stochastic."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (logits for a Bernoulli likelihood)."""
        return self.decoder(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at ``z``: what figures, samples and the explorer show."""
        return self.likelihood_mean(self.decode(z))

    def likelihood_mean(self, raw: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output mapped to the likelihood's mean (the sigmoid of Bernoulli logits)."""
        return torch.sigmoid(raw) if self.output == "sigmoid" else raw

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_mean(self.encode(x))

    def loss(self, x: torch.Tensor, progress: float = 0.0) -> LossParts:
        """The loss of one batch; ``progress`` is training time in epochs (for schedules)."""
        raise NotImplementedError

    def make_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """One Adam over every parameter, flattened (see :func:`flatten_parameters`)."""
        return {"model": adam([flatten_parameters(self)], lr)}

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   progress: float) -> LossParts:
        """One optimisation step on the batch ``x``; returns its loss terms."""
        parts = self.loss(x, progress)
        optimizer = optimizers["model"]
        optimizer.zero_grad(set_to_none=False)  # in place: the gradients are views of one buffer
        parts["total"].backward()
        optimizer.step()
        return parts

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        """Per-sample terms on held-out data: "loss" (as trained) and the kind's own terms."""
        raise NotImplementedError

    def derived_metrics(self, terms: dict[str, float]) -> dict[str, float]:
        """Terms computed from an epoch's mean terms (the VAE's ELBO), not accumulated batch by batch."""
        return {}

    def epoch_metrics(self, progress: float) -> dict[str, float]:
        """Numbers to report after an epoch beside the losses (e.g. a schedule's value)."""
        return {}

    def objective(self) -> str:
        """The loss in words, for the run's record and log."""
        return "MSE"

    def describe_prior(self) -> str:
        return self.prior.describe() if self.prior is not None else "no prior (a plain autoencoder)"


@dataclass(frozen=True)
class ModelKind:
    name: str
    model: type[LatentModel]
    config: type[ModelConfig]
    help: str


MODELS: dict[str, ModelKind] = {}


def register(name: str, model: type[LatentModel], config: type[ModelConfig], help: str) -> None:
    MODELS[name] = ModelKind(name, model, config, help)


def build_model(config: ModelConfig) -> LatentModel:
    return MODELS[config.kind].model(config)
