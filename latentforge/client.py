"""The Python client of the LatentForge HTTP API (standard library only; the ``latentforge`` command uses it).

    from latentforge import Client

    client = Client()  # LATENTFORGE_API_URL and LATENTFORGE_API_TOKEN, else http://127.0.0.1:8000
    run = client.train(model="vae", latent_dim=2, epochs=5, name="vae z=2", tags=["demo"])
    run.wait(progress=True)
    print(run.state, run.metrics)
    files = run.download("runs/vae-z2")          # every artifact, checked against its sha256
    decoder = run.load_decoder()                 # a torch module (needs PyTorch): latent points -> images

Job requests are validated here by the same pydantic specs the API uses
(:mod:`shared.kinds`), so a bad field fails before anything is sent, with a
:class:`~shared.errors.SpecError` naming it (``spec.latent_dim: Input should
be greater than or equal to 1``). A kind this process does not know (a plugin
loaded by the server only) is sent as it is and the server validates it.
Every error the API answers is an :class:`ApiError` carrying the RFC 7807
problem document; an API that does not answer is an :class:`ApiUnreachable`.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TYPE_CHECKING, Union

from shared import humane  # standard library only, like this module

if TYPE_CHECKING:
    from latentforge.decoder import LatentDecoder

API_PREFIX = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_STATES = ("succeeded", "failed", "cancelled")
MAX_PAGE = 200  # the API's largest page
# Answers that mean "try again shortly" (a database blip, a restarting server) while waiting on a run.
TRANSIENT_STATUSES = (0, 502, 503, 504)
# How long Run.wait keeps polling through transient errors before it gives up.
WAIT_PATIENCE_S = 60.0
# Where `latentforge up` records the address it serves at, under LATENTFORGE_HOME, while it runs.
ADDRESS_FILE = "api.url"

JobRef = Union[str, "Run"]  # a job id, or a Run (its id is used)
ProgressOption = Union[bool, None, Callable[["Run"], Any]]


# -- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    """The API answered with an error (``status`` >= 400), or could not be reached (``status`` 0).

    ``problem`` is the RFC 7807 document it answered (``type``, ``title``,
    ``status``, ``detail`` and, for invalid input, ``errors``: a list of
    ``{"field", "message"}``); empty when there was none.
    """

    def __init__(self, status: int, message: str, problem: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})

    @property
    def type(self) -> str:
        """The problem's type URI ('' if none), e.g. ``.../job-not-finished``."""
        return str(self.problem.get("type") or "")

    @property
    def errors(self) -> list[tuple[str, str]]:
        """The fields the API refused, as (field, message)."""
        return [(str(e.get("field", "")), str(e.get("message", ""))) for e in self.problem.get("errors") or []
                if isinstance(e, Mapping)]


class ApiUnreachable(ApiError):
    """Nothing answered at the API's address (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(0, self.describe("Client(url=...) or LATENTFORGE_API_URL"))

    def describe(self, how_to_point: str) -> str:
        """The message, with ``how_to_point`` saying how to name another address (the CLI says ``--url``)."""
        return (f"cannot reach the LatentForge API at {self.url}: {self.reason} (start it with `make run`,"
                f" or point at another address with {how_to_point})")


class ChecksumMismatch(Exception):
    """A downloaded file's bytes differ from the sha256 (or size) the API recorded; nothing was kept."""

    def __init__(self, name: str, expected: str, actual: str):
        super().__init__(f"{name}: downloaded bytes have sha256 {actual}, but the run records {expected};"
                         " the file was not kept")
        self.name = name
        self.expected = expected
        self.actual = actual


def _reason(exc: BaseException, timeout: float) -> str:
    """A one-line reason a connection failed, without errno numbers."""
    reason: Any = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(reason)) or type(reason).__name__


# -- progress ---------------------------------------------------------------------------------


def progress_bar(progress: Mapping[str, Any], width: int = 30) -> str:
    """One line for a job's progress: epochs and losses of training, steps of other work ('' if none yet)."""
    if progress.get("steps"):  # a job measured in named steps (an evaluation's properties, a sweep's children)
        step, steps = progress.get("step", 0), progress["steps"]
        filled = int(width * step / steps)
        return f"[{'#' * filled}{'.' * (width - filled)}] {step}/{steps} {progress.get('doing', '')}".rstrip()
    total, epoch = progress.get("total"), progress.get("epoch")
    if not total or epoch is None:
        return ""
    filled = int(width * epoch / total)
    line = f"[{'#' * filled}{'.' * (width - filled)}] epoch {epoch}/{total}"
    if "train_loss" in progress:
        line += f"  train {progress['train_loss']:.4f}  test {progress['test_loss']:.4f}"
    return line


