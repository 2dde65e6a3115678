"""Known-answer tests for the scorecard's pure metric functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worker.scorecard import metrics as M


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rotation(d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return q


def blobs(n_per_class: int, n_classes: int = 10, dim: int = 5, seed: int = 0):
    """Unit Gaussians around the same far-apart centres for every seed."""
    centres = 50.0 * rng(1234).standard_normal((n_classes, dim))
    g = rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    g.shuffle(labels)
    return centres[labels] + g.standard_normal((len(labels), dim)), labels


def factors(n: int, cardinalities, seed: int = 0) -> np.ndarray:
    g = rng(seed)
    return np.stack([g.integers(0, c, n) for c in cardinalities], axis=1)


def jittered(f: np.ndarray, seed: int = 0) -> np.ndarray:
    return f + 0.01 * rng(seed).standard_normal(f.shape)


def standardised(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Samples whose sample mean is exactly 0 and sample covariance (ddof=1) exactly I."""
    z = rng(seed).standard_normal((n, d))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    return z @ np.linalg.inv(chol).T


def is_float(value) -> bool:
    return type(value) is float


# --------------------------------------------------------------- compactness


def test_pca_mse_is_zero_inside_the_subspace():
    g = rng(1)
    basis = g.standard_normal((3, 40))
    train = g.standard_normal((300, 3)) @ basis + 0.5
    test = g.standard_normal((100, 3)) @ basis + 0.5
    mse = M.pca_reconstruction_mse(train, test, 3)
    assert is_float(mse) and mse < 1e-10
    assert M.pca_reconstruction_mse(train, test, 2) > 1e-2


def test_pca_mse_is_discarded_variance_over_d():
    g = rng(2)
    x = g.standard_normal((500, 12)) * np.linspace(3.0, 0.1, 12) @ rotation(12, 3)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
    for dim in (1, 4, 11):
        expected = eigenvalues[dim:].sum() / x.shape[1]
        assert M.pca_reconstruction_mse(x, x, dim) == pytest.approx(expected, rel=1e-8)


def test_active_units_counts_variances_above_threshold():
    z = standardised(1000, 6, seed=4)
    # ddof=0 variances: (n-1)/n of these; all far enough from 0.01 not to matter.
    codes = z * np.sqrt([0.0, 0.0025, 0.04, 1.0, 0.0081, 0.0121])
    assert M.active_units(codes) == 3
    assert type(M.active_units(codes)) is int
    assert M.active_units(codes, threshold=0.005) == 4
    assert M.active_units(codes, threshold=0.002) == 5
    assert M.active_units(codes, threshold=2.0) == 0


def test_effective_dimension():
    iso = rng(5).standard_normal((20000, 8))
    assert M.effective_dimension(iso) == pytest.approx(8.0, rel=0.03)
    line = np.outer(rng(6).standard_normal(1000), rng(7).standard_normal(8))
    assert M.effective_dimension(line) == pytest.approx(1.0, abs=1e-6)
    two = np.concatenate([rng(8).standard_normal((20000, 2)), np.zeros((20000, 3))], axis=1)
    assert M.effective_dimension(two) == pytest.approx(2.0, rel=0.03)
    constant = np.ones((100, 4))
    assert M.effective_dimension(constant) == 0.0
    assert is_float(M.effective_dimension(iso))


# ------------------------------------------------------ structured organization


def test_neighbourhood_preservation_isometry_and_shuffle():
    x = rng(9).standard_normal((500, 10))
    codes = x @ rotation(10, 10) + 3.0
    kept = M.neighbourhood_preservation(x, codes, k=10)
    assert kept["trustworthiness"] >= 0.999 and kept["continuity"] >= 0.999
    assert all(is_float(v) for v in kept.values())
    shuffled = M.neighbourhood_preservation(x, codes[rng(11).permutation(500)], k=10)
    assert shuffled["trustworthiness"] < 0.7 and shuffled["continuity"] < 0.7


def test_neighbourhood_preservation_tells_trustworthiness_from_continuity():
    # Projecting a 3-D ball to 2-D tears nothing apart (high continuity)
    # but brings far points together (lower trustworthiness).
    x = rng(12).standard_normal((400, 3))
    scores = M.neighbourhood_preservation(x, x[:, :2], k=10)
    assert scores["continuity"] > scores["trustworthiness"]


# ------------------------------------------------------------- class separation


def test_class_separation_on_separated_clusters():
    x_train, y_train = blobs(50, seed=13)
    x_test, y_test = blobs(20, seed=14)
    assert M.knn_accuracy(x_train, y_train, x_test, y_test, k=5) == 1.0
    probe = M.fit_linear_probe(x_train, y_train)
    assert M.probe_accuracy(probe, x_test, y_test) == 1.0
    assert M.silhouette(x_train, y_train) > 0.8


