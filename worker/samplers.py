"""Where latent points to decode come from: the model's prior, or a mixture fitted to a plain AE's codes.

Apart from the models (as in pythae): a sample job and the scorecard draw the
same way, so "samples from the model" means one thing everywhere.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from worker.models import LatentModel

GMM_COMPONENTS = 10
GMM_FIT_LIMIT = 20_000  # training codes used to fit the mixture
GMM_SOURCE = f"a {GMM_COMPONENTS}-component Gaussian mixture fitted to the training codes"


def fit_code_mixture(codes: np.ndarray, seed: int):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=GMM_COMPONENTS, covariance_type="full", random_state=seed).fit(codes)


def draw_latents(model: LatentModel, n: int, seed: int,
                 training_codes: Callable[[], np.ndarray]) -> tuple[np.ndarray, str]:
    """``n`` points from the model's prior (source "prior"), or, for a plain autoencoder, which has none, from a
    Gaussian mixture fitted to its training codes (source "gmm"; ``training_codes`` is only called then)."""
    if model.prior is not None:
        generator = torch.Generator().manual_seed(seed)
        return model.prior.sample(n, generator=generator).numpy().astype(np.float32), "prior"
    mixture = fit_code_mixture(training_codes()[:GMM_FIT_LIMIT], seed)
    with warnings.catch_warnings():
        # EM's full covariances are positive semi-definite up to round-off, which NumPy's sampler warns about.
        warnings.filterwarnings("ignore", message="covariance is not symmetric positive-semidefinite")
        points = mixture.sample(n)[0].astype(np.float32)
    # scikit-learn returns the draws grouped by component: shuffled, the first few are as varied as the rest.
    return points[np.random.default_rng(seed).permutation(n)], "gmm"
