"""A checkpoint is one self-describing folder.

    config.json        model config, training spec, data checksums, versions, result
    model.safetensors  the weights (never pickle)
    metrics.jsonl      one JSON object per epoch
    figures/           PNG figures and their thumbnails

:func:`load_model` rebuilds the model from the folder alone.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worker.files import atomic_path, write_json, write_jsonl
from worker.models import ModelConfig, build_model

FORMAT = "latentforge.checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = "figures"


class CheckpointError(Exception):
    """The folder is not a readable checkpoint; the message says why."""


def library_versions() -> dict[str, str]:
    import matplotlib
    import safetensors

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "matplotlib": matplotlib.__version__,
    }


def save_weights(model: nn.Module, path: Path) -> None:
    # clone(): training keeps parameters as views of one buffer; safetensors
    # refuses tensors that share memory.
    tensors = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "latentforge": FORMAT})


def write_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module,
    config: dict[str, Any],
    metrics: list[dict[str, Any]],
) -> Path:
    """Write weights, config and metrics; each file lands atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_FILE)
    write_jsonl(folder / METRICS_FILE, metrics)
    write_json(
        folder / CONFIG_FILE,
        {"format": FORMAT, "saved_at": datetime.now(timezone.utc).isoformat(), **config},
    )
    return folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; is {folder} a checkpoint folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def read_metrics(folder: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(folder) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``folder`` alone; returns (model in eval mode, config)."""
    config = read_config(folder)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: bad model config ({exc})") from None
    weights_path = Path(folder) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: not found")
    model = build_model(model_config)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: weights do not fit the config ({exc})") from None
    return model.to(device).eval(), config