def test_class_separation_on_noise_is_chance():
    g = rng(15)
    x_train, x_test = g.standard_normal((2000, 5)), g.standard_normal((2000, 5))
    y_train, y_test = g.integers(0, 10, 2000), g.integers(0, 10, 2000)
    knn = M.knn_accuracy(x_train, y_train, x_test, y_test, k=5)
    probe = M.probe_accuracy(M.fit_linear_probe(x_train, y_train), x_test, y_test)
    assert 0.05 < knn < 0.2 and 0.05 < probe < 0.2
    assert is_float(knn) and is_float(probe)
    assert abs(M.silhouette(x_train, y_train)) < 0.1


def test_silhouette_subsamples_deterministically():
    x, y = blobs(300, seed=16)
    first = M.silhouette(x, y, sample_size=500, seed=3)
    assert first == M.silhouette(x, y, sample_size=500, seed=3)
    assert first > 0.8 and is_float(first)


# ------------------------------------------------------------ disentanglement


def test_discretize_matches_histogram_bins():
    codes = np.stack([np.arange(20.0), np.linspace(-1.0, 1.0, 20) ** 3], axis=1)
    discrete = M.discretize(codes, bins=20)
    assert discrete.shape == (20, 2)
    np.testing.assert_array_equal(discrete[:, 0], np.arange(1, 21))  # max lands in the top bin
    assert discrete[:, 1].min() == 1 and discrete[:, 1].max() == 20


def test_mutual_information_of_codes_equal_to_factors():
    f = factors(5000, (5, 8, 10))
    mi = M.mutual_information_matrix(M.discretize(jittered(f)), f)
    entropies = M.factor_entropies(f)
    assert mi.shape == (3, 3)
    np.testing.assert_allclose(np.diag(mi), entropies, rtol=1e-10)
    np.testing.assert_allclose(entropies, np.log([5, 8, 10]), rtol=0.01)
    assert mi[~np.eye(3, dtype=bool)].max() < 0.02


def test_mig():
    f = factors(5000, (5, 8, 10), seed=17)
    perfect = M.mig(jittered(f), f)
    assert perfect >= 0.9 and is_float(perfect)
    # Extra noise dimensions do not hurt MIG; two copies of a factor's code do.
    extra = np.concatenate([jittered(f), rng(18).standard_normal((5000, 2))], axis=1)
    assert M.mig(extra, f) >= 0.9
    assert M.mig(np.concatenate([jittered(f), jittered(f[:, :1], seed=19)], axis=1), f) < 0.7
    assert M.mig(rng(20).standard_normal((5000, 3)), f) <= 0.05
    # One code dimension: the runner-up is 0.
    assert M.mig(jittered(f[:, :1]), f[:, :1]) >= 0.9


def test_dci():
    f_train, f_test = factors(1000, (5, 8, 10), seed=21), factors(500, (5, 8, 10), seed=22)
    good = M.dci(jittered(f_train), f_train, jittered(f_test, seed=1), f_test)
    assert good["disentanglement"] >= 0.9 and good["completeness"] >= 0.9
    assert good["informativeness"] >= 0.95
    assert all(is_float(v) for v in good.values())
    noise = M.dci(rng(23).standard_normal((1000, 3)), f_train, rng(24).standard_normal((500, 3)), f_test)
    assert noise["disentanglement"] <= 0.2 and noise["completeness"] <= 0.2
    assert noise["informativeness"] < 0.3
    # One code carrying both factors: complete, not disentangled.
    f_train, f_test = f_train[:, :2] % 3, f_test[:, :2] % 3
    mixed = lambda f, s: jittered(f[:, :1] * 10 + f[:, 1:2], s)
    entangled = M.dci(
        np.concatenate([mixed(f_train, 0), rng(25).standard_normal((1000, 1))], axis=1),
        f_train,
        np.concatenate([mixed(f_test, 1), rng(26).standard_normal((500, 1))], axis=1),
        f_test,
    )
    assert entangled["informativeness"] >= 0.95
    assert entangled["completeness"] >= 0.8 and entangled["disentanglement"] <= 0.2


def test_sap():
    # A single code dimension can only be split linearly, so SAP's classifier
    # reaches full accuracy on few-valued factors only; 2-4 values keep it high.
    card = (2, 3, 4)
    f_train, f_test = factors(3000, card, seed=27), factors(1000, card, seed=28)
    good = M.sap(jittered(f_train), f_train, jittered(f_test, seed=1), f_test)
    assert good >= 0.5 and is_float(good)
    noise = M.sap(rng(29).standard_normal((3000, 3)), f_train, rng(30).standard_normal((1000, 3)), f_test)
    assert noise <= 0.05
    # Two codes for the same factor: the gap, and so SAP, collapses for it.
    doubled = M.sap(
        np.concatenate([jittered(f_train), jittered(f_train[:, :1], 2)], axis=1),
        f_train,
        np.concatenate([jittered(f_test, 1), jittered(f_test[:, :1], 3)], axis=1),
        f_test,
    )
    assert doubled < good - 0.1


