"""Jobs and artifacts: submit, list, show, cancel, follow progress, download."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from pydantic import ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from api import API_PREFIX, db, services
from api.errors import Problem, validation_problem
from api.schemas import JobCreate, job_out
from api.streams import MAX_JOBS_PER_STREAM, TooManyStreams, stream_events
from shared.db import Artifact, Job, JobState
from shared.jobstore import JobConflict, JobNotFound
from shared.queue import queue_for
from shared.specs import JobKind, SpecError, parse_spec

bp = Blueprint("jobs", __name__)
log = logging.getLogger("latentforge.api")

LIST_DEFAULT, LIST_MAX = 50, 200
ASCII_NUMBER = re.compile(r"[0-9]{1,9}")  # str.isdigit() also accepts '²' and other digits int() refuses


def parse_uuid(value: str, what: str = "job") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Problem(404, "Not Found", f"{value!r} is not a {what} id (ids are UUIDs)", slug="not-found") from None


def get_job_or_404(job_id: str) -> Job:
    job = db().get(Job, parse_uuid(job_id), options=[selectinload(Job.artifacts)])
    if job is None:
        raise Problem(404, "Not Found", f"no job with id {job_id}", slug="not-found")
    return job


def read_json_body() -> Any:
    if not request.is_json:
        raise Problem(415, "Unsupported Media Type", "the request body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # 413 above MAX_CONTENT_LENGTH
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "Bad Request", f"the request body is not valid JSON: {exc}", slug="invalid-json") from None


def check_parent(kind: JobKind, spec: Any) -> str:
    """embed/sample need a succeeded train job whose model fits the request."""
    parent = db().get(Job, spec.model_job)
    if parent is None:
        raise validation_problem([("spec.model_job", f"no job with id {spec.model_job}")])
    if parent.kind != JobKind.TRAIN.value:
        raise validation_problem([("spec.model_job", f"job {parent.id} is a {parent.kind} job, not a train job")])
    if parent.state != JobState.SUCCEEDED.value:
        raise Problem(409, "Conflict", f"spec.model_job: job {parent.id} is {parent.state}; {kind.value} needs a"
                      " train job that has succeeded", slug="parent-not-ready")
    latent_dim = parent.spec.get("latent_dim")
    coords = getattr(spec, "latent_coords", None)
    if coords and latent_dim is not None and len(coords[0]) != latent_dim:
        raise validation_problem([("spec.latent_coords", f"points have {len(coords[0])} coordinates but the model's"
                                   f" latent space has {latent_dim}")])
    return parent.id


def request_fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_replay(key: str, fingerprint: str) -> Job | None:
    existing = db().scalars(
        select(Job).where(Job.idempotency_key == key).options(selectinload(Job.artifacts))
    ).one_or_none()
    if existing is not None and existing.request_hash != fingerprint:
        raise Problem(422, "Idempotency key reused", f"Idempotency-Key {key!r} was already used with a different request",
                      slug="idempotency-key-reused")
    return existing


IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")


def submit_job(body: Any, key: str | None = None) -> tuple[Job, bool]:
    """Validate and queue a job; returns (job, replayed). Raises Problem on bad input."""
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise validation_problem([("Idempotency-Key", "must be 1 to 200 printable ASCII characters")], status=400)
    fingerprint = request_fingerprint(body)
    if key and (existing := find_replay(key, fingerprint)) is not None:
        return existing, True
    if not isinstance(body, dict):
        raise validation_problem([("(body)", "must be a JSON object with 'kind' and 'spec'")])
    try:
        payload = JobCreate.model_validate(body)
    except ValidationError as exc:
        raise validation_problem(SpecError.from_validation(exc).errors) from None
    try:
        spec = parse_spec(payload.kind, payload.spec)
    except SpecError as exc:
        raise validation_problem(exc.errors) from None
    kind = JobKind(payload.kind)
    parent_id = check_parent(kind, spec) if kind is not JobKind.TRAIN else None
    spec_dict = spec.to_dict()
    session = db()
    try:
        job = services().store.create(
            session, kind=kind.value, spec=spec_dict, name=payload.name, tags=payload.tags, parent_id=parent_id,
            queue=queue_for(kind.value, spec_dict), idempotency_key=key, request_hash=fingerprint,
        )
    except IntegrityError:
        session.rollback()  # a concurrent retry with the same key won the insert
        if key and (existing := find_replay(key, fingerprint)) is not None:
            return existing, True
        raise
    return job, False


@bp.post("/jobs")
def create_job() -> Any:
    job, replayed = submit_job(read_json_body(), request.headers.get("Idempotency-Key"))
    response = jsonify(job_out(job, API_PREFIX))
    response.status_code = 200 if replayed else 201
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), str(uuid.UUID(job_id))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise validation_problem([("cursor", "is not a cursor this API returned")], status=400) from None


def before_cursor(created: datetime, job_id: str):
    """Rows after the cursor in (created_at, id) descending order, as one index bound."""
    return tuple_(Job.created_at, Job.id) < tuple_(created, job_id)


def _query_choice(name: str, allowed: list[str]) -> str | None:
    value = request.args.get(name) or None  # an empty value (a form's "any") means no filter
    if value is not None and value not in allowed:
        raise validation_problem([(name, f"must be one of {', '.join(allowed)}, got {value!r}")], status=400)
    return value


def page_of_jobs() -> tuple[list[Job], str | None]:
    """Newest-first jobs for the request's kind, state, parent, limit and cursor; and the next cursor.

    Bad parameters get a 400 naming the parameter. Shared by GET /jobs and the runs page.
    """
    query = select(Job).options(selectinload(Job.artifacts))
    if kind := _query_choice("kind", [k.value for k in JobKind]):
        query = query.where(Job.kind == kind)
    if state := _query_choice("state", [s.value for s in JobState]):
        query = query.where(Job.state == state)
    if parent := request.args.get("parent"):
        try:
            query = query.where(Job.parent_id == str(uuid.UUID(parent)))
        except ValueError:
            raise validation_problem([("parent", f"{parent!r} is not a job id (a UUID)")], status=400) from None
    raw_limit = request.args.get("limit", str(LIST_DEFAULT))
    if not ASCII_NUMBER.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= LIST_MAX:
        raise validation_problem([("limit", f"must be a whole number from 1 to {LIST_MAX}, got {raw_limit!r}")], status=400)
    limit = int(raw_limit)
    if cursor := request.args.get("cursor"):
        query = query.where(before_cursor(*decode_cursor(cursor)))
    jobs = list(db().scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return jobs[:limit], (encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None)


@bp.get("/jobs")
def list_jobs() -> Any:
    jobs, next_cursor = page_of_jobs()
    return jsonify({"items": [job_out(j, API_PREFIX, history=False) for j in jobs], "next_cursor": next_cursor})


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> Any:
    return jsonify(job_out(get_job_or_404(job_id), API_PREFIX))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Any:
    job_id = parse_uuid(job_id)
    try:
        services().store.cancel(job_id)
    except JobNotFound:
        raise Problem(404, "Not Found", f"no job with id {job_id}", slug="not-found") from None
    except JobConflict as exc:
        raise Problem(409, "Conflict", str(exc), slug="job-finished") from None
    session = db()
    session.expire_all()
    response = jsonify(job_out(get_job_or_404(job_id), API_PREFIX))
    response.status_code = 202
    return response


def event_response(job_ids: list[str], history: bool = True, *, must_exist: bool = False) -> Response:
    # The stream reads through its own short session: holding the request's
    # session meanwhile would take two pooled connections per stream, and a
    # burst of streams would deadlock the pool.
    svc = services()
    try:
        events = stream_events(svc.watcher, svc.sessions, job_ids, svc.settings.stream_max_seconds, history)
    except TooManyStreams as exc:
        raise Problem(503, "Service Unavailable", f"{exc}; retry shortly", slug="too-many-streams",
                      headers={"Retry-After": "10"}) from None
    if events is None and must_exist:
        raise Problem(404, "Not Found", f"no job with id {job_ids[0]}", slug="not-found")
    return Response(events or iter(()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    return event_response([parse_uuid(job_id)], must_exist=True)


@bp.get("/events")
def many_job_events() -> Response:
    """One stream for many jobs (a page's live rows): ?jobs=id,id,...[&history=1]"""
    raw = [part for part in request.args.get("jobs", "").split(",") if part]
    if not 1 <= len(raw) <= MAX_JOBS_PER_STREAM:
        raise validation_problem([("jobs", f"give 1 to {MAX_JOBS_PER_STREAM} job ids, comma-separated")], status=400)
    job_ids = []
    for value in raw:
        try:
            job_ids.append(str(uuid.UUID(value)))
        except ValueError:
            raise validation_problem([("jobs", f"{value[:40]!r} is not a job id (a UUID)")], status=400) from None
    history = request.args.get("history", "0")
    if history not in ("0", "1"):
        raise validation_problem([("history", f"must be 0 or 1, got {history[:20]!r}")], status=400)
    return event_response(list(dict.fromkeys(job_ids)), history == "1")


class VerifiedFiles:
    """Files whose bytes were checked against their recorded sha256, keyed by what a rewrite would change.

    A published file is never written again (each attempt writes its own
    folder), so this is a last line of defence: a file whose bytes differ from
    its record (a disk fault, a hand edit) is refused, never served under the
    record's ETag and a year-long immutable cache.
    """

    def __init__(self, capacity: int = 4096):
        self._known: OrderedDict[tuple, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def sha256(self, path: Path, stat: os.stat_result) -> str:
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            self._known[key] = value
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)
        return value


verified_files = VerifiedFiles()


@bp.get("/artifacts/<artifact_id>")
def download_artifact(artifact_id: str) -> Response:
    artifact = db().get(Artifact, parse_uuid(artifact_id, "artifact"))
    if artifact is None:
        raise Problem(404, "Not Found", f"no artifact with id {artifact_id}", slug="not-found")
    root = services().settings.artifact_dir.resolve()
    path = (root / artifact.path).resolve()
    if not path.is_relative_to(root):
        raise Problem(404, "Not Found", f"artifact {artifact_id} is not stored under the artifact root", slug="not-found")
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    if stat is None or not path.is_file():
        raise Problem(410, "Gone", f"the file of artifact {artifact_id} ({artifact.name}) is no longer stored", slug="gone")
    if stat.st_size != artifact.size or verified_files.sha256(path, stat) != artifact.sha256:
        log.error("artifact %s (%s): the stored file no longer matches its recorded sha256", artifact_id, artifact.path)
        raise Problem(410, "Gone", f"the file of artifact {artifact_id} ({artifact.name}) no longer matches its"
                      " recorded sha256 and is not served", slug="artifact-corrupt")
    response = send_file(path, mimetype=artifact.content_type, etag=artifact.sha256, conditional=True,
                         download_name=artifact.name.rsplit("/", 1)[-1], max_age=31536000)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
