"""What a request handler reaches the rest of the system through (flaskr keeps ``get_db`` in a module of its own)."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from api.streams import JobWatcher
from shared.jobstore import JobStore
from shared.service import JobService
from shared.settings import Settings
from shared.storage import ArtifactStore

API_PREFIX = "/api/v1"


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    celery: Celery
    store: JobStore
    artifacts: ArtifactStore
    jobs: JobService
    watcher: JobWatcher


def services() -> Services:
    return current_app.config["LATENTFORGE"]