# ----------------------------------------------- continuity of interpolations


def linear_decoder(d: int = 4, out: int = 30, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, d, generator=g, dtype=dtype)
    bias = torch.randn(out, generator=g, dtype=dtype)
    return (lambda z: z @ weight.T + bias), weight


def test_interpolation_path_shape_and_endpoints():
    decode, _ = linear_decoder()
    z_a, z_b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    path = M.interpolation_path(decode, z_a, z_b, steps=5)
    assert path.shape == (3, 6, 30) and not path.requires_grad
    torch.testing.assert_close(path[:, 0], decode(z_a))
    torch.testing.assert_close(path[:, -1], decode(z_b))
    torch.testing.assert_close(path[:, 2], decode(0.6 * z_a + 0.4 * z_b))


def test_path_regularity_of_linear_decoder_is_one():
    decode, _ = linear_decoder()
    g = torch.Generator().manual_seed(31)
    z_a, z_b = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    result = M.path_regularity(M.interpolation_path(decode, z_a, z_b, steps=10))
    assert result["max_step_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert result["energy_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert result["pairs"] == 8 and result["degenerate_pairs"] == 0


def test_path_regularity_of_a_jump():
    direction = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
    decode = lambda z: torch.sigmoid(200.0 * (z[:, :1] - 0.05)) * direction
    z_a = torch.full((4, 2), -1.0, dtype=torch.float64)
    z_b = torch.full((4, 2), 1.0, dtype=torch.float64)
    paths = M.interpolation_path(decode, z_a, z_b, steps=10).numpy()
    result = M.path_regularity(paths)
    assert result["max_step_ratio"] >= 5.0 and result["energy_ratio"] >= 5.0
    # All the change in one of 10 steps: T² · E / E = 100.
    assert result["max_step_ratio"] == pytest.approx(100.0, rel=1e-3)
    assert result["energy_ratio"] == pytest.approx(10.0, rel=1e-3)


def test_path_regularity_skips_degenerate_pairs():
    decode, _ = linear_decoder()
    z = torch.randn(3, 4, dtype=torch.float64)
    z_b = z.clone()
    z_b[0] += 1.0
    result = M.path_regularity(M.interpolation_path(decode, z, z_b, steps=4))
    assert result["pairs"] == 3 and result["degenerate_pairs"] == 2
    assert result["energy_ratio"] == pytest.approx(1.0, abs=1e-9)
    none = M.path_regularity(M.interpolation_path(decode, z, z, steps=4))
    assert none["max_step_ratio"] is None and none["degenerate_pairs"] == 3


# ------------------------------------------------------- generative capability


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = rng(32).standard_normal((2000, 6)) @ rng(33).standard_normal((6, 6))
    scale = np.trace(np.cov(a, rowvar=False))
    distance = M.frechet_distance(a, a)
    assert is_float(distance) and abs(distance) < 1e-6 * scale


def test_frechet_distance_of_a_mean_shift_is_its_squared_norm():
    a = rng(34).standard_normal((2000, 6)) @ rng(35).standard_normal((6, 6))
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.25])
    assert M.frechet_distance(a, a + delta) == pytest.approx(delta @ delta, rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians():
    z = standardised(3000, 4, seed=36)
    sigma_a, sigma_b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 2.0, 1.5, 0.5])
    mu_a, mu_b = np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, -2.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sigma_a - sigma_b) ** 2)
    # Different samples for b, so the cross-covariance plays no part.
    b = standardised(3000, 4, seed=37)
    assert M.frechet_distance(z * sigma_a + mu_a, b * sigma_b + mu_b) == pytest.approx(expected, rel=1e-8)


def test_mean_confidence_and_class_coverage():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert M.mean_confidence(probs) == pytest.approx(0.75)
    coverage = M.class_coverage(probs)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert coverage["entropy"] == pytest.approx(entropy)
    assert coverage["normalised"] == pytest.approx(entropy / math.log(3))
    assert coverage["classes_seen"] == 3 and type(coverage["classes_seen"]) is int
    uniform = M.class_coverage(np.eye(4))
    assert uniform["normalised"] == pytest.approx(1.0) and uniform["classes_seen"] == 4
    collapsed = M.class_coverage(np.tile([0.1, 0.6, 0.3], (5, 1)))
    assert collapsed == {"entropy": 0.0, "normalised": 0.0, "classes_seen": 1}
    assert M.mean_confidence(np.full((3, 4), 0.25)) == pytest.approx(0.25)


