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
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError,
                      field_validator, model_validator)

from shared.errors import SpecError

DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("seed",)
MAX_SAMPLE_POINTS = 1024

# The seed notebook's values: these are also every train field's default.
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


def latent_width_problem(points: list[list[float]] | None, latent_dim: int) -> str | None:
    """Why ``points`` cannot be decoded by a model whose latent space has ``latent_dim`` dimensions, or None."""
    if points and len(points[0]) != latent_dim:
        return f"points have {len(points[0])} coordinates but the model's latent space has {latent_dim}"
    return None


def no_control_characters(value: str) -> str:
    """Names and tags are shown in pages and stored in text columns: no NUL or other control characters."""
    for position, char in enumerate(value):
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X} at position {position})")
    return value


Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, strip_whitespace=True),
                AfterValidator(no_control_characters)]
Name = Annotated[str, StringConstraints(max_length=200, strip_whitespace=True), AfterValidator(no_control_characters)]


class JobCreate(BaseModel):
    """A job request: its kind, its spec (validated against the kind's spec model), a name and tags."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="one of the job kinds (see the spec schemas)")
    spec: dict[str, Any] = Field(default_factory=dict)
    name: Name | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] = Field(default_factory=list)

    @classmethod
    def parse(cls, body: Any) -> "JobCreate":
        if not isinstance(body, dict):
            raise SpecError([("(body)", "must be a JSON object with 'kind' and 'spec'")])
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None
