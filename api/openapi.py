"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests, and the page that
shows it (/api/docs: the vendored Swagger UI, started by api/static/api-docs.js).

The document is built per request from the kinds registered then, so plugin kinds (LATENTFORGE_PLUGINS) are in
it with their spec schemas.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, render_template, url_for

from api.context import API_PREFIX
from api.schemas import JobList, JobOut, ProblemOut
from api.streams import MAX_JOBS_PER_STREAM
from shared.db import JobState
from shared.kinds import KINDS, JobKind
from shared.specs import JobCreate, RunEdit, Spec

bp = Blueprint("openapi", __name__)
docs_bp = Blueprint("api_docs", __name__)

DOCS_PATH = "/api/docs"
REF = "#/components/schemas/{model}"


def request_schema_name(kind: str) -> str:
    """The component name of one kind's request ("train" -> "TrainJobCreate"): a generated client's class name."""
    return "".join(word.capitalize() for word in re.split(r"[^0-9A-Za-z]+", kind)) + "JobCreate"


def _kind_request(kind: JobKind, common: dict[str, Any]) -> dict[str, Any]:
    """One kind's request: ``kind`` fixed to its name, ``spec`` its spec model's schema, the other fields as in
    JobCreate. A spec with required fields makes ``spec`` required: an absent spec is an empty one."""
    spec_required = any(field.is_required() for field in kind.spec.model_fields.values())
    return {
        "title": request_schema_name(kind.name), "description": f"{kind.name}: {kind.help}",
        "type": "object", "additionalProperties": False,
        "properties": {"kind": {"type": "string", "const": kind.name},
                       "spec": {"$ref": REF.format(model=kind.spec.__name__)}, **common},
        "required": ["kind", "spec"] if spec_required else ["kind"],
    }


def _job_create(base: dict[str, Any], kinds: list[JobKind]) -> dict[str, dict[str, Any]]:
    """JobCreate as a union discriminated by ``kind``, one request schema per kind the API accepts, so generated
    clients have a typed spec for each kind (the pydantic model itself takes any object as spec and checks it
    against the kind's model afterwards)."""
    common = {name: field for name, field in base["properties"].items() if name not in ("kind", "spec")}
    requests = {request_schema_name(kind.name): _kind_request(kind, common) for kind in kinds}
    return {"JobCreate": {"title": "JobCreate", "description": base["description"],
                          "oneOf": [{"$ref": REF.format(model=name)} for name in requests],
                          "discriminator": {"propertyName": "kind", "mapping": {
                              kind.name: REF.format(model=request_schema_name(kind.name)) for kind in kinds}}},
            **requests}


def _require_tag_off_default(spec: type[Spec], schemas: dict[str, Any]) -> None:
    """A spec that is a union discriminated by a field with a default (TrainSpec: ``model``, default "ae") reads a
    request without that field as the default's branch. pydantic leaves the field optional in every branch, so such
    a request would match them all and fail the oneOf: require the field in every branch but the default's."""
    discriminator = schemas[spec.__name__].get("discriminator")
    field = spec.model_fields.get(discriminator["propertyName"]) if discriminator else None
    if field is None or field.is_required():
        return
    tag = discriminator["propertyName"]
    for value, ref in discriminator["mapping"].items():
        branch = schemas[ref.removeprefix(REF.format(model=""))]
        if value != field.default and tag not in branch.get("required", []):
            branch["required"] = [*branch.get("required", []), tag]


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    documents = [(model.__name__, model.model_json_schema(ref_template=REF))
                 for model in (JobCreate, JobOut, JobList, ProblemOut, RunEdit)]
    documents += [(kind.spec.__name__, kind.spec.json_schema(REF)) for kind in KINDS.values()]
    for name, schema in documents:
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    for kind in KINDS.values():
        _require_tag_off_default(kind.spec, schemas)
    # Internal kinds (a study's report) are made by the queue only: POST /jobs refuses them.
    schemas.update(_job_create(schemas.pop("JobCreate"), [kind for kind in KINDS.values() if not kind.internal]))
    return schemas


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="ProblemOut")}}}}


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
BEARER = [{"bearer": []}]
READ = [{"bearer": []}, {"session": []}]


def _responses(ok: dict[str, Any], **problems: str) -> dict[str, Any]:
    """The route's own answers plus those every route may give: no token (when the server has
    one), an over-long request line (answered by the HTTP server itself, as text), and a
    database outage."""
    responses = {**ok, **{code: _problem(text) for code, text in problems.items()}}
    responses.setdefault("401", _problem("missing or wrong token (when the server has LATENTFORGE_API_TOKEN)"))
    responses["414"] = {"description": "request line longer than 4094 bytes (answered by gunicorn, as text/html)"}
    responses["503"] = {**_problem("the database is unavailable; retry after the Retry-After seconds"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
    return responses


def _filter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "allowEmptyValue": True,
            "schema": schema, "description": description + "; an empty value means no filter"}


STREAM = {"description": "events 'progress' (the job's state, attempts, error and latest progress) and a final"
                         " 'end' per job; ': keep-alive' comments while nothing changes; the server ends a stream"
                         " after LATENTFORGE_STREAM_MAX_SECONDS and the client reconnects",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}}


