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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from shared.artifacts import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from shared.errors import CheckpointError
from worker.files import atomic_path, write_json, write_jsonl
from worker.models import LatentModel, ModelConfig, build_model

if TYPE_CHECKING:
    from worker.train import TrainState

FORMAT = "latentforge.checkpoint/1"


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


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that are the same in every process for the same tensors and metadata.

    Why: safetensors writes ``__metadata__`` from a Rust HashMap, whose order
    is randomised per process, so a resumed job's weights (bit-identical
    tensors) came out as different bytes with a different sha256. The header
    is rewritten with the metadata keys sorted; it keeps its length, so the
    tensor offsets stay valid.
    """
    data = safetensors_bytes(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # cannot happen for the same items; never write a broken file
        raise CheckpointError("canonical safetensors header is longer than the original")
    return data[:8] + text.ljust(length, b" ") + data[8 + length :]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(canonical_safetensors(tensors, metadata))


def save_weights(model: nn.Module, path: Path) -> None:
    # clone(): training keeps parameters as views of one buffer; safetensors
    # refuses tensors that share memory.
    tensors = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    write_safetensors(path, tensors, {"format": "pt", "latentforge": FORMAT})


def export_decoder(model: nn.Module, path: Path) -> Path:
    """The decoder alone, for decoding in the browser: its Linear layers in order, and its output map.

    safetensors is trivial to parse in JavaScript (8-byte header length, JSON
    header, raw little-endian float32); the metadata says how to run the layers.
    """
    layers = [m for m in model.decoder if isinstance(m, nn.Linear)]
    tensors: dict[str, torch.Tensor] = {}
    plan = []
    for i, layer in enumerate(layers):
        tensors[f"layers.{i}.weight"] = layer.weight.detach().to("cpu", torch.float32).clone()
        tensors[f"layers.{i}.bias"] = layer.bias.detach().to("cpu", torch.float32).clone()
        plan.append({"in": layer.in_features, "out": layer.out_features,
                     "activation": "relu" if i < len(layers) - 1 else "none"})
    metadata = {
        "format": "latentforge.decoder/1",
        "layers": json.dumps(plan),
        "latent_dim": str(model.config.latent_dim),
        "input_shape": json.dumps(list(model.config.input_shape)),
        "output": model.output,  # "sigmoid": the layers give logits; the image is their sigmoid
    }
    write_safetensors(path, tensors, metadata)
    return path


def export_codes(codes: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Codes of the training set with their labels (the explorer's background)."""
    tensors = {"codes": torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)),
               "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))}
    write_safetensors(path, tensors, {"format": "latentforge.codes/1"})
    return path


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


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LatentModel, dict[str, Any]]:
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


# -- resumable training state ---------------------------------------------------------
# A train job writes this after every epoch, each epoch into a new folder that
# appears whole (written beside, then renamed into place). A later attempt of
# the same job continues from it with the same random streams, so the resumed
# run ends where an uninterrupted one would have. The caller records the
# files' sha256 and the loader checks them: a torn or foreign file is never loaded.

RESUME_TENSORS = "state.safetensors"
RESUME_META = "state.json"


def save_training_state(folder: str | os.PathLike, state: "TrainState") -> dict[str, str]:
    """Write the full training state into the new folder ``folder``; returns {file name: sha256}."""
    import random as _random
    import shutil
    import tempfile

    from worker.files import sha256_of

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().to("cpu").clone() for k, v in state.model.state_dict().items()}
    param_groups = {}
    for name, optimizer in state.optimizers.items():
        optim = optimizer.state_dict()
        param_groups[name] = optim["param_groups"]
        for index, param_state in optim["state"].items():
            for key, value in param_state.items():
                tensors[f"optim.{name}.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu").clone()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    py_version, py_state, py_gauss = _random.getstate()
    meta = {
        "epoch": state.epoch,
        "history": [m.to_dict() for m in state.history],
        "param_groups": param_groups,
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "random": [py_version, list(py_state), py_gauss],
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (staging / RESUME_TENSORS).write_bytes(canonical_safetensors(tensors, {"epoch": str(state.epoch)}))
        write_json(staging / RESUME_META, meta)
        digests = {name: sha256_of(staging / name) for name in (RESUME_TENSORS, RESUME_META)}
        os.chmod(staging, 0o755)
        os.replace(staging, folder)  # the folder appears whole, or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digests


def verify_training_state(folder: str | os.PathLike, sha256: dict[str, str]) -> str | None:
    """None when every file of the resume state has its recorded sha256; else what is wrong."""
    from worker.files import sha256_of

    folder = Path(folder)
    for name in (RESUME_TENSORS, RESUME_META):
        path = folder / name
        if name not in sha256:
            return f"no sha256 recorded for {name}"
        if not path.is_file():
            return f"{name} is missing"
        if sha256_of(path) != sha256[name]:
            return f"{name} does not match its recorded sha256"
    return None


def load_training_state(folder: str | os.PathLike, state: "TrainState") -> bool:
    """Restore ``state`` from ``folder``; False when there is nothing (consistent) to resume."""
    import random as _random

    from safetensors import safe_open

    from worker.train import EpochMetrics

    folder = Path(folder)
    meta_path, tensors_path = folder / RESUME_META, folder / RESUME_TENSORS
    if not (meta_path.is_file() and tensors_path.is_file()):
        return False
    meta = json.loads(meta_path.read_text())
    with safe_open(str(tensors_path), framework="pt") as f:
        if (f.metadata() or {}).get("epoch") != str(meta["epoch"]):
            return False
    tensors = load_file(str(tensors_path))
    state.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if set(meta["param_groups"]) != set(state.optimizers):
        return False  # saved by another kind of model
    optim_states: dict[str, dict[int, dict[str, torch.Tensor]]] = {name: {} for name in state.optimizers}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, optimizer, index, name = key.split(".", 3)
            optim_states[optimizer].setdefault(int(index), {})[name] = value
    for name, optimizer in state.optimizers.items():
        optimizer.load_state_dict({"state": optim_states[name], "param_groups": meta["param_groups"][name]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    np_kind, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_kind, tensors["rng.numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_state, py_gauss = meta["random"]
    _random.setstate((py_version, tuple(py_state), py_gauss))
    state.epoch = int(meta["epoch"])
    state.history = [EpochMetrics.from_dict(row) for row in meta["history"]]
    return True
