"""The scorecard's judge: trained once on real MNIST (about 10 s), then cached and checked."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from worker.scorecard.judge import (
    FEATURES,
    JUDGE_VERSION,
    META_NAME,
    WEIGHTS_NAME,
    Judge,
    data_checksum,
    judge_folder,
    load_or_train_judge,
    read_cached_judge,
)


@pytest.fixture(scope="module")
def trained(mnist_train, mnist_test, tmp_path_factory):
    """The MNIST judge, trained once into a fresh cache dir: (judge, cache_dir, log lines)."""
    cache = tmp_path_factory.mktemp("judge-cache")
    lines: list[str] = []
    judge = load_or_train_judge(mnist_train, mnist_test, cache, log=lines.append)
    return judge, cache, lines


@pytest.mark.slow
def test_trained_judge_is_accurate_and_cached(trained, mnist_test):
    judge, cache, lines = trained
    assert not judge.cached and judge.trained_seconds is not None and judge.trained_seconds > 0
    assert judge.dataset == "mnist" and judge.n_classes == 10
    assert judge.test_accuracy >= 0.98, lines
    # the recorded accuracy is the real one on all 10,000 test images
    assert np.mean(judge.predict(mnist_test.images) == mnist_test.labels) == pytest.approx(judge.test_accuracy)
    assert judge.path == judge_folder(cache, "mnist", judge.data_sha256)
    meta = json.loads((judge.path / META_NAME).read_text())
    assert meta["version"] == JUDGE_VERSION
    assert meta["test_accuracy"] == judge.test_accuracy
    assert meta["data_sha256"] == judge.data_sha256
    assert meta["n_classes"] == 10 and meta["torch"] == torch.__version__
    assert judge.path.name == f"mnist-{judge.data_sha256[:16]}"
    assert any("epoch" in line and "test accuracy" in line for line in lines)


@pytest.mark.slow
def test_second_load_reads_the_cache(trained, mnist_train, mnist_test):
    judge, cache, _ = trained
    meta_path = judge.path / META_NAME
    before = meta_path.stat().st_mtime_ns
    lines: list[str] = []
    start = time.perf_counter()
    again = load_or_train_judge(mnist_train, mnist_test, cache, log=lines.append)
    elapsed = time.perf_counter() - start
    assert again.cached and again.trained_seconds is None
    assert again.test_accuracy == judge.test_accuracy and again.path == judge.path
    assert meta_path.stat().st_mtime_ns == before, "the cache was rewritten"
    assert any("read from" in line for line in lines), lines
    assert not any("epoch" in line for line in lines), f"it retrained ({elapsed:.1f} s): {lines}"
    sample = mnist_test.images[:100]
    np.testing.assert_array_equal(again.probabilities(sample), judge.probabilities(sample))


@pytest.mark.slow
def test_corrupt_or_mismatched_cache_is_rejected(trained, tmp_path):
    judge, _, _ = trained
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in (WEIGHTS_NAME, META_NAME):
        (folder / name).write_bytes((judge.path / name).read_bytes())
    assert isinstance(read_cached_judge(folder, judge.data_sha256), Judge)
    assert read_cached_judge(folder, "0" * 64) is None  # other data

    raw = bytearray((folder / WEIGHTS_NAME).read_bytes())
    raw[-20:-10] = bytes(b ^ 0xFF for b in raw[-20:-10])  # flip bytes inside a tensor
    (folder / WEIGHTS_NAME).write_bytes(bytes(raw))
    assert read_cached_judge(folder, judge.data_sha256) is None

    (folder / WEIGHTS_NAME).write_bytes((judge.path / WEIGHTS_NAME).read_bytes())
    meta = json.loads((folder / META_NAME).read_text())
    (folder / META_NAME).write_text(json.dumps({**meta, "version": JUDGE_VERSION + 1}))
    assert read_cached_judge(folder, judge.data_sha256) is None
    (folder / META_NAME).write_text("{not json")
    assert read_cached_judge(folder, judge.data_sha256) is None
    (folder / META_NAME).unlink()
    assert read_cached_judge(folder, judge.data_sha256) is None


@pytest.mark.slow
def test_probabilities_and_features(trained, mnist_test):
    judge, _, _ = trained
    images = mnist_test.images[:300]
    as_float = images.astype(np.float32) / 255.0
    probs = judge.probabilities(images)
    assert probs.shape == (300, 10) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # uint8, (N, 28, 28) floats, flat (N, 784) floats and tensors are the same images
    np.testing.assert_allclose(judge.probabilities(as_float.reshape(300, 784)), probs, atol=1e-6)
    np.testing.assert_allclose(judge.probabilities(torch.from_numpy(as_float)), probs, atol=1e-6)
    feats = judge.features(as_float)
    assert feats.shape == (300, FEATURES) and feats.dtype == np.float64
    assert (feats >= 0).all() and feats.std(axis=0).max() > 0
    assert judge.features(as_float[:0]).shape == (0, FEATURES)
    with pytest.raises(ValueError):
        judge.probabilities(np.zeros((3, 10, 10), dtype=np.float32))


def test_checksum_is_deterministic_and_sensitive(mnist_train, mnist_test):

    first = data_checksum(mnist_train, mnist_test)
    assert first == data_checksum(mnist_train, mnist_test) and len(first) == 64
    labels = mnist_test.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert data_checksum(mnist_train, replace(mnist_test, labels=labels)) != first
    assert data_checksum(replace(mnist_train, dataset="fashion_mnist"), mnist_test) != first


def test_unwritable_cache_still_gives_a_judge(mnist_train, mnist_test, tmp_path):
    """The caching around a real (tiny, so quick) training: a cache path that cannot be a folder, none, and one that
    works and is then read back without training again."""
    train = replace(mnist_train, images=mnist_train.images[:600], labels=mnist_train.labels[:600])
    test = replace(mnist_test, images=mnist_test.images[:200], labels=mnist_test.labels[:200])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    lines: list[str] = []
    got = load_or_train_judge(train, test, blocker, log=lines.append)
    assert got.path is None and not got.cached and got.trained_seconds is not None
    assert any("could not cache" in line for line in lines)
    assert load_or_train_judge(train, test, None, log=lines.append).path is None

    # A writable folder: written, then read back identically without training.
    made = load_or_train_judge(train, test, tmp_path / "cache", log=lines.append)
    assert made.path is not None and (made.path / WEIGHTS_NAME).is_file() and not made.cached
    lines.clear()
    back = load_or_train_judge(train, test, tmp_path / "cache", log=lines.append)
    assert back.cached and back.trained_seconds is None and back.test_accuracy == made.test_accuracy
    assert not any("epoch" in line for line in lines), lines
    x = mnist_train.images[:5]
    np.testing.assert_array_equal(back.probabilities(x), made.probabilities(x))
