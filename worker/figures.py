"""Figures, drawn headless from NumPy arrays (no torch here).

The first three are the seed notebook's figures as the seed notebook draws them;
the rest are LatentForge's own. Sizes are fixed (no tight bounding box) so a
figure's pixel size is its figsize times its dpi. Every PNG gets a thumbnail
beside it (``<name>.thumb.png``), and each file lands atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from PIL import Image  # noqa: E402

from shared.artifacts import thumbnail_name  # noqa: E402
from worker.files import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from worker.models.priors import Gaussian2D

THUMB_SIZE = (320, 240)
SEED_COORDS = [[-2, 2], [0, 0], [1, 4], [-5, 3], [-8, -4], [-3, -6]]
SCATTER_FIGSIZE, SCATTER_DPI = (8, 6), 300
FIGURE_DPI = 100


def thumbnail_path(path: Path) -> Path:
    return path.with_name(Path(thumbnail_name(path.name)).name)


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> Path:
    """Save ``fig`` as PNG plus its thumbnail, atomically, and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    with Image.open(path) as image:
        image.thumbnail(THUMB_SIZE)
        with atomic_path(thumbnail_path(path)) as tmp:
            image.save(tmp, format="PNG")
    return path


def _as_images(flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # The seed decoder has no output activation: clip for display only.
    return np.clip(flat.reshape(-1, *shape), 0.0, 1.0)


def _project_2d(codes: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    if codes.shape[1] == 2:
        return codes, ("Latent Dimension 1", "Latent Dimension 2")
    if codes.shape[1] == 1:
        jitter = np.random.default_rng(0).uniform(-0.5, 0.5, size=len(codes))
        return np.column_stack([codes[:, 0], jitter]), ("Latent Dimension 1", "(jitter)")
    centred = codes - codes.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, ("Principal Component 1", "Principal Component 2")


def scatter_2d(
    points: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str, axis_labels: tuple[str, str],
    *, label_title: str = "Digit", label_names: Sequence[str] | None = None,
    contours: Sequence[Gaussian2D] = (), contour_label: str = "prior",
) -> Path:
    """Points coloured by class with the tab10 colours, 8x6 in at dpi 300; optionally a prior's
    1σ and 2σ density contours on top, so holes and mismatch show at a glance."""
    fig, ax = plt.subplots(figsize=SCATTER_FIGSIZE)
    cmap = plt.get_cmap("tab10" if labels.max(initial=0) < 10 else "tab20")
    for value in range(int(labels.max(initial=-1)) + 1):
        mask = labels == value
        name = label_names[value] if label_names is not None and value < len(label_names) else str(value)
        ax.scatter(points[mask, 0], points[mask, 1], color=cmap(value), alpha=0.8, s=8, label=name)
    for i, gaussian in enumerate(contours):
        draw_contours(ax, gaussian, f"{contour_label} 1σ, 2σ" if i == 0 else None)
    ax.legend(title=label_title, loc="upper right")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return save_figure(fig, path, dpi=SCATTER_DPI)


def draw_contours(ax: plt.Axes, gaussian: Gaussian2D, label: str | None) -> None:
    """The 1σ and 2σ ellipses of a 2-D Gaussian (Mahalanobis distance 1 and 2)."""
    variances, vectors = np.linalg.eigh(np.asarray(gaussian.cov, dtype=float))
    angle = float(np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1])))
    for k, style in ((1, "-"), (2, "--")):
        width, height = 2 * k * np.sqrt(variances[::-1])
        ax.add_patch(Ellipse(gaussian.mean, width, height, angle=angle, fill=False, color="black", lw=1.0, ls=style,
                             label=label if k == 1 else None))


def latent_scatter(codes: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str,
                   **options) -> Path:
    """Figure (a): 2-D codes as they are; other sizes projected (PCA, or jitter for 1-D).

    Prior contours (``contours=``) are drawn only where the axes are the latent dimensions themselves.
    """
    points, axis_labels = _project_2d(codes)
    if codes.shape[1] != 2:
        options.pop("contours", None)
    return scatter_2d(points, labels, path, title, axis_labels, **options)


def reconstructions(
    originals: np.ndarray, reconstructed: np.ndarray, shape: tuple[int, int], path: str | os.PathLike
) -> Path:
    """Figure (b): originals on top, reconstructions below."""
    originals, reconstructed = _as_images(originals, shape), _as_images(reconstructed, shape)
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.4), squeeze=False, layout="constrained")
    for i in range(n):
        for row, (images, label) in enumerate(((originals, "Original"), (reconstructed, "Reconstructed"))):
            ax = axes[row, i]
            ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(label)
            ax.axis("off")
    fig.suptitle("Original and Reconstructed Images")
    return save_figure(fig, path)


def _coord_label(point: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in point) + "]"


def decoded_grid(
    decoded: np.ndarray,
    coords: Sequence[Sequence[float]],
    shape: tuple[int, int],
    path: str | os.PathLike,
    title: str = "Generated Images from Latent Space",
    columns: int = 3,
) -> Path:
    """Figure (c): each decoded point titled with its latent coordinates."""
    images = _as_images(decoded, shape)
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.2 * columns, 2.4 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, point in zip(axes.flat, images, coords):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(_coord_label(point), fontsize=9)
    fig.suptitle(title)
    return save_figure(fig, path)


def loss_curve(history: Sequence[dict], path: str | os.PathLike, ylabel: str = "MSE loss") -> Path:
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", ms=3, label="train")
    ax.plot(epochs, [row["test_loss"] for row in history], marker="o", ms=3, label="test")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def manifold_axes(codes: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid positions over the central 98% of the codes in each dimension."""
    lo = np.percentile(codes, 1, axis=0)
    hi = np.percentile(codes, 99, axis=0)
    return np.linspace(lo[0], hi[0], steps), np.linspace(hi[1], lo[1], steps)


def latent_manifold(
    decoded: np.ndarray, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int], path: str | os.PathLike
) -> Path:
    """Decoded regular grid (row-major, top row = largest dim-2 value) as one mosaic."""
    h, w = shape
    images = _as_images(decoded, shape).reshape(len(ys), len(xs), h, w)
    mosaic = images.transpose(0, 2, 1, 3).reshape(len(ys) * h, len(xs) * w)
    fig, ax = plt.subplots(figsize=(9, 9), layout="constrained")
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, extent=(xs[0], xs[-1], ys[-1], ys[0]), aspect="auto")
    ax.set_xlabel("Latent Dimension 1")
    ax.set_ylabel("Latent Dimension 2")
    ax.set_title("Latent manifold: decoder over a regular grid")
    return save_figure(fig, path)


def interpolation_strip(
    decoded: np.ndarray,
    endpoints: np.ndarray,
    alphas: np.ndarray,
    shape: tuple[int, int],
    path: str | os.PathLike,
    endpoint_labels: tuple[int, int],
) -> Path:
    """Two test digits at the ends, decoded linear interpolations between their codes."""
    images = _as_images(decoded, shape)
    ends = _as_images(endpoints, shape)
    n = len(images) + 2
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 2.0), squeeze=False, layout="constrained")
    panels = [(ends[0], f"input {endpoint_labels[0]}")]
    panels += [(img, f"t={a:.2f}") for img, a in zip(images, alphas)]
    panels += [(ends[1], f"input {endpoint_labels[1]}")]
    for ax, (image, label) in zip(axes[0], panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle("Interpolation between two test digits in latent space")
    return save_figure(fig, path)
