"""Image datasets read from standard IDX files (MNIST, Fashion-MNIST), plus sprites.

The reader takes every count and shape from the IDX headers (the shared copy
of MNIST holds 19,690 training images, not 60,000), accepts gzipped or plain
files, and names the file and the fault when one is missing, truncated or
corrupt. torchvision's downloader is used only when the files are absent and
the caller allows it. "sprites" is generated, never downloaded (worker/sprites.py).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.errors import DatasetError
from shared.settings import load_settings
from worker import sprites
from worker.files import sha256_of

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"

# File stems shared by MNIST and Fashion-MNIST.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Dataset name -> folder name torchvision downloads into (<root>/<name>/raw).
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DATASETS = (*TORCHVISION_FOLDERS, "sprites")
SPLITS = tuple(SPLIT_FILES)


@dataclass(frozen=True)
class ImageSplit:
    """One split of an image dataset, held in memory as uint8."""

    dataset: str
    split: str
    images: np.ndarray  # (N, H, W) uint8, 0..255
    labels: np.ndarray  # (N,) int64
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    # Generative factors of synthetic datasets: (N, len(factor_names)) int64 indices.
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip stream ({exc})") from None


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes; shape comes from its header."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
            f" ({'images' if expected_magic == IMAGES_MAGIC else 'labels'} file)"
        )
    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: header truncated ({len(data)} of {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header_len
    if payload < expected:
        raise DatasetError(
            f"{path}: truncated data: header promises {shape[0]} items of shape"
            f" {tuple(shape[1:])} ({expected} bytes) but the file holds {payload} bytes"
        )
    if payload > expected:
        raise DatasetError(
            f"{path}: {payload - expected} unexpected bytes after the {shape[0]} items"
            " the header declares"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def candidate_dirs(dataset: str, data_dir: Path) -> list[Path]:
    """Folders searched for a dataset's files, in order.

    ``<data_dir>/<dataset>``, torchvision's ``<data_dir>/<Name>/raw``, and for
    MNIST (the default dataset) the data directory itself, so that
    ``LATENTFORGE_DATA_DIR`` may point straight at a folder of MNIST files.
    Fashion-MNIST uses the same file names, so it is never read from there.
    """
    dirs = [data_dir / dataset, data_dir / TORCHVISION_FOLDERS[dataset] / "raw"]
    if dataset == "mnist":
        dirs.append(data_dir)
    return dirs


def _find(stem: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _download(dataset: str, data_dir: Path) -> None:
    from torchvision import datasets as tv_datasets

    cls = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST}[dataset]
    data_dir.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(root=str(data_dir), train=train, download=True)


def load_split(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
) -> ImageSplit:
    """Load ``split`` of ``dataset``; download it first only if allowed."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLIT_FILES:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser().resolve() if data_dir else load_settings().data_dir
    if dataset == "sprites":
        return _sprites_split(split, root)
    dirs = candidate_dirs(dataset, root)
    stems = SPLIT_FILES[split]
    paths = [_find(stem, dirs) for stem in stems]
    if None in paths and download:
        _download(dataset, root)
        paths = [_find(stem, dirs) for stem in stems]
    missing = [stem for stem, path in zip(stems, paths) if path is None]
    if missing:
        looked = ", ".join(str(d) for d in dirs)
        hint = "" if download else " (allow downloading, e.g. `--download`, to fetch them)"
        raise DatasetError(
            f"{dataset} {split} split: {', '.join(m + '[.gz]' for m in missing)} not found"
            f" in {looked}{hint}"
        )
    images_path, labels_path = paths
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds"
            f" {labels.shape[0]} labels"
        )
    return ImageSplit(
        dataset=dataset,
        split=split,
        images=images,
        labels=labels.astype(np.int64),
        files={str(p): sha256_of(p) for p in (images_path, labels_path)},
    )


def _sprites_split(split: str, root: Path) -> ImageSplit:
    """A sprites split; labels are the shape index, so plots colour by shape."""
    images, factors = sprites.load_sprites(root)
    mask = sprites.split_mask(split)
    images, factors = images[mask], factors[mask]  # copies: writable, unlike the shared cache
    return ImageSplit(
        dataset="sprites",
        split=split,
        images=images,
        labels=factors[:, sprites.FACTOR_NAMES.index("shape")].copy(),
        files={f"{sprites.VERSION} (generated)": hashlib.sha256(images.tobytes()).hexdigest()},
        factors=factors,
        factor_names=sprites.FACTOR_NAMES,
    )