BULK_RESULT = {"type": "object", "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"},
                                                "status": {"type": "integer"},
                                                "detail": {"type": ["string", "null"]}}}
BULK_RESULTS = {"description": "one result per id, in the order given: the status its own call would have answered",
                "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "results": {"type": "array", "items": BULK_RESULT}}}}}}


def build_document() -> dict[str, Any]:
    kinds = list(KINDS)
    states = [s.value for s in JobState]
    return {
        "openapi": "3.1.0",
        "info": {"title": "LatentForge API", "version": "1",
                 "description": "Queue train, embed and sample jobs on autoencoders and fetch their artifacts."
                                " With LATENTFORGE_API_TOKEN set, every route but /health needs"
                                " `Authorization: Bearer <token>` (the scheme word in any case); reads also"
                                " accept the gallery's session cookie, and LATENTFORGE_PUBLIC_READ=1 opens them."},
        "servers": [{"url": API_PREFIX}],
        "security": READ,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "needed when the server has LATENTFORGE_API_TOKEN"},
                "session": {"type": "apiKey", "in": "cookie", "name": "lf_session",
                            "description": "the gallery's sign-in session (reads only)"},
            },
        },
        "paths": {
            "/jobs": {
                "post": {
                    "summary": "Submit a job", "operationId": "createJob", "security": BEARER,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                                               "pattern": "^[\\x20-\\x7e]{1,200}$"},
                                    "description": "a retried POST with the same key and body returns the same job"
                                                   " (200, Idempotent-Replayed: true); the same key with another body"
                                                   " is a 422; an empty or non-ASCII key is a 400"}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": REF.format(model="JobCreate")},
                        "examples": {"seed": {"value": {"kind": "train", "spec": {"preset": "seed", "epochs": 5}}}},
                    }}},
                    "responses": _responses(
                        {"201": _json("JobOut", "the job, queued"), "200": _json("JobOut", "an idempotent replay")},
                        **{"400": "malformed JSON or a bad Idempotency-Key", "409": "parent job not finished",
                           "413": "body over 1 MiB", "415": "body is not JSON", "422": "invalid fields (listed)"}),
                },
                "get": {
                    "summary": "List jobs, newest first or ranked by a metric", "operationId": "listJobs",
                    "description": "Besides the parameters below, `spec.<field>=<value>` filters by any spec field,"
                                   " e.g. `spec.model=vae` or `spec.latent_dim=2`: the value is read as JSON when it"
                                   " is JSON (2 equals 2.0, `[256,128]` is a list), else as a string. A field that"
                                   " no kind's spec has, or any other unknown parameter, is a 400 naming it.",
                    "parameters": [
                        _filter("kind", {"type": "string", "enum": [*kinds, ""]}, "only jobs of this kind"),
                        _filter("state", {"type": "string", "enum": [*states, ""]}, "only jobs in this state"),
                        _filter("parent", {"type": "string", "format": "uuid"}, "only children of this job"),
                        {"name": "limit", "in": "query", "description": "ASCII digits only",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"},
                         "description": "next_cursor of the previous page"},
                        {"name": "sort", "in": "query", "schema": {"type": "string", "default": "-created",
                                                                   "pattern": r"^(-?created|-?metrics\.[a-z][a-z0-9_]*)$"},
                         "description": "-created (newest first), created, or metrics.<name> / -metrics.<name>"
                                        " (ascending / descending) for any metric a run records: final losses"
                                        " (test_loss, ...) and scorecard metrics (knn_accuracy, ...); runs without"
                                        " it come last. An unknown key is a 400 naming it."},
                        {"name": "tag", "in": "query", "style": "form", "explode": True,
                         "schema": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 20},
                         "description": "repeatable (?tag=a&tag=b): runs that carry every given tag"},
                        _filter("q", {"type": "string", "maxLength": 200}, "runs whose name contains this text"
                                                                           " (any case)"),
                        _filter("created_after", {"type": "string"}, "ISO 8601 date or date-time (UTC without a"
                                                                     " zone): runs created at or after it"),
                        _filter("created_before", {"type": "string"}, "ISO 8601 date or date-time: runs created"
                                                                      " before it"),
                        {"name": "archived", "in": "query", "schema": {"type": "string", "enum": ["0", "1", "all"],
                                                                       "default": "0"},
                         "description": "0: live runs only (archived ones are hidden), 1: archived only, all: both"},
                    ],
                    "responses": _responses({"200": _json("JobList", "a page of jobs")},
                                            **{"400": "bad or unknown query parameter (named in errors[].field)"}),
                },
            },
            "/jobs/{job_id}": {
                "get": {"summary": "A job with progress and artifacts", "operationId": "getJob",
                        "parameters": [JOB_ID],
                        "responses": _responses({"200": _json("JobOut", "the job")}, **{"404": "no such job"})},
                "patch": {"summary": "Edit a run's name, tags or note", "operationId": "editJob",
                          "parameters": [JOB_ID], "security": BEARER,
                          "requestBody": {"required": True, "content": {"application/json": {
                              "schema": {"$ref": REF.format(model="RunEdit")}}}},
                          "responses": _responses({"200": _json("JobOut", "the edited job")},
                                                  **{"404": "no such job", "415": "body is not JSON",
                                                     "422": "invalid or unknown fields (listed)"})},
                "delete": {"summary": "Delete a finished run, its rows and its files", "operationId": "deleteJob",
                           "parameters": [JOB_ID, {"name": "cascade", "in": "query",
                                                   "schema": {"type": "boolean", "default": False},
                                                   "description": "also delete every run made from it"}],
                           "security": BEARER,
                           "responses": _responses({"204": {"description": "deleted"}}, **{
                               "404": "no such job",
                               "409": "queued or running (job-not-finished), has runs made from it and no"
                                      " cascade (has-children), or part of a sweep"})},
            },
            "/jobs/{job_id}/archive": {"post": {
                "summary": "Archive a finished run and the runs made from it (hidden from lists, restorable)",
                "operationId": "archiveJob", "parameters": [JOB_ID], "security": BEARER,
                "responses": _responses({"200": _json("JobOut", "the archived job")},
                                        **{"404": "no such job", "409": "it or a run below it is unfinished"})}},
            "/jobs/{job_id}/restore": {"post": {
                "summary": "Restore an archived run and the runs made from it", "operationId": "restoreJob",
                "parameters": [JOB_ID], "security": BEARER,
                "responses": _responses({"200": _json("JobOut", "the restored job")}, **{"404": "no such job"})}},
            "/jobs/bulk": {"post": {
                "summary": "Archive, restore or delete several runs", "operationId": "bulkJobs", "security": BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["action", "ids"], "additionalProperties": False,
                    "properties": {"action": {"type": "string", "enum": ["archive", "restore", "delete"]},
                                   "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                           "maxItems": 200},
                                   "cascade": {"type": "boolean", "default": False}}}}}},
                "responses": _responses({"200": BULK_RESULTS}, **{"422": "bad action or ids"})}},
            "/jobs/{job_id}/download": {"get": {
                "summary": "A finished run as one zip: every artifact and manifest.json (the job, each sha256)",
                "operationId": "downloadJob", "parameters": [JOB_ID],
                "responses": _responses({"200": {"description": "the zip (Content-Disposition: attachment)",
                                                 "content": {"application/zip": {}}}},
                                        **{"404": "no such job", "409": "the run has not finished",
                                           "410": "a file is no longer stored or no longer matches its sha256"})}},
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job", "operationId": "cancelJob", "parameters": [JOB_ID], "security": BEARER,
                "responses": _responses({"202": _json("JobOut", "cancelled (queued) or asked to stop (running)")},
                                        **{"404": "no such job", "409": "the job has already finished"})}},
            "/jobs/{job_id}/events": {"get": {
                "summary": "Server-Sent Events of one job's progress until it ends", "operationId": "jobEvents",
                "parameters": [JOB_ID],
                "responses": _responses({"200": STREAM}, **{"404": "no such job",
                                                            "503": "too many open streams in this server process"})}},
            "/events": {"get": {
                "summary": "One stream of Server-Sent Events for many jobs (a page's live rows)",
                "operationId": "manyJobEvents",
                "parameters": [
                    {"name": "jobs", "in": "query", "required": True, "schema": {"type": "string"},
                     "description": f"1 to {MAX_JOBS_PER_STREAM} job ids, comma-separated; unknown ids are ignored"},
                    {"name": "history", "in": "query", "schema": {"type": "integer", "enum": [0, 1], "default": 0},
                     "description": "1: the first event of each job carries its per-epoch history"},
                ],
                "responses": _responses({"200": STREAM}, **{"400": "bad jobs or history parameter",
                                                            "503": "too many open streams in this server process"})}},
            "/artifacts/{artifact_id}": {"get": {
                "summary": "Download an artifact", "operationId": "getArtifact",
                "parameters": [{"name": "artifact_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
                "responses": _responses(
                    {"200": {"description": "the file, with its content type, ETag (its sha256) and length"},
                     "304": {"description": "not modified (If-None-Match)"}},
                    **{"404": "no such artifact",
                       "410": "the file is no longer stored, or its bytes no longer match the recorded sha256"})}},
            "/health": {"get": {"summary": "Database, broker and worker status (no token needed)", "operationId": "health",
                                "security": [],
                                "responses": {"200": {"description": "all up"},
                                              "414": {"description": "request line too long (gunicorn, text)"},
                                              "503": {"description": "the database, the broker or every worker is down"}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": _responses({"200": {"description": "OpenAPI 3.1"}})}},
        },
    }


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(build_document())


@docs_bp.get(DOCS_PATH)
def api_docs() -> Any:
    return render_template("api_docs.html", document_url=url_for("openapi.openapi"))
