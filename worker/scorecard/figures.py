"""The scorecard's figures: the eight scores at a glance, and what each number was measured on.

Headless matplotlib from NumPy arrays, saved with a thumbnail like every figure
(worker/figures.py).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from shared.scorecard import PROPERTIES
from worker.figures import plt, save_figure


def scorecard_radar(scores: dict[str, float | None], path: str | os.PathLike, title: str) -> None:
    """The eight normalised scores (1 ideal) on a radar; a property that does not apply is marked n/a at 0."""
    labels = [p.label for p in PROPERTIES]
    values = [scores.get(p.name) for p in PROPERTIES]
    angles = np.linspace(0, 2 * np.pi, len(labels), endpoint=False)
    drawn = np.array([v if v is not None else 0.0 for v in values])
    fig = plt.figure(figsize=(7, 6.4), layout="constrained")
    ax = fig.add_subplot(projection="polar")
    ax.plot(np.append(angles, angles[0]), np.append(drawn, drawn[0]), color="#3b6ea5", lw=2)
    ax.fill(np.append(angles, angles[0]), np.append(drawn, drawn[0]), color="#3b6ea5", alpha=0.25)
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{label}\n{'n/a' if v is None else f'{v:.2f}'}" for label, v in zip(labels, values)],
                       fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7, color="#666")
    ax.set_title(f"Latent-space scorecard: {title}\n(each score in [0, 1], 1 ideal; see the README)", fontsize=11)
    save_figure(fig, path)


def interpolation_paths(paths: np.ndarray, shape: tuple[int, int], path: str | os.PathLike) -> None:
    """Decoded straight lines between pairs of test codes, one row per pair, with each step's size."""
    rows, steps = paths.shape[0], paths.shape[1]
    fig, axes = plt.subplots(rows, steps, figsize=(1.05 * steps, 1.25 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for r in range(rows):
        jumps = np.linalg.norm(np.diff(paths[r], axis=0), axis=1)
        for t in range(steps):
            ax = axes[r, t]
            ax.imshow(np.clip(paths[r, t].reshape(shape), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if t:
                ax.set_title(f"Δ {jumps[t - 1]:.2f}", fontsize=7)
    fig.suptitle("Continuity: decoded straight lines between test codes (Δ = pixel distance from the previous"
                 " step; even steps are smooth)", fontsize=9)
    save_figure(fig, path)


def judged_samples(images: np.ndarray, probs: np.ndarray, shape: tuple[int, int], path: str | os.PathLike,
                   title: str, columns: int = 10) -> None:
    """Decoded prior samples, each titled with the judge's class and confidence."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.3 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, p in zip(axes.flat, images, probs):
        ax.imshow(np.clip(image.reshape(shape), 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{int(p.argmax())} ({p.max():.0%})", fontsize=7, color="#222" if p.max() >= 0.9 else "#b00")
    fig.suptitle(title + "\n(class and confidence; red below 90%)", fontsize=9)
    save_figure(fig, path)


def perturbations(clean: np.ndarray, perturbed: Sequence[np.ndarray], labels: Sequence[str],
                  path: str | os.PathLike) -> None:
    """One test image as the invariance metrics perturb it."""
    images = [clean, *perturbed]
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.0), squeeze=False, layout="constrained")
    for ax, image, label in zip(axes[0], images, labels):
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle("Feature invariance: the perturbations whose code shift is measured", fontsize=9)
    save_figure(fig, path)


def lipschitz_histogram(at_codes: np.ndarray, at_prior: np.ndarray, path: str | os.PathLike,
                        prior_label: str = "prior draws") -> None:
    """The decoder's local stretch (Jacobian spectral norm) at test codes and at prior draws."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    both = np.concatenate([at_codes, at_prior])
    positive = both[both > 0]
    if len(positive):
        bins = np.geomspace(positive.min(), positive.max() * 1.0001, 40)
        ax.set_xscale("log")
    else:
        bins = 40
    ax.hist(at_codes, bins=bins, alpha=0.6, label=f"at test codes (median {np.median(at_codes):.3g})")
    ax.hist(at_prior, bins=bins, alpha=0.6, label=f"at {prior_label} (median {np.median(at_prior):.3g})")
    ax.set_xlabel("local Lipschitz estimate (pixels per latent unit)")
    ax.set_ylabel("points")
    ax.set_title("Latent smoothness: how much the decoder stretches around each point")
    ax.legend()
    save_figure(fig, path)
