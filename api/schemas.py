"""Response models of the HTTP API (the request model is shared.specs.JobCreate); they also make the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.db import Artifact, Job


class ArtifactOut(BaseModel):
    id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    url: str


class JobError(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    id: str
    kind: str
    name: str | None
    tags: list[str]
    note: str | None
    archived: bool  # hidden from lists unless archived=1 or all
    archived_at: datetime | None
    spec: dict[str, Any]
    state: str
    progress: dict[str, Any]
    attempts: int
    max_attempts: int
    cancel_requested: bool
    queue: str
    worker: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    parent: str | None
    artifacts: list[ArtifactOut]
    metrics: dict[str, float]  # final losses of a train job and its latest scorecard; an evaluation's scorecard
    links: dict[str, str]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = None


def artifact_out(artifact: Artifact, prefix: str) -> dict[str, Any]:
    return {
        "id": artifact.id, "name": artifact.name, "kind": artifact.kind, "content_type": artifact.content_type,
        "size": artifact.size, "sha256": artifact.sha256, "url": f"{prefix}/artifacts/{artifact.id}",
    }


def job_out(job: Job, prefix: str, *, history: bool = True) -> dict[str, Any]:
    """The job as the API shows it (plain JSON-ready dict; JobOut documents it).

    Lists leave out ``progress.history`` (every epoch of every run): it is most
    of a page's bytes, and GET /jobs/{id} has it.
    """
    progress = job.progress or {}
    if not history and "history" in progress:
        progress = {k: v for k, v in progress.items() if k != "history"}
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": job.id, "kind": job.kind, "name": job.name, "tags": list(job.tags or []), "note": job.note,
        "archived": job.archived_at is not None, "archived_at": iso(job.archived_at), "spec": job.spec,
        "state": job.state, "progress": progress, "attempts": job.attempts,
        "max_attempts": job.max_attempts, "cancel_requested": job.cancel_requested, "queue": job.queue,
        "worker": job.worker, "heartbeat_at": iso(job.heartbeat_at), "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "error": {"type": job.error_type, "message": job.error_message or ""} if job.error_type else None,
        "parent": job.parent_id,
        "artifacts": [artifact_out(a, prefix) for a in job.artifacts],
        "metrics": {m.name: m.value for m in job.metrics},
        "links": {
            "self": f"{prefix}/jobs/{job.id}", "events": f"{prefix}/jobs/{job.id}/events",
            "cancel": f"{prefix}/jobs/{job.id}/cancel", "download": f"{prefix}/jobs/{job.id}/download",
        },
    }
