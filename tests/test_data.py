import gzip
import hashlib
import struct

import numpy as np
import pytest

from worker.data import DatasetError, IMAGES_MAGIC, LABELS_MAGIC, load_split, read_idx

SHA256 = {
    "train-images-idx3-ubyte.gz": "af7b408284bb4e013e50d6b8366d1a860764683916c78dd3cf7adf0e91672373",
    "train-labels-idx1-ubyte.gz": "02eae816f7601595b25ce09124c8c0e610359cc8bf80674bc1e0d13986d8f313",
    "t10k-images-idx3-ubyte.gz": "1f1fac75970ff9e237d7b3f2bc1639cac509d082759e214428ed7d418ed2b698",
    "t10k-labels-idx1-ubyte.gz": "37d2ead84ebe0cdfa59003058f72075cc0c0f29a273e10246f4063364f607365",
}


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_split(folder, images, labels, split="train", compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
    for stem, array in zip(stems, (images, labels)):
        data = idx_bytes(array)
        if compress:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


def test_real_mnist_counts_come_from_headers(mnist_train, mnist_test):
    assert mnist_train.images.shape == (19690, 28, 28)
    assert mnist_train.images.dtype == np.uint8
    assert mnist_test.images.shape == (10000, 28, 28)
    assert mnist_train.labels.shape == (19690,) and mnist_test.labels.shape == (10000,)
    assert np.bincount(mnist_train.labels).tolist() == [1955, 2248, 1901, 2048, 1919, 1738, 1940, 2067, 1894, 1980]
    assert mnist_train.images.mean() == pytest.approx(33.50, abs=0.005)
    assert mnist_test.images.mean() == pytest.approx(33.79, abs=0.005)
    # The standard test split starts 7, 2, 1, 0, 4.
    assert mnist_test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_checksums_recorded(mnist_dir, mnist_train, mnist_test):
    recorded = {**mnist_train.files, **mnist_test.files}
    assert {str(mnist_dir / n): s for n, s in SHA256.items()} == recorded
    for name, sha in SHA256.items():
        assert hashlib.sha256((mnist_dir / name).read_bytes()).hexdigest() == sha


def test_plain_and_gzipped_files_read_the_same(tmp_path, mnist_dir):
    packed = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(plain, LABELS_MAGIC), packed)


def test_fashion_mnist_uses_the_same_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    write_split(tmp_path / "fashion_mnist", images, labels, "train")
    split = load_split("fashion_mnist", "train", tmp_path)
    np.testing.assert_array_equal(split.images, images)
    assert split.labels.tolist() == list(range(7))


def test_fashion_mnist_is_never_read_from_an_mnist_folder(mnist_dir):
    with pytest.raises(DatasetError, match=r"fashion_mnist train split: .*not found"):
        load_split("fashion_mnist", "train", mnist_dir)


def test_torchvision_layout_is_found(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    write_split(tmp_path / "MNIST" / "raw", images, np.zeros(3, np.uint8), "test", compress=False)
    assert len(load_split("mnist", "test", tmp_path)) == 3


def test_missing_files_name_the_file_and_suggest_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_split("mnist", "train", tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert str(tmp_path) in message and "--download" in message


def test_wrong_magic(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    folder = write_split(tmp_path, images, np.zeros(2, np.uint8))
    # Swap the files: labels where images should be.
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(2, np.uint8))))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: wrong magic number 0x00000801, expected 0x00000803"):
        load_split("mnist", "train", folder)


def test_short_data(tmp_path):
    folder = write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: truncated data: header promises 5 items"):
        load_split("mnist", "train", folder)


def test_extra_bytes(tmp_path):
    folder = write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    raw = idx_bytes(np.zeros(5, np.uint8)) + b"\x00\x00"
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: 2 unexpected bytes"):
        load_split("mnist", "train", folder)


def test_truncated_gzip_stream(tmp_path, mnist_dir):
    folder = write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    packed = (mnist_dir / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: corrupt or truncated gzip stream"):
        load_split("mnist", "train", folder)


def test_header_truncated(tmp_path):
    folder = write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", IMAGES_MAGIC, 5)))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: header truncated"):
        load_split("mnist", "train", folder)


def test_count_mismatch_between_images_and_labels(tmp_path):
    folder = write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match=r"holds 5 images but .*train-labels-idx1-ubyte.gz holds 4 labels"):
        load_split("mnist", "train", folder)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_split("cifar", "train", tmp_path)
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_split("mnist", "val", tmp_path)
