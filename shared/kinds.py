"""The table of job kinds: one row per kind, read by the API, the gallery, the CLI and the worker.

A row says what a kind's spec is, which parent job it needs and what it
checks against it, which queue it goes to, which function runs it, and how
the CLI describes it. The runner is named as ``"module:function"`` and only
workers import it, so the API never loads torch. The gallery's form for a
kind is its template ``forms/<kind>.html`` if there is one, else a form drawn
from the spec's fields; either way its fields turn into the spec by
:func:`form_fields`.

Adding a kind is one :func:`register` call plus its runner: in this module,
or in a plugin module named by ``LATENTFORGE_PLUGINS``, which API, worker
and CLI import at start.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from shared.artifacts import ArtifactFile
from shared.errors import SpecError
from shared.specs import (EmbedSpec, EvaluateSpec, SampleSpec, Spec, StudySpec, SweepSpec, TrainSpec,
                          latent_width_problem)


@dataclass
class RunContext:
    """What a runner works with: its own folder, a parent's published folder, the data, and the queue's hooks."""

    folder: Path  # this attempt's folder (it exists): the runner writes here and nowhere else
    data_dir: Path | None = None
    allow_download: bool = False
    cache_dir: Path | None = None  # reusable results (the scorecard's judges); None: nothing is cached
    parent_folder: Path | None = None  # the published files of the job this one works on
    log: Callable[[str], None] = print
    should_stop: Callable[[], bool] | None = None  # polled between batches (cancel, lost job, shutdown)
    on_epoch: Callable[[Any, Any], None] | None = None  # (train state, metrics) after each epoch: resume points
    report: Callable[[dict], None] | None = None  # progress of work that is not epochs ({"step", "steps", "doing"})
    resume_from: Path | None = None  # a verified resume state to continue from


@dataclass(frozen=True)
class RunOutput:
    """What a runner returns: the files it wrote (relative to its folder) and a summary for the job's progress."""

    artifacts: list[ArtifactFile]
    summary: dict | None  # None: the runner recorded its progress as it went
    # Numbers to rank runs by (shared/scorecard.py names them), recorded with the job's success on this job,
    # and on its parent where ``parent_scope`` names what they replace there: an evaluation's properties become
    # the latest measurement of those properties of its model, and the model keeps the rest.
    metrics: dict[str, float] = field(default_factory=dict)
    parent_scope: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParentRule:
    """A kind that works on another job's output: which field names the parent, which kinds it may be."""

    field: str = "model_job"
    kinds: tuple[str, ...] = ("train",)
    # Further checks of the request against the parent's spec: [(field, problem)].
    check: Callable[[Spec, Mapping[str, Any]], list[tuple[str, str]]] | None = None


@dataclass(frozen=True)
class Child:
    """One job a fan-out kind makes when it is submitted: its kind, its validated spec, what it varies."""

    kind: str
    spec: Spec
    varied: dict[str, Any]


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[Spec]
    # "module:function" taking (spec, RunContext) and returning a RunOutput; imported by workers only.
    # None for a fan-out kind: no worker runs it, its state follows its children's.
    runner: str | None
    help: str
    parent: ParentRule | None = None
    # The queue a job of this kind goes to, from its spec.
    queue: Callable[[Spec], str] = field(default=lambda spec: "cpu")
    # A kind that is a group of other jobs (a sweep): the children its spec makes, created with it.
    fan_out: Callable[[Spec], list[Child]] | None = None
    # After a child succeeds: the follow-up jobs to queue in the same transaction, as (kind, spec) (a sweep's
    # evaluations); called with the group's stored spec (a dict: already validated) and the child's id.
    follow_up: Callable[[Mapping[str, Any], str], list[tuple[str, dict[str, Any]]]] | None = None
    # When every child and follow-up of a group has ended: the kind of the report job to queue then (a study's
    # claims table), from the group's stored spec; None for none. The report sees every child's numbers.
    finale: Callable[[Mapping[str, Any]], str | None] | None = None
    # Made only by the queue itself (a report): the API refuses it.
    internal: bool = False

    def parse(self, data: Any) -> Spec:
        """The validated spec; errors name the fields as ``spec.<field>``."""
        if data is not None and not isinstance(data, dict):
            raise SpecError([("spec", "must be a JSON object")])
        try:
            return self.spec.from_dict(data)
        except SpecError as exc:
            raise exc.prefixed("spec.") from None

    def load_runner(self) -> Callable[..., Any]:
        if self.runner is None:
            raise LookupError(f"no worker runs {self.name} jobs: their state follows their children's")
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


