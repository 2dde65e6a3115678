"""The HTTP API (and, later, the gallery): a Flask app factory. Never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.streams import JobWatcher
from shared.db import make_engine, make_sessionmaker
from shared.jobstore import JobStore
from shared.migrate import check_schema
from shared.queue import make_celery, publish
from shared.settings import Settings, load_settings

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 1 << 20


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    celery: Celery
    store: JobStore
    watcher: JobWatcher


def create_app(settings: Settings | None = None, *, check_database: bool = True) -> Flask:
    settings = settings or load_settings()
    engine = make_engine(settings.database_url)
    if check_database:
        check_schema(engine)
    celery_app = make_celery(settings)
    sessions = make_sessionmaker(engine)
    services = Services(
        settings=settings, engine=engine, sessions=sessions, celery=celery_app,
        store=JobStore(sessions, lambda job_id, queue: publish(celery_app, job_id, queue), settings.max_attempts),
        watcher=JobWatcher(sessions, settings.max_streams),
    )

    app = Flask(__name__)
    app.config.update(LATENTFORGE=services, MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)

    from api.auth import authenticate_request, configure_sessions
    from api.errors import register_error_handlers
    from api.gallery import bp as gallery_bp
    from api.health import bp as health_bp
    from api.jobs import bp as jobs_bp
    from api.openapi import bp as openapi_bp

    register_error_handlers(app)
    configure_sessions(app, settings.api_token)
    app.before_request(authenticate_request)
    app.register_blueprint(jobs_bp, url_prefix=API_PREFIX)
    app.register_blueprint(health_bp, url_prefix=API_PREFIX)
    app.register_blueprint(openapi_bp, url_prefix=API_PREFIX)
    app.register_blueprint(gallery_bp)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()

    return app


def services() -> Services:
    from flask import current_app

    return current_app.config["LATENTFORGE"]


def db() -> Session:
    if "db" not in g:
        g.db = services().sessions()
    return g.db
