"""A run, exported to the tools people already use: TensorBoard event files or an MLflow run.

Both exports read the job as the API shows it (GET /api/v1/jobs/<id>) and a
local folder holding its artifacts under their names (``figures/x.png``), as
:meth:`latentforge.client.Client.download` writes them; nothing here talks to
the API, so a run saved earlier exports the same way.

What each export holds:

- **TensorBoard** (``to_tensorboard``): every per-epoch metric of
  ``progress.history`` as a scalar series (tag = the metric's name, step = the
  epoch, wall time = when that epoch ended), the final metrics no epoch has
  (``train_seconds``, a scorecard's numbers) at the last step, every figure as
  a PNG image, and the spec as text. Written with TensorBoard's own event
  writer and summary protos, so neither TensorFlow nor torch is needed.
- **MLflow** (``to_mlflow``): one run named after the job; params = the spec
  flattened (``grid.beta``), metrics per epoch with ``step`` = the epoch, the
  figures and other files as artifacts, and the model (config.json,
  model.safetensors, metrics.jsonl: a checkpoint folder that
  ``worker.checkpoint.load_model`` loads, plus decoder.safetensors) under
  ``model/``. MLflow's pyfunc and pytorch flavours need pandas, which
  ``mlflow-skinny`` leaves out, so the model is logged as files, not as a flavour.

The optional packages come from the ``export`` extra; without them an
:class:`ExportError` says how to install them.
"""

from __future__ import annotations

import json
import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

from shared.artifacts import CHECKPOINT_KINDS, ArtifactKind

INSTALL_HINT = "pip install 'latentforge[export]'"
DEFAULT_EXPERIMENT = "latentforge"
MODEL_ARTIFACT_PATH = "model"
# The files of the model: a checkpoint folder (what load_model reads) and the decoder alone.
MODEL_KINDS = frozenset(CHECKPOINT_KINDS) | {ArtifactKind.DECODER.value}
FINISHED = ("succeeded", "failed", "cancelled")
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
# MLflow's log_batch takes at most 1000 metrics and 100 params per call.
MLFLOW_METRICS_PER_BATCH = 1000
MLFLOW_PARAMS_PER_BATCH = 100
# The package each export needs (the ``export`` extra).
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels (a palette decodes to RGB)


class ExportError(Exception):
    """An export that cannot be made, in one line: a missing package, an unfinished job, a missing file."""