# ------------------------------------------------------------ feature invariance


def test_gaussian_noise():
    images = torch.full((200, 28, 28), 0.5)
    noisy = M.gaussian_noise(images, 0.1, torch.Generator().manual_seed(0))
    assert noisy.shape == images.shape
    assert float((noisy - images).std()) == pytest.approx(0.1, rel=0.02)
    assert abs(float(noisy.mean()) - 0.5) < 1e-3
    again = M.gaussian_noise(images, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    wide = M.gaussian_noise(images, 1.0, torch.Generator().manual_seed(1))
    assert float(wide.min()) == 0.0 and float(wide.max()) == 1.0


def test_translate():
    images = torch.arange(1, 13, dtype=torch.float32).reshape(1, 3, 4)
    right = M.translate(images, 1, 0)
    torch.testing.assert_close(right[:, :, 1:], images[:, :, :-1])
    assert torch.all(right[:, :, 0] == 0)
    up_left = M.translate(images, -2, -1)
    torch.testing.assert_close(up_left[:, :2, :2], images[:, 1:, 2:])
    assert torch.all(up_left[:, 2, :] == 0) and torch.all(up_left[:, :, 2:] == 0)
    torch.testing.assert_close(M.translate(images, 0, 0), images)
    assert torch.all(M.translate(images, 4, 0) == 0) and torch.all(M.translate(images, 0, -3) == 0)


def test_relative_code_shift():
    codes = rng(38).standard_normal((100, 5))
    assert M.relative_code_shift(codes, codes.copy()) == 0.0
    # Simplex vertices: every pair of codes is exactly 2·sqrt(2) apart.
    simplex = 2.0 * np.eye(50)
    shift = np.zeros(50)
    shift[:2] = [0.3, 0.4]  # norm 0.5
    ratio = M.relative_code_shift(simplex, simplex + shift, seed=3, pairs=500)
    assert is_float(ratio) and ratio == pytest.approx(0.5 / (2.0 * math.sqrt(2.0)), rel=1e-12)
    moved = codes + 0.1 * rng(39).standard_normal((100, 5))
    assert M.relative_code_shift(codes, moved, seed=4) == M.relative_code_shift(codes, moved, seed=4)


# -------------------------------------------------------------- latent smoothness


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lipschitz_of_a_linear_decoder_is_its_top_singular_value(dtype):
    d, out = 6, 40
    u, _ = torch.linalg.qr(torch.randn(out, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    singular = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.1], dtype=torch.float64)
    weight = (u * singular) @ v.T
    weight, bias = weight.to(dtype), torch.randn(out, dtype=dtype)
    z = torch.randn(16, d, dtype=dtype)
    sigma = M.decoder_lipschitz(lambda z: z @ weight.T + bias, z)
    assert sigma.shape == (16,)
    np.testing.assert_allclose(sigma, 3.0, rtol=1e-4)


def test_lipschitz_of_a_scaled_tanh():
    # decode(z) = 2·tanh(z): J = 2·diag(sech²(z)), so σ = 2·max_i sech²(z_i).
    z = torch.tensor([[0.0, 1.0, 2.0], [0.5, -1.5, 3.0], [1.0, 1.2, -2.0]], dtype=torch.float64)
    sigma = M.decoder_lipschitz(lambda z: 2.0 * torch.tanh(z), z, iterations=50)
    expected = (2.0 / torch.cosh(z) ** 2).max(dim=1).values.numpy()
    np.testing.assert_allclose(sigma, expected, rtol=1e-6)


def test_lipschitz_of_an_image_decoder_with_rows_independent():
    # A per-row decoder returning image-shaped output; rows scale differently.
    weight = torch.randn(28 * 28, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    decode = lambda z: torch.sigmoid(z @ weight.T).reshape(-1, 1, 28, 28)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sigma = M.decoder_lipschitz(decode, z, iterations=100)
    s = torch.sigmoid(z @ weight.T)
    jacobians = (s * (1 - s))[:, :, None] * weight  # (5, 784, 2)
    np.testing.assert_allclose(sigma, torch.linalg.matrix_norm(jacobians, 2).numpy(), rtol=1e-6)


def test_summarise():
    summary = M.summarise(np.arange(1.0, 101.0))
    assert summary == {"median": 50.5, "p95": pytest.approx(95.05), "n": 100}
    assert is_float(summary["median"]) and type(summary["n"]) is int
    assert M.summarise(torch.tensor([1.0, float("nan"), 3.0]))["n"] == 2
    assert M.summarise([]) == {"median": None, "p95": None, "n": 0}
