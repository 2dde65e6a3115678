"""The generated sprites dataset: content, split, on-disk cache, and that a model learns it."""

import hashlib
import os
import time

import numpy as np
import pytest

from worker import sprites
from worker.data import DATASETS, DatasetError, load_split


@pytest.fixture(scope="module")
def generated():
    start = time.perf_counter()
    images, factors = sprites.generate()
    print(f"\nsprites.generate(): {time.perf_counter() - start:.3f} s")  # measured, not asserted
    return images, factors


def test_generation_is_deterministic(generated):
    again = sprites.generate()  # a second, independent build: generate() caches nothing
    assert again[0] is not generated[0]
    assert sprites.checksum(*again) == sprites.checksum(*generated)


def test_shapes_dtypes_and_every_factor_combination_once(generated):
    images, factors = generated
    assert images.shape == (35280, 28, 28) and images.dtype == np.uint8
    assert factors.shape == (35280, 5) and factors.dtype == np.int64
    assert sprites.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert sprites.FACTOR_SIZES == (3, 6, 10, 14, 14)
    # Row-major order, shape slowest and pos_y fastest.
    expected = np.stack(np.unravel_index(np.arange(35280), sprites.FACTOR_SIZES), axis=1)
    np.testing.assert_array_equal(factors, expected)
    assert len({tuple(row) for row in factors.tolist()}) == 35280
    assert images.max() == 255 and images.min() == 0


