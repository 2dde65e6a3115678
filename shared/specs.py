"""Validated job specs, shared by the API (request checks), worker and CLI.

Nothing here imports torch, so the API validates a job with the very rules
the worker runs it by. Every field has a default. A spec is built with
``<Spec>.from_dict``, which rejects unknown fields, wrong types (no "5" for 5,
no true for 1) and out-of-range or non-finite values with a
:class:`SpecError` listing each field at fault. The models also give the
JSON schemas of the OpenAPI document.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("seed",)
MAX_SAMPLE_POINTS = 1024

# The seed notebook (SPEC §1): these are also every train field's default.
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


class JobKind(str, Enum):
    TRAIN = "train"
    EMBED = "embed"
    SAMPLE = "sample"


class SpecError(ValueError):
    """One or more fields are invalid; ``errors`` is a list of (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors))

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> "SpecError":
        errors = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(part) for part in err["loc"]) or "(body)"
            errors.append((prefix + loc, err["msg"]))
        return cls(errors)


def _finite_number(**kw: Any) -> Any:
    return Field(strict=True, allow_inf_nan=False, **kw)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Spec":
        if data is not None and not isinstance(data, dict):
            raise SpecError([("spec", "must be a JSON object")])
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TrainSpec(Spec):
    """What a train job runs. Defaults are the seed notebook's values."""

    model: Literal["ae"] = "ae"
    dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    latent_dim: Annotated[StrictInt, Field(ge=1, le=512)] = 2
    hidden: Annotated[tuple[Annotated[StrictInt, Field(ge=1, le=8192)], ...], Field(min_length=1, max_length=8)] = (128, 64)
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] = 50
    batch_size: Annotated[StrictInt, Field(ge=1, le=65_536)] = 256
    lr: Annotated[float, _finite_number(gt=0.0, le=10.0)] = 1e-3
    beta: Annotated[float, _finite_number(ge=0.0, le=1_000.0)] = 1.0
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 47
    device: Literal["auto", "cpu", "cuda"] = "auto"
    preset: Literal["seed"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "seed":
            return {**SEED_PRESET, **data}
        return data


def _job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a job id (a UUID string)")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a job id (a UUID)") from None


class ParentSpec(Spec):
    model_job: str = Field(description="id of a succeeded train job")

    @field_validator("model_job", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> str:
        return _job_id(value)


class EmbedSpec(ParentSpec):
    """Codes of one split under a trained model."""

    split: Literal["train", "test"] = "test"
    limit: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = Field(
        default=5000, description="first N images of the split; null for all"
    )


class SampleSpec(ParentSpec):
    """Decode given latent points, or ``n`` draws from the model's prior."""

    latent_coords: (
        Annotated[
            list[Annotated[list[Annotated[float, _finite_number()]], Field(min_length=1, max_length=512)]],
            Field(min_length=1, max_length=MAX_SAMPLE_POINTS),
        ]
        | None
    ) = Field(default=None, description="points to decode, each of the model's latent size")
    n: Annotated[StrictInt, Field(ge=1, le=MAX_SAMPLE_POINTS)] = 16
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0

    @field_validator("latent_coords")
    @classmethod
    def _same_width(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value and len({len(point) for point in value}) != 1:
            raise ValueError("every point must have the same number of coordinates")
        return value


SPEC_TYPES: dict[JobKind, type[Spec]] = {JobKind.TRAIN: TrainSpec, JobKind.EMBED: EmbedSpec, JobKind.SAMPLE: SampleSpec}


def parse_spec(kind: str, data: Any) -> Spec:
    try:
        job_kind = JobKind(kind)
    except ValueError:
        raise SpecError([("kind", f"must be one of {', '.join(k.value for k in JobKind)}, got {kind!r}")]) from None
    if data is not None and not isinstance(data, dict):
        raise SpecError([("spec", "must be a JSON object")])
    try:
        return SPEC_TYPES[job_kind].from_dict(data)
    except SpecError as exc:
        raise SpecError([(f"spec.{name}", msg) for name, msg in exc.errors]) from None
