"""The one module that joins the ML core to the database and the queue.

A Celery task receives a job id, claims the job in the database, runs it
with the plain runners of ``worker.pipeline`` / ``worker.runners``, records
progress and artifacts, and ends it. A monitor thread keeps the worker's and
the running job's heartbeats, notices cancel requests and lost ownership, and
runs the reaper.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from celery import signals
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError

from shared.db import JobState, make_engine, make_sessionmaker
from shared.jobstore import ArtifactRecord, Claim, JobStore
from shared.migrate import check_schema
from shared.queue import make_celery, publish
from shared.settings import load_settings
from shared.specs import EmbedSpec, JobKind, SampleSpec, TrainSpec
from worker.files import sha256_of

log = logging.getLogger("latentforge.worker")

settings = load_settings()
app = make_celery(settings)
engine = make_engine(settings.database_url)
store = JobStore(make_sessionmaker(engine), lambda job_id, queue: publish(app, job_id, queue), settings.max_attempts)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".npy": "application/x-npy",
    ".safetensors": "application/octet-stream",
}
RESUME_DIR = "resume"


def job_dir(job_id: str) -> Path:
    return settings.artifact_dir / "jobs" / job_id


def artifact_kind(relative: Path) -> str:
    name = relative.name
    if name.endswith(".thumb.png"):
        return "thumbnail"
    if name.endswith(".png"):
        return "figure"
    if name.endswith(".npy"):
        return "array"
    return {"model.safetensors": "checkpoint", "config.json": "config", "metrics.jsonl": "metrics",
            "decoder.safetensors": "decoder", "latent_codes.safetensors": "codes"}.get(name, "file")


def collect_artifacts(folder: Path) -> list[ArtifactRecord]:
    """Every finished file of a job's folder, confined to the artifact root."""
    root = settings.artifact_dir.resolve()
    records = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            not path.is_file() or path.is_symlink() or relative.parts[0] == RESUME_DIR
            or any(part.startswith(".") for part in relative.parts)
        ):
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise RuntimeError(f"artifact {path} lies outside the artifact root {root}")
        records.append(ArtifactRecord(
            name=relative.as_posix(), kind=artifact_kind(relative),
            content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
            size=path.stat().st_size, sha256=sha256_of(path), path=resolved.relative_to(root).as_posix(),
        ))
    return records


class Monitor:
    """Background heartbeats, cancel and ownership checks, and the reaper."""

    def __init__(self, queues: str):
        self.queues = queues
        self.claim: Claim | None = None
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="latentforge-monitor", daemon=True)

    def start(self) -> None:
        self.beat()  # registered at once: /health counts this worker from "ready" on
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            store.worker_gone(WORKER_NAME)
        except Exception:
            log.exception("could not remove worker row")

    def begin(self, claim: Claim) -> None:
        with self._lock:
            self.claim = claim
            self.cancel.clear()
            self.lost.clear()
        self.beat()

    def end(self) -> None:
        with self._lock:
            self.claim = None

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()

    def beat(self) -> None:
        # Held across the database calls: once end() returns, no heartbeat of
        # the finished attempt is in flight to find the job "lost".
        with self._lock:
            claim = self.claim
            store.worker_seen(WORKER_NAME, self.queues, claim.job_id if claim else None)
            if claim is not None:
                owned, cancel = store.heartbeat(claim)
                if not owned:
                    log.warning("job %s: attempt %d no longer owns the job; stopping", claim.job_id, claim.attempt)
                    self.lost.set()
                if cancel:
                    self.cancel.set()

    def _loop(self) -> None:
        next_reap = 0.0
        while not self._stop.wait(settings.heartbeat_seconds):
            try:
                self.beat()
                if time.monotonic() >= next_reap:
                    counts = store.reap(settings.stale_after_seconds)
                    if any(counts.values()):
                        log.info("reaper: %s", counts)
                    next_reap = time.monotonic() + settings.heartbeat_seconds * 2
            except Exception:  # the database may be briefly away; keep beating
                log.exception("monitor: heartbeat or reap failed")


