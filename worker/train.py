"""The training loop, read top to bottom.

Speed comes from keeping the whole dataset on the device as one float tensor
and cutting batches by index: no DataLoader, no per-sample Python work, no PIL.
Reproducibility comes from drawing random numbers exactly as the seed notebook
does, so the ``seed`` preset gives the notebook's losses epoch for epoch:

* ``random``, ``numpy`` and ``torch`` are seeded, then the model is built on
  the CPU (so its initialisation consumes the global generator as the
  notebook's ``AutoEncoder()`` does) and only then moved to the device;
* every epoch draws its order the way a new ``DataLoader(shuffle=True)``
  iterator does: first the iterator's base seed, then the sampler's own seed,
  which seeds a fresh generator for ``randperm`` (see
  :func:`dataloader_permutation`);
* the printed training loss is the mean of the per-batch losses, the last
  (partial) batch included, as the notebook prints it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import TrainingError
from shared.specs import TrainSpec
from worker.data import ImageSplit
from worker.models import ModelConfig, build_model

EVAL_BATCH = 256  # test loss: mean over batches of this size, like a test DataLoader
EVAL_CHUNK = 4096  # rows per forward pass when evaluating (memory bound, not numerics)


class TrainingCancelled(Exception):
    """The caller asked to stop; raised between batches."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    test_loss: float
    seconds: float
    samples_per_s: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            "seconds": round(self.seconds, 6),
            "samples_per_s": round(self.samples_per_s, 1),
        }


@dataclass
class TrainState:
    """Everything needed to continue training after ``epoch`` epochs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(name)


@functools.cache
def keep_large_allocations_on_heap() -> bool:
    """Stop glibc from mmap-ing (and page-faulting) every large tensor afresh.

    Why: each training step allocates batch-sized activations of ~0.8 MB,
    above glibc's mmap threshold, so every step pays fresh page faults;
    served from the heap they are reused. Measured 5% faster epochs on the CPU.
    Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31))
    except (OSError, AttributeError, TypeError):
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dataloader_permutation(n: int) -> torch.Tensor:
    """One epoch's order, drawn exactly as ``DataLoader(shuffle=True)`` draws it.

    A new DataLoader iterator first takes a base seed (for worker processes)
    from the global generator; its ``RandomSampler`` then takes a seed of its
    own from the global generator and runs ``randperm`` on a fresh generator.
    """
    torch.empty((), dtype=torch.int64).random_()  # the iterator's base seed
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(sampler_seed)
    return torch.randperm(n, generator=generator)


def images_to_tensor(split: ImageSplit, device: torch.device) -> torch.Tensor:
    """uint8 images -> (N, H*W) float32 in [0, 1], exactly as ``ToTensor()``."""
    pixels = torch.from_numpy(split.images).reshape(len(split), -1)
    return pixels.to(device).to(torch.float32).div_(255)


def flatten_parameters(model: nn.Module) -> nn.Parameter:
    """Make every parameter and its gradient a view into one flat buffer each.

    Why: Adam's update is elementwise, so running it once over the flat buffer
    gives bit-for-bit the numbers of the notebook's per-tensor Adam, in a
    handful of kernels instead of about ten per tensor. (PyTorch's fused Adam
    is as fast but rounds differently, and over 50 epochs the seed run would
    drift from the notebook's printed losses.)
    """
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    flat_param = nn.Parameter(flat)
    flat_param.grad = flat_grad
    return flat_param


def build_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor update, the notebook's default on the CPU.
    return torch.optim.Adam([flatten_parameters(model)], lr=spec.lr, foreach=False)


def new_state(spec: TrainSpec, config: ModelConfig, device: torch.device) -> TrainState:
    """Seed everything and build the model exactly as the notebook does."""
    seed_everything(spec.seed)
    model = build_model(config).to(device)
    return TrainState(model=model, optimizer=build_optimizer(model, spec))


@torch.no_grad()
def per_sample_mse(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat(
        [(model(chunk).reconstruction - chunk).pow(2).mean(dim=1) for chunk in x.split(EVAL_CHUNK)]
    )
    model.train(was_training)
    return out


def evaluate_loss(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Mean of per-batch MSE over ``x`` in order, as a notebook's test loop reports it."""
    per_sample = per_sample_mse(model, x)
    batch_means = torch.stack([b.mean() for b in per_sample.split(batch_size)])
    return float(batch_means.mean().item())


def _check_finite(loss_sum: torch.Tensor, epoch: int) -> float:
    value = float(loss_sum.item())
    if not math.isfinite(value):
        raise TrainingError(
            f"training loss became {value} in epoch {epoch}; lower the learning rate"
            " or check the data"
        )
    return value


def train(
    spec: TrainSpec,
    state: TrainState,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    *,
    on_epoch: Callable[[TrainState, EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Train ``state`` from ``state.epoch`` up to ``spec.epochs`` epochs.

    ``on_epoch`` is called after every epoch (progress, checkpoints);
    ``should_stop`` is polled between batches and raises
    :class:`TrainingCancelled` when it returns true.
    """
    model, optimizer = state.model, state.optimizer
    if train_x.device.type == "cpu":
        keep_large_allocations_on_heap()
    n = train_x.shape[0]
    batches_per_epoch = math.ceil(n / spec.batch_size)
    model.train()
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        started = time.perf_counter()
        order = dataloader_permutation(n).to(train_x.device)
        loss_sum = torch.zeros((), device=train_x.device)
        for batch_idx in order.split(spec.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled during epoch {epoch}")
            x = train_x.index_select(0, batch_idx)
            reconstruction, _ = model(x)
            loss = F.mse_loss(reconstruction, x)
            optimizer.zero_grad(set_to_none=False)  # in place: the gradients are views
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        # One host sync per epoch: a NaN poisons the sum, so checking it suffices.
        train_loss = _check_finite(loss_sum, epoch) / batches_per_epoch
        test_loss = evaluate_loss(model, test_x)
        seconds = time.perf_counter() - started
        metrics = EpochMetrics(epoch, train_loss, test_loss, seconds, n / seconds)
        state.epoch = epoch
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state


def format_progress(metrics: EpochMetrics, total_epochs: int) -> str:
    width = len(str(total_epochs))
    return (
        f"epoch {metrics.epoch:>{width}}/{total_epochs}  train {metrics.train_loss:.4f}"
        f"  test {metrics.test_loss:.4f}  {metrics.seconds:.2f}s"
        f"  {metrics.samples_per_s:,.0f} samples/s"
    )
