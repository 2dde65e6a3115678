"""Sprites: a deterministic synthetic image dataset with known generative factors.

The idea is dSprites (Matthey et al. 2017, https://github.com/deepmind/dsprites-dataset),
sized for the 28x28 MLP autoencoders: each image is one white shape on black,
and every combination of five factors appears exactly once:

    shape        3   square, ellipse, heart
    scale        6   0.5 .. 1.0 of the largest size          (SCALES)
    orientation 10   0, 9, .., 81 degrees, counter-clockwise (ORIENTATIONS_DEG)
    pos_x       14   shape centre 7 .. 20 px from the left   (POSITIONS_PX)
    pos_y       14   shape centre 7 .. 20 px from the top    (POSITIONS_PX)

3 * 6 * 10 * 14 * 14 = 35,280 uint8 images of 28x28, in row-major factor order
(shape slowest, pos_y fastest), so image ``i`` has factor indices
``np.unravel_index(i, FACTOR_SIZES)``. ``factors`` holds those integer indices;
the module constants above turn them into real values.

Orientation covers only a quarter turn: the square looks the same after 90
degrees and the ellipse after 180, so over a wider range two different
orientation values would give the same image and the factor could not be
recovered from the pixels. Over [0, 90) every value gives a different image
for every shape (the tests check that all 35,280 images are distinct).

Each (shape, scale, orientation) glyph is drawn once in a 14x14 box,
anti-aliased by 4x4 supersampling (grey = covered fraction * 255, rounded), and
then copied at whole-pixel offsets 0..13 into the 28x28 canvas, so positions
are exact one-pixel steps and a shifted glyph is bit-for-bit the same glyph.
The largest scale fits the box at every orientation: every shape lies inside
a disc of radius 7 px around the box centre.

Split (fixed): an image whose factor indices sum to a multiple of 7 is test
(5,040 images, one in seven), the rest train (30,240). Why not "every 7th
index": pos_y varies fastest and has 14 = 2 * 7 values, so index % 7 == pos_y
% 7 and the test split would be exactly two y positions that training never
sees. With the sum, every value of every factor appears in both splits.

Nothing is downloaded. ``generate()`` builds the arrays in about 0.1 s;
``load_sprites(data_dir)`` also keeps a checksummed copy in
``<data_dir>/sprites/sprites-v1.npz`` when that folder is writable, and falls
back to generating in memory when it is not (e.g. a read-only shared folder).
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from worker.files import atomic_path, write_bytes

VERSION = "sprites-v1"  # bump when the images change, so old caches are not read
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)  # fraction of the largest size (radius 7 px)
ORIENTATIONS_DEG = np.arange(10) * 9.0  # counter-clockwise; see the docstring for why < 90
GLYPH_SIZE = 14  # the box each glyph is drawn in, in pixels
IMAGE_SIZE = 28
N_POSITIONS = IMAGE_SIZE - GLYPH_SIZE  # offsets 0..13 keep the box inside the canvas
POSITIONS_PX = np.arange(N_POSITIONS) + GLYPH_SIZE / 2  # shape centre, in pixels from the edge
FACTOR_SIZES = (len(SHAPES), len(SCALES), len(ORIENTATIONS_DEG), N_POSITIONS, N_POSITIONS)
N_IMAGES = int(np.prod(FACTOR_SIZES))  # 35,280
SUPERSAMPLE = 4  # 4x4 sub-pixels per pixel: 17 grey levels along an edge
TEST_EVERY = 7  # sum of factor indices % 7 == 0 -> test
SPLITS = ("train", "test")

ELLIPSE_MINOR = 0.6  # minor/major axis ratio; the major axis is horizontal at 0 degrees
# The heart curve (x^2 + y^2 - 1)^3 = x^2 y^3 spans x in [-1.14, 1.14], y in
# [-1, 1.24]; its smallest enclosing circle is centred at (0, 0.25) with radius
# 1.25 (found numerically), so this maps it into the unit disc, tip downwards.
HEART_CENTRE_Y = 0.25
HEART_RADIUS = 1.25


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (x right, y up) of the unit disc lie inside the upright shape."""
    if shape == "square":  # corners on the unit circle
        return np.maximum(np.abs(x), np.abs(y)) <= np.sqrt(0.5)
    if shape == "ellipse":
        return x**2 + (y / ELLIPSE_MINOR) ** 2 <= 1.0
    if shape == "heart":
        hx, hy = x * HEART_RADIUS, y * HEART_RADIUS + HEART_CENTRE_Y
        return (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0
    raise ValueError(f"unknown shape {shape!r}")


def render_glyphs(box: int = GLYPH_SIZE) -> np.ndarray:
    """Every (shape, scale, orientation) glyph centred in a ``box`` x ``box`` square.

    Returns uint8 (3, 6, 10, box, box). ``box`` larger than 14 is only for
    checking that the largest glyphs fit the 14-pixel box at every angle.
    """
    n = box * SUPERSAMPLE
    # Sub-pixel centres relative to the box centre, in pixels; v grows downwards.
    offsets = (np.arange(n) + 0.5) / SUPERSAMPLE - box / 2
    u = offsets[None, :]  # columns
    w = -offsets[:, None]  # rows, flipped so that y points up
    theta = np.deg2rad(ORIENTATIONS_DEG)[:, None, None]
    # Rotating the shape by +theta = sampling it at points rotated by -theta.
    x = np.cos(theta) * u + np.sin(theta) * w  # (10, n, n)
    y = -np.sin(theta) * u + np.cos(theta) * w
    radius = (SCALES * GLYPH_SIZE / 2)[:, None, None, None]  # (6, 1, 1, 1)
    x, y = x[None] / radius, y[None] / radius  # (6, 10, n, n), unit-disc coordinates
    covered = np.stack([_inside(shape, x, y) for shape in SHAPES])  # (3, 6, 10, n, n)
    counts = covered.reshape(*covered.shape[:3], box, SUPERSAMPLE, box, SUPERSAMPLE).sum(axis=(4, 6))
    # Integer counts make the rounding exact: no float ties decide a grey level.
    return np.rint(counts * (255 / SUPERSAMPLE**2)).astype(np.uint8)


def generate() -> tuple[np.ndarray, np.ndarray]:
    """Build the dataset from scratch: (images (35280, 28, 28) uint8, factors (35280, 5) int64).

    Pure and deterministic; no caching, fresh arrays on every call.
    """
    glyphs = render_glyphs()  # (3, 6, 10, 14, 14)
    lead = glyphs.shape[:3]
    # Place by slices over the 14 offsets per axis (28 copies), not per image.
    rows = np.zeros((*lead, N_POSITIONS, GLYPH_SIZE, IMAGE_SIZE), np.uint8)  # (.., pos_x, 14, 28)
    for px in range(N_POSITIONS):
        rows[..., px, :, px : px + GLYPH_SIZE] = glyphs
    images = np.zeros((*lead, N_POSITIONS, N_POSITIONS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for py in range(N_POSITIONS):
        images[..., py, py : py + GLYPH_SIZE, :] = rows
    factors = np.indices(FACTOR_SIZES, dtype=np.int64).reshape(len(FACTOR_SIZES), -1).T
    return images.reshape(N_IMAGES, IMAGE_SIZE, IMAGE_SIZE), np.ascontiguousarray(factors)


def checksum(images: np.ndarray, factors: np.ndarray) -> str:
    """sha256 hex of the images' bytes followed by the factors' bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(images, np.uint8).tobytes())
    digest.update(np.ascontiguousarray(factors, np.int64).tobytes())
    return digest.hexdigest()


def cache_paths(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(``<data_dir>/sprites/sprites-v1.npz``, its ``.sha256`` file)."""
    folder = Path(data_dir) / "sprites"
    return folder / f"{VERSION}.npz", folder / f"{VERSION}.sha256"


def _read_cache(npz_path: Path, sum_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays if both files are there and agree with each other, else None."""
    try:
        expected = sum_path.read_text().strip()
        with np.load(npz_path, allow_pickle=False) as archive:
            images, factors = archive["images"], archive["factors"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # missing, unreadable or not an npz: rebuild it
    if (
        images.shape != (N_IMAGES, IMAGE_SIZE, IMAGE_SIZE)
        or images.dtype != np.uint8
        or factors.shape != (N_IMAGES, len(FACTOR_NAMES))
        or factors.dtype != np.int64
        or checksum(images, factors) != expected
    ):
        return None
    return images, factors


def load_cached(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """Read the on-disk cache, or build it; returns (images, factors, how).

    ``how`` is "read" (a verified cache), "written" (generated and saved),
    "rewritten" (the cache failed its checksum and was replaced) or "memory"
    (generated; the folder is not writable, which is not an error). Not cached
    in-process: each call touches the disk (see ``load_sprites``).
    """
    npz_path, sum_path = cache_paths(data_dir)
    cached = _read_cache(npz_path, sum_path)
    if cached is not None:
        return (*cached, "read")
    existed = npz_path.exists() or sum_path.exists()
    images, factors = generate()
    try:
        # npz first, checksum second: a reader that sees the new npz with the old
        # checksum just finds a mismatch and regenerates, it never trusts bad data.
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=images, factors=factors)  # a file object: savez adds no suffix
        write_bytes(sum_path, (checksum(images, factors) + "\n").encode())
    except OSError:  # read-only folder, or a path through a regular file
        return images, factors, "memory"
    return images, factors, "rewritten" if existed else "written"


@functools.lru_cache(maxsize=4)
def _load(root: str | None) -> tuple[np.ndarray, np.ndarray]:
    images, factors = generate() if root is None else load_cached(root)[:2]
    # Shared by every caller in the process, so nobody may change them in place.
    images.setflags(write=False)
    factors.setflags(write=False)
    return images, factors


def load_sprites(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset, (images, factors), read-only and built once per process.

    With a ``data_dir`` the on-disk cache is used as ``load_cached`` describes;
    with None it is generated in memory.
    """
    return _load(None if data_dir is None else str(Path(data_dir).expanduser().resolve()))


def split_mask(split: str) -> np.ndarray:
    """Boolean mask over the 35,280 images: factor indices summing to a multiple of 7 are test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    indices = np.indices(FACTOR_SIZES).reshape(len(FACTOR_SIZES), -1)  # row-major, as the images
    is_test = indices.sum(axis=0) % TEST_EVERY == 0
    return is_test if split == "test" else ~is_test
