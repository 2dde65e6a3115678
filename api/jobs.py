"""Jobs and artifacts over JSON: submit, list, show, cancel, follow progress, download.

The handlers translate HTTP to the job service (shared/service.py) and back;
the service's errors become problem documents in api/errors.py.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.context import API_PREFIX, services
from api.errors import Problem
from api.schemas import job_out
from api.streams import MAX_JOBS_PER_STREAM, TooManyStreams, stream_events
from shared.errors import JobNotFound, QueryError, SpecError
from shared.search import PAGE_PARAMETERS, parse_filter
from shared.service import parse_id

bp = Blueprint("jobs", __name__)
log = logging.getLogger("latentforge.api")

IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")


def read_json_body() -> Any:
    if not request.is_json:
        raise Problem(415, "Unsupported Media Type", "the request body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # 413 above MAX_CONTENT_LENGTH
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "Bad Request", f"the request body is not valid JSON: {exc}", slug="invalid-json") from None


def page_arguments(pairs: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The list filters of a request's query string (or of ``pairs``), for JobService.page (GET /jobs and the
    runs page).

    A parameter neither knows is a 400 naming it: a misspelt filter must not quietly show every run.
    """
    pairs = list(request.args.items(multi=True)) if pairs is None else pairs
    first = {name: value for name, value in reversed(pairs)}
    return {**{name: first.get(name) for name in PAGE_PARAMETERS}, "where": parse_filter(pairs)}


def flag(name: str) -> bool:
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise QueryError([(name, f"must be true or false, got {value[:20]!r}")])
    return value in ("true", "1")


@bp.post("/jobs")
def create_job() -> Any:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise QueryError([("Idempotency-Key", "must be 1 to 200 printable ASCII characters")])
    job, replayed = services().jobs.submit(read_json_body(), key)
    response = jsonify(job_out(job, API_PREFIX))
    response.status_code = 200 if replayed else 201
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/jobs")
def list_jobs() -> Any:
    page = services().jobs.page(**page_arguments())
    return jsonify({"items": [job_out(j, API_PREFIX, history=False) for j in page.items], "next_cursor": page.next_cursor})


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> Any:
    return jsonify(job_out(services().jobs.get(job_id), API_PREFIX))


@bp.patch("/jobs/<job_id>")
def edit_job(job_id: str) -> Any:
    return jsonify(job_out(services().jobs.edit(job_id, read_json_body()), API_PREFIX))


@bp.post("/jobs/<job_id>/archive")
def archive_job(job_id: str) -> Any:
    return jsonify(job_out(services().jobs.archive(job_id), API_PREFIX))


@bp.post("/jobs/<job_id>/restore")
def restore_job(job_id: str) -> Any:
    return jsonify(job_out(services().jobs.restore(job_id), API_PREFIX))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> Any:
    services().jobs.delete(job_id, cascade=flag("cascade"))
    return Response(status=204)


@bp.post("/jobs/bulk")
def bulk_jobs() -> Any:
    body = read_json_body()
    if not isinstance(body, dict) or set(body) - {"action", "ids", "cascade"}:
        raise SpecError([("(body)", "must be a JSON object with 'action', 'ids' and optionally 'cascade'")])
    cascade = body.get("cascade", False)
    if not isinstance(cascade, bool):
        raise SpecError([("cascade", "must be true or false")])
    return jsonify({"results": services().jobs.bulk(body.get("action"), body.get("ids"), cascade)})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Any:
    response = jsonify(job_out(services().jobs.cancel(job_id), API_PREFIX))
    response.status_code = 202
    return response


def event_response(job_ids: list[str], history: bool = True, *, must_exist: bool = False) -> Response:
    svc = services()
    try:
        events = stream_events(svc.watcher, svc.sessions, job_ids, svc.settings.stream_max_seconds, history)
    except TooManyStreams as exc:
        raise Problem(503, "Service Unavailable", f"{exc}; retry shortly", slug="too-many-streams",
                      headers={"Retry-After": "10"}) from None
    if events is None and must_exist:
        raise JobNotFound(f"no job with id {job_ids[0]}")
    return Response(events or iter(()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    return event_response([parse_id(job_id)], must_exist=True)


@bp.get("/events")
def many_job_events() -> Response:
    """One stream for many jobs (a page's live rows): ?jobs=id,id,...[&history=1]"""
    raw = [part for part in request.args.get("jobs", "").split(",") if part]
    if not 1 <= len(raw) <= MAX_JOBS_PER_STREAM:
        raise QueryError([("jobs", f"give 1 to {MAX_JOBS_PER_STREAM} job ids, comma-separated")])
    job_ids = []
    for value in raw:
        try:
            job_ids.append(str(uuid.UUID(value)))
        except ValueError:
            raise QueryError([("jobs", f"{value[:40]!r} is not a job id (a UUID)")]) from None
    history = request.args.get("history", "0")
    if history not in ("0", "1"):
        raise QueryError([("history", f"must be 0 or 1, got {history[:20]!r}")])
    return event_response(list(dict.fromkeys(job_ids)), history == "1")

