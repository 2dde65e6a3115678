"""The one settings object, read from ``LATENTFORGE_*`` environment variables.

API, worker and CLI all build their configuration from :func:`load_settings`,
so a deployment is described by environment variables alone. Unset database
and broker mean the embedded defaults: a SQLite file and Celery's filesystem
transport, both under ``LATENTFORGE_HOME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ENV_PREFIX = "LATENTFORGE_"


class SettingsError(ValueError):
    """A LATENTFORGE_* variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    artifact_dir: Path
    data_dir: Path
    api_token: str | None
    api_url: str = "http://127.0.0.1:8000"
    # Delivery: a running job's worker refreshes heartbeat_at every
    # heartbeat_seconds; after stale_after_seconds without one the job is
    # requeued (resuming from its last epoch), at most max_attempts runs in all.
    heartbeat_seconds: float = 5.0
    stale_after_seconds: float = 60.0
    max_attempts: int = 3
    # Workers may fetch a missing dataset with torchvision (needs internet).
    allow_download: bool = False
    # How often one worker compares the broker's messages with the queued
    # jobs; a job missing from the broker in two checks in a row is republished.
    broker_check_seconds: float = 15.0
    # Warm shutdown (SIGTERM): the running job may finish its epoch for this
    # long, then it is checkpointed and handed back to the queue.
    shutdown_grace_seconds: float = 30.0
    # Intra-op threads of each job; None: the CPUs this worker may use divided
    # by the live workers on its host.
    torch_threads: int | None = None
    # Scheduling priority of workers (nice), so that an API on the same host stays responsive.
    worker_nice: int = 10
    # With a token set: let anyone read (GET) without it.
    public_read: bool = False
    # Progress streams (SSE) per API process, and the longest one may stay open.
    max_streams: int = 1000
    stream_max_seconds: float = 600.0
    # Modules that register more job kinds (shared/kinds.py), imported by API, worker and CLI.
    plugins: tuple[str, ...] = ()

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem transport (embedded default only)."""
        return self.home / "broker"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(ENV_PREFIX + name, "").strip()
        return value or None

    home = Path(get("HOME") or "./var").expanduser().resolve()
    database_url = get("DATABASE_URL") or f"sqlite:///{home / 'latentforge.db'}"
    broker_url = get("BROKER_URL") or "filesystem://"
    artifact_dir = Path(get("ARTIFACT_DIR") or home / "artifacts").expanduser().resolve()
    data_dir = Path(get("DATA_DIR") or "./data").expanduser().resolve()
    def number(name: str, default: float, kind: type = float, minimum: float = 0.0) -> float:
        raw = get(name)
        if raw is None:
            return default
        try:
            if not raw.isascii():
                raise ValueError(raw)
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
        if value <= minimum:
            raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} must be greater than {minimum:g}")
        return value

    heartbeat = number("HEARTBEAT_SECONDS", 5.0)
    stale_after = number("STALE_AFTER_SECONDS", max(60.0, 6 * heartbeat))
    if stale_after <= 2 * heartbeat:
        raise SettingsError(
            f"{ENV_PREFIX}STALE_AFTER_SECONDS ({stale_after:g}) must exceed twice"
            f" {ENV_PREFIX}HEARTBEAT_SECONDS ({heartbeat:g})"
        )
    def flag(name: str) -> bool:
        return (get(name) or "").lower() in ("1", "true", "yes")

    nice = get("WORKER_NICE")
    if nice is not None and not (nice.lstrip("-").isdigit() and nice.isascii() and -20 <= int(nice) <= 19):
        raise SettingsError(f"{ENV_PREFIX}WORKER_NICE={nice!r} must be a whole number from -20 to 19")
    threads = get("TORCH_THREADS")
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        artifact_dir=artifact_dir,
        data_dir=data_dir,
        api_token=get("API_TOKEN"),
        api_url=(get("API_URL") or "http://127.0.0.1:8000").rstrip("/"),
        heartbeat_seconds=heartbeat,
        stale_after_seconds=stale_after,
        max_attempts=int(number("MAX_ATTEMPTS", 3, int)),
        allow_download=flag("ALLOW_DOWNLOAD"),
        broker_check_seconds=number("BROKER_CHECK_SECONDS", 15.0),
        shutdown_grace_seconds=number("SHUTDOWN_GRACE_SECONDS", 30.0),
        torch_threads=int(number("TORCH_THREADS", 1, int)) if threads is not None else None,
        worker_nice=int(nice) if nice is not None else 10,
        public_read=flag("PUBLIC_READ"),
        max_streams=int(number("MAX_STREAMS", 1000, int)),
        stream_max_seconds=number("STREAM_MAX_SECONDS", 600.0),
        plugins=tuple(part.strip() for part in (get("PLUGINS") or "").split(",") if part.strip()),
    )
