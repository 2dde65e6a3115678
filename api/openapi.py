"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api import API_PREFIX
from api.schemas import JobCreate, JobList, JobOut, ProblemOut
from shared.specs import EmbedSpec, SampleSpec, TrainSpec

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (JobCreate, JobOut, JobList, ProblemOut, TrainSpec, EmbedSpec, SampleSpec):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="ProblemOut")}}}}


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
BEARER = [{"bearer": []}]


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "LatentForge API", "version": "1",
                 "description": "Queue train, embed and sample jobs on autoencoders and fetch their artifacts."},
        "servers": [{"url": API_PREFIX}],
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed for writes when the server has LATENTFORGE_API_TOKEN"}},
        },
        "paths": {
            "/jobs": {
                "post": {
                    "summary": "Submit a job", "operationId": "createJob", "security": BEARER,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "maxLength": 200},
                                    "description": "a retried POST with the same key returns the same job"}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": REF.format(model="JobCreate")},
                        "examples": {"seed": {"value": {"kind": "train", "spec": {"preset": "seed", "epochs": 5}}}},
                    }}},
                    "responses": {"201": _json("JobOut", "the job, queued"), "200": _json("JobOut", "an idempotent replay"),
                                  "400": _problem("malformed JSON"), "401": _problem("missing or wrong token"),
                                  "409": _problem("parent job not finished"), "413": _problem("body over 1 MiB"),
                                  "415": _problem("body is not JSON"), "422": _problem("invalid fields (listed)")},
                },
                "get": {
                    "summary": "List jobs, newest first", "operationId": "listJobs",
                    "parameters": [
                        {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["train", "embed", "sample"]}},
                        {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
                            "queued", "running", "succeeded", "failed", "cancelled"]}},
                        {"name": "parent", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json("JobList", "a page of jobs"), "400": _problem("bad query parameter")},
                },
            },
            "/jobs/{job_id}": {"get": {"summary": "A job with progress and artifacts", "operationId": "getJob",
                                       "parameters": [JOB_ID],
                                       "responses": {"200": _json("JobOut", "the job"), "404": _problem("no such job")}}},
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job", "operationId": "cancelJob", "parameters": [JOB_ID], "security": BEARER,
                "responses": {"202": _json("JobOut", "cancelled (queued) or asked to stop (running)"),
                              "401": _problem("missing or wrong token"), "404": _problem("no such job"),
                              "409": _problem("the job has already finished")}}},
            "/jobs/{job_id}/events": {"get": {
                "summary": "Server-Sent Events of the job's progress until it ends", "operationId": "jobEvents",
                "parameters": [JOB_ID],
                "responses": {"200": {"description": "events 'progress' and a final 'end'",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "404": _problem("no such job")}}},
            "/artifacts/{artifact_id}": {"get": {
                "summary": "Download an artifact", "operationId": "getArtifact",
                "parameters": [{"name": "artifact_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {"200": {"description": "the file, with its content type, ETag (sha256) and length"},
                              "304": {"description": "not modified (If-None-Match)"},
                              "404": _problem("no such artifact"), "410": _problem("file no longer stored")}}},
            "/health": {"get": {"summary": "Database, broker and worker status", "operationId": "health",
                                "responses": {"200": {"description": "all up"}, "503": {"description": "one is down"}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(build_document())
