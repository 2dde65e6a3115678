"""The evaluate job's work: a trained model's scorecard, one entry per ideal property, plus its figures.

Read top to bottom: load the checkpoint and the data, encode both splits once,
then measure each requested property (shared/scorecard.py names them and their
metrics; worker/scorecard/metrics.py computes them), draw the figures that
explain the numbers, and write ``scorecard.json``. No queue or database here.

Every random draw comes from ``spec.seed``, and the judge is read from its
cache, so evaluating the same model with the same spec gives the same numbers.

Two sets of images are used: the *measured* split (``spec.split``, ``spec.limit``
of its images drawn with ``spec.seed``) and the *reference* split (the other
one, as many images), which fitted metrics learn from: PCA, the k-NN index, the linear
probe, the DCI and SAP predictors, and the plain AE's code mixture.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shared.artifacts import SCORECARD_FIGURE, SCORECARD_FILE, ArtifactFile, ArtifactKind, figure_files
from shared.scorecard import BY_NAME, METRICS, PROPERTIES, normalised_score, reference_ranges
from shared.specs import EvaluateSpec
from worker.checkpoint import load_model
from worker.data import ImageSplit, load_split
from worker.files import write_json
from worker.models import LatentModel, encode_all
from worker.samplers import GMM_SOURCE, draw_latents
from worker.scorecard import figures, metrics
from worker.scorecard.judge import Judge, load_or_train_judge
from worker.train import images_to_tensor

FORMAT = "latentforge.scorecard/1"
INTERPOLATION_FIGURE = "figures/interpolation_paths.png"
JUDGED_FIGURE = "figures/judged_samples.png"
LIPSCHITZ_FIGURE = "figures/lipschitz.png"
INVARIANCE_FIGURE = "figures/perturbations.png"
NEIGHBOURS = 10  # trustworthiness and continuity at k = 10 (Venna & Kaski)
KNN = 5
PRIOR_DRAWS = 1000  # samples the judge scores
INTERPOLATION_PAIRS = 200
INTERPOLATION_STEPS = 10
NOISE_SIGMA = 0.1
SHIFTS = ((2, 0), (-2, 0), (0, 2), (0, -2))  # (dx, dy) in pixels
LIPSCHITZ_POINTS = 500
LIPSCHITZ_ITERATIONS = 30
ENCODE_CHUNK = 4096


@dataclass
class Inputs:
    """What every property reads: the model, both image sets, their codes, and the seed."""

    model: LatentModel
    config: dict[str, Any]
    measured: ImageSplit
    reference: ImageSplit
    x: torch.Tensor  # measured images, flat, in [0, 1]
    x_ref: torch.Tensor
    codes: np.ndarray
    codes_ref: np.ndarray
    seed: int
    data_dir: Path | None
    cache_dir: Path | None
    folder: Path
    log: Callable[[str], None]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.config["model"]["input_shape"])

    def rng(self, salt: int) -> np.random.Generator:
        """An independent, reproducible stream per use (so measuring fewer properties changes no number)."""
        return np.random.default_rng([self.seed, salt])

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.rng(salt).integers(2**62)))

    @cached_property
    def probe(self):
        """The linear probe fitted on the reference codes (class separation and feature invariance both use it)."""
        return metrics.fit_linear_probe(self.codes_ref, self.reference.labels, seed=self.seed)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode_mean(z)

    def encode(self, images: torch.Tensor) -> np.ndarray:
        return encode_all(self.model, images.reshape(len(images), -1), chunk=ENCODE_CHUNK)


@dataclass
class Measured:
    """One property's result as scorecard.json stores it."""

    values: dict[str, float]
    samples: dict[str, int]
    figures: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def evaluate_checkpoint(spec: EvaluateSpec, checkpoint: Path, folder: Path, *, data_dir: Path | None = None,
                        cache_dir: Path | None = None, log: Callable[[str], None] = print,
                        on_property: Callable[[int, int, str], None] | None = None,
                        ) -> tuple[dict[str, Any], list[ArtifactFile]]:
    """Measure the model in ``checkpoint``; write scorecard.json and figures into ``folder``.

    ``on_property(step, steps, label)`` is called before each measured property (progress; it may raise to stop).
    """
    started = time.perf_counter()
    model, config = load_model(checkpoint)
    model.eval()
    dataset = config["train"]["dataset"]
    other = "train" if spec.split == "test" else "test"
    measured = _subset(load_split(dataset, spec.split, data_dir), spec.limit, spec.seed)
    reference = _subset(load_split(dataset, other, data_dir), spec.limit, spec.seed)
    x, x_ref = (images_to_tensor(s, torch.device("cpu")) for s in (measured, reference))
    log(f"encoding {len(measured):,} {dataset} {spec.split} and {len(reference):,} {other} images")
    inputs = Inputs(model, config, measured, reference, x, x_ref, encode_all(model, x, ENCODE_CHUNK),
                    encode_all(model, x_ref, ENCODE_CHUNK), spec.seed, data_dir, cache_dir, folder, log)
    (folder / "figures").mkdir(parents=True, exist_ok=True)

    entries: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    references = reference_ranges(dataset, int(config["model"]["latent_dim"]))
    measuring = spec.measured()
    for prop in PROPERTIES:
        if prop.name not in measuring:
            entries[prop.name] = {"label": prop.label, "score": None, "reason": "not requested"}
            continue
        if on_property is not None:
            on_property(measuring.index(prop.name), len(measuring), prop.label.lower())
        log(f"measuring {prop.label.lower()}")
        t0 = time.perf_counter()
        result = MEASURES[prop.name](inputs)
        seconds[prop.name] = round(time.perf_counter() - t0, 3)
        entries[prop.name] = _entry(prop.name, result, references) if isinstance(result, Measured) else {
            "label": prop.label, "score": None, "reason": result}
        log(f"{prop.label.lower()}: {_describe(entries[prop.name])} ({seconds[prop.name]:.1f} s)")

    scores = {name: entry["score"] for name, entry in entries.items()}
    figures.scorecard_radar(scores, folder / SCORECARD_FIGURE, title=_title(config))
    files = [ArtifactFile.of(SCORECARD_FILE, ArtifactKind.METRICS), *figure_files(SCORECARD_FIGURE)]
    for entry in entries.values():
        for name in entry.get("figures", []):
            files += figure_files(name)
    seconds["total"] = round(time.perf_counter() - started, 3)
    scorecard = {
        "format": FORMAT,
        "model_job": spec.model_job,
        "model": config["model"]["kind"],
        "dataset": dataset,
        "latent_dim": int(config["model"]["latent_dim"]),
        "split": spec.split,
        "reference_split": other,
        "spec": spec.to_dict(),
        "samples": {"measured": len(measured), "reference": len(reference)},
        "properties": entries,
        "radar": {"figure": SCORECARD_FIGURE, "scores": scores},
        "seconds": seconds,
    }
    write_json(folder / SCORECARD_FILE, scorecard)
    log(f"scorecard written in {seconds['total']:.1f} s")
    return scorecard, files


