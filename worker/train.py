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
from typing import Any, Callable

import numpy as np
import torch

from shared.errors import TrainingError
from shared.specs import TrainSpec
from worker.data import ImageSplit
from worker.models import LatentModel, ModelConfig, build_model

EVAL_BATCH = 256  # test loss: mean over batches of this size, like a test DataLoader
EVAL_CHUNK = 4096  # rows per forward pass when evaluating (memory bound, not numerics)


class TrainingCancelled(Exception):
    """The caller asked to stop; raised between batches."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over the epoch's batches of the minimised loss ("total")
    test_loss: float  # the same loss on the test split
    seconds: float
    samples_per_s: float
    extra: dict[str, float] = field(default_factory=dict)  # the kind's own terms: train_kl, test_elbo, ...
    learning_rates: dict[str, float] = field(default_factory=dict)  # "lr", "lr_disc", ...: see learning_rates()

    def to_dict(self) -> dict[str, float | int]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            **self.extra,
            **self.learning_rates,
            "seconds": round(self.seconds, 6),
            "samples_per_s": round(self.samples_per_s, 1),
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "EpochMetrics":
        own = {k: row[k] for k in ("epoch", "train_loss", "test_loss", "seconds", "samples_per_s")}
        rates = {k: v for k, v in row.items() if is_learning_rate(k)}  # absent in rows saved before they were kept
        return cls(**own, extra={k: v for k, v in row.items() if k not in own and k not in rates},
                   learning_rates=rates)


def learning_rates(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
    """Each optimizer's learning rate as it stands: the first optimizer's (the one the spec's ``lr`` drives)
    as ``lr``, every other's as ``lr_<name>`` (the AAE's ``lr_disc``, ``lr_gen``)."""
    rates = {}
    for i, (name, optimizer) in enumerate(optimizers.items()):
        rates["lr" if i == 0 else f"lr_{name}"] = float(optimizer.param_groups[0]["lr"])
    return rates


def is_learning_rate(key: str) -> bool:
    return key == "lr" or key.startswith("lr_")


@dataclass
class TrainState:
    """Everything needed to continue training after ``epoch`` epochs."""

    model: LatentModel
    optimizers: dict[str, torch.optim.Optimizer]  # by name; the AAE has three
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


def new_state(spec: TrainSpec, config: ModelConfig, device: torch.device) -> TrainState:
    """Seed everything and build the model exactly as the notebook does."""
    seed_everything(spec.seed)
    model = build_model(config).to(device)
    return TrainState(model=model, optimizers=model.make_optimizers(spec.lr))


def evaluate(model: LatentModel, x: torch.Tensor, progress: float = 0.0,
             batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Each per-sample term of ``model.evaluate`` as the mean of per-batch means over ``x`` in order,
    as a notebook's test loop reports its loss (``loss`` first)."""
    was_training = model.training
    model.eval()
    chunks = [model.evaluate(chunk, progress) for chunk in x.split(EVAL_CHUNK)]
    model.train(was_training)
    terms = {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}
    means = torch.stack([torch.stack([b.mean() for b in t.split(batch_size)]).mean() for t in terms.values()])
    return dict(zip(terms, means.tolist()))  # one host sync


def evaluate_loss(model: LatentModel, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Mean of per-batch losses over ``x`` in order, as a notebook's test loop reports it."""
    return evaluate(model, x, batch_size=batch_size)["loss"]


def _check_finite(names: list[str], sums: torch.Tensor, epoch: int) -> dict[str, float]:
    values = dict(zip(names, sums.tolist()))  # one host sync per epoch
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        terms = "" if list(bad) == ["total"] else " (" + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")"
        raise TrainingError(
            f"training loss became {bad.get('total', next(iter(bad.values())))} in epoch {epoch}{terms};"
            " lower the learning rate or check the data"
        )
    return values


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
    model, optimizers = state.model, state.optimizers
    if train_x.device.type == "cpu":
        keep_large_allocations_on_heap()
    n = train_x.shape[0]
    batches_per_epoch = math.ceil(n / spec.batch_size)
    model.train()
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        started = time.perf_counter()
        order = dataloader_permutation(n).to(train_x.device)
        names: list[str] = []
        sums = torch.zeros(0, device=train_x.device)
        for step, batch_idx in enumerate(order.split(spec.batch_size)):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled during epoch {epoch}")
            x = train_x.index_select(0, batch_idx)
            parts = model.train_step(x, optimizers, epoch - 1 + step / batches_per_epoch)
            if not names:  # the same tensor under two names is summed once (the AE's recon is its total)
                names = [k for k, v in parts.items() if k == "total" or v is not parts["total"]]
                sums = torch.zeros(len(names), device=train_x.device)
            # One add per step: a lone term in place, several stacked (fewer kernel launches on a GPU).
            sums += parts["total"].detach() if len(names) == 1 else torch.stack([parts[k].detach() for k in names])
        # A NaN poisons its sum, so checking the sums once per epoch suffices.
        train_terms = {k: v / batches_per_epoch for k, v in _check_finite(names, sums, epoch).items()}
        train_terms |= model.derived_metrics(train_terms)
        test_terms = evaluate(model, test_x, progress=epoch)
        seconds = time.perf_counter() - started
        extra = {f"train_{k}": v for k, v in train_terms.items() if k != "total"}
        extra |= {f"test_{k}": v for k, v in test_terms.items() if k != "loss"}
        extra |= model.epoch_metrics(epoch)
        metrics = EpochMetrics(epoch, train_terms["total"], test_terms["loss"], seconds, n / seconds, extra,
                               learning_rates(optimizers))
        state.epoch = epoch
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state


def format_progress(metrics: EpochMetrics, total_epochs: int) -> str:
    width = len(str(total_epochs))
    terms = "".join(f"  {name.removeprefix('train_')} {value:.4g}" for name, value in metrics.extra.items()
                    if not name.startswith("test_") and name != "train_recon")
    return (
        f"epoch {metrics.epoch:>{width}}/{total_epochs}  train {metrics.train_loss:.4f}"
        f"  test {metrics.test_loss:.4f}{terms}  {metrics.seconds:.2f}s"
        f"  {metrics.samples_per_s:,.0f} samples/s"
    )
