"""Pure metric functions for the latent-space scorecard.

Every function takes arrays (or a batched decode function) and returns plain
Python numbers, dicts of them, or NumPy arrays; nothing here touches the job
store, files, or the web. Randomness is always seeded from an argument, so a
metric is a deterministic function of its inputs.

Conventions: images are flattened pixels in [0, 1], shape (N, D); codes are
(N, d); ground-truth factors are integer indices, (N, n_factors); labels (N,).
The disentanglement metrics follow google-research/disentanglement_lib, whose
arrays are transposed ((d, N)); here rows are always points.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.stats
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import trustworthiness
from sklearn.metrics import mutual_info_score, silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

Decode = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------- compactness


def pca_reconstruction_mse(train_x: np.ndarray, test_x: np.ndarray, dim: int) -> float:
    """Linear baseline for a ``dim``-D code: MSE of ``test_x`` after projecting
    onto the top ``dim`` principal components of ``train_x`` and back
    (mean over pixels and images; Pearson 1901 / Eckart–Young optimal linear code)."""
    # A fixed random_state keeps the randomized SVD solver (picked for large
    # inputs) deterministic.
    pca = PCA(n_components=dim, random_state=0).fit(train_x)
    reconstructed = pca.inverse_transform(pca.transform(test_x))
    return float(np.mean((np.asarray(test_x, dtype=np.float64) - reconstructed) ** 2))


def active_units(codes: np.ndarray, threshold: float = 0.01) -> int:
    """Number of code dimensions whose variance over the data, Var_x(E_q[z_i|x]),
    exceeds ``threshold`` (Burda et al. 2016, IWAE §5.2); ``codes`` are posterior means."""
    variances = np.var(np.asarray(codes, dtype=np.float64), axis=0)
    return int(np.sum(variances > threshold))


def effective_dimension(codes: np.ndarray) -> float:
    """Participation ratio of the code covariance eigenvalues, (Σλ)² / Σλ²
    (Gao et al. 2017; Recanatesi et al. 2019): d for isotropic codes, 1 for one
    active direction, 0.0 for constant codes."""
    codes = np.asarray(codes, dtype=np.float64)
    covariance = np.atleast_2d(np.cov(codes, rowvar=False))
    # Round-off can make the smallest eigenvalues slightly negative.
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    denominator = float(np.sum(eigenvalues**2))
    if denominator == 0.0:
        return 0.0
    return float(np.sum(eigenvalues) ** 2 / denominator)


# ------------------------------------------------------ structured organization


def neighbourhood_preservation(x: np.ndarray, codes: np.ndarray, k: int = 10) -> dict:
    """Trustworthiness (no false neighbours in the code space) and continuity
    (no lost neighbours) of the k-NN graph, Euclidean (Venna & Kaski 2001, 2006);
    continuity is trustworthiness with the two spaces swapped. Needs k < N/2;
    memory is O(N²) (about 5 s at N = 5000 on two slow cores)."""
    return {
        "trustworthiness": float(trustworthiness(x, codes, n_neighbors=k)),
        "continuity": float(trustworthiness(codes, x, n_neighbors=k)),
    }


# ------------------------------------------------------------ disentanglement


def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Per-dimension equal-width histogram bin index of each code (N, d) -> (N, d) ints,
    as disentanglement_lib's utils._histogram_discretize."""
    codes = np.asarray(codes, dtype=np.float64)
    discrete = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        # Dropping the last edge puts the maximum into the top bin, not a bin of its own.
        edges = np.histogram(codes[:, i], bins)[1][:-1]
        discrete[:, i] = np.digitize(codes[:, i], edges)
    return discrete


