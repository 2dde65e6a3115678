"""The latent-space scorecard's vocabulary: the eight properties, their metrics, directions and normalisation.

One table read by the evaluate runner (which measures), the job store (which
records the numbers so runs can be sorted by them), the API (which checks a
sort key) and the gallery (which shows, compares and highlights them). No
torch here: the API imports it.

Every metric has a unique flat name (``knn_accuracy``), so a run's numbers
are one ``{name: value}`` map and ``?sort=-metrics.knn_accuracy`` can rank
runs by any of them. Each property has a headline metric and a documented
map of it to [0, 1] (1 is ideal), which the radar figure draws and which is
recorded as ``<property>_score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

Direction = Literal["higher", "lower"] | None  # None: context, not better or worse (a sample size, a floor)


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    direction: Direction
    description: str


@dataclass(frozen=True)
class Property:
    name: str
    label: str
    headline: str  # the metric that stands for the property
    normalise: Callable[[float], float]  # headline -> [0, 1], 1 ideal
    normalisation: str  # the map above in words (README, scorecard.json)
    question: str  # what the property asks of a latent space
    metrics: tuple[Metric, ...] = field(default=())

    @property
    def score_name(self) -> str:
        return f"{self.name}_score"


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _reciprocal(value: float) -> float:
    return _clip01(1.0 / value) if value > 0 else 0.0


PROPERTIES: tuple[Property, ...] = (
    Property(
        "compactness", "Compactness", "pca_mse_ratio", lambda r: 1.0 / (1.0 + r) if r >= 0 else 0.0,
        "1 / (1 + test MSE / PCA MSE): 0.5 at PCA's error, towards 1 as the model beats it",
        "does the code carry the image in as few numbers as linear PCA or fewer?",
        (
            Metric("test_mse", "test MSE", "lower", "mean squared error of the reconstructions (likelihood mean)"),
            Metric("pca_mse", "PCA MSE", None, "test MSE of PCA with as many components as the latent size"),
            Metric("pca_mse_ratio", "MSE / PCA MSE", "lower", "below 1: the model compresses better than PCA"),
            Metric("active_units", "active units", "higher", "code dimensions whose posterior-mean variance > 0.01"),
            Metric("effective_dimension", "effective dimension", None,
                   "participation ratio of the code covariance's eigenvalues"),
        ),
    ),
    Property(
        "structure", "Structured organization", "trustworthiness", _clip01,
        "trustworthiness itself (already in [0, 1])",
        "are neighbours in the code space neighbours in pixel space, and the other way round?",
        (
            Metric("trustworthiness", "trustworthiness (k=10)", "higher",
                   "code neighbours that are pixel neighbours (Venna & Kaski)"),
            Metric("continuity", "continuity (k=10)", "higher", "pixel neighbours kept as code neighbours"),
        ),
    ),
    Property(
        "disentanglement", "Disentanglement", "mig", _clip01,
        "MIG itself (already in [0, 1])",
        "does each known generative factor live in its own code dimension?",
        (
            Metric("mig", "MIG", "higher", "mutual information gap (Chen et al. 2018)"),
            Metric("dci_disentanglement", "DCI disentanglement", "higher", "Eastwood & Williams 2018"),
            Metric("dci_completeness", "DCI completeness", "higher", "each factor captured by one code"),
            Metric("dci_informativeness", "DCI informativeness", "higher", "factor prediction accuracy"),
            Metric("sap", "SAP", "higher", "separated attribute predictability (Kumar et al. 2018)"),
        ),
    ),
    Property(
        "continuity", "Continuity", "path_max_step_ratio", _reciprocal,
        "1 / (largest step ratio): 1 for evenly spaced decodes along a straight line",
        "do straight lines between codes decode to gradual, evenly paced changes?",
        (
            Metric("path_max_step_ratio", "largest step ratio", "lower",
                   "T² x largest squared step / squared endpoint distance (1 = even steps)"),
            Metric("path_energy_ratio", "path energy ratio", "lower",
                   "T x sum of squared steps / squared endpoint distance (1 = a straight, even path)"),
        ),
    ),
    Property(
        "generative", "Generative capability", "judge_score", _clip01,
        "judge confidence x class coverage (already in [0, 1])",
        "do draws from the prior decode to images a classifier recognises, of every class?",
        (
            Metric("judge_score", "judge score", "higher", "mean confidence x normalised class coverage"),
            Metric("judge_confidence", "judge confidence", "higher", "mean top-class probability of samples"),
            Metric("class_coverage", "class coverage", "higher",
                   "entropy of the predicted classes / log(classes)"),
            Metric("classes_seen", "classes seen", "higher", "classes predicted for at least one sample"),
            Metric("frechet_distance", "Fréchet distance", "lower", "samples vs test images in judge features"),
            Metric("frechet_floor", "Fréchet floor", None, "train vs test images: real against real"),
            Metric("judge_score_normal", "judge score, N(0, I)", "higher", "the AE decoded at N(0, I) draws"),
            Metric("judge_confidence_normal", "judge confidence, N(0, I)", "higher", "the AE at N(0, I) draws"),
            Metric("class_coverage_normal", "class coverage, N(0, I)", "higher", "the AE at N(0, I) draws"),
            Metric("frechet_distance_normal", "Fréchet distance, N(0, I)", "lower", "the AE at N(0, I) draws"),
            Metric("judge_accuracy", "judge test accuracy", None, "the judge's own accuracy on the test split"),
        ),
    ),
    Property(
        "separation", "Class separation", "knn_accuracy", _clip01,
        "5-NN accuracy itself",
        "are the classes apart in the code space?",
        (
            Metric("knn_accuracy", "5-NN accuracy", "higher", "train codes -> test codes, 5 nearest neighbours"),
            Metric("probe_accuracy", "linear probe accuracy", "higher", "logistic regression on the codes"),
            Metric("silhouette", "silhouette", "higher", "of the test codes by class, in [-1, 1]"),
        ),
    ),
    Property(
        "invariance", "Feature invariance", "code_shift", lambda s: _clip01(1.0 - s),
        "1 - mean relative code shift: 1 when perturbations do not move codes, 0 when they move them as far as"
        " a random pair",
        "do small nuisance changes (pixel noise, 2-pixel shifts) leave the code where it was?",
        (
            Metric("code_shift", "code shift", "lower", "mean of the two shifts below"),
            Metric("noise_shift", "shift under noise", "lower", "code move under N(0, 0.1²) pixel noise / random pair"),
            Metric("translation_shift", "shift under translation", "lower",
                   "code move under ±2-pixel translations / random pair"),
            Metric("probe_drop_noise", "probe drop, noise", "lower", "linear-probe accuracy lost under noise"),
            Metric("probe_drop_translation", "probe drop, translation", "lower",
                   "linear-probe accuracy lost under translations"),
        ),
    ),
    Property(
        "smoothness", "Latent smoothness", "lipschitz_relative", _reciprocal,
        "1 / relative Lipschitz (capped at 1): 1 when even the roughest 5% of places stretch no more than the"
        " decoder does on average between random pairs",
        "does a small step in the code make a small change in the image, everywhere?",
        (
            Metric("lipschitz_relative", "relative Lipschitz", "lower",
                   "95th-percentile Jacobian norm x mean code-pair distance / mean image-pair distance"),
            Metric("lipschitz_median", "Lipschitz, median", "lower", "decoder Jacobian spectral norm at test codes"),
            Metric("lipschitz_p95", "Lipschitz, 95th pct", "lower", "at test codes"),
            Metric("lipschitz_prior_median", "Lipschitz at prior, median", "lower", "at draws from the prior"),
            Metric("lipschitz_prior_p95", "Lipschitz at prior, 95th pct", "lower", "at draws from the prior"),
        ),
    ),
)

PROPERTY_NAMES: tuple[str, ...] = tuple(p.name for p in PROPERTIES)
BY_NAME: dict[str, Property] = {p.name: p for p in PROPERTIES}
METRICS: dict[str, Metric] = {m.name: m for p in PROPERTIES for m in p.metrics}
# The headline scores in [0, 1] are metrics too, so runs can be ranked by them.
METRICS.update({p.score_name: Metric(p.score_name, f"{p.label} score", "higher", p.normalisation)
                for p in PROPERTIES})

# Published 2-D MNIST autoencoders land here (the acceptance ranges): shown beside the numbers of a
# 2-D MNIST model, and nowhere else.
MNIST_2D_REFERENCE: dict[str, tuple[float, float]] = {
    "test_mse": (0.037, 0.040),
    "knn_accuracy": (0.75, 0.80),
    "trustworthiness": (0.95, 1.0),
}


def reference_ranges(dataset: str, latent_dim: int) -> dict[str, tuple[float, float]]:
    return dict(MNIST_2D_REFERENCE) if dataset == "mnist" and latent_dim == 2 else {}


def normalised_score(prop: Property, headline: float | None) -> float | None:
    if headline is None or not math.isfinite(headline):
        return None
    return round(prop.normalise(headline), 6)


def flat_metrics(scorecard: dict) -> dict[str, float]:
    """Every finite number of a scorecard, by metric name (what the job store records for sorting)."""
    flat: dict[str, float] = {}
    for name, entry in scorecard.get("properties", {}).items():
        if not entry or entry.get("score") is None:
            continue
        flat[BY_NAME[name].score_name] = float(entry["score"])
        for metric, value in entry.get("metrics", {}).items():
            if metric in METRICS and isinstance(value, (int, float)) and math.isfinite(value):
                flat[metric] = float(value)
    return flat


def metric_names(properties: tuple[str, ...]) -> tuple[str, ...]:
    """Every metric name of these properties, their scores included."""
    return tuple(name for p in PROPERTIES if p.name in properties
                 for name in (p.score_name, *(m.name for m in p.metrics)))


def best_of(metric: str, values: list[float | None]) -> float | None:
    """The best of several runs' values of one metric (None when the metric has no direction)."""
    known = [v for v in values if v is not None]
    direction = METRICS[metric].direction if metric in METRICS else None
    if not known or direction is None:
        return None
    return max(known) if direction == "higher" else min(known)
