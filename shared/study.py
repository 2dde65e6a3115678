"""The built-in study: the sweep that tests the seed document's claims, and the claims themselves.

Torch-free: the CLI and the gallery build the sweep from :func:`study_spec`;
the report job (worker/study.py) judges each :data:`CLAIMS` entry on the
children's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODELS = ("ae", "vae", "beta_vae", "aae")
SETTINGS = (("mnist", 2), ("mnist", 10), ("sprites", 10))
STUDY_BETA = 4.0
FRONTIER_BETAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # beta_vae on sprites, latent 10


def study_spec(epochs: int = 50, seeds: int = 3, evaluate: dict[str, Any] | bool = True) -> dict[str, Any]:
    """Every model on every setting, plus β-VAEs along the β frontier, ``seeds`` runs each, all evaluated."""
    overrides = []
    for dataset, latent_dim in SETTINGS:
        for model in MODELS:
            setting: dict[str, Any] = {"model": model, "dataset": dataset, "latent_dim": latent_dim}
            if model == "beta_vae":
                setting["beta"] = STUDY_BETA
            overrides.append(setting)
    overrides += [{"model": "beta_vae", "dataset": "sprites", "latent_dim": 10, "beta": beta}
                  for beta in FRONTIER_BETAS if beta != STUDY_BETA]  # β = 4 is already above
    return {"base": {"epochs": epochs}, "overrides": overrides, "seeds": seeds, "evaluate": evaluate,
            "report": "study"}


@dataclass(frozen=True)
class Claim:
    model: str
    text: str  # the seed document's words
    test: str  # how the numbers test it


CLAIMS: tuple[Claim, ...] = (
    Claim("ae", "similar inputs can map to distant latent points",
          "continuity (k=10: pixel neighbours kept as code neighbours) of the AE below every other kind's"),
    Claim("ae", "holes between valid encodings, unrealistic outputs when sampling",
          "the AE's judge score at N(0, I) draws below the VAE's at its prior; its mixture draws reported beside"),
    Claim("ae", "no mechanism for factor separation",
          "the AE's MIG on sprites below the VAE's and the β-VAE's"),
    Claim("vae", "continuous latent space",
          "the VAE's largest interpolation step ratio below the AE's"),
    Claim("vae", "Gaussian prior for proper sampling, better generation",
          "the VAE's judge score at its prior above the AE's at N(0, I), and its Fréchet distance below"),
    Claim("beta_vae", "enhanced disentanglement",
          "the β-VAE's (β = 4) MIG on sprites above the VAE's"),
    Claim("beta_vae", "trade-off between reconstruction and independence",
          "along the β frontier (sprites, latent 10), test MSE and MIG both rise with β (Spearman ρ > 0)"),
    Claim("aae", "better distribution matching, more realistic generation",
          "the AAE's Fréchet distance of prior draws below the VAE's, and its judge score above"),
    Claim("aae", "improved structure",
          "the AAE's trustworthiness above the VAE's"),
)
