"""What a job's files are called and what they are: one vocabulary for runners, worker and gallery.

A runner returns a manifest, a list of :class:`ArtifactFile` (a name relative
to its folder, a kind, a content type); the worker records exactly those, and
the gallery finds a run's figures, decoder and codes by the same names and
kinds, never by guessing from a folder's contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath


class ArtifactKind(str, Enum):
    CHECKPOINT = "checkpoint"
    CONFIG = "config"
    METRICS = "metrics"
    FIGURE = "figure"
    THUMBNAIL = "thumbnail"
    ARRAY = "array"
    DECODER = "decoder"
    CODES = "codes"
    LOG = "log"
    FILE = "file"


# A checkpoint folder (worker/checkpoint.py) and what a train job exports beside it.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
DECODER_FILE = "decoder.safetensors"
CODES_FILE = "latent_codes.safetensors"
FIGURES_DIR = "figures"
# The worker's lines for the attempt that ended a job (shared/logs.py), published with its files.
LOG_FILE = "log.txt"

# What a job that works on a trained model reads of it (worker/checkpoint.py: load_model).
CHECKPOINT_KINDS = (ArtifactKind.CONFIG.value, ArtifactKind.CHECKPOINT.value, ArtifactKind.METRICS.value)

# Figures that stand for a run in lists (the first a run has), written by the train, embed, sample and
# evaluate runners.
SCATTER_FIGURE = "figures/latent_scatter.png"
EMBEDDING_FIGURE = "figures/embedding.png"
EMBEDDING_PCA_FIGURE = "figures/embedding_pca.png"
SAMPLES_FIGURE = "figures/samples.png"
PRIOR_SAMPLES_FIGURE = "figures/prior_samples.png"
# An evaluate job's scorecard and its radar of the eight scores (worker/scorecard/evaluate.py).
SCORECARD_FILE = "scorecard.json"
SCORECARD_FIGURE = "figures/scorecard.png"
HEADLINE_FIGURES = (SCATTER_FIGURE, EMBEDDING_FIGURE, EMBEDDING_PCA_FIGURE, SAMPLES_FIGURE, SCORECARD_FIGURE)

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".npy": "application/x-npy",
    ".md": "text/markdown",
    ".safetensors": "application/octet-stream",
}


def thumbnail_name(figure: str) -> str:
    """``figures/x.png`` -> ``figures/x.thumb.png``: every figure has its thumbnail beside it."""
    path = PurePosixPath(figure)
    return str(path.with_name(path.stem + ".thumb.png"))


def content_type_of(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")


@dataclass(frozen=True)
class ArtifactFile:
    """One file a runner wrote: its path relative to the run's folder (POSIX), its kind and content type."""

    name: str
    kind: ArtifactKind
    content_type: str

    @classmethod
    def of(cls, name: str, kind: ArtifactKind) -> "ArtifactFile":
        return cls(name, kind, content_type_of(name))


def figure_files(name: str) -> list[ArtifactFile]:
    """A figure and its thumbnail."""
    return [ArtifactFile.of(name, ArtifactKind.FIGURE), ArtifactFile.of(thumbnail_name(name), ArtifactKind.THUMBNAIL)]
