"""Embed and sample jobs on a trained checkpoint (train jobs: worker.pipeline).

Plain functions of (spec, folders): no queue or database here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shared.specs import EmbedSpec, SampleSpec
from worker import figures
from worker.checkpoint import load_model
from worker.data import load_split
from worker.files import atomic_path
from worker.models import decode_points, encode_all
from worker.train import images_to_tensor

GMM_COMPONENTS = 10
GMM_FIT_LIMIT = 20_000  # training codes used to fit the mixture


class JobInputError(ValueError):
    """The job's input does not fit its model; the message says how."""


@dataclass(frozen=True)
class RunOutput:
    files: list[Path]
    summary: dict


def save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return path


def run_embed(
    spec: EmbedSpec, model_dir: str | os.PathLike, out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
) -> RunOutput:
    out = Path(out_dir)
    model, config = load_model(model_dir)
    dataset = config["train"]["dataset"]
    split = load_split(dataset, spec.split, data_dir)
    count = len(split) if spec.limit is None else min(spec.limit, len(split))
    x = images_to_tensor(split, torch.device("cpu"))[:count]
    labels = split.labels[:count]
    log(f"embedding {count:,} {dataset} {spec.split} images")
    codes = encode_all(model, x)
    files = [save_npy(out / "codes.npy", codes.astype(np.float32)), save_npy(out / "labels.npy", labels.astype(np.int64))]
    title = f"Codes of {count:,} {dataset} {spec.split} images"
    latent_dim = codes.shape[1]
    if latent_dim <= 2:
        files.append(figures.latent_scatter(codes, labels, out / "figures" / "embedding.png", title))
    else:
        files.append(figures.latent_scatter(codes, labels, out / "figures" / "embedding_pca.png", title + " (PCA)"))
        from sklearn.manifold import TSNE

        log(f"t-SNE of {count:,} codes of dimension {latent_dim}")
        points = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30.0, max(2.0, (count - 1) / 3))).fit_transform(codes)
        files.append(figures.scatter_2d(points, labels, out / "figures" / "embedding_tsne.png", title + " (t-SNE)", ("t-SNE 1", "t-SNE 2")))
    return RunOutput(files, {"count": count, "latent_dim": latent_dim, "dataset": dataset, "split": spec.split})


def fit_code_mixture(codes: np.ndarray, seed: int):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=GMM_COMPONENTS, covariance_type="full", random_state=seed).fit(codes)


def run_sample(
    spec: SampleSpec, model_dir: str | os.PathLike, out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
) -> RunOutput:
    out = Path(out_dir)
    model, config = load_model(model_dir)
    latent_dim = int(config["model"]["latent_dim"])
    shape = tuple(config["model"]["input_shape"])
    if spec.latent_coords is not None:
        points = np.asarray(spec.latent_coords, dtype=np.float32)
        if points.shape[1] != latent_dim:
            raise JobInputError(f"latent_coords: points have {points.shape[1]} coordinates but the model's latent space has {latent_dim}")
        title, source = "Decoded latent points", "given"
    else:
        # A plain autoencoder has no prior: draw from a Gaussian mixture fitted to its training codes.
        dataset = config["train"]["dataset"]
        train = load_split(dataset, "train", data_dir)
        x = images_to_tensor(train, torch.device("cpu"))[:GMM_FIT_LIMIT]
        mixture = fit_code_mixture(encode_all(model, x), spec.seed)
        points = mixture.sample(spec.n)[0].astype(np.float32)
        title = f"{spec.n} samples from a {GMM_COMPONENTS}-component Gaussian mixture fitted to the training codes"
        source = "gmm"
        log(f"fitted a {GMM_COMPONENTS}-component mixture to {len(x):,} training codes")
    decoded = decode_points(model, points)
    images = decoded.reshape(len(points), *shape).astype(np.float32)
    files = [save_npy(out / "images.npy", images), save_npy(out / "coords.npy", points)]
    columns = min(len(points), 8)
    files.append(figures.decoded_grid(decoded, points.tolist(), shape, out / "figures" / "samples.png", title=title, columns=columns))
    return RunOutput(files, {"count": len(points), "source": source})
