"""The judge: a small CNN classifier per dataset that scores decoded samples.

The scorecard decodes samples from a generative model and asks the judge what
they look like: how confident it is (mean top probability), how many classes
the samples cover, and how far their distribution lies from the real images in
the judge's 128-d penultimate features (a Fréchet distance, as FID does with
Inception, here with a small in-house classifier).

The judge is trained in-process (about 10 s for MNIST on 2 CPU cores, test
accuracy about 0.99) and cached by data checksum:

    <cache_dir>/judges/<dataset>-<checksum[:16]>/
        judge.safetensors   the weights (never pickle)
        judge.json          version, checksum, accuracy, weights_sha256, ...

Each file lands atomically, weights first and json last, so a reader that
finds the json finds the weights it describes. Two workers training at once
write the same bytes (training is deterministic given the seed); should they
ever differ (another torch, another CPU), the reader sees a weights sha256
that does not match and retrains: a cached judge is never trusted unchecked.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from torch import nn
from torch.nn import functional as F

from worker.checkpoint import canonical_safetensors
from worker.data import ImageSplit
from worker.files import write_bytes, write_json

JUDGE_VERSION = 1  # part of the cache key: bump when the architecture or the training changes
FEATURES = 128  # width of the penultimate layer, the space the Fréchet distance is measured in
IMAGE_SHAPE = (28, 28)
WEIGHTS_NAME = "judge.safetensors"
META_NAME = "judge.json"
FORMAT = "latentforge.judge/1"

# Training recipe (JUDGE_VERSION covers it): Adam with a one-cycle schedule.
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 4
BATCH_SIZE = 128
MAX_LR = 3e-3
EVAL_BATCH = 2048

Log = Callable[[str], None]


class JudgeNet(nn.Module):
    """LeNet-like: two 5x5 conv + max-pool stages, then 128 features, then the classes.

    About 80k parameters and 1.1M multiply-adds per image, so an epoch over
    MNIST's 19,690 training images takes a few seconds on two CPU cores.
    """

    def __init__(self, n_classes: int, image_shape: tuple[int, int] = IMAGE_SHAPE, dropout: float = 0.25):
        super().__init__()
        self.n_classes = int(n_classes)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        h, w = self.image_shape
        flat = 32 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.drop1 = nn.Dropout(dropout)
        self.fc = nn.Linear(flat, FEATURES)
        self.drop2 = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURES, self.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate activations (after ReLU); call in eval mode for the judge's features."""
        return F.relu(self.fc(self.drop1(self.conv(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (N, n_classes), for images (N, 1, H, W) in [0, 1]."""
        return self.head(self.drop2(self.features(x)))


def _as_batch(images: np.ndarray | torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """(N, H, W), (N, H*W) or (N, 1, H, W) images, float in [0, 1] or uint8 0..255 -> (N, 1, H, W) float32."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    else:
        x = x.to(torch.float32)
    h, w = image_shape
    if x.ndim < 2 or (len(x) > 0 and x[0].numel() != h * w):
        raise ValueError(f"judge: expected images of {h}x{w} pixels, got an array of shape {tuple(x.shape)}")
    return x.reshape(len(x), 1, h, w)


@dataclass
class Judge:
    """A trained judge, from training or from the cache."""

    net: JudgeNet
    dataset: str
    n_classes: int
    test_accuracy: float
    data_sha256: str
    trained_seconds: float | None  # None when read from the cache
    cached: bool  # True when read from the cache
    path: Path | None  # the cache folder, when there is one

    def _run(self, images: np.ndarray | torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        x = _as_batch(images, self.net.image_shape)
        self.net.eval()
        with torch.no_grad():
            parts = [fn(x[i : i + EVAL_BATCH]).to(torch.float64) for i in range(0, len(x), EVAL_BATCH)]
        if not parts:
            return np.zeros((0, 0), dtype=np.float64)
        return torch.cat(parts).numpy()

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Softmax class probabilities, (N, n_classes) float64; rows sum to 1."""
        out = self._run(images, lambda x: torch.softmax(self.net(x).to(torch.float64), dim=1))
        return out.reshape(len(out), self.n_classes)

    def features(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Penultimate features, (N, 128) float64."""
        out = self._run(images, self.net.features)
        return out.reshape(len(out), FEATURES)

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The most probable class of each image, (N,) int64."""
        return self.probabilities(images).argmax(axis=1).astype(np.int64)


def data_checksum(train: ImageSplit, test: ImageSplit) -> str:
    """sha256 over the dataset name, JUDGE_VERSION and both splits' images and labels (with their shapes)."""
    digest = hashlib.sha256()
    head = {"dataset": train.dataset, "version": JUDGE_VERSION,
            "train": [list(train.images.shape), len(train.labels)],
            "test": [list(test.images.shape), len(test.labels)]}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for split in (train, test):
        digest.update(np.ascontiguousarray(split.images, dtype=np.uint8).tobytes())
        digest.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def _check_pair(train: ImageSplit, test: ImageSplit) -> int:
    """Validate the splits; returns the number of classes."""
    if train.dataset != test.dataset:
        raise ValueError(f"judge: train split is {train.dataset!r} but test split is {test.dataset!r}")
    if train.image_shape != test.image_shape:
        raise ValueError(f"judge: train images are {train.image_shape}, test images {test.image_shape}")
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"judge: {train.dataset} has an empty split ({len(train)} train, {len(test)} test)")
    low = min(int(train.labels.min()), int(test.labels.min()))
    if low < 0:
        raise ValueError(f"judge: {train.dataset} has negative labels")
    return max(int(train.labels.max()), int(test.labels.max())) + 1


def _accuracy(net: JudgeNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(x[i : i + EVAL_BATCH]).argmax(1) == y[i : i + EVAL_BATCH]).sum())
                      for i in range(0, len(x), EVAL_BATCH))
    return correct / len(x)


def train_judge(
    train: ImageSplit,
    test: ImageSplit,
    *,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    log: Log = print,
) -> Judge:
    """Train a judge on ``train`` and measure it on all of ``test``; deterministic given ``seed``.

    The caller's global torch RNG is left as it was (init and dropout draw
    from it, so it is forked and seeded here); shuffling has its own generator.
    """
    n_classes = _check_pair(train, test)
    checksum = data_checksum(train, test)
    x = _as_batch(train.images, train.image_shape)
    y = torch.as_tensor(np.asarray(train.labels, dtype=np.int64))
    x_test = _as_batch(test.images, test.image_shape)
    y_test = torch.as_tensor(np.asarray(test.labels, dtype=np.int64))
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    log(f"judge {train.dataset}: training {epochs} epochs on {len(x)} images, {n_classes} classes,"
        f" {torch.get_num_threads()} threads")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shuffle = torch.Generator().manual_seed(seed)
        net = JudgeNet(n_classes, train.image_shape)
        optimizer = torch.optim.Adam(net.parameters(), lr=MAX_LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR,
                                                       total_steps=max(1, epochs * steps_per_epoch))
        accuracy = 0.0 if epochs > 0 else _accuracy(net, x_test, y_test)
        for epoch in range(1, epochs + 1):
            net.train()
            order = torch.randperm(len(x), generator=shuffle)
            total = 0.0
            for i in range(0, len(x), BATCH_SIZE):
                idx = order[i : i + BATCH_SIZE]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
            accuracy = _accuracy(net, x_test, y_test)
            log(f"judge {train.dataset} epoch {epoch}/{epochs}: train loss {total / len(x):.4f},"
                f" test accuracy {accuracy:.4f} ({time.perf_counter() - start:.1f} s)")
    net.eval()
    return Judge(net=net, dataset=train.dataset, n_classes=n_classes, test_accuracy=float(accuracy),
                 data_sha256=checksum, trained_seconds=round(time.perf_counter() - start, 3),
                 cached=False, path=None)


# -- the cache ------------------------------------------------------------------------------


def judge_folder(cache_dir: str | Path, dataset: str, checksum: str) -> Path:
    return Path(cache_dir) / "judges" / f"{dataset}-{checksum[:16]}"


def _weights_bytes(net: JudgeNet) -> bytes:
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}
    return canonical_safetensors(tensors, {"format": FORMAT, "version": str(JUDGE_VERSION)})


def _load_cached(folder: Path, expected_sha: str) -> Judge | str:
    """The cached judge in ``folder``, or why there is none usable."""
    meta_path, weights_path = folder / META_NAME, folder / WEIGHTS_NAME
    if not meta_path.is_file():
        return f"no {META_NAME} in {folder}"
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{meta_path} is unreadable ({exc})"
    if meta.get("version") != JUDGE_VERSION:
        return f"{meta_path} is judge version {meta.get('version')!r}, this is {JUDGE_VERSION}"
    if meta.get("data_sha256") != expected_sha:
        return f"{meta_path} was trained on other data (sha256 {str(meta.get('data_sha256'))[:16]}...)"
    if not weights_path.is_file():
        return f"{weights_path} is missing"
    try:
        raw = weights_path.read_bytes()
    except OSError as exc:
        return f"{weights_path} is unreadable ({exc})"
    if hashlib.sha256(raw).hexdigest() != meta.get("weights_sha256"):
        return f"{weights_path} does not match the sha256 recorded in {META_NAME}"
    try:
        n_classes = int(meta["n_classes"])
        net = JudgeNet(n_classes)
        net.load_state_dict(safetensors_load(raw))
        judge = Judge(net=net.eval(), dataset=str(meta["dataset"]), n_classes=n_classes,
                      test_accuracy=float(meta["test_accuracy"]), data_sha256=expected_sha,
                      trained_seconds=None, cached=True, path=folder)
    except Exception as exc:  # safetensors and load_state_dict raise various types
        return f"{folder} does not hold a usable judge ({type(exc).__name__}: {exc})"
    return judge


def read_cached_judge(folder: str | Path, expected_sha: str) -> Judge | None:
    """The judge cached in ``folder`` if its json matches (version, data checksum) and its
    weights match the recorded sha256; None when anything is missing, corrupt or mismatched."""
    found = _load_cached(Path(folder), expected_sha)
    return found if isinstance(found, Judge) else None


def write_cached_judge(folder: str | Path, judge: Judge, *, seed: int = DEFAULT_SEED,
                       epochs: int = DEFAULT_EPOCHS) -> Path:
    """Write weights then json into ``folder``, each atomically; raises OSError when it cannot."""
    folder = Path(folder)
    data = _weights_bytes(judge.net)
    write_bytes(folder / WEIGHTS_NAME, data)  # first: a json on disk always has its weights
    write_json(folder / META_NAME, {
        "version": JUDGE_VERSION,
        "dataset": judge.dataset,
        "n_classes": judge.n_classes,
        "data_sha256": judge.data_sha256,
        "test_accuracy": judge.test_accuracy,
        "trained_seconds": judge.trained_seconds,
        "torch": torch.__version__,
        "seed": seed,
        "epochs": epochs,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    })
    return folder


def load_or_train_judge(train: ImageSplit, test: ImageSplit, cache_dir: str | Path | None, *,
                        log: Log = print) -> Judge:
    """The judge for this data: from ``<cache_dir>/judges/`` when a valid one is there, else trained
    (and cached when ``cache_dir`` is writable). ``cache_dir=None`` trains in memory."""
    _check_pair(train, test)
    if cache_dir is None:
        return train_judge(train, test, log=log)
    checksum = data_checksum(train, test)
    folder = judge_folder(cache_dir, train.dataset, checksum)
    found = _load_cached(folder, checksum)
    if isinstance(found, Judge):
        log(f"judge {train.dataset}: read from {folder} (test accuracy {found.test_accuracy:.4f})")
        return found
    log(f"judge {train.dataset}: training, because {found}")
    judge = train_judge(train, test, log=log)
    try:
        write_cached_judge(folder, judge)
    except OSError as exc:
        log(f"judge {train.dataset}: could not cache it in {folder} ({exc}); using it uncached")
        return judge
    judge.path = folder
    return judge
