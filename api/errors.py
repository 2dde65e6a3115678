"""Errors as application/problem+json (RFC 9457); never a stack trace to the client."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from shared.db import is_transient_db_error
from shared.errors import (IdempotencyKeyReused, JobConflict, JobNotFinished, JobNotFound, LatentForgeError,
                           ParentNotReady, RunHasChildren, SpecError)

log = logging.getLogger("latentforge.api")

PROBLEM_TYPE = "https://latentforge.dev/problems/"
RETRY_AFTER_S = 5


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, slug: str | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers or {}
        self.slug = slug or title.lower().replace(" ", "-")


# Each user-fixable error class of shared/errors.py: one status (on the class), one title and type.
USER_ERRORS: tuple[tuple[type[LatentForgeError], str, str], ...] = (
    (SpecError, "Invalid request", "validation"),
    (JobNotFound, "Not Found", "not-found"),
    (ParentNotReady, "Conflict", "parent-not-ready"),
    (JobNotFinished, "Conflict", "job-not-finished"),
    (RunHasChildren, "Conflict", "has-children"),
    (JobConflict, "Conflict", "job-finished"),
    (IdempotencyKeyReused, "Idempotency key reused", "idempotency-key-reused"),
    (LatentForgeError, "Bad Request", "bad-request"),
)


def user_problem(exc: LatentForgeError) -> Problem:
    title, slug = next((title, slug) for cls, title, slug in USER_ERRORS if isinstance(exc, cls))
    errors = [{"field": name, "message": message} for name, message in exc.errors] if isinstance(exc, SpecError) else None
    return Problem(exc.status, title, str(exc), errors=errors, slug=slug)


def wants_html() -> bool:
    """Gallery pages answer errors with a page; the API (and /metrics, for Prometheus) always with problem+json."""
    if request.path.startswith("/api/") or request.path == "/metrics":
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json", "application/problem+json"])
    return best == "text/html"


def problem_response(status: int, title: str, detail: str, *, slug: str | None = None,
                     errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> Response:
    if wants_html():
        from flask import render_template

        html = render_template("error.html", status=status, title=title, detail=detail)
        response = Response(html, status=status, mimetype="text/html")
        for key, value in (headers or {}).items():
            if key != "WWW-Authenticate":  # no browser login prompt for a form's token
                response.headers[key] = value
        return response
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + (slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if errors is not None:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, slug=exc.slug, errors=exc.errors, headers=exc.headers)

    @app.errorhandler(LatentForgeError)
    def _user_error(exc: LatentForgeError) -> Response:
        return _problem(user_problem(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        detail = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body is larger than {limit:,} bytes" if limit else detail
        response = problem_response(exc.code or 500, exc.name, detail)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError) -> Response:
        # No SQL text or server detail reaches the client: the log has them.
        if is_transient_db_error(exc):
            log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
            return problem_response(503, "Service Unavailable", "the database is unavailable; retry shortly",
                                    slug="database-unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})
        log.exception("database error on %s %s", request.method, request.path)
        return problem_response(500, "Internal Server Error", "the server failed to answer this request; it has been logged")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "Internal Server Error", "the server failed to answer this request; it has been logged")
