"""Delivery rules of SPEC §2, as conditional updates on the jobs table.

* The API commits the job row, then publishes its id, then marks it published.
  A job whose row is committed but never marked published is republished by
  the reaper after a grace period.
* A worker claims a job with ``queued -> running`` in one conditional UPDATE:
  when a message arrives twice, only one claim matches, so the job runs once.
* Every later write of the running attempt is fenced by (state, attempts,
  worker): an attempt that lost its job to the reaper can no longer touch it.
* The reaper requeues a running job whose heartbeat is stale (the next attempt
  resumes from its last epoch checkpoint) until ``max_attempts`` runs, then
  fails it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import Artifact, Job, JobState, Worker, utcnow

log = logging.getLogger(__name__)

PUBLISH_GRACE_S = 5.0  # the API marks a job published within milliseconds of committing it


class JobConflict(Exception):
    """The job is in a state that does not allow the operation."""


@dataclass(frozen=True)
class Claim:
    """A running attempt: the fence for every write it makes."""

    job_id: str
    attempt: int
    worker: str
    kind: str
    spec: dict[str, Any]
    parent_id: str | None


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    path: str


class JobStore:
    def __init__(self, sessions: sessionmaker, publish: Callable[[str, str], None], max_attempts: int = 3):
        self.sessions = sessions
        self._send = publish
        self.max_attempts = max_attempts

    # -- submitting -----------------------------------------------------------------

    def create(self, session: Session, **fields: Any) -> Job:
        """Commit a new queued job, then publish it (the broker may be down: the reaper retries)."""
        job = Job(max_attempts=self.max_attempts, **fields)
        session.add(job)
        session.commit()
        self.publish(job.id, job.queue)
        session.refresh(job)
        return job

    def publish(self, job_id: str, queue: str) -> bool:
        try:
            self._send(job_id, queue)
        except Exception as exc:  # any broker failure: the row stays unpublished for the reaper
            log.warning("could not publish job %s (%s: %s); the reaper will retry", job_id, type(exc).__name__, exc)
            return False
        with self.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.published_at.is_(None)).values(published_at=utcnow()))
        return True

    # -- running ----------------------------------------------------------------------

    def claim(self, job_id: str, worker: str) -> Claim | None:
        now = utcnow()
        with self.sessions.begin() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED.value, Job.cancel_requested.is_(False))
                .values(state=JobState.RUNNING.value, attempts=Job.attempts + 1, worker=worker,
                        heartbeat_at=now, started_at=now, error_type=None, error_message=None)
            ).rowcount
            if not claimed:
                return None
            job = s.get(Job, job_id)
            return Claim(job.id, job.attempts, worker, job.kind, dict(job.spec), job.parent_id)

    def _fenced(self, claim: Claim):
        return update(Job).where(
            Job.id == claim.job_id,
            Job.state == JobState.RUNNING.value,
            Job.attempts == claim.attempt,
            Job.worker == claim.worker,
        )

    def heartbeat(self, claim: Claim) -> tuple[bool, bool]:
        """Refresh the heartbeat; returns (still owned, cancel requested)."""
        with self.sessions.begin() as s:
            owned = s.execute(self._fenced(claim).values(heartbeat_at=utcnow())).rowcount == 1
            cancel = s.execute(select(Job.cancel_requested).where(Job.id == claim.job_id)).scalar_one_or_none()
        return owned, bool(cancel)

    def record_progress(self, claim: Claim, progress: dict[str, Any]) -> bool:
        with self.sessions.begin() as s:
            return s.execute(self._fenced(claim).values(progress=progress, heartbeat_at=utcnow())).rowcount == 1

    def finish(
        self,
        claim: Claim,
        state: JobState,
        *,
        error: tuple[str, str] | None = None,
        artifacts: Iterable[ArtifactRecord] = (),
    ) -> bool:
        """End the attempt and record its artifacts in one transaction; False if it lost the job."""
        with self.sessions.begin() as s:
            values: dict[str, Any] = {"state": state.value, "finished_at": utcnow()}
            if error is not None:
                values.update(error_type=error[0], error_message=error[1])
            if not s.execute(self._fenced(claim).values(**values)).rowcount:
                return False
            for record in artifacts:
                s.add(Artifact(job_id=claim.job_id, **record.__dict__))
        return True

    # -- cancelling -------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job at once, or ask a running one to stop. Returns the state after."""
        with self.sessions.begin() as s:
            if s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.CANCELLED.value, cancel_requested=True, finished_at=utcnow())
            ).rowcount:
                return JobState.CANCELLED.value
            if s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value).values(cancel_requested=True)
            ).rowcount:
                return JobState.RUNNING.value
            state = s.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
        if state is None:
            raise KeyError(job_id)
        raise JobConflict(f"job {job_id} has already finished ({state})")

    # -- reaping ----------------------------------------------------------------------

    def reap(self, stale_after_s: float, now: datetime | None = None) -> dict[str, int]:
        """Requeue or fail jobs whose worker went silent; republish jobs never published."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=stale_after_s)
        counts = {"requeued": 0, "failed": 0, "cancelled": 0, "republished": 0}
        requeued: list[tuple[str, str]] = []
        with self.sessions.begin() as s:
            stale = s.execute(
                select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.queue)
                .where(Job.state == JobState.RUNNING.value, Job.heartbeat_at < cutoff)
            ).all()
            for job_id, attempts, max_attempts, cancel, queue in stale:
                still_stale = update(Job).where(
                    Job.id == job_id, Job.state == JobState.RUNNING.value,
                    Job.attempts == attempts, Job.heartbeat_at < cutoff,
                )
                if cancel:
                    values, key = {"state": JobState.CANCELLED.value, "finished_at": now}, "cancelled"
                elif attempts < max_attempts:
                    values = {"state": JobState.QUEUED.value, "worker": None, "heartbeat_at": None,
                              "queued_at": now, "published_at": None}
                    key = "requeued"
                else:
                    values = {
                        "state": JobState.FAILED.value, "finished_at": now, "error_type": "WorkerLost",
                        "error_message": f"the worker stopped sending heartbeats; gave up after {attempts} attempts",
                    }
                    key = "failed"
                if s.execute(still_stale.values(**values)).rowcount:
                    counts[key] += 1
                    log.warning("job %s: heartbeat stale since before %s, %s", job_id, cutoff.isoformat(), key)
                    if key == "requeued":
                        requeued.append((job_id, queue))
        # A requeued job goes back to the broker at once; jobs the API never
        # published wait out the grace period first.
        counts["republished"] = sum(self._send_unpublished(job_id, queue, now) for job_id, queue in requeued)
        counts["republished"] += self.republish_unpublished(now)
        return counts

    def republish_unpublished(self, now: datetime | None = None, grace_s: float = PUBLISH_GRACE_S) -> int:
        now = now or utcnow()
        with self.sessions.begin() as s:
            pending = s.execute(
                select(Job.id, Job.queue).where(
                    Job.state == JobState.QUEUED.value, Job.published_at.is_(None),
                    Job.queued_at < now - timedelta(seconds=grace_s),
                )
            ).all()
        return sum(self._send_unpublished(job_id, queue, now) for job_id, queue in pending)

    def _send_unpublished(self, job_id: str, queue: str, now: datetime) -> bool:
        # Claim the publishing first, so that two reapers do not both send it.
        with self.sessions.begin() as s:
            mine = s.execute(
                update(Job).where(Job.id == job_id, Job.published_at.is_(None), Job.state == JobState.QUEUED.value)
                .values(published_at=now)
            ).rowcount
        if not mine:
            return False
        try:
            self._send(job_id, queue)
            return True
        except Exception as exc:
            log.warning("publishing job %s failed (%s); will retry", job_id, exc)
            with self.sessions.begin() as s:
                s.execute(update(Job).where(Job.id == job_id).values(published_at=None))
            return False

    # -- workers ----------------------------------------------------------------------

    def worker_seen(self, hostname: str, queues: str, current_job: str | None) -> None:
        with self.sessions.begin() as s:
            now = utcnow()
            if not s.execute(
                update(Worker).where(Worker.hostname == hostname)
                .values(last_seen=now, queues=queues, current_job=current_job)
            ).rowcount:
                s.add(Worker(hostname=hostname, queues=queues, started_at=now, last_seen=now, current_job=current_job))

    def worker_gone(self, hostname: str) -> None:
        with self.sessions.begin() as s:
            worker = s.get(Worker, hostname)
            if worker is not None:
                s.delete(worker)

    def live_workers(self, stale_after_s: float) -> list[Worker]:
        with self.sessions() as s:
            cutoff = utcnow() - timedelta(seconds=stale_after_s)
            return list(s.scalars(select(Worker).where(Worker.last_seen >= cutoff).order_by(Worker.hostname)))