monitor = Monitor(os.environ.get("LATENTFORGE_WORKER_QUEUES", "gpu,cpu"))


def run_claimed(
    claim: Claim, folder: Path, should_stop: Callable[[], bool], log_line: Callable[[str], None]
) -> dict[str, Any] | None:
    """Run one job's work; returns the summary to record as its progress. Raises on failure."""
    from worker.pipeline import run_training
    from worker.runners import run_embed, run_sample

    kind = JobKind(claim.kind)
    if kind is JobKind.TRAIN:
        spec = TrainSpec.from_dict(claim.spec)

        def on_epoch(state: Any, metrics: Any) -> None:
            progress = {
                **metrics.to_dict(), "total": spec.epochs,
                "history": [m.to_dict() for m in state.history],
            }
            if not store.record_progress(claim, progress):
                monitor.lost.set()

        run_training(
            spec, folder, data_dir=settings.data_dir, download=settings.allow_download, log=log_line, on_epoch=on_epoch,
            should_stop=should_stop, resume_dir=folder / RESUME_DIR,
        )
        return None  # its progress was recorded epoch by epoch
    parent_dir = job_dir(claim.parent_id or "")
    if kind is JobKind.EMBED:
        output = run_embed(EmbedSpec.from_dict(claim.spec), parent_dir, folder, settings.data_dir, log=log_line)
    else:
        output = run_sample(SampleSpec.from_dict(claim.spec), parent_dir, folder, settings.data_dir, log=log_line)
    return output.summary


def execute_job(job_id: str) -> JobState | None:
    """Claim and run one job, wrapped so that every outcome ends in the job row."""
    from worker.train import TrainingCancelled

    try:
        claim = store.claim(job_id, WORKER_NAME)
    except DBAPIError as exc:
        # The database is away: hand the message back rather than acknowledge
        # (and so lose) it; the broker delivers it again.
        log.warning("job %s: cannot claim (%s); message returned to the queue", job_id, exc.__class__.__name__)
        time.sleep(settings.heartbeat_seconds)
        raise Reject(str(exc), requeue=True) from None
    if claim is None:
        log.info("job %s: not claimable (already taken, finished or cancelled); message dropped", job_id)
        return None
    log.info("job %s: %s, attempt %d", job_id, claim.kind, claim.attempt)
    folder = job_dir(job_id)
    monitor.begin(claim)
    try:
        summary = run_claimed(claim, folder, monitor.should_stop, lambda line: log.info("job %s: %s", job_id, line))
        if summary is not None:
            store.record_progress(claim, summary)
        state, error = JobState.SUCCEEDED, None
        artifacts = collect_artifacts(folder)
    except TrainingCancelled:
        state, error, artifacts = JobState.CANCELLED, None, []
    except Exception as exc:  # the one error wrapper: the client sees type and message, the log the traceback
        log.exception("job %s failed", job_id)
        state, error, artifacts = JobState.FAILED, (type(exc).__name__, str(exc)[:4000] or type(exc).__name__), []
    finally:
        monitor.end()
        lost = monitor.lost.is_set()
    if lost or not store.finish(claim, state, error=error, artifacts=artifacts):
        log.warning("job %s: attempt %d lost the job before finishing; its result is discarded", job_id, claim.attempt)
        return None
    log.info("job %s: %s", job_id, state.value)
    return state


@app.task(name="latentforge.run_job", ignore_result=True)
def run_job(job_id: str) -> None:
    execute_job(job_id)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    check_schema(engine)
    monitor.start()
    log.info("worker %s ready (queues %s)", WORKER_NAME, monitor.queues)


@signals.worker_shutting_down.connect
def _on_worker_shutdown(**_: Any) -> None:
    monitor.stop()
