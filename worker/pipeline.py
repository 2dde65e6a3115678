"""A whole train job without queue or database: data -> training -> checkpoint -> figures.

The CLI calls :func:`run_training` directly; the Celery task (a later layer)
calls it with progress and cancel callbacks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from shared.specs import TrainSpec
from worker import figures
from shared.artifacts import (
    CODES_FILE,
    CONFIG_FILE,
    DECODER_FILE,
    FIGURES_DIR,
    METRICS_FILE,
    PRIOR_SAMPLES_FIGURE,
    SCATTER_FIGURE,
    WEIGHTS_FILE,
    ArtifactFile,
    ArtifactKind,
    figure_files,
)
from worker.checkpoint import (
    export_codes,
    export_decoder,
    library_versions,
    load_training_state,
    write_checkpoint,
)
from worker.data import ImageSplit, load_split
from worker.files import write_jsonl
from worker.models import LatentModel, ModelConfig, decode_points, encode_all
from worker.models.priors import StandardNormal
from worker.train import (
    EpochMetrics,
    TrainingCancelled,
    TrainState,
    format_progress,
    images_to_tensor,
    new_state,
    resolve_device,
    train,
)

MANIFOLD_STEPS = 20
INTERPOLATION_STEPS = 8
RECONSTRUCTION_COUNT = 3
PRIOR_SAMPLE_COUNT = 16
PRIOR_SAMPLE_SEED = 0


@dataclass(frozen=True)
class TrainResult:
    folder: Path
    history: list[EpochMetrics]
    seconds: float
    figures: list[Path]
    artifacts: list[ArtifactFile]  # every file written, relative to the folder



def _split_record(split: ImageSplit) -> dict:
    return {"count": len(split), "files": {Path(p).name: sha for p, sha in split.files.items()}}




def seed_coordinates(latent_dim: int) -> np.ndarray:
    """The notebook's six points; other dimensions are zero-padded or truncated."""
    coords = np.zeros((len(figures.SEED_COORDS), latent_dim), dtype=np.float32)
    width = min(2, latent_dim)
    coords[:, :width] = np.asarray(figures.SEED_COORDS, dtype=np.float32)[:, :width]
    return coords


def draw_train_figures(
    model: nn.Module,
    train: ImageSplit,
    test: ImageSplit,
    train_codes: np.ndarray,
    test_x: torch.Tensor,
    history: list[dict],
    folder: Path,
) -> list[Path]:
    """The train job's figures, written under ``folder`` (the run's folder); returns their paths."""
    model.eval()
    figs = folder / FIGURES_DIR
    device = test_x.device
    shape = train.image_shape
    latent_dim = model.config.latent_dim
    out: list[Path] = []

    prior = model.prior
    out.append(
        figures.latent_scatter(
            train_codes, train.labels, folder / SCATTER_FIGURE,
            title=f"Latent space of the training set ({train.dataset}, {len(train):,} images)",
            **label_options(train), contours=prior.components_2d() if prior is not None else (),
        )
    )

    originals = test_x[:RECONSTRUCTION_COUNT]
    with torch.no_grad():
        recon = model.reconstruct(originals).cpu().numpy()
    out.append(figures.reconstructions(originals.cpu().numpy(), recon, shape, figs / "reconstructions.png"))

    coords = seed_coordinates(latent_dim)
    out.append(figures.decoded_grid(decode_points(model, coords, device), coords.tolist(), shape, figs / "generated.png"))

    out.append(figures.loss_curve(history, figs / "loss_curve.png", ylabel=model.loss_unit))
    out.append(prior_samples_figure(model, folder / PRIOR_SAMPLES_FIGURE, shape))

    if latent_dim == 2:
        xs, ys = figures.manifold_axes(train_codes, MANIFOLD_STEPS)
        grid = np.array([[x, y] for y in ys for x in xs], dtype=np.float32)
        out.append(figures.latent_manifold(decode_points(model, grid, device), xs, ys, shape, figs / "latent_manifold.png"))

    # The first test digit and the first one of another class.
    first = 0
    second = int(np.argmax(test.labels != test.labels[first]))
    ends = test_x[[first, second]]
    end_codes = encode_all(model, ends)
    alphas = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)
    path_codes = (1 - alphas)[:, None] * end_codes[0] + alphas[:, None] * end_codes[1]
    out.append(
        figures.interpolation_strip(
            decode_points(model, path_codes, device), ends.cpu().numpy(), alphas, shape,
            figs / "interpolation.png", (int(test.labels[first]), int(test.labels[second])),
        )
    )
    return out


def label_options(split: ImageSplit) -> dict:
    """How the scatter names its colours: digits, clothing classes, or a sprites factor (the shape)."""
    if split.factor_names:
        return {"label_title": split.factor_names[0]}
    return {"label_title": "Digit" if split.dataset == "mnist" else "Class"}


