"""The HTTP API and the gallery: a Flask app factory. Never imports torch."""

from __future__ import annotations

from flask import Flask

from api.context import API_PREFIX, Services
from api.streams import JobWatcher
from shared.db import make_engine, make_sessionmaker
from shared.jobstore import JobStore
from shared.kinds import load_plugins
from shared.migrate import check_schema
from shared.queue import make_celery, publish
from shared.service import JobService
from shared.settings import Settings, load_settings
from shared.storage import open_store

MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings | None = None, *, check_database: bool = True) -> Flask:
    settings = settings or load_settings()
    load_plugins(settings.plugins)
    engine = make_engine(settings.database_url)
    artifacts = open_store(settings)
    if check_database:
        check_schema(engine)
        artifacts.check()
    celery_app = make_celery(settings)
    sessions = make_sessionmaker(engine)
    store = JobStore(sessions, lambda job_id, queue: publish(celery_app, job_id, queue), settings.max_attempts)
    services = Services(
        settings=settings, engine=engine, sessions=sessions, celery=celery_app, store=store, artifacts=artifacts,
        jobs=JobService(sessions, store, artifacts), watcher=JobWatcher(sessions, settings.max_streams),
    )

    app = Flask(__name__)
    app.config.update(LATENTFORGE=services, MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)

    from api.artifacts import bp as artifacts_bp
    from api.artifacts import redirect_origin
    from api.auth import authenticate_request, configure_sessions
    from api.errors import register_error_handlers
    from api.gallery import bp as gallery_bp
    from api.gallery import content_security_policy
    from api.health import bp as health_bp
    from api.jobs import bp as jobs_bp
    from api.metrics import install as install_metrics
    from api.openapi import bp as openapi_bp
    from api.openapi import docs_bp

    register_error_handlers(app)
    configure_sessions(app, settings.api_token)
    install_metrics(app, services)  # before the token check: refused requests are timed too
    app.before_request(authenticate_request)
    app.register_blueprint(jobs_bp, url_prefix=API_PREFIX)
    app.register_blueprint(artifacts_bp, url_prefix=API_PREFIX)
    app.register_blueprint(health_bp, url_prefix=API_PREFIX)
    app.register_blueprint(openapi_bp, url_prefix=API_PREFIX)
    app.register_blueprint(docs_bp)
    app.register_blueprint(gallery_bp)
    app.config["CSP"] = content_security_policy(redirect_origin(artifacts, settings.artifact_redirect))
    return app


__all__ = ["API_PREFIX", "create_app"]
