"""Validated job specs, shared by API (request checks), worker and CLI.

Nothing here imports torch, so the API validates a job with the very rules
the worker runs it by. Every field has a default; a spec is built with
:meth:`TrainSpec.from_dict`, which rejects unknown fields, wrong types and
out-of-range values with a :class:`SpecError` that lists each field at fault.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODELS = ("ae",)
DATASETS = ("mnist", "fashion_mnist")
DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("seed",)

# The seed notebook (SPEC §1): these are also every field's default.
SEED_PRESET: dict[str, Any] = {
    "model": "ae",
    "dataset": "mnist",
    "latent_dim": 2,
    "hidden": [128, 64],
    "epochs": 50,
    "batch_size": 256,
    "lr": 1e-3,
    "seed": 47,
}


class SpecError(ValueError):
    """One or more fields are invalid; ``errors`` is a list of (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors))


def _rule(**kw: Any) -> dict[str, Any]:
    return {"rule": kw}


def _check(name: str, value: Any, rule: dict[str, Any]) -> str | None:
    """Return an error message for ``value`` or None when it is valid."""
    kind = rule["type"]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {type(value).__name__}"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        if not math.isfinite(value):
            return "must be a finite number"
    elif kind is str:
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if value not in rule["choices"]:
            return f"must be one of {', '.join(map(repr, rule['choices']))}, got {value!r}"
        return None
    elif kind is list:
        if not isinstance(value, (list, tuple)) or not value:
            return "must be a non-empty list of integers"
        if len(value) > rule["max_len"]:
            return f"must have at most {rule['max_len']} entries"
        for i, item in enumerate(value):
            msg = _check(f"{name}[{i}]", item, {**rule, "type": int})
            if msg:
                return f"entry {i} {msg}"
        return None
    lo, hi = rule.get("min"), rule.get("max")
    if lo is not None and (value < lo if rule.get("inclusive", True) else value <= lo):
        return f"must be {'at least' if rule.get('inclusive', True) else 'greater than'} {lo}, got {value}"
    if hi is not None and value > hi:
        return f"must be at most {hi}, got {value}"
    return None


@dataclass(frozen=True)
class TrainSpec:
    """What a train job runs. Defaults are the seed notebook's values."""

    model: str = field(default="ae", metadata=_rule(type=str, choices=MODELS))
    dataset: str = field(default="mnist", metadata=_rule(type=str, choices=DATASETS))
    latent_dim: int = field(default=2, metadata=_rule(type=int, min=1, max=512))
    hidden: tuple[int, ...] = field(
        default=(128, 64), metadata=_rule(type=list, min=1, max=8192, max_len=8)
    )
    epochs: int = field(default=50, metadata=_rule(type=int, min=1, max=10_000))
    batch_size: int = field(default=256, metadata=_rule(type=int, min=1, max=65_536))
    lr: float = field(default=1e-3, metadata=_rule(type=float, min=0.0, max=10.0, inclusive=False))
    beta: float = field(default=1.0, metadata=_rule(type=float, min=0.0, max=1_000.0))
    seed: int = field(default=47, metadata=_rule(type=int, min=0, max=2**63 - 1))
    device: str = field(default="auto", metadata=_rule(type=str, choices=DEVICES))
    preset: str | None = field(default=None, metadata=_rule(type=str, choices=PRESETS))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainSpec":
        data = dict(data or {})
        if data.get("preset") == "seed":
            data = {**SEED_PRESET, **data}
        known = {f.name: f for f in fields(cls)}
        errors = [(name, "unknown field") for name in data if name not in known]
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if value is None and name == "preset":
                continue
            msg = _check(name, value, known[name].metadata["rule"])
            if msg:
                errors.append((name, msg))
            else:
                values[name] = tuple(value) if name == "hidden" else value
        if errors:
            raise SpecError(errors)
        if "lr" in values:
            values["lr"] = float(values["lr"])
        if "beta" in values:
            values["beta"] = float(values["beta"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out