def prior_samples_figure(model: LatentModel, path: Path, shape: tuple[int, int],
                         count: int = PRIOR_SAMPLE_COUNT) -> Path:
    """Decoded draws from the model's prior; a plain AE has none, so N(0, I) shows what it would give."""
    prior = model.prior if model.prior is not None else StandardNormal(model.config.latent_dim)
    generator = torch.Generator().manual_seed(PRIOR_SAMPLE_SEED)  # the figure never moves training's streams
    points = prior.sample(count, generator=generator).numpy()
    device = next(model.parameters()).device
    title = (f"Samples from the prior: {prior.describe()}" if model.prior is not None
             else "Draws from N(0, I) decoded: the plain AE has no prior (a sample job fits one to its codes)")
    return figures.decoded_grid(decode_points(model, points, device), points.tolist(), shape, path,
                                title=title, columns=8)


def warm_up() -> float:
    """Pay a fresh process's one-time costs before its first job does; returns the seconds spent.

    Why: a new worker's first train job took about 1.5 s longer than the
    next ones (lazy imports, the CPU kernels' first set-up, matplotlib's font
    cache). Two workers started together each paid it on their first job.
    The global random streams it touches are seeded again by every job.
    """
    import tempfile

    started = time.perf_counter()
    spec = TrainSpec.from_dict({"epochs": 1, "batch_size": 64, "device": "cpu"})
    config = ModelConfig.from_spec(spec, (28, 28))
    x = torch.rand(256, 28 * 28)
    state = train(spec, new_state(spec, config, torch.device("cpu")), x, x[:64])
    with tempfile.TemporaryDirectory() as folder:
        figures.loss_curve([m.to_dict() for m in state.history], Path(folder) / "warm-up.png")
    return time.perf_counter() - started


def run_training(
    spec: TrainSpec,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[TrainState, EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train, then write checkpoint and figures into ``out_dir``.

    With ``resume_from`` (a folder written by
    :func:`worker.checkpoint.save_training_state`, already verified by the
    caller), training continues after the epoch saved there. ``on_epoch`` is
    where a caller saves such states (the queue's task does, every epoch).
    """
    started = time.perf_counter()
    folder = Path(out_dir)
    train_split = load_split(spec.dataset, "train", data_dir, download=download)
    test_split = load_split(spec.dataset, "test", data_dir, download=download)
    device = resolve_device(spec.device)
    config = ModelConfig.from_spec(spec, train_split.image_shape)
    log(
        f"training {spec.model} (latent {spec.latent_dim}, hidden {list(spec.hidden)}) on {spec.dataset}:"
        f" {len(train_split):,} train / {len(test_split):,} test images, {spec.epochs} epochs, device {device}"
    )
    state = new_state(spec, config, device)
    objective = state.model.objective()
    log(f"objective: {objective}; prior: {state.model.describe_prior()}")
    if resume_from is not None and load_training_state(resume_from, state):
        log(f"resuming after epoch {state.epoch}")
    train_x = images_to_tensor(train_split, device)
    test_x = images_to_tensor(test_split, device)

    def after_epoch(st: TrainState, metrics: EpochMetrics) -> None:
        log(format_progress(metrics, spec.epochs))
        write_jsonl(folder / METRICS_FILE, [m.to_dict() for m in st.history])
        if on_epoch is not None:
            on_epoch(st, metrics)

    train(spec, state, train_x, test_x, on_epoch=after_epoch, should_stop=should_stop)
    if should_stop is not None and should_stop():  # cancelled or lost meanwhile: no figures for nobody
        raise TrainingCancelled(f"stopped after epoch {state.epoch}, before the figures")
    train_seconds = time.perf_counter() - started
    history = [m.to_dict() for m in state.history]
    last = state.history[-1]
    record = {
        "model": config.to_dict(),
        "train": spec.to_dict(),
        "data": {
            "dataset": spec.dataset,
            "train": _split_record(train_split),
            "test": _split_record(test_split),
        },
        "objective": objective,
        "prior": state.model.describe_prior(),
        "device": str(device),
        "versions": library_versions(),
        "result": {
            "epochs": state.epoch,
            "train_loss": last.train_loss,
            "test_loss": last.test_loss,
            "seconds": round(train_seconds, 3),
        },
    }
    state.model.eval()
    train_codes = encode_all(state.model, train_x)
    figure_paths = draw_train_figures(
        state.model, train_split, test_split, train_codes, test_x, history, folder
    )
    export_decoder(state.model, folder / DECODER_FILE)
    export_codes(train_codes, train_split.labels, folder / CODES_FILE)
    write_checkpoint(folder, state.model, record, history)
    seconds = time.perf_counter() - started
    log(
        f"done in {seconds:.1f}s: train {last.train_loss:.4f}, test {last.test_loss:.4f};"
        f" checkpoint and {len(figure_paths)} figures in {folder}"
    )
    artifacts = [ArtifactFile.of(CONFIG_FILE, ArtifactKind.CONFIG), ArtifactFile.of(WEIGHTS_FILE, ArtifactKind.CHECKPOINT),
                 ArtifactFile.of(METRICS_FILE, ArtifactKind.METRICS), ArtifactFile.of(DECODER_FILE, ArtifactKind.DECODER),
                 ArtifactFile.of(CODES_FILE, ArtifactKind.CODES)]
    artifacts += [f for path in figure_paths for f in figure_files(path.relative_to(folder).as_posix())]
    return TrainResult(folder=folder, history=list(state.history), seconds=seconds, figures=figure_paths,
                       artifacts=artifacts)
