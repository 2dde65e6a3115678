"""The one settings object, read from ``LATENTFORGE_*`` environment variables.

API, worker and CLI all build their configuration from :func:`load_settings`,
so a deployment is described by environment variables alone. Unset database
and broker mean the embedded defaults: a SQLite file and Celery's filesystem
transport, both under ``LATENTFORGE_HOME``. Each field is declared once,
with its type and range; a value that does not fit is a :class:`SettingsError`
naming the variable. A blank variable counts as unset.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

ENV_PREFIX = "LATENTFORGE_"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class SettingsError(ValueError):
    """A LATENTFORGE_* variable has a value that cannot be used."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", validate_default=True)

    home: Path = Path("./var")
    database_url: str = ""  # default: a SQLite file under home
    broker_url: str = "filesystem://"  # Celery's filesystem transport under home
    # Celery's task events, worker heartbeats and remote control (Flower, `celery inspect`), with a Redis broker.
    celery_events: bool = True
    artifact_dir: Path = Path()  # default: home/artifacts
    # Where artifacts live (shared/storage.py): file:///path, or s3://bucket/prefix for workers on hosts that
    # share no disk (credentials from boto3's chain; s3_endpoint_url for SeaweedFS, MinIO, ...). Unset: artifact_dir.
    artifact_url: str = ""
    s3_endpoint_url: str | None = None
    # Serve S3 artifacts by a 302 to a short-lived presigned URL instead of streaming them through the API.
    artifact_redirect: bool = False
    # How long uploads and downloads retry an object store that does not answer before the attempt gives up.
    store_patience_seconds: PositiveFloat = 60.0
    # A remote store receives a running job's resume state at most this often (the newest state wins; 0: every
    # epoch). A job whose worker dies resumes from a state at most this old, bit for bit all the same.
    resume_upload_seconds: Annotated[float, Field(ge=0)] = 10.0
    # Where a worker on an object store writes an attempt's files before uploading them.
    scratch_dir: Path = Path()  # default: home/scratch
    data_dir: Path = Path("./data")
    # What workers compute once and reuse: the scorecard's judge classifiers (keyed by a data checksum).
    cache_dir: Path = Path()  # default: home/cache
    api_token: str | None = None
    api_url: str = "http://127.0.0.1:8000"
    # Delivery: a running job's worker refreshes heartbeat_at every
    # heartbeat_seconds; after stale_after_seconds without one the job is
    # requeued (resuming from its last epoch), at most max_attempts runs in all.
    heartbeat_seconds: PositiveFloat = 5.0
    stale_after_seconds: PositiveFloat = 60.0  # default: max(60, 6 heartbeats)
    max_attempts: PositiveInt = 3
    # Workers may fetch a missing dataset with torchvision (needs internet).
    allow_download: bool = False
    # How often one worker compares the broker's messages with the queued
    # jobs; a job missing from the broker in two checks in a row is republished.
    broker_check_seconds: PositiveFloat = 15.0
    # Warm shutdown (SIGTERM): the running job may finish its epoch for this
    # long, then it is checkpointed and handed back to the queue.
    shutdown_grace_seconds: PositiveFloat = 30.0
    # Intra-op threads of each job; None: the CPUs this worker may use divided
    # by the live workers on its host.
    torch_threads: PositiveInt | None = None
    # Scheduling priority of workers (nice), so that an API on the same host stays responsive.
    worker_nice: Annotated[int, Field(ge=-20, le=19)] = 10
    # With a token set: let anyone read (GET) without it.
    public_read: bool = False
    # With a token set: let anyone scrape GET /metrics without it (Prometheus on a trusted network).
    public_metrics: bool = False
    # Log lines of API, worker and supervisor: text, or json (one object per line, with the job's id and attempt).
    log_format: Literal["text", "json"] = "text"
    # Progress streams (SSE) per API process, and the longest one may stay open.
    max_streams: PositiveInt = 1000
    stream_max_seconds: PositiveFloat = 600.0
    # Modules that register more job kinds (shared/kinds.py), imported by API, worker and CLI.
    plugins: tuple[str, ...] = ()
    # The API under an external gunicorn (api/gunicorn_conf.py, docker-compose.yml).
    bind: str = "0.0.0.0:8000"
    api_workers: PositiveInt = 2
    api_worker_class: Literal["gevent", "gthread"] = "gevent"
    api_threads: PositiveInt = 8

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, values: dict[str, Any]) -> dict[str, Any]:
        home = Path(values.get("home") or "./var").expanduser().resolve()
        values.setdefault("database_url", f"sqlite:///{home / 'latentforge.db'}")
        url = str(values.get("artifact_url") or "")
        if url.startswith("file:///"):  # one folder, whichever of the two names it
            values["artifact_dir"] = urlsplit(url).path
        values.setdefault("artifact_dir", home / "artifacts")
        values.setdefault("cache_dir", home / "cache")
        values.setdefault("scratch_dir", home / "scratch")
        if "stale_after_seconds" not in values:
            try:
                values["stale_after_seconds"] = max(60.0, 6 * float(values.get("heartbeat_seconds", 5.0)))
            except ValueError:
                pass  # the heartbeat's own error names it
        return {**values, "home": home}

    @field_validator("artifact_dir", "data_dir", "cache_dir", "scratch_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("artifact_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme == "file":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError("a file URL needs an absolute path: file:///var/lib/latentforge/artifacts")
        elif parts.scheme == "s3":
            if not BUCKET_NAME.fullmatch(parts.netloc):
                raise ValueError(f"{parts.netloc!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
            if parts.query or parts.fragment:
                raise ValueError("an s3:// URL takes a bucket and an optional key prefix, nothing else")
        else:
            raise ValueError("must start with file:// or s3:// (e.g. s3://latentforge/artifacts)")
        return value.rstrip("/")

    @field_validator("s3_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8333")
        return value.rstrip("/") if value else None

    @field_validator("api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @field_validator("heartbeat_seconds", "stale_after_seconds", "max_attempts", "torch_threads", "worker_nice",
                     "max_streams", "stream_max_seconds", "broker_check_seconds", "shutdown_grace_seconds",
                     "api_workers", "api_threads", "store_patience_seconds", "resume_upload_seconds", mode="before")
    @classmethod
    def _ascii_number(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.isascii():  # int() takes other scripts' digits
            raise ValueError("must be written with ASCII digits")
        return value

    @model_validator(mode="after")
    def _stale_after_two_heartbeats(self) -> "Settings":
        if self.stale_after_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(f"must exceed twice {ENV_PREFIX}HEARTBEAT_SECONDS ({self.heartbeat_seconds:g})")
        return self

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def uses_object_store(self) -> bool:
        return self.artifact_url.startswith("s3://")

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem transport (embedded default only)."""
        return self.home / "broker"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values = {key[len(ENV_PREFIX):].lower(): value.strip() for key, value in env.items()
              if key.startswith(ENV_PREFIX) and value.strip()}
    try:
        return Settings.model_validate({k: v for k, v in values.items() if k in Settings.model_fields})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            name = str(err["loc"][0]) if err["loc"] else "stale_after_seconds"
            problems.append(f"{ENV_PREFIX}{name.upper()}={values.get(name, '')!r}: {err['msg']}")
        raise SettingsError("; ".join(problems)) from None