def _require(module: str) -> Any:
    """Import an optional package of the ``export`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module.split('.')[0]} is not installed; {INSTALL_HINT}") from None


def require(target: str) -> None:
    """Fail early, before anything is downloaded, when the package an export to ``target`` needs is missing."""
    _require(PACKAGES[target])


# -- what a run reports ---------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _moment(value: Any) -> float | None:
    """An API timestamp (ISO 8601) as POSIX seconds."""
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    wall_time: float  # POSIX seconds


def epoch_series(job: Mapping[str, Any]) -> dict[str, list[Point]]:
    """Every numeric per-epoch metric of ``progress.history``: {name: points by epoch}.

    An epoch's wall time is when it ended: the job's start plus the seconds of
    the epochs up to it, so TensorBoard's time axes show training time.
    """
    history = (job.get("progress") or {}).get("history") or []
    start = _moment(job.get("started_at")) or _moment(job.get("created_at")) or time.time()
    series: dict[str, list[Point]] = {}
    elapsed = 0.0
    for index, row in enumerate(history):
        step = int(row.get("epoch", index + 1))
        elapsed += _number(row.get("seconds")) or 0.0
        for name, raw in row.items():
            value = _number(raw)
            if name != "epoch" and value is not None:
                series.setdefault(name, []).append(Point(step, value, start + elapsed))
    return series


def final_points(job: Mapping[str, Any], series: Mapping[str, list[Point]]) -> dict[str, Point]:
    """The final metrics no epoch reports (``train_seconds``, an evaluation's scores), at the last step.

    A final metric that is also an epoch metric is the last epoch's value, already in its series.
    """
    last_step = max((points[-1].step for points in series.values()), default=0)
    ended = _moment(job.get("finished_at")) or time.time()
    return {name: Point(last_step, value, ended)
            for name, raw in sorted((job.get("metrics") or {}).items())
            if name not in series and (value := _number(raw)) is not None}


def flat_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec as MLflow params: nested objects joined with dots, values as JSON (a string as it is)."""
    params: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            params.update(flat_params(value, name + "."))
        else:
            params[name] = value if isinstance(value, str) else json.dumps(value)
    return params


def run_label(job: Mapping[str, Any]) -> str:
    """A folder name for the run: its name (letters, digits, ``._-``) and the id's first 8 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", job.get("name") or "").strip("._-")
    return f"{name}-{job['id'][:8]}" if name else str(job["id"])


def check_finished(job: Mapping[str, Any]) -> None:
    if job.get("state") not in FINISHED:
        raise ExportError(f"job {job['id']} is {job.get('state')}: export it once it has finished"
                          f" (latentforge jobs watch {job['id']})")


def local_artifacts(job: Mapping[str, Any], folder: str | Path) -> list[tuple[dict[str, Any], Path]]:
    """Each artifact of the job with its file under ``folder``; an ExportError names the first one missing."""
    root = Path(folder)
    found = []
    for artifact in job.get("artifacts") or []:
        name = PurePosixPath(artifact["name"])
        if name.is_absolute() or ".." in name.parts or "\\" in artifact["name"]:
            raise ExportError(f"artifact {artifact['name']!r} of job {job['id']} could leave the run's folder")
        path = root.joinpath(*name.parts)
        if not path.is_file():
            raise ExportError(f"{path}: not found (artifact {artifact['name']} of job {job['id']})")
        found.append((artifact, path))
    return found


def _figures(job: Mapping[str, Any], folder: str | Path) -> list[tuple[str, Path]]:
    return [(artifact["name"], path) for artifact, path in local_artifacts(job, folder)
            if artifact.get("kind") == ArtifactKind.FIGURE.value and path.suffix.lower() == ".png"]


# -- TensorBoard ----------------------------------------------------------------------------


def png_size(data: bytes, path: Path) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk, without decoding the image."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ExportError(f"{path}: not a PNG image")
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return height, width, PNG_CHANNELS.get(colour, 3)


def figure_tag(name: str) -> str:
    """A figure's image tag: its name without ``.png`` (``figures/latent_scatter``)."""
    return str(PurePosixPath(name).with_suffix(""))


@dataclass(frozen=True)
class TensorBoardExport:
    logdir: Path  # the run's folder: TensorBoard shows it as a run of the folder above
    event_file: Path
    scalars: dict[str, int]  # tag -> number of steps
    images: list[str]


def to_tensorboard(job: Mapping[str, Any], folder: str | Path, logdir: str | Path) -> TensorBoardExport:
    """Write the run's event file into ``logdir/<run label>`` (see :func:`run_label`).

    The run's folder holds this export alone: event files an earlier export of
    the same run left there are replaced, so exporting twice does not double
    every series.
    """
    check_finished(job)
    event_file_writer = _require("tensorboard.summary.writer.event_file_writer")
    event_pb2 = _require("tensorboard.compat.proto.event_pb2")
    summary_pb2 = _require("tensorboard.compat.proto.summary_pb2")
    from tensorboard.plugins.text.summary_v2 import text_pb

    series = epoch_series(job)
    finals = final_points(job, series)
    figures = _figures(job, folder)
    run_dir = Path(logdir) / run_label(job)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{run_dir}: cannot create the folder ({exc.strerror})") from None
    for old in run_dir.glob("events.out.tfevents.*"):
        old.unlink()

    # Steps ascend through the file: TensorBoard drops events that go back in step as a restart's leftovers.
    by_step: dict[int, list[tuple[str, Point]]] = {}
    for name, points in series.items():
        for point in points:
            by_step.setdefault(point.step, []).append((name, point))
    last_step = max(by_step, default=0)
    ended = _moment(job.get("finished_at")) or time.time()

    writer = event_file_writer.EventFileWriter(str(run_dir))
    try:
        for step in sorted(by_step):
            rows = by_step[step]
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=name, simple_value=point.value)
                                                 for name, point in rows])
            writer.add_event(event_pb2.Event(wall_time=rows[0][1].wall_time, step=step, summary=summary))
        closing = [summary_pb2.Summary.Value(tag=name, simple_value=point.value) for name, point in finals.items()]
        for name, path in figures:
            data = path.read_bytes()
            height, width, channels = png_size(data, path)
            image = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=data)
            closing.append(summary_pb2.Summary.Value(tag=figure_tag(name), image=image))
        spec_text = "```json\n" + json.dumps(job.get("spec") or {}, indent=2, sort_keys=True) + "\n```"
        closing += text_pb("spec", spec_text).value
        writer.add_event(event_pb2.Event(wall_time=ended, step=last_step, summary=summary_pb2.Summary(value=closing)))
    finally:
        writer.close()
    event_file = next(run_dir.glob("events.out.tfevents.*"))
    scalars = {name: len(points) for name, points in series.items()} | {name: 1 for name in finals}
    return TensorBoardExport(run_dir, event_file, scalars, [figure_tag(name) for name, _ in figures])