def mutual_information_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(code_i; factor_j) in nats for discrete codes (N, d) and factors (N, F),
    shape (d, F) (disentanglement_lib utils.discrete_mutual_info)."""
    n_codes, n_factors = discrete_codes.shape[1], factors.shape[1]
    matrix = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            matrix[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return matrix


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    """H(factor_j) in nats, shape (F,) (disentanglement_lib utils.discrete_entropy: I(y; y))."""
    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018): mean over factors of
    (largest − second largest I(code_i; factor)) / H(factor), codes histogram-discretised
    (disentanglement_lib mig.py). One code dimension: the second largest is 0.
    Constant factors (H = 0) are left out of the mean; none left gives 0.0."""
    factors = np.asarray(factors)
    mi = mutual_information_matrix(discretize(codes, bins), factors)
    ordered = np.sort(mi, axis=0)[::-1]
    second = ordered[1] if mi.shape[0] > 1 else np.zeros(mi.shape[1])
    entropy = factor_entropies(factors)
    informative = entropy > 0
    if not informative.any():
        return 0.0
    gaps = (ordered[0] - second)[informative] / entropy[informative]
    return float(np.mean(gaps))


# GradientBoostingClassifier() as disentanglement_lib uses it (100 trees of depth
# 3, all rows) takes ~35 s at 4000 points x 5 factors on two slow cores; 50 trees
# on half the rows each take ~8 s with the same test accuracy.
DCI_GBT_PARAMS = {"n_estimators": 50, "max_depth": 3, "subsample": 0.5}


def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    # 1 − H(p)/log K along ``axis``, with disentanglement_lib's +1e-11 so all-zero
    # columns count as uniform instead of NaN.
    return 1.0 - scipy.stats.entropy(p + 1e-11, base=p.shape[axis], axis=axis)


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018),
    as disentanglement_lib dci.py: R = |GBT feature importances| (d, F), one classifier
    per factor; D = Σ_i ρ_i (1 − H_F(R_i·)), C = Σ_j ρ_j (1 − H_d(R_·j)), ρ = relative
    importance; I = mean test accuracy. Deviation from disentanglement_lib's default
    GradientBoostingClassifier(): 50 trees instead of 100, subsample=0.5, seeded (for speed)."""
    n_codes, n_factors = codes_train.shape[1], factors_train.shape[1]
    importance = np.zeros((n_codes, n_factors))
    accuracies = []
    for j in range(n_factors):
        model = GradientBoostingClassifier(random_state=seed, **DCI_GBT_PARAMS)
        model.fit(codes_train, factors_train[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        accuracies.append(np.mean(model.predict(codes_test) == factors_test[:, j]))

    # disentanglement_lib: an all-zero importance matrix weighs codes/factors equally.
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    code_weight = weights.sum(axis=1) / weights.sum()
    factor_weight = weights.sum(axis=0) / weights.sum()
    return {
        "disentanglement": float(np.sum(_normalised_entropy(importance, axis=1) * code_weight)),
        "completeness": float(np.sum(_normalised_entropy(importance, axis=0) * factor_weight)),
        "informativeness": float(np.mean(accuracies)),
    }


def sap(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018), disentanglement_lib
    sap_score.py with continuous_factors=False: S_ij = test accuracy of
    LinearSVC(C=0.01, class_weight="balanced") predicting factor j from code i alone;
    SAP = mean over factors of top-1 − top-2 S_·j (top-2 is 0 with one code dimension).
    LinearSVC is seeded (random_state=0); it takes ~0.2 s at 4000 points, so no subsampling."""
    n_codes, n_factors = codes_train.shape[1], factors_train.shape[1]
    scores = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            classifier.fit(codes_train[:, i : i + 1], factors_train[:, j])
            predicted = classifier.predict(codes_test[:, i : i + 1])
            scores[i, j] = np.mean(predicted == factors_test[:, j])
    if n_codes < 2:
        return float(np.mean(scores[0]))
    ordered = np.sort(scores, axis=0)
    return float(np.mean(ordered[-1] - ordered[-2]))


# ----------------------------------------------- continuity of interpolations