def _subset(split: ImageSplit, limit: int, seed: int) -> ImageSplit:
    """``limit`` images drawn at random (seeded), in dataset order: a dataset stored in factor order (sprites)
    would give one shape in its first thousand images."""
    if limit >= len(split):
        return split
    chosen = np.sort(np.random.default_rng([seed, len(split)]).choice(len(split), size=limit, replace=False))
    return ImageSplit(split.dataset, split.split, split.images[chosen], split.labels[chosen], split.files,
                      None if split.factors is None else split.factors[chosen], split.factor_names)


def _entry(name: str, result: Measured, references: dict[str, tuple[float, float]]) -> dict[str, Any]:
    prop = BY_NAME[name]
    values = {k: _rounded(v) for k, v in result.values.items()}
    headline = values.get(prop.headline)
    return {
        "label": prop.label,
        "score": normalised_score(prop, headline),
        "headline": prop.headline,
        "headline_value": headline,
        "direction": METRICS[prop.headline].direction,
        "normalisation": prop.normalisation,
        "metrics": values,
        "directions": {k: METRICS[k].direction for k in values if k in METRICS},
        "samples": result.samples,
        "reference": {k: list(r) for k, r in references.items() if k in values},
        "figures": result.figures,
        **({"notes": result.notes} if result.notes else {}),
        **({} if headline is not None else {"reason": f"{prop.headline} has no finite value on this model"}),
    }