# -- MLflow ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowExport:
    run_id: str
    experiment_id: str
    experiment: str
    tracking_uri: str
    artifact_uri: str


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def mlflow_artifact_path(artifact: Mapping[str, Any]) -> str | None:
    """Where a file goes in the MLflow run: the model's files under ``model/``, the others at their own
    folders (``figures``); None is the run's artifact root. Thumbnails stay out: they repeat the figures."""
    if artifact.get("kind") in MODEL_KINDS:
        return MODEL_ARTIFACT_PATH
    parent = str(PurePosixPath(artifact["name"]).parent)
    return None if parent == "." else parent


def to_mlflow(job: Mapping[str, Any], folder: str | Path, *, tracking_uri: str | None = None,
              experiment: str = DEFAULT_EXPERIMENT, source_url: str | None = None) -> MlflowExport:
    """Log the run as one MLflow run in ``experiment`` (created when missing) at ``tracking_uri``
    (None: MLflow's own default, MLFLOW_TRACKING_URI first); ``source_url`` is recorded as a tag.

    An export that fails half way deletes the MLflow run it started, so no partial run is left looking whole.
    """
    check_finished(job)
    _require("mlflow")
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    files = [(artifact, path) for artifact, path in local_artifacts(job, folder)
             if artifact.get("kind") != ArtifactKind.THUMBNAIL.value]
    series = epoch_series(job)
    metrics = [Metric(name, point.value, _ms(point.wall_time), point.step)
               for name, points in series.items() for point in points]
    metrics += [Metric(name, point.value, _ms(point.wall_time), point.step)
                for name, point in final_points(job, series).items()]
    params = [Param(name, value) for name, value in flat_params(job.get("spec") or {}).items()]
    tags = {"latentforge.job_id": job["id"], "latentforge.kind": job.get("kind", ""),
            "latentforge.state": job.get("state", "")}
    if job.get("tags"):
        tags["latentforge.tags"] = ", ".join(job["tags"])
    if job.get("parent"):
        tags["latentforge.parent"] = job["parent"]
    if source_url:
        tags["latentforge.source"] = source_url
    if job.get("note"):
        tags["mlflow.note.content"] = job["note"]

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage != "active":
            raise ExportError(f"MLflow experiment {experiment!r} is deleted: restore it or choose another --experiment")
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(experiment_id, start_time=_ms(_moment(job.get("started_at"))), tags=tags,
                                run_name=job.get("name") or job["id"])
    except MlflowException as exc:
        raise ExportError(f"MLflow at {tracking_uri or 'its default tracking URI'}: {exc.message}") from None
    run_id = run.info.run_id
    try:
        for batch in _batches(params, MLFLOW_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=batch)
        for batch in _batches(metrics, MLFLOW_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch)
        for artifact, path in files:
            client.log_artifact(run_id, str(path), mlflow_artifact_path(artifact))
        client.set_terminated(run_id, MLFLOW_STATUS[job["state"]], end_time=_ms(_moment(job.get("finished_at"))))
    except BaseException as exc:
        client.delete_run(run_id)
        if isinstance(exc, MlflowException):
            raise ExportError(f"MLflow run {run_id}: {exc.message} (the half-made run was deleted)") from None
        raise
    return MlflowExport(run_id, experiment_id, experiment, client.tracking_uri, run.info.artifact_uri)


def describe(export: TensorBoardExport | MlflowExport) -> str:
    """One line for the command to print: where the export went and how to open it."""
    if isinstance(export, TensorBoardExport):
        return (f"wrote {len(export.scalars)} scalar series and {len(export.images)} images to {export.logdir}"
                f"; view with: tensorboard --logdir {export.logdir.parent}")
    return (f"MLflow run {export.run_id} in experiment {export.experiment!r} at {export.tracking_uri}"
            f" (artifacts {export.artifact_uri})")

