"""Validated job specs, shared by the API (request checks), worker and CLI.

Nothing here imports torch, so the API validates a job with the very rules
the worker runs it by. Every field has a default. A spec is built with
``<Spec>.from_dict``, which rejects unknown fields, wrong types (no "5" for 5,
no true for 1) and out-of-range or non-finite values with a
:class:`SpecError` listing each field at fault. The models also give the
JSON schemas of the OpenAPI document.
"""

from __future__ import annotations

import itertools
import math
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints, TypeAdapter,
                      ValidationError, field_validator)

from shared.errors import SpecError
from shared.scorecard import PROPERTY_NAMES

DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("seed",)
MAX_SAMPLE_POINTS = 1024
ScorecardProperty = Literal[PROPERTY_NAMES]  # type: ignore[valid-type]

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
            spec = cls.model_validate(data or {})
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None
        return spec.checked()

    def problems(self) -> list[tuple[str, str]]:
        """What is wrong with fields that are valid one by one but not together: [(field, message)]."""
        return []

    def checked(self) -> "Spec":
        if found := self.problems():
            raise SpecError(found)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def field_names(cls) -> list[str]:
        """Every field a request may set (forms and the CLI read this)."""
        return list(cls.model_fields)

    @classmethod
    def json_schema(cls, ref_template: str) -> dict[str, Any]:
        return cls.model_json_schema(ref_template=ref_template)


class TrainSpec(Spec):
    """The fields every model kind has. Defaults are the seed notebook's values.

    ``TrainSpec.from_dict`` returns the spec of the kind that ``model`` names
    (:data:`TRAIN_SPECS`, a union discriminated on ``model``), so a field of
    another kind (``beta`` on ``ae``, ``prior`` on ``vae``) is refused by name.
    """

    model: str = "ae"
    dataset: Literal["mnist", "fashion_mnist", "sprites"] = "mnist"
    latent_dim: Annotated[StrictInt, Field(ge=1, le=512)] = 2
    hidden: Annotated[tuple[Annotated[StrictInt, Field(ge=1, le=8192)], ...], Field(min_length=1, max_length=8)] = (128, 64)
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] = 50
    batch_size: Annotated[StrictInt, Field(ge=1, le=65_536)] = 256
    lr: Annotated[float, _finite_number(gt=0.0, le=10.0)] = 1e-3
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 47
    device: Literal["auto", "cpu", "cuda"] = "auto"
    preset: Literal["seed"] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainSpec":
        if cls is not TrainSpec:
            return super().from_dict(data)  # type: ignore[return-value]
        if data is not None and not isinstance(data, dict):
            raise SpecError([("spec", "must be a JSON object")])
        data = dict(data or {})
        if data.get("preset") == "seed":
            data = {**SEED_PRESET, **data}
        data.setdefault("model", "ae")
        model = data["model"]
        if not isinstance(model, str) or model not in MODEL_SPECS:
            raise SpecError([("model", f"must be one of {', '.join(MODEL_SPECS)}, got {model!r}")])
        try:
            return _TRAIN_SPECS.validate_python(data).checked()
        except ValidationError as exc:
            # Locations of a discriminated union start with the tag ("vae.beta"): name the field alone.
            errors = [(".".join(str(p) for p in err["loc"][1:]) or "model",
                       f"not a field of model {model!r}" if err["type"] == "extra_forbidden" else err["msg"])
                      for err in exc.errors(include_url=False)]
            raise SpecError(errors) from None

    @classmethod
    def field_names(cls) -> list[str]:
        if cls is not TrainSpec:
            return super().field_names()
        return list(dict.fromkeys(name for spec in MODEL_SPECS.values() for name in spec.model_fields))

    @classmethod
    def json_schema(cls, ref_template: str) -> dict[str, Any]:
        if cls is not TrainSpec:
            return super().json_schema(ref_template)
        schema = _TRAIN_SPECS.json_schema(ref_template=ref_template)
        schema["description"] = cls.__doc__.split("\n\n")[0]
        return schema


class AETrainSpec(TrainSpec):
    """The plain autoencoder (the seed notebook's): MSE loss, no prior."""

    model: Literal["ae"] = "ae"


Beta = Annotated[float, _finite_number(ge=0.0, le=1_000.0, description="weight of the KL term")]


class VAETrainSpec(TrainSpec):
    """Variational autoencoder: Gaussian posterior, N(0, I) prior; loss = recon + β·KL."""

    model: Literal["vae"] = "vae"
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        default="bernoulli", description="bernoulli: the decoder gives logits; gaussian: MSE with a fixed std")
    gaussian_std: Annotated[float, _finite_number(gt=0.0, le=10.0)] | None = Field(
        default=None, description="the gaussian likelihood's fixed std (default 0.1); only with likelihood gaussian")
    beta: Beta = 1.0

    def problems(self) -> list[tuple[str, str]]:
        if self.gaussian_std is not None and self.likelihood != "gaussian":
            return [("gaussian_std", "only with likelihood 'gaussian'")]
        return []