def _rounded(value: float | None) -> float | None:
    """JSON-safe: a metric with no finite value (every interpolation pair degenerate, say) is null."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def _describe(entry: dict[str, Any]) -> str:
    if entry["score"] is None:
        return f"n/a ({entry['reason']})"
    return f"{entry['headline']} {entry['headline_value']:.4g}, score {entry['score']:.3f}"


def _title(config: dict[str, Any]) -> str:
    model = config["model"]
    return f"{model['kind']} on {config['train']['dataset']}, latent {model['latent_dim']}"


# -- the eight properties ----------------------------------------------------------------------------


def compactness(inp: Inputs) -> Measured:
    with torch.no_grad():
        recon = torch.cat([inp.model.reconstruct(part) for part in inp.x.split(ENCODE_CHUNK)])
    test_mse = float(((recon - inp.x) ** 2).mean())
    dim = int(inp.codes.shape[1])
    pca_mse = metrics.pca_reconstruction_mse(inp.x_ref.numpy(), inp.x.numpy(), dim)
    return Measured({
        "test_mse": test_mse, "pca_mse": pca_mse, "pca_mse_ratio": test_mse / pca_mse if pca_mse > 0 else math.inf,
        "active_units": metrics.active_units(inp.codes), "effective_dimension": metrics.effective_dimension(inp.codes),
    }, {"measured": len(inp.x), "pca_fit": len(inp.x_ref)}, notes={"latent_dim": dim})


def structure(inp: Inputs) -> Measured:
    found = metrics.neighbourhood_preservation(inp.x.numpy(), inp.codes, k=NEIGHBOURS)
    samples = {"points": int(found.pop("points", len(inp.x))), "k": NEIGHBOURS}
    return Measured(found, samples)


def disentanglement(inp: Inputs) -> Measured | str:
    if inp.measured.factors is None:
        return (f"{inp.measured.dataset} has no known generative factors; evaluate a model trained on sprites")
    # A factor that takes one value in the fit set has nothing to predict (and no classifier fits one class).
    varied = [j for j in range(inp.reference.factors.shape[1]) if len(np.unique(inp.reference.factors[:, j])) > 1]
    factors, factors_ref = inp.measured.factors[:, varied], inp.reference.factors[:, varied]
    values = {"mig": metrics.mig(inp.codes, factors)}
    dci = metrics.dci(inp.codes_ref, factors_ref, inp.codes, factors, seed=inp.seed)
    values.update({f"dci_{k}": v for k, v in dci.items()})
    values["sap"] = metrics.sap(inp.codes_ref, factors_ref, inp.codes, factors)
    return Measured(values, {"measured": len(factors), "fit": len(factors_ref)},
                    notes={"factors": [inp.measured.factor_names[j] for j in varied], "bins": 20})


def continuity(inp: Inputs) -> Measured:
    rng = inp.rng(4)
    count = min(INTERPOLATION_PAIRS, len(inp.codes) // 2)
    chosen = rng.permutation(len(inp.codes))[:2 * count]
    z = torch.as_tensor(inp.codes[chosen], dtype=torch.float32)
    paths = metrics.interpolation_path(inp.decode, z[:count], z[count:], INTERPOLATION_STEPS)
    found = metrics.path_regularity(paths)
    values = {"path_max_step_ratio": found["max_step_ratio"], "path_energy_ratio": found["energy_ratio"]}
    figures.interpolation_paths(paths[:6].numpy(), inp.shape, inp.folder / INTERPOLATION_FIGURE)
    return Measured(values, {"pairs": int(found["pairs"]), "steps": INTERPOLATION_STEPS,
                                           "degenerate_pairs": int(found.get("degenerate_pairs", 0))},
                    [INTERPOLATION_FIGURE])


def generative(inp: Inputs) -> Measured:
    train = load_split(inp.measured.dataset, "train", inp.data_dir)
    test = load_split(inp.measured.dataset, "test", inp.data_dir)
    judge = load_or_train_judge(train, test, inp.cache_dir, log=inp.log)
    real = judge.features(inp.x.numpy())
    floor = metrics.frechet_distance(judge.features(inp.x_ref.numpy()), real)
    points, source = draw_latents(inp.model, PRIOR_DRAWS, inp.seed, lambda: inp.codes_ref)
    values, probs, images = _judged(inp, judge, points, real)
    values.update({"frechet_floor": floor, "judge_accuracy": judge.test_accuracy})
    drawn_from = inp.model.describe_prior() if source == "prior" else GMM_SOURCE
    if source == "gmm":  # a plain AE: also what a user would naively try, N(0, I), reported apart
        normal = inp.generator(5)
        draws = torch.randn(PRIOR_DRAWS, inp.codes.shape[1], generator=normal).numpy()
        normal_values, _, _ = _judged(inp, judge, draws, real)
        values.update({f"{k}_normal": v for k, v in normal_values.items() if f"{k}_normal" in METRICS})
    figures.judged_samples(images[:40], probs[:40], inp.shape, inp.folder / JUDGED_FIGURE,
                           title=f"Samples from {drawn_from}, as the judge sees them")
    return Measured(values, {"draws": PRIOR_DRAWS, "real": len(inp.x), "floor_reference": len(inp.x_ref)},
                    [JUDGED_FIGURE], notes={"drawn_from": drawn_from, "source": source, "judge": {
                        "dataset": judge.dataset, "classes": judge.n_classes, "test_accuracy": judge.test_accuracy,
                        "data_sha256": judge.data_sha256, "cached": judge.cached,
                        "trained_seconds": judge.trained_seconds}})


def _judged(inp: Inputs, judge: Judge, points: np.ndarray, real_features: np.ndarray
            ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    with torch.no_grad():
        images = inp.decode(torch.as_tensor(points, dtype=torch.float32)).clamp(0, 1).numpy()
    probs = judge.probabilities(images)
    confidence = metrics.mean_confidence(probs)
    coverage = metrics.class_coverage(probs)
    values = {
        "judge_score": confidence * coverage["normalised"],
        "judge_confidence": confidence,
        "class_coverage": coverage["normalised"],
        "classes_seen": coverage["classes_seen"],
        "frechet_distance": metrics.frechet_distance(judge.features(images), real_features),
    }
    return values, probs, images


def separation(inp: Inputs) -> Measured:
    labels, labels_ref = inp.measured.labels, inp.reference.labels
    probe = inp.probe
    return Measured({
        "knn_accuracy": metrics.knn_accuracy(inp.codes_ref, labels_ref, inp.codes, labels, k=KNN),
        "probe_accuracy": metrics.probe_accuracy(probe, inp.codes, labels),
        "silhouette": metrics.silhouette(inp.codes, labels, seed=inp.seed),
    }, {"measured": len(labels), "fit": len(labels_ref), "k": KNN})


def invariance(inp: Inputs) -> Measured:
    images = inp.x.reshape(-1, *inp.shape)
    labels, probe = inp.measured.labels, inp.probe
    clean_accuracy = metrics.probe_accuracy(probe, inp.codes, labels)
    noisy = metrics.gaussian_noise(images, NOISE_SIGMA, inp.generator(7))
    noisy_codes = inp.encode(noisy)
    shifted = [metrics.translate(images, dx, dy) for dx, dy in SHIFTS]
    shifted_codes = [inp.encode(s) for s in shifted]
    noise_shift = metrics.relative_code_shift(inp.codes, noisy_codes, seed=inp.seed)
    translation_shift = float(np.mean([metrics.relative_code_shift(inp.codes, c, seed=inp.seed)
                                       for c in shifted_codes]))
    translated_accuracy = float(np.mean([metrics.probe_accuracy(probe, c, labels) for c in shifted_codes]))
    figures.perturbations(images[0].numpy(), [noisy[0].numpy(), *(s[0].numpy() for s in shifted)],
                          ["clean", f"noise σ={NOISE_SIGMA}", *(f"shift ({dx:+d}, {dy:+d})" for dx, dy in SHIFTS)],
                          inp.folder / INVARIANCE_FIGURE)
    return Measured({
        "code_shift": (noise_shift + translation_shift) / 2,
        "noise_shift": noise_shift,
        "translation_shift": translation_shift,
        "probe_drop_noise": clean_accuracy - metrics.probe_accuracy(probe, noisy_codes, labels),
        "probe_drop_translation": clean_accuracy - translated_accuracy,
    }, {"measured": len(labels), "translations": len(SHIFTS)}, [INVARIANCE_FIGURE],
        notes={"noise_sigma": NOISE_SIGMA, "shifts_px": [list(s) for s in SHIFTS]})


def smoothness(inp: Inputs) -> Measured:
    rng = inp.rng(8)
    count = min(LIPSCHITZ_POINTS, len(inp.codes))
    at_codes = torch.as_tensor(inp.codes[rng.permutation(len(inp.codes))[:count]], dtype=torch.float32)
    at_prior, source = draw_latents(inp.model, count, inp.seed, lambda: inp.codes_ref)
    sigma_codes = metrics.decoder_lipschitz(inp.decode, at_codes, LIPSCHITZ_ITERATIONS, seed=inp.seed)
    sigma_prior = metrics.decoder_lipschitz(inp.decode, torch.as_tensor(at_prior), LIPSCHITZ_ITERATIONS,
                                            seed=inp.seed)
    codes_stats, prior_stats = metrics.summarise(sigma_codes), metrics.summarise(sigma_prior)
    # Scale-free: the roughest places' stretch (95th percentile) against the average stretch from code pairs to
    # image pairs, so models whose codes spread over ±3 and over ±30 compare.
    pairs = rng.integers(0, len(inp.codes), size=(2, len(inp.codes)))
    pairs = pairs[:, pairs[0] != pairs[1]]
    code_spread = float(np.linalg.norm(inp.codes[pairs[0]] - inp.codes[pairs[1]], axis=1).mean())
    x = inp.x.numpy()
    image_spread = float(np.linalg.norm(x[pairs[0]] - x[pairs[1]], axis=1).mean())
    relative = codes_stats["p95"] * code_spread / image_spread if image_spread > 0 else math.inf
    figures.lipschitz_histogram(sigma_codes, sigma_prior, inp.folder / LIPSCHITZ_FIGURE,
                                prior_label="prior draws" if source == "prior" else "mixture draws")
    return Measured({
        "lipschitz_relative": relative,
        "lipschitz_median": codes_stats["median"], "lipschitz_p95": codes_stats["p95"],
        "lipschitz_prior_median": prior_stats["median"], "lipschitz_prior_p95": prior_stats["p95"],
    }, {"codes": count, "prior_draws": count, "power_iterations": LIPSCHITZ_ITERATIONS}, [LIPSCHITZ_FIGURE],
        notes={"code_pair_distance": code_spread, "image_pair_distance": image_spread,
               "prior": inp.model.describe_prior() if source == "prior" else GMM_SOURCE})


MEASURES: dict[str, Callable[[Inputs], Measured | str]] = {
    "compactness": compactness, "structure": structure, "disentanglement": disentanglement,
    "continuity": continuity, "generative": generative, "separation": separation, "invariance": invariance,
    "smoothness": smoothness,
}