class ProgressPrinter:
    """Shows a run's state and progress bar on ``stream``: redrawn in place on a terminal, a line per change
    otherwise. Call it with the run after each refresh, and :meth:`close` at the end."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.last: str | None = None

    def __call__(self, run: "Run") -> None:
        line = f"{run.state:<9} {progress_bar(run.progress)}".rstrip()
        if line == self.last:
            return
        self.stream.write(("\r" + line.ljust(90)) if self.tty else line + "\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()


# -- records ----------------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Artifact:
    """One file a run published; ``url`` is the API path it is served at."""

    id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    url: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Artifact":
        return cls(id=data["id"], name=data["name"], kind=data.get("kind", ""),
                   content_type=data.get("content_type", ""), size=int(data.get("size", 0)),
                   sha256=data.get("sha256", ""), url=data["url"])


@dataclass
class Run:
    """A job as the API last showed it; :meth:`refresh` reloads it. ``raw`` is the JSON it came from.

    ``parent_id`` is the job it works on (a model's embedding, a sweep's
    child); ``progress`` has ``epoch``/``total`` and the latest losses while a
    model trains, ``step``/``steps`` for other work; ``metrics`` the final
    numbers it ranks by.
    """

    id: str
    kind: str
    state: str
    name: str | None
    tags: list[str]
    spec: dict[str, Any]
    progress: dict[str, Any]
    metrics: dict[str, float]
    artifacts: list[Artifact]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_id: str | None
    archived: bool
    note: str | None
    error: dict[str, str] | None
    raw: dict[str, Any] = field(repr=False)
    client: "Client | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], client: "Client | None" = None) -> "Run":
        return cls(
            id=data["id"], kind=data["kind"], state=data["state"], name=data.get("name"),
            tags=list(data.get("tags") or []), spec=dict(data.get("spec") or {}),
            progress=dict(data.get("progress") or {}), metrics=dict(data.get("metrics") or {}),
            artifacts=[Artifact.from_json(a) for a in data.get("artifacts") or []],
            created_at=_when(data["created_at"]), started_at=_when(data.get("started_at")),  # type: ignore[arg-type]
            finished_at=_when(data.get("finished_at")), parent_id=data.get("parent"),
            archived=bool(data.get("archived", False)), note=data.get("note"), error=data.get("error"),
            raw=dict(data), client=client,
        )

    def _update(self, other: "Run") -> "Run":
        for name in self.__dataclass_fields__:
            if name != "client":
                setattr(self, name, getattr(other, name))
        return self

    def _api(self) -> "Client":
        if self.client is None:
            raise RuntimeError(f"run {self.id} is not bound to a Client; fetch it with Client.get")
        return self.client

    # -- state -----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: it will not change any more."""
        return self.state in FINISHED_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def duration(self, now: datetime | None = None) -> timedelta | None:
        """How long it ran (so far, while it runs); None before it started."""
        seconds = humane.run_time(self.raw, now)
        return None if seconds is None else timedelta(seconds=seconds)

    def eta(self, now: datetime | None = None) -> timedelta | None:
        """Time left while it runs, from the share of epochs (or steps) done so far; None when unknown."""
        seconds = humane.eta(self.raw, now)
        return None if seconds is None else timedelta(seconds=seconds)

    def artifact(self, name: str) -> Artifact:
        """The artifact called ``name`` (``model.safetensors``, ``figures/latent_scatter.png``, ...)."""
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise KeyError(f"run {self.id} has no artifact {name!r}; it has {', '.join(a.name for a in self.artifacts) or 'none'}")

    # -- actions ---------------------------------------------------------------------------

    def refresh(self) -> "Run":
        """Reload from the API; returns this run, updated."""
        return self._update(self._api().get(self.id))

    def wait(self, timeout: float | None = None, progress: ProgressOption = None,
             poll_interval: float = 0.5) -> "Run":
        """Poll until the run has finished (succeeded, failed or cancelled); returns this run, updated.

        ``progress``: None (default) draws a progress bar on stderr when
        stderr is a terminal; True draws it in any case (a line per change
        when not a terminal); False draws nothing; a callable is called with
        the run whenever its state or progress changes. Answers that mean
        "try again" (no connection, 502-504) are retried for up to a minute.
        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        printer: ProgressPrinter | None = None
        if callable(progress):
            report: Callable[[Run], Any] | None = progress
        elif progress or (progress is None and sys.stderr.isatty()):
            report = printer = ProgressPrinter(sys.stderr)
        else:
            report = None
        deadline = None if timeout is None else time.monotonic() + timeout
        trouble_since: float | None = None
        seen: Any = None
        try:
            while True:
                try:
                    self.refresh()
                    trouble_since = None
                except ApiError as exc:
                    if exc.status not in TRANSIENT_STATUSES:
                        raise
                    trouble_since = trouble_since or time.monotonic()
                    if time.monotonic() - trouble_since > WAIT_PATIENCE_S:
                        raise
                else:
                    now_seen = (self.state, json.dumps(self.progress, sort_keys=True, default=str))
                    if report is not None and now_seen != seen:
                        report(self)
                    seen = now_seen
                    if self.finished:
                        return self
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"run {self.id} is still {self.state} after {timeout:g} s")
                time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())))
        finally:
            if printer is not None:
                printer.close()

    def cancel(self) -> "Run":
        """Cancel it (a queued run never starts; a running one stops after its current batch)."""
        return self._update(self._api().cancel(self.id))

    def download(self, dest: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, Path]:
        """Every artifact (or those in ``names``) into folder ``dest``; see :meth:`Client.download`."""
        return self._api().download(self, dest, names)

    def load_decoder(self, device: str = "cpu") -> "LatentDecoder":
        """The trained decoder as a torch module; see :meth:`Client.load_decoder`."""
        return self._api().load_decoder(self, device)


@dataclass(frozen=True)
class Page:
    """One page of a job list; pass ``next_cursor`` back for the next (None: this was the last)."""

    items: list[Run]
    next_cursor: str | None


@dataclass(frozen=True)
class BulkResult:
    """One id's outcome in :meth:`Client.bulk`: ``status`` is what the single-job call would have answered."""

    id: str
    ok: bool
    status: int
    detail: str | None


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave as it is" in Client.update, where None means "clear"