class BetaVAETrainSpec(VAETrainSpec):
    """β-VAE: recon + β·KL with β = 4, or Burgess et al.'s recon + γ·|KL − C(t)| with a capacity schedule."""

    model: Literal["beta_vae"] = "beta_vae"
    beta: Beta = 4.0
    capacity_max: Annotated[float, _finite_number(ge=0.0, le=1_000.0)] | None = Field(
        default=None, description="C's final value in nats; with capacity_epochs, replaces β·KL by γ·|KL − C(t)|")
    capacity_epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="epochs over which C rises linearly from 0 to capacity_max")
    gamma: Annotated[float, _finite_number(gt=0.0, le=100_000.0)] | None = Field(
        default=None, description="weight of |KL − C(t)| (default 1000); only with a capacity schedule")

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        if self.capacity_max is not None and self.capacity_epochs is None:
            found.append(("capacity_epochs", "required with capacity_max (the epochs over which C rises)"))
        if self.capacity_epochs is not None and self.capacity_max is None:
            found.append(("capacity_max", "required with capacity_epochs (C's final value in nats)"))
        if self.gamma is not None and self.capacity_max is None:
            found.append(("gamma", "only with a capacity schedule (capacity_max and capacity_epochs)"))
        return found


class AAETrainSpec(TrainSpec):
    """Adversarial autoencoder: a discriminator on codes pulls them onto a prior."""

    model: Literal["aae"] = "aae"
    prior: Literal["gaussian", "mixture"] = Field(
        default="gaussian", description="gaussian: N(0, I); mixture: 10 Gaussians on a circle in the first two dims")
    disc_hidden: Annotated[tuple[Annotated[StrictInt, Field(ge=1, le=8192)], ...], Field(min_length=1, max_length=8)] | None = Field(
        default=None, description="the discriminator's hidden sizes (default: the trunk's widest layer, twice)")
    disc_lr: Annotated[float, _finite_number(gt=0.0, le=10.0)] | None = Field(
        default=None, description="the discriminator's learning rate (default: lr)")
    gen_lr: Annotated[float, _finite_number(gt=0.0, le=10.0)] | None = Field(
        default=None, description="the generator (encoder vs discriminator) learning rate (default: lr)")


MODEL_SPECS: dict[str, type[TrainSpec]] = {
    "ae": AETrainSpec, "vae": VAETrainSpec, "beta_vae": BetaVAETrainSpec, "aae": AAETrainSpec,
}
MODELS = tuple(MODEL_SPECS)
_TRAIN_SPECS: TypeAdapter[TrainSpec] = TypeAdapter(
    Annotated[Union[AETrainSpec, VAETrainSpec, BetaVAETrainSpec, AAETrainSpec], Field(discriminator="model")]
)


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
    color_by: Annotated[str, StringConstraints(min_length=1, max_length=50)] | None = Field(
        default=None, description="colour the scatter by this factor (sprites: shape, scale, orientation, pos_x,"
                                  " pos_y) instead of the class label")


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


