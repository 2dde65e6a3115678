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


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    artifact_dir: Path
    data_dir: Path
    api_token: str | None

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
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        artifact_dir=artifact_dir,
        data_dir=data_dir,
        api_token=get("API_TOKEN"),
    )