def names() -> list[str]:
    return list(KINDS)


def get_kind(name: Any) -> JobKind:
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise SpecError([("kind", f"must be one of {', '.join(KINDS)}, got {name!r}")])
    return kind


def load_plugins(modules: Iterable[str]) -> None:
    """Import the modules that register more kinds (LATENTFORGE_PLUGINS)."""
    for module in modules:
        importlib.import_module(module)


NUMBER_LIST = re.compile(r"\s*-?\d+(\.\d*)?(\s*,\s*-?\d+(\.\d*)?)+\s*")


def form_value(text: str) -> Any:
    """A form's or command line's value: JSON where it parses (numbers, lists), a comma-separated list of
    numbers as a list, a bare word otherwise; validation then names a field whose value does not fit."""
    if not text.isascii():  # int() and float() take other scripts' digits; the specs do not
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if NUMBER_LIST.fullmatch(text):
            return [json.loads(part) for part in text.split(",")]
        return text


def form_fields(kind: JobKind, form: Mapping[str, str]) -> dict[str, Any]:
    """The spec fields a form filled in (blank fields keep their defaults)."""
    return {name: form_value(form[name].strip()) for name in kind.spec.field_names()
            if form.get(name, "").strip()}


# -- the built-in kinds ----------------------------------------------------------------------


def _points_fit_the_model(spec: Spec, parent_spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    latent_dim = parent_spec.get("latent_dim")
    problem = latent_width_problem(getattr(spec, "latent_coords", None), latent_dim) if latent_dim else None
    return [("spec.latent_coords", problem)] if problem else []


register(JobKind(
    name="train", spec=TrainSpec, runner="worker.runners:run_train",
    help="train a model; its checkpoint, metrics and figures become the job's artifacts",
    queue=lambda spec: "cpu" if spec.device == "cpu" else "gpu",  # training that may use a GPU goes to the gpu queue
))
register(JobKind(
    name="embed", spec=EmbedSpec, runner="worker.runners:run_embed",
    help="codes of a dataset split under a trained model, with a scatter figure",
    parent=ParentRule(),
))
register(JobKind(
    name="sample", spec=SampleSpec, runner="worker.runners:run_sample",
    help="decode given latent points, or draws from the model's prior",
    parent=ParentRule(check=_points_fit_the_model),
))
register(JobKind(
    name="evaluate", spec=EvaluateSpec, runner="worker.runners:run_evaluate",
    help="the latent-space scorecard: one number per ideal property, with the figures that explain them",
    parent=ParentRule(),
))


def _sweep_children(spec: SweepSpec) -> list[Child]:
    return [Child("train", child, varied) for child, varied in spec.children()]


def _sweep_evaluation(spec: Mapping[str, Any], child_id: str) -> list[tuple[str, dict[str, Any]]]:
    evaluation = SweepSpec.model_construct(**spec).evaluation(child_id)  # stored specs were validated on submit
    return [("evaluate", evaluation)] if evaluation is not None else []


SWEEP_QUEUE = "none"  # a fan-out job is never published: no worker claims it

register(JobKind(
    name="sweep", spec=SweepSpec, runner=None,
    help="train jobs over a grid of one base spec, each evaluated; the sweep follows its children",
    queue=lambda spec: SWEEP_QUEUE, fan_out=_sweep_children, follow_up=_sweep_evaluation,
    finale=lambda spec: spec.get("report"),
))
register(JobKind(
    name="study", spec=StudySpec, runner="worker.study:run_study", internal=True,
    help="the claims table of a study sweep (made by the sweep when its last child ends)",
))