class EvaluateSpec(ParentSpec):
    """The latent-space scorecard of a trained model (shared/scorecard.py names the properties)."""

    split: Literal["train", "test"] = Field(default="test", description="the split the codes are measured on")
    limit: Annotated[StrictInt, Field(ge=100, le=100_000)] = Field(
        default=5000, description="images of the split to measure, drawn with seed (and as many of the other split,"
                                  " which fitted metrics learn from)")
    properties: Annotated[list[ScorecardProperty], Field(min_length=1)] | None = Field(
        default=None, description="the properties to measure; null for all eight")
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0

    @field_validator("properties")
    @classmethod
    def _no_repeats(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a property more than once")
        return value

    def measured(self) -> tuple[str, ...]:
        """The properties to measure, in the scorecard's order."""
        return tuple(p for p in PROPERTY_NAMES if self.properties is None or p in self.properties)


MAX_SWEEP_CHILDREN = 1000
GridKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SweepSpec(Spec):
    """Train jobs over a grid (and/or a list) of overrides of one base train spec, each seed, as child jobs."""

    base: dict[str, Any] = Field(default_factory=dict, description="a train spec: what every child shares")
    grid: dict[GridKey, Annotated[list[Any], Field(min_length=1, max_length=MAX_SWEEP_CHILDREN)]] = Field(
        default_factory=dict, description="train field -> values; every combination is a child")
    overrides: Annotated[list[dict[str, Any]], Field(max_length=MAX_SWEEP_CHILDREN)] = Field(
        default_factory=list, description="more children, each the base with these fields (after the grid's)")
    evaluate: bool | dict[str, Any] = Field(
        default=True, description="queue each child's evaluate job as soon as it succeeds; an object of evaluate"
                                  " fields (limit, properties, split, seed) sets them")
    seeds: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        default=1, description="runs of every setting, with seeds base.seed, base.seed + 1, ...")
    report: Literal["study"] | None = Field(
        default=None, description="study: when every child and evaluation has ended, a report job checks the seed"
                                  " document's claims against their numbers (study.md, study.json)")

    def settings(self) -> list[tuple[dict[str, Any], str]]:
        """Every setting before seeds: (the fields it varies, where they come from for error messages)."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))] \
            if keys else []
        found = [(combo, "grid") for combo in combos]
        found += [(dict(override), f"overrides.{i}") for i, override in enumerate(self.overrides)]
        return found or [({}, "base")]

    def size(self) -> int:
        grid = math.prod(len(v) for v in self.grid.values()) if self.grid else 0
        return max(1, grid + len(self.overrides)) * self.seeds

    def evaluation(self, child_id: str) -> dict[str, Any] | None:
        """The spec of a child's evaluation, or None when the sweep does not evaluate."""
        if self.evaluate is False:
            return None
        return {**(self.evaluate if isinstance(self.evaluate, dict) else {}), "model_job": child_id}

    def problems(self) -> list[tuple[str, str]]:
        if isinstance(self.evaluate, dict):
            if "model_job" in self.evaluate:
                return [("evaluate.model_job", "is each child; leave it out")]
            try:
                EvaluateSpec.from_dict(self.evaluation(str(uuid.UUID(int=0))))
            except SpecError as exc:
                return exc.prefixed("evaluate.").errors
        if self.size() > MAX_SWEEP_CHILDREN:
            return [("grid", f"makes {self.size():,} children (settings x seeds); at most {MAX_SWEEP_CHILDREN:,}")]
        try:
            TrainSpec.from_dict(self.base)
        except SpecError as exc:
            return exc.prefixed("base.").errors
        found: dict[str, str] = {}
        for varied, source in self.settings():
            try:
                TrainSpec.from_dict({**self.base, **varied})
            except SpecError as exc:
                for name, message in exc.errors:
                    found.setdefault(_setting_field(self, name, varied, source), message)
        return list(found.items())

    def children(self) -> list[tuple["TrainSpec", dict[str, Any]]]:
        """Each child's train spec and the fields it varies (seed included when there are several)."""
        first_seed = TrainSpec.from_dict(self.base).seed
        out = []
        for varied, _ in self.settings():
            for k in range(self.seeds):
                fields = {**varied, **({"seed": varied.get("seed", first_seed) + k} if self.seeds > 1 else {})}
                out.append((TrainSpec.from_dict({**self.base, **fields}), fields))
        return out


class StudySpec(Spec):
    """The claims report of a study sweep, made by the sweep when its last child or evaluation ends."""

    sweep_job: str = Field(description="the sweep this reports on")
    runs: Annotated[list[dict[str, Any]], Field(max_length=MAX_SWEEP_CHILDREN)] = Field(
        default_factory=list, description="each child: {id, spec, metrics}, as the sweep's last transaction saw it")

    @field_validator("sweep_job", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> str:
        return _job_id(value)


def _setting_field(spec: SweepSpec, name: str, varied: dict[str, Any], source: str) -> str:
    """Where a child's bad field was given: ``grid.beta[2]``, ``overrides.1.beta`` or ``base.beta``."""
    field = name.split(".", 1)[0]
    if source == "grid" and field in spec.grid:
        return f"grid.{field}[{spec.grid[field].index(varied[field])}]"
    if source.startswith("overrides.") and field in varied:
        return f"{source}.{name}"
    if source == "grid" and field not in spec.base:  # e.g. a field the grid's model does not have
        return f"grid ({', '.join(f'{k}={v!r}' for k, v in varied.items())}): {name}"
    return f"base.{name}"


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


def note_text(value: str) -> str:
    """A note may span lines: line breaks and tabs pass, other control characters are refused as in names."""
    no_control_characters(value.replace("\r\n", "\n").replace("\n", " ").replace("\t", " "))
    return value.replace("\r\n", "\n")


Note = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(note_text)]


class RunEdit(BaseModel):
    """A change to a run's own words (PATCH /jobs/{id}): its name, tags and note; what it ran stays as it was."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] | None = None
    note: Note | None = None

    @classmethod
    def parse(cls, body: Any) -> "RunEdit":
        if not isinstance(body, dict) or not body:
            raise SpecError([("(body)", "must be a JSON object with one or more of 'name', 'tags', 'note'")])
        try:
            edit = cls.model_validate(body)
        except ValidationError as exc:
            raise SpecError.from_validation(exc) from None
        if "tags" in edit.model_fields_set and edit.tags is None:
            raise SpecError([("tags", "must be a list (empty to remove every tag)")])
        return edit

    def changes(self) -> dict[str, Any]:
        """The columns to write: only the fields the request gave (null clears a name or note)."""
        return {name: getattr(self, name) for name in self.model_fields_set}