def test_real_factor_values():
    assert sprites.SHAPES == ("square", "ellipse", "heart")
    np.testing.assert_allclose(sprites.SCALES, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(sprites.ORIENTATIONS_DEG, np.arange(0, 90, 9))
    np.testing.assert_allclose(sprites.POSITIONS_PX, np.arange(7, 21))


def test_all_images_are_distinct(generated):
    # Distinct images => any two values of any factor give different images.
    images, _ = generated
    digests = {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images}
    assert len(digests) == 35280


def test_glyphs_fit_their_box_and_move_in_exact_pixel_steps(generated):
    images, factors = generated
    # Drawn in a 16-pixel box, the largest glyphs leave the outer 1-pixel ring empty
    # at every orientation, so the 14-pixel box clips nothing.
    big = sprites.render_glyphs(16)
    assert big[..., 0, :].max() == 0 and big[..., -1, :].max() == 0
    assert big[..., :, 0].max() == 0 and big[..., :, -1].max() == 0
    np.testing.assert_array_equal(big[..., 1:15, 1:15], sprites.render_glyphs())
    # The largest scale actually uses the box: some glyph touches each edge.
    largest = sprites.render_glyphs()[:, -1]
    assert largest[..., 0, :].max() > 0 and largest[..., :, -1].max() > 0
    # Smallest scale is still a shape, about half the largest (ink ~ a quarter).
    ink = sprites.render_glyphs().astype(np.int64).sum(axis=(-1, -2))  # (3, 6, 10)
    ratio = ink[:, 0] / ink[:, -1]
    assert np.all((ratio > 0.2) & (ratio < 0.3))
    # Image (s, c, o, x, y) is the glyph pasted with its top-left corner at (row y, col x).
    glyphs = sprites.render_glyphs()
    for i in (0, 1, 14, 12345, 35279):
        s, c, o, x, y = factors[i]
        canvas = np.zeros((28, 28), np.uint8)
        canvas[y : y + 14, x : x + 14] = glyphs[s, c, o]
        np.testing.assert_array_equal(images[i], canvas)


def test_split_sizes_and_membership(generated):
    _, factors = generated
    test, train = sprites.split_mask("test"), sprites.split_mask("train")
    assert test.sum() == 5040 and train.sum() == 30240
    np.testing.assert_array_equal(test, factors.sum(axis=1) % 7 == 0)
    assert not np.any(test & train)
    # Every value of every factor is seen in training and tested.
    for column, size in enumerate(sprites.FACTOR_SIZES):
        assert set(factors[test, column]) == set(factors[train, column]) == set(range(size))
    with pytest.raises(ValueError, match="unknown split"):
        sprites.split_mask("val")


def test_load_split_sprites(tmp_path, generated):
    images, factors = generated
    in_test = factors.sum(axis=1) % 7 == 0
    for split, n, keep in (("train", 30240, ~in_test), ("test", 5040, in_test)):
        part = load_split("sprites", split, tmp_path)
        assert part.dataset == "sprites" and part.split == split and len(part) == n
        assert part.image_shape == (28, 28)
        np.testing.assert_array_equal(part.images, images[keep])
        np.testing.assert_array_equal(part.factors, factors[keep])
        np.testing.assert_array_equal(part.labels, factors[keep, 0])
        assert part.labels.dtype == np.int64 and part.factors.dtype == np.int64
        assert part.factor_names == sprites.FACTOR_NAMES
        assert part.files == {"sprites-v1 (generated)": hashlib.sha256(images[keep].tobytes()).hexdigest()}
        assert part.images.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert "sprites" in DATASETS
    with pytest.raises(DatasetError, match="choose one of mnist, fashion_mnist, sprites"):
        load_split("cifar", "train", tmp_path)


def test_mnist_split_has_no_factors(mnist_test):
    assert mnist_test.factors is None and mnist_test.factor_names == ()


def test_cache_roundtrip_and_corruption(tmp_path, generated):
    reference = sprites.checksum(*generated)
    npz_path, sum_path = sprites.cache_paths(tmp_path)
    assert npz_path == tmp_path / "sprites" / "sprites-v1.npz"

    images, factors, how = sprites.load_cached(tmp_path)
    assert how == "written" and npz_path.is_file() and sum_path.is_file()
    assert sum_path.read_text().strip() == reference == sprites.checksum(images, factors)
    assert not list(npz_path.parent.glob(".*.tmp"))  # atomic writes leave no temp files

    images, factors, how = sprites.load_cached(tmp_path)
    assert how == "read" and sprites.checksum(images, factors) == reference

    # Flip one image byte inside the stored array: detected, regenerated, rewritten.
    raw = bytearray(npz_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz_path.write_bytes(bytes(raw))
    images, factors, how = sprites.load_cached(tmp_path)
    assert how == "rewritten" and sprites.checksum(images, factors) == reference
    assert sprites.load_cached(tmp_path)[2] == "read"

    # A valid npz of other arrays fails the checksum too.
    with open(npz_path, "wb") as fh:
        np.savez(fh, images=np.zeros((35280, 28, 28), np.uint8), factors=factors)
    assert sprites.load_cached(tmp_path)[2] == "rewritten"

    # So do a wrong checksum file and a missing one.
    sum_path.write_text("0" * 64 + "\n")
    assert sprites.load_cached(tmp_path)[2] == "rewritten"
    sum_path.unlink()
    assert sprites.load_cached(tmp_path)[2] == "rewritten"
    assert sprites.load_cached(tmp_path)[2] == "read"


def test_unwritable_data_dir_generates_in_memory(tmp_path, generated):
    reference = sprites.checksum(*generated)
    # chmod cannot stop root, so make mkdir fail instead: the data dir's parent is a file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file\n")
    data_dir = blocker / "data"
    images, factors, how = sprites.load_cached(data_dir)
    assert how == "memory" and sprites.checksum(images, factors) == reference
    assert len(load_split("sprites", "test", data_dir)) == 5040
    if os.geteuid() != 0:  # also a genuinely read-only folder, where chmod works
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        try:
            assert sprites.load_cached(readonly)[2] == "memory"
            assert not (readonly / "sprites").exists()
        finally:
            readonly.chmod(0o755)


def test_load_sprites_is_cached_in_process_and_read_only(tmp_path):
    first = sprites.load_sprites(tmp_path)
    assert sprites.load_sprites(tmp_path)[0] is first[0]
    assert not first[0].flags.writeable and not first[1].flags.writeable
    in_memory = sprites.load_sprites()  # no data dir: never touches the disk
    assert sprites.checksum(*in_memory) == sprites.checksum(*first)


def test_tiny_autoencoder_learns_sprites(tmp_path):
    import torch

    from worker.models import AutoEncoder, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = load_split("sprites", "train", tmp_path)
    x = torch.from_numpy(train.images).reshape(len(train), -1).float().div_(255)
    model = AutoEncoder(ModelConfig(kind="ae", input_shape=(28, 28), latent_dim=2, hidden=(32,)))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def mse() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x).reconstruction, x).item()

    before = mse()
    for _ in range(3):
        for batch in torch.randperm(len(x)).split(256):
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]).reconstruction, x[batch])
            loss.backward()
            optimiser.step()
    after = mse()
    print(f"\nsprites AE mse: {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before