def interpolation_path(decode: Decode, z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoded images along the straight lines z_a → z_b (P, d) at t = 0, 1/steps, …, 1:
    (P, steps + 1, D), endpoints included, under torch.no_grad."""
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=z_a.dtype, device=z_a.device)[None, :, None]
    z = (1 - t) * z_a[:, None, :] + t * z_b[:, None, :]
    pairs = z_a.shape[0]
    with torch.no_grad():
        # One batched decode for all pairs and steps.
        decoded = decode(z.reshape(pairs * (steps + 1), -1))
    return decoded.reshape(pairs, steps + 1, -1)


def path_regularity(paths: np.ndarray | torch.Tensor) -> dict:
    """How evenly a decoded straight-line path (P, T+1, D) moves in pixel space:
    with Δ_t = x_{t+1} − x_t and E = ||x_T − x_0||², max_step_ratio = T²·max_t||Δ_t||²/E
    and energy_ratio = T·Σ_t||Δ_t||²/E; both ≥ 1, = 1 iff the path is a straight line at
    constant speed (Cauchy–Schwarz; a step of a uniform path is E/T², hence T² for the max). Medians over pairs; pairs with E < 1e-12 are left out
    and counted as degenerate (medians are None when every pair is)."""
    if isinstance(paths, torch.Tensor):
        paths = paths.detach().cpu().numpy()
    paths = np.asarray(paths, dtype=np.float64)
    steps = paths.shape[1] - 1
    step_sq = np.sum(np.diff(paths, axis=1) ** 2, axis=2)  # (P, T)
    end_sq = np.sum((paths[:, -1] - paths[:, 0]) ** 2, axis=1)  # (P,)
    valid = end_sq >= 1e-12
    result: dict = {"pairs": int(paths.shape[0]), "degenerate_pairs": int(np.sum(~valid))}
    if not valid.any():
        return {"max_step_ratio": None, "energy_ratio": None, **result}
    max_ratio = steps**2 * step_sq[valid].max(axis=1) / end_sq[valid]
    energy = steps * step_sq[valid].sum(axis=1) / end_sq[valid]
    return {"max_step_ratio": float(np.median(max_ratio)), "energy_ratio": float(np.median(energy)), **result}


# ------------------------------------------------------- generative capability


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) (Heusel et al.
    2017, FID): ||μa − μb||² + Tr(Σa + Σb − 2(ΣaΣb)^½), computed as pytorch-fid does."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))

    with warnings.catch_warnings():
        # Features that never fire make a covariance singular; sqrtm warns, and the result is checked below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        # Singular product: pytorch-fid's fix, a small ridge on both covariances.
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        # ΣaΣb has real non-negative eigenvalues; imaginary parts are round-off.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component: {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real

    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))


def mean_confidence(probs: np.ndarray) -> float:
    """Mean over samples of the classifier's top class probability, max_c p(c|x)
    (the confidence half of the Inception Score idea, Salimans et al. 2016)."""
    return float(np.mean(np.max(np.asarray(probs), axis=1)))


def class_coverage(probs: np.ndarray) -> dict:
    """Diversity of predicted classes (N, C): entropy in nats of the argmax-class
    histogram, that entropy / log C (1 = all classes equally often), and classes seen."""
    probs = np.asarray(probs)
    n_classes = probs.shape[1]
    counts = np.bincount(np.argmax(probs, axis=1), minlength=n_classes)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-np.sum(p * np.log(p)))
    return {
        "entropy": entropy,
        "normalised": entropy / math.log(n_classes) if n_classes > 1 else 0.0,
        "classes_seen": int(np.sum(counts > 0)),
    }


# ------------------------------------------------------------- class separation


def knn_accuracy(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    k: int = 5,
) -> float:
    """Test accuracy of a k-nearest-neighbour classifier on the codes (Euclidean,
    majority vote; Cover & Hart 1967)."""
    model = KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_labels)
    return float(model.score(test_codes, test_labels))


def fit_linear_probe(train_codes: np.ndarray, train_labels: np.ndarray, seed: int = 0) -> Pipeline:
    """Linear probe (Alain & Bengio 2016): standardise, then multinomial logistic regression."""
    # Standardising makes the probe blind to the code's scale, which the
    # autoencoder chose arbitrarily.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    return probe.fit(train_codes, train_labels)


def probe_accuracy(probe: Pipeline, codes: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a fitted probe on (codes, labels)."""
    return float(probe.score(codes, labels))


def silhouette(codes: np.ndarray, labels: np.ndarray, sample_size: int = 2000, seed: int = 0) -> float:
    """Mean silhouette (b − a) / max(a, b) of the codes grouped by label, Euclidean
    (Rousseeuw 1987); on a seeded random subset of ``sample_size`` points when N is larger."""
    if len(codes) > sample_size:
        return float(silhouette_score(codes, labels, sample_size=sample_size, random_state=seed))
    return float(silhouette_score(codes, labels))


# ------------------------------------------------------------ feature invariance


def gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Images (N, H, W) in [0, 1] plus i.i.d. N(0, σ²) pixel noise, clamped to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (images + sigma * noise).clamp(0.0, 1.0)


def translate(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (..., H, W) shifted ``dx`` pixels right and ``dy`` down (negative: left/up);
    pixels shifted in are 0 (background), nothing wraps around."""
    height, width = images.shape[-2:]
    out = torch.zeros_like(images)
    if abs(dx) >= width or abs(dy) >= height:
        return out
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
        ..., max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def relative_code_shift(
    codes: np.ndarray, perturbed_codes: np.ndarray, seed: int = 0, pairs: int | None = None
) -> float:
    """Mean ||E(x') − E(x)|| over points, divided by the mean ||E(x_i) − E(x_j)|| over
    random pairs i ≠ j (default N pairs, numpy Generator(seed)): how far a perturbation
    moves a code relative to the typical distance between codes (0 = invariant).
    Identical codes everywhere: 0.0 when nothing moved, else inf."""
    codes = np.asarray(codes, dtype=np.float64)
    shift = float(np.mean(np.linalg.norm(np.asarray(perturbed_codes, dtype=np.float64) - codes, axis=1)))
    n = len(codes)
    rng = np.random.default_rng(seed)
    count = n if pairs is None else pairs
    first = rng.integers(0, n, count)
    # Drawing from n − 1 values and skipping ``first`` gives a uniform j ≠ i.
    second = rng.integers(0, n - 1, count)
    second = second + (second >= first)
    spread = float(np.mean(np.linalg.norm(codes[first] - codes[second], axis=1)))
    if spread == 0.0:
        return 0.0 if shift == 0.0 else math.inf
    return shift / spread


# -------------------------------------------------------------- latent smoothness


def decoder_lipschitz(decode: Decode, z: torch.Tensor, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """Local Lipschitz constant of the decoder at each row of z (N, d): the spectral norm
    σ_max(J(z)) of its Jacobian, by power iteration on JᵀJ (JVP then VJP, torch.func),
    e.g. Rifai et al. 2011 / Miyato et al. 2018. Returns σ per point, shape (N,).
    ``decode`` must treat rows independently (eval mode: no batch statistics, no dropout).
    Cost: 4–9 s for 1000 points, 30 iterations, a 16-512-784 MLP on two slow cores."""
    # Rows are independent, so the batched Jacobian is block-diagonal and one batched
    # power iteration runs all N per-point iterations at once.
    generator = torch.Generator(device=z.device).manual_seed(seed)
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    tiny = torch.finfo(z.dtype).tiny

    def normalise(u: torch.Tensor) -> torch.Tensor:
        return u / u.flatten(1).norm(dim=1).clamp_min(tiny).reshape(-1, *([1] * (u.dim() - 1)))

    v = normalise(v)
    # torch.func differentiates regardless of grad mode; no_grad only stops autograd
    # from recording a graph to the decoder's parameters (half the time otherwise).
    with torch.no_grad(), warnings.catch_warnings():
        # torch.func's first forward-mode call warns about torch.jit.script, which it uses inside.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # Future- or DeprecationWarning
        # The VJP's linearisation at z is the same every iteration: build it once.
        _, vjp_fn = torch.func.vjp(decode, z)
        for _ in range(iterations):
            _, jv = torch.func.jvp(decode, (z,), (v,))
            (jtjv,) = vjp_fn(jv)
            v = normalise(jtjv)
        _, jv = torch.func.jvp(decode, (z,), (v,))
    return jv.flatten(1).norm(dim=1).cpu().numpy()


def summarise(values: np.ndarray | torch.Tensor) -> dict:
    """Median, 95th percentile and count of finite values (median/p95 None when none)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": None, "p95": None, "n": 0}
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "n": int(values.size)}
