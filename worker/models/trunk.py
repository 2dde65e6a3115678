"""The MLP trunk every model kind is built from, and the flat-parameter trick its optimizers use."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int] | tuple[int, ...], *, last_activation: bool = False) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, a ReLU after each but the last (unless asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return layers


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Make every parameter of ``module`` and its gradient a view into one flat buffer each.

    Why: Adam's update is elementwise, so running it once over the flat buffer
    gives bit-for-bit the numbers of the notebook's per-tensor Adam, in a
    handful of kernels instead of about ten per tensor. (PyTorch's fused Adam
    is as fast but rounds differently, and over 50 epochs the seed run would
    drift from the notebook's printed losses.)
    """
    params = list(module.parameters())
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


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor update, the notebook's default on the CPU.
    return torch.optim.Adam(params, lr=lr, foreach=False)