def _job_id(job: JobRef) -> str:
    return job.id if isinstance(job, Run) else str(job)


def _query_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _spec_value(value: Any) -> str:
    """A ``spec.FIELD=VALUE`` value as the API reads it: JSON for numbers, lists, booleans; a string as it is."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _plain(value: Any) -> Any:
    """A spec value ready for JSON: a Run given for a job id becomes its id, tuples become lists."""
    if isinstance(value, Run):
        return value.id
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _safe_relative(name: str) -> PurePosixPath:
    """An artifact name as a path that stays inside the download folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"artifact name {name!r} could leave the download folder; not written")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def default_url() -> str:
    """LATENTFORGE_API_URL; else the address a running ``latentforge up`` (``make run``) under LATENTFORGE_HOME
    serves at; else http://127.0.0.1:8000."""
    from shared.settings import load_settings

    settings = load_settings()
    if "api_url" in settings.model_fields_set:
        return settings.api_url
    try:
        recorded = (settings.home / ADDRESS_FILE).read_text().strip()
    except OSError:
        return settings.api_url
    return recorded.rstrip("/") if recorded.startswith(("http://", "https://")) else settings.api_url


# -- the client -------------------------------------------------------------------------------


class Client:
    """A LatentForge API: submit, find, watch, tidy up and download runs.

    ``url`` defaults to LATENTFORGE_API_URL (then the address of a running
    ``latentforge up`` in this folder, then http://127.0.0.1:8000), ``token``
    to LATENTFORGE_API_TOKEN (pass ``""`` for none). Job arguments take a job
    id or a :class:`Run`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30):
        if url is None or token is None:
            from shared.settings import load_settings

            if url is None:
                url = default_url()
            if token is None:
                token = load_settings().api_token
        self.url = url.rstrip("/")
        self.token = token or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: Any = None, *, query: Sequence[tuple[str, Any]] = (),
              headers: Mapping[str, str] | None = None, accept: str = "application/json") -> Any:
        """Send a request to ``path`` (under /api/v1, or an absolute API path such as an artifact's url);
        returns the open response. Errors: ApiError with the problem document, ApiUnreachable."""
        url = self.url + (path if path.startswith(API_PREFIX + "/") else API_PREFIX + path)
        if query:
            url += "?" + urllib.parse.urlencode([(k, _query_value(v)) for k, v in query])
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:  # never sent on to a redirect's target (a presigned object-store URL)
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                problem = json.loads(raw)
                if not isinstance(problem, dict):
                    raise ValueError
                message = str(problem.get("detail") or problem.get("title") or exc)
            except ValueError:
                problem, message = {}, f"HTTP {exc.code} {exc.reason}"
            raise ApiError(exc.code, message, problem) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiUnreachable(self.url, _reason(exc, self.timeout)) from None

    def request(self, method: str, path: str, body: Any = None, *, query: Sequence[tuple[str, Any]] = (),
                headers: Mapping[str, str] | None = None) -> Any:
        """Any API call (``path`` under /api/v1); returns the decoded JSON answer (None for an empty one)."""
        try:
            with self._open(method, path, body, query=query, headers=headers) as response:
                payload = response.read()
        except (socket.timeout, TimeoutError, ConnectionError) as exc:  # the answer broke off
            raise ApiUnreachable(self.url, _reason(exc, self.timeout)) from None
        return json.loads(payload) if payload else None

    def _run(self, data: Any) -> Run:
        return Run.from_json(data, self)

    def health(self) -> dict[str, Any]:
        """GET /health: the database, broker, store and workers; an ApiError (503) when unhealthy."""
        return self.request("GET", "/health")

    # -- submitting ------------------------------------------------------------------------

    def submit(self, kind: str, spec: Mapping[str, Any] | None = None, *, name: str | None = None,
               tags: Iterable[str] = (), idempotency_key: str | None = None, **fields: Any) -> Run:
        """Queue a job of ``kind`` with ``spec`` and/or keyword fields (the fields win); returns the new run.

        The request is validated first by the kind's spec model, so a bad
        field raises :class:`~shared.errors.SpecError` naming it
        (``spec.epochs: ...``) before anything is sent. A job id field
        (``model_job``) takes a :class:`Run` too. With ``idempotency_key``,
        the same request again returns the run the first one made.
        """
        from shared.errors import SpecError
        from shared.kinds import KINDS
        from shared.specs import JobCreate

        body: dict[str, Any] = {"kind": kind, "spec": _plain({**(spec or {}), **fields}), "tags": list(tags)}
        if name is not None:
            body["name"] = name
        JobCreate.parse(body)  # name and tags, as the API checks them
        if kind in KINDS:  # a plugin kind that only the server loaded: the server validates it
            if KINDS[kind].internal:
                raise SpecError([("kind", f"{kind} jobs are made by the queue itself, not submitted")])
            KINDS[kind].parse(body["spec"])
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._run(self.request("POST", "/jobs", body, headers=headers))

    def train(self, *, name: str | None = None, tags: Iterable[str] = (), idempotency_key: str | None = None,
              **fields: Any) -> Run:
        """Train a model: ``model`` (ae, vae, beta_vae, aae), ``dataset``, ``latent_dim``, ``hidden``,
        ``epochs``, ``batch_size``, ``lr``, ``seed``, ``device``, ``preset`` and the model's own fields."""
        return self.submit("train", name=name, tags=tags, idempotency_key=idempotency_key, **fields)

    def embed(self, model_job: JobRef, *, name: str | None = None, tags: Iterable[str] = (),
              idempotency_key: str | None = None, **fields: Any) -> Run:
        """The codes of a dataset split under a trained model (``split``, ``limit``)."""
        return self.submit("embed", name=name, tags=tags, idempotency_key=idempotency_key, model_job=model_job,
                           **fields)

    def sample(self, model_job: JobRef, *, name: str | None = None, tags: Iterable[str] = (),
               idempotency_key: str | None = None, **fields: Any) -> Run:
        """Decode given latent points (``latent_coords``) or draws from the model's prior (``n``)."""
        return self.submit("sample", name=name, tags=tags, idempotency_key=idempotency_key, model_job=model_job,
                           **fields)

    def evaluate(self, model_job: JobRef, *, name: str | None = None, tags: Iterable[str] = (),
                 idempotency_key: str | None = None, **fields: Any) -> Run:
        """The latent-space scorecard of a trained model (``split``, ``limit``, ``properties``, ``seed``)."""
        return self.submit("evaluate", name=name, tags=tags, idempotency_key=idempotency_key, model_job=model_job,
                           **fields)

    def sweep(self, base: Mapping[str, Any] | None = None, grid: Mapping[str, Sequence[Any]] | None = None, *,
              name: str | None = None, tags: Iterable[str] = (), idempotency_key: str | None = None,
              **fields: Any) -> Run:
        """Train jobs over ``grid`` (field -> values) of one ``base`` train spec, each evaluated; also
        ``overrides``, ``seeds``, ``evaluate`` (True, False or evaluate fields)."""
        spec = {"base": dict(base or {}), "grid": {k: list(v) for k, v in (grid or {}).items()}}
        return self.submit("sweep", spec, name=name, tags=tags, idempotency_key=idempotency_key, **fields)

    def study(self, epochs: int = 50, seeds: int = 3, evaluate: Mapping[str, Any] | bool = True, *,
              name: str | None = None, tags: Iterable[str] = (), idempotency_key: str | None = None) -> Run:
        """The built-in study (shared/study.py): a sweep of every model on three settings plus a β frontier,
        all evaluated, then the seed document's claims judged."""
        from shared.study import study_spec

        return self.submit("sweep", study_spec(epochs=epochs, seeds=seeds, evaluate=evaluate), name=name,
                           tags=tags, idempotency_key=idempotency_key)

    # -- finding ---------------------------------------------------------------------------

    def get(self, job: JobRef) -> Run:
        """The run with this id (with its full progress history)."""
        return self._run(self.request("GET", f"/jobs/{_job_id(job)}"))

    def page(self, *, kind: str | None = None, state: str | None = None, parent: JobRef | None = None,
             tags: Iterable[str] = (), q: str | None = None, where: Mapping[str, Any] | None = None,
             created_after: datetime | date | str | None = None, created_before: datetime | date | str | None = None,
             archived: bool | Literal["all"] = False, sort: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> Page:
        """One page of runs matching every filter given (see :meth:`jobs`); ``limit`` 1..200 (default 50)."""
        query: list[tuple[str, Any]] = [(k, v) for k, v in (("kind", kind), ("state", state), ("q", q),
                                                            ("sort", sort), ("limit", limit), ("cursor", cursor))
                                        if v is not None and v != ""]
        if parent is not None:
            query.append(("parent", _job_id(parent)))
        query += [("tag", tag) for tag in ([tags] if isinstance(tags, str) else tags)]
        query += [(f"spec.{key}", _spec_value(value)) for key, value in (where or {}).items()]
        if created_after is not None:
            query.append(("created_after", created_after))
        if created_before is not None:
            query.append(("created_before", created_before))
        if archived is not False:
            query.append(("archived", "all" if archived == "all" else "1"))
        answer = self.request("GET", "/jobs", query=query)
        return Page([self._run(item) for item in answer["items"]], answer.get("next_cursor"))

    def jobs(self, *, kind: str | None = None, state: str | None = None, parent: JobRef | None = None,
             tags: Iterable[str] = (), q: str | None = None, where: Mapping[str, Any] | None = None,
             created_after: datetime | date | str | None = None, created_before: datetime | date | str | None = None,
             archived: bool | Literal["all"] = False, sort: str | None = None, limit: int | None = None,
             page_size: int = 50) -> Iterator[Run]:
        """Runs matching every filter given, newest first (or by ``sort``), fetched a page at a time.

        ``tags``: runs carrying every one of them; ``q``: a case-insensitive
        piece of the name; ``where``: spec fields and values
        (``{"model": "vae", "latent_dim": 2}``); ``created_after`` /
        ``created_before``: datetimes, dates or ISO strings (no zone: UTC);
        ``archived``: False (default) only runs not archived, True only
        archived ones, "all" both; ``sort``: ``-created`` (default),
        ``created`` or ``[-]metrics.<name>``; ``limit``: at most this many runs
        in all (None: every match).
        """
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            size = min(page_size, MAX_PAGE, left if left is not None else MAX_PAGE)
            page = self.page(kind=kind, state=state, parent=parent, tags=tags, q=q, where=where,
                             created_after=created_after, created_before=created_before, archived=archived,
                             sort=sort, limit=size, cursor=cursor)
            yield from page.items
            if left is not None:
                left -= len(page.items)
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    def list(self, **filters: Any) -> builtins.list[Run]:
        """:meth:`jobs` as a list (pass ``limit`` to bound it)."""
        return list(self.jobs(**filters))

    # -- changing --------------------------------------------------------------------------

    def cancel(self, job: JobRef) -> Run:
        """Cancel a run: a queued one never starts, a running one stops after its current batch."""
        return self._run(self.request("POST", f"/jobs/{_job_id(job)}/cancel", {}))

    def update(self, job: JobRef, *, name: str | None = UNSET, tags: Iterable[str] = UNSET,
               note: str | None = UNSET) -> Run:
        """Change a run's name, tags (the whole list) or free-text note; None clears a name or note, and
        what is not given stays."""
        body: dict[str, Any] = {}
        if name is not UNSET:
            body["name"] = name
        if tags is not UNSET:
            body["tags"] = [tags] if isinstance(tags, str) else list(tags)
        if note is not UNSET:
            body["note"] = note
        return self._run(self.request("PATCH", f"/jobs/{_job_id(job)}", body))

    def archive(self, job: JobRef) -> Run:
        """Hide a finished run and its descendants from lists (restorable); refused (409) while any runs."""
        return self._run(self.request("POST", f"/jobs/{_job_id(job)}/archive", {}))

    def restore(self, job: JobRef) -> Run:
        """Bring an archived run and its descendants back into lists."""
        return self._run(self.request("POST", f"/jobs/{_job_id(job)}/restore", {}))

    def delete(self, job: JobRef, cascade: bool = False) -> None:
        """Delete a finished run with its artifacts. A run with children needs ``cascade=True``, which
        deletes the whole subtree; refused (409) while any of it is queued or running."""
        self.request("DELETE", f"/jobs/{_job_id(job)}", query=[("cascade", "true")] if cascade else ())

    def bulk(self, action: Literal["archive", "restore", "delete"], jobs: Iterable[JobRef],
             cascade: bool = False) -> builtins.list[BulkResult]:
        """Archive, restore or delete up to 200 runs in one call; one result per id, in the order given
        (a refusal of one does not stop the others)."""
        body = {"action": action, "ids": [_job_id(job) for job in jobs], "cascade": cascade}
        answer = self.request("POST", "/jobs/bulk", body)
        return [BulkResult(r["id"], bool(r["ok"]), int(r["status"]), r.get("detail")) for r in answer["results"]]

    # -- files -----------------------------------------------------------------------------

    def download(self, job: JobRef, dest: str | os.PathLike, names: Iterable[str] | None = None
                 ) -> dict[str, Path]:
        """Every artifact of a run (or those called ``names``) into folder ``dest``, under their names
        (``figures/latent_scatter.png``); returns {name: path}.

        Each file is checked against the sha256 and size the run records: a
        mismatch raises :class:`ChecksumMismatch` and leaves no file behind
        (bytes are written beside the target and renamed into place only when
        they match). A file already there with the right sha256 is kept as is.
        """
        run = job if isinstance(job, Run) else self.get(job)
        wanted = None if names is None else set(names)
        chosen = [a for a in run.artifacts if wanted is None or a.name in wanted]
        if wanted is not None and (missing := wanted - {a.name for a in chosen}):
            raise KeyError(f"run {run.id} has no artifact {', '.join(sorted(missing))}")
        folder = Path(dest)
        paths: dict[str, Path] = {}
        for artifact in chosen:
            target = folder.joinpath(*_safe_relative(artifact.name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not (target.is_file() and target.stat().st_size == artifact.size
                    and _file_sha256(target) == artifact.sha256):
                self._fetch(artifact.url, target, artifact.name, artifact.sha256, artifact.size,
                            accept=artifact.content_type or "*/*")
            paths[artifact.name] = target
        return paths

    def _fetch(self, path: str, target: Path, label: str, sha256: str | None = None, size: int | None = None,
               accept: str = "*/*") -> Any:
        """Stream ``path`` into ``target`` through a temporary file beside it, renamed into place only when
        the bytes match ``sha256`` and ``size`` (when given); returns the response's headers."""
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._open("GET", path, accept=accept) as response, open(part, "wb") as out:
                digest, written = hashlib.sha256(), 0
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    written += len(chunk)
                    out.write(chunk)
                headers = response.headers
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise ChecksumMismatch(label, sha256, actual)
            if size is not None and written != size:
                raise ChecksumMismatch(label, f"{sha256} ({size} bytes)", f"{actual} ({written} bytes)")
            os.replace(part, target)
            return headers
        except (socket.timeout, TimeoutError, ConnectionError) as exc:  # the answer broke off
            raise ApiUnreachable(self.url, _reason(exc, self.timeout)) from None
        finally:
            part.unlink(missing_ok=True)

    def download_zip(self, job: JobRef, path: str | os.PathLike = ".") -> Path:
        """A finished run as one zip (every artifact plus ``manifest.json`` with their sha256s) at ``path``;
        a folder gets the server's file name (``<name>-<id8>.zip``). Each file in it is checked against the
        manifest before it is kept (:class:`ChecksumMismatch` otherwise). Returns the zip's path."""
        job_id = _job_id(job)
        target = Path(path)
        into_folder = target.is_dir()
        scratch = target if into_folder else target.parent
        scratch.mkdir(parents=True, exist_ok=True)
        fetched = scratch / f".{job_id}.{uuid.uuid4().hex[:8]}.zip"
        try:
            headers = self._fetch(f"/jobs/{job_id}/download", fetched, f"{job_id}.zip", accept="application/zip")
            _check_zip(fetched, job_id)
            if into_folder:
                target = target / _attachment_name(headers.get("Content-Disposition", ""), f"{job_id[:8]}.zip")
            os.replace(fetched, target)
        finally:
            fetched.unlink(missing_ok=True)
        return target

    def load_decoder(self, job: JobRef, device: str = "cpu") -> "LatentDecoder":
        """A trained model's decoder as a torch module: latent points of shape (N, latent_dim) in, images
        (N, height, width) out, the likelihood's mean (pixel values in [0, 1] for the Bernoulli models).

        ``job`` is a train job, or a job made from one (embed, sample,
        evaluate: its ``model_job``). Its ``config.json`` and
        ``model.safetensors`` are downloaded (checked against their sha256)
        and rebuilt by ``worker.checkpoint.load_model``. Needs PyTorch
        (``pip install 'latentforge[worker]'``); ImportError otherwise.
        """
        try:
            from latentforge.decoder import LatentDecoder
        except ImportError as exc:
            raise ImportError(f"load_decoder needs PyTorch and LatentForge's worker extra ({exc});"
                              " install them with: pip install 'latentforge[worker]'") from exc
        run = job if isinstance(job, Run) else self.get(job)
        if run.kind != "train" and isinstance(run.spec.get("model_job"), str):
            run = self.get(run.spec["model_job"])
        if run.kind != "train":
            raise ValueError(f"run {run.id} is a {run.kind} job; a decoder comes from a train job")
        if not run.succeeded:
            raise ValueError(f"run {run.id} is {run.state}; its model is there once it has succeeded")
        with tempfile.TemporaryDirectory(prefix="latentforge-model-") as folder:
            self.download(run, folder, names=["config.json", "model.safetensors"])
            return LatentDecoder.from_folder(folder, device=device)


def _attachment_name(disposition: str, fallback: str) -> str:
    """The file name of a Content-Disposition header, reduced to a plain name."""
    match = re.search(r'filename="?([^";]+)"?', disposition)
    name = Path(match.group(1)).name if match else ""
    return name if name and name not in (".", "..") else fallback


def _check_zip(path: Path, label: str) -> None:
    """Every file of a run's zip has the size and sha256 its manifest.json records."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            for entry in manifest["files"]:
                digest, size = hashlib.sha256(), 0
                with archive.open(entry["name"]) as member:
                    while chunk := member.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                if digest.hexdigest() != entry["sha256"] or size != entry["size"]:
                    raise ChecksumMismatch(f"{label}: {entry['name']}", entry["sha256"], digest.hexdigest())
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ChecksumMismatch(label, "a zip with a manifest.json", f"an unreadable download ({exc})") from None
