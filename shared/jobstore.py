"""Delivery rules, as conditional updates on the jobs table.

* The API commits the job row, then publishes its id, then marks it published.
  A job whose row is committed but never marked published is republished by
  the reaper after a grace period; a queued job whose message the broker lost
  is found by comparing the broker's messages with the queued rows.
* A worker claims a job with ``queued -> running`` in one conditional UPDATE
  that also takes a new *lease* (a fencing token, never reused): when a
  message arrives twice, only one claim matches, so the job runs once.
* Every later write of the running attempt is fenced by (state, lease): an
  attempt that lost its job to the reaper can no longer touch its row, and
  its files live in a folder of its own (``run_path``), so it cannot touch
  the files of the attempt that won either. Artifacts are recorded in the
  same fenced transaction that marks the job succeeded.
* The reaper requeues a running job whose heartbeat is stale (the next attempt
  resumes from the newest checkpoint recorded by an owning attempt) until
  ``max_attempts`` runs, then fails it. A warm shutdown hands a job back
  without spending an attempt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import delete, func, insert, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from shared.db import Artifact, Job, JobMetric, JobState, Lease, Worker, child_name, utcnow
from shared.errors import JobConflict, JobNotFound
from shared.kinds import KINDS, get_kind

log = logging.getLogger(__name__)

PUBLISH_GRACE_S = 5.0  # the API marks a job published within milliseconds of committing it
ID_CHUNK = 500  # ids per IN (...) list


_CHILD, _FOLLOW_UP = aliased(Job), aliased(Job)  # made once: an alias copies every column


def _is_group(kind: str | None) -> bool:
    """A kind whose jobs are groups of others (a sweep): their state follows their children's."""
    return kind in KINDS and KINDS[kind].fan_out is not None


def _group_progress(total: int, children: dict[str, int], follow_ups: dict[str, int]) -> dict[str, Any]:
    """A group's progress: how many children finished of how many, their states, their follow-ups' states."""
    finished = sum(n for state, n in children.items() if JobState(state).finished)
    return {"step": finished, "steps": total, "doing": "children finished", "children": children,
            "follow_ups": follow_ups}


def run_path(job_id: str, lease: int) -> str:
    """The folder of one attempt, relative to the artifact root; only that attempt writes in it."""
    return f"jobs/{job_id}/run-{lease}"


@dataclass(frozen=True)
class Claim:
    """A running attempt: the fence for every write it makes."""

    job_id: str
    attempt: int
    lease: int
    worker: str
    kind: str
    spec: dict[str, Any]
    parent_id: str | None
    checkpoint: dict[str, Any] | None = None  # where to resume from, if an earlier attempt got that far

    @property
    def folder(self) -> str:
        return run_path(self.job_id, self.lease)


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    path: str


def like_prefix(text: str) -> str:
    """A LIKE pattern for strings that start with ``text`` (its own % and _ taken literally)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _changed(**values: Any) -> dict[str, Any]:
    """Values for an UPDATE of a job row that clients can see: bumps its revision."""
    return {**values, "revision": Job.revision + 1}


class JobStore:
    def __init__(self, sessions: sessionmaker, publish: Callable[[str, str], None], max_attempts: int = 3):
        self.sessions = sessions
        self._send = publish
        self.max_attempts = max_attempts
        self._groups: dict[str, str | None] = {}  # parent id -> the group its children count in (see _group_of)
        self._reports: list[tuple[str, str]] = []  # report jobs queued by a recount, published after its commit

    # -- submitting -----------------------------------------------------------------

    def create(self, session: Session, **fields: Any) -> Job:
        """Commit a new queued job, then publish it (the broker may be down: the reaper retries).

        Returns the job as committed: a worker may claim it the moment it is
        published, and the submitter is answered with what it submitted.
        """
        job = Job(max_attempts=self.max_attempts, **fields)
        session.add(job)
        session.commit()
        self.publish(job.id, job.queue)
        return job

    def create_group(self, session: Session, children: list[dict[str, Any]], **fields: Any) -> Job:
        """Commit a fan-out job (a sweep) and all its children in one transaction, then publish the children.

        The group itself is never published: it is running from the start
        (with no worker and no heartbeat, so neither the reaper nor the
        republisher ever touches it) and its state follows its children's. A
        crash between the commit and the publishing loses nothing: the reaper
        publishes children that stayed unpublished.
        """
        now = utcnow()
        group = Job(max_attempts=self.max_attempts, state=JobState.RUNNING.value, started_at=now, published_at=now,
                    progress=_group_progress(len(children), {JobState.QUEUED.value: len(children)}, {}), **fields)
        session.add(group)
        session.flush()
        rows = [Job(max_attempts=self.max_attempts, parent_id=group.id, **child) for child in children]
        session.add_all(rows)
        session.commit()
        self.publish_many([(row.id, row.queue) for row in rows])
        return group

    def publish_many(self, jobs: list[tuple[str, str]]) -> int:
        """Publish jobs and mark those sent in one statement; the reaper retries the rest."""
        sent = []
        for job_id, queue in jobs:
            try:
                self._send(job_id, queue)
            except Exception as exc:  # the broker is away: leave the rest to the reaper
                log.warning("could not publish %d jobs (%s: %s); the reaper will retry", len(jobs) - len(sent),
                            type(exc).__name__, exc)
                break
            sent.append(job_id)
        with self.sessions.begin() as s:
            for start in range(0, len(sent), ID_CHUNK):
                s.execute(update(Job).where(Job.id.in_(sent[start:start + ID_CHUNK]), Job.published_at.is_(None))
                          .values(published_at=utcnow()))
        return len(sent)

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
                .values(**_changed(state=JobState.RUNNING.value, attempts=Job.attempts + 1, lease=Job.lease + 1,
                                   worker=worker, heartbeat_at=now, started_at=now, error_type=None,
                                   error_message=None))
            ).rowcount
            if not claimed:
                return None
            job = s.get(Job, job_id)
            self._tally(s, job.parent_id)
            return Claim(job.id, job.attempts, job.lease, worker, job.kind, dict(job.spec), job.parent_id,
                         dict(job.checkpoint) if job.checkpoint else None)

    def _fenced(self, claim: Claim):
        return update(Job).where(
            Job.id == claim.job_id,
            Job.state == JobState.RUNNING.value,
            Job.lease == claim.lease,
        )

    def heartbeat(self, claim: Claim) -> tuple[bool, bool]:
        """Refresh the heartbeat; returns (still owned, cancel requested)."""
        with self.sessions.begin() as s:
            owned = s.execute(self._fenced(claim).values(heartbeat_at=utcnow())).rowcount == 1
            cancel = s.execute(select(Job.cancel_requested).where(Job.id == claim.job_id)).scalar_one_or_none()
        return owned, bool(cancel)

    def record_progress(self, claim: Claim, progress: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> bool:
        """Store progress (and, with ``checkpoint``, the new resume point); False if the attempt lost the job."""
        values = _changed(progress=progress, heartbeat_at=utcnow())
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        with self.sessions.begin() as s:
            return s.execute(self._fenced(claim).values(**values)).rowcount == 1

    def record_checkpoint(self, claim: Claim, checkpoint: dict[str, Any]) -> bool:
        """Move the resume point to a state stored whole since its epoch's progress; False if the attempt lost
        the job."""
        with self.sessions.begin() as s:
            return s.execute(self._fenced(claim).values(**_changed(checkpoint=checkpoint))).rowcount == 1

    def finish(
        self,
        claim: Claim,
        state: JobState,
        *,
        error: tuple[str, str] | None = None,
        artifacts: Iterable[ArtifactRecord] = (),
        metrics: dict[str, float] | None = None,
        parent_scope: Iterable[str] = (),
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """End the attempt and publish its artifacts and metrics in one transaction; False if it lost the job.

        ``metrics`` are recorded on the job, and with a ``parent_scope`` also
        on its parent, where they replace every metric named in the scope that
        another job recorded (an earlier evaluation of the same properties);
        the parent's own numbers, its final losses, stay.
        """
        with self.sessions.begin() as s:
            values: dict[str, Any] = _changed(state=state.value, finished_at=utcnow(), checkpoint=None)
            if progress is not None:  # a runner's summary, recorded with its end
                values["progress"] = progress
            if error is not None:
                values.update(error_type=error[0], error_message=error[1])
            if not s.execute(self._fenced(claim).values(**values)).rowcount:
                return False
            for record in artifacts:
                s.add(Artifact(job_id=claim.job_id, **record.__dict__))
            if metrics:
                self._record_metrics(s, claim.job_id, claim.job_id, metrics, metrics)
            scope = list(parent_scope)
            if scope and claim.parent_id:
                self._record_metrics(s, claim.parent_id, claim.job_id, metrics or {}, scope)
            follow_ups: list[tuple[str, str]] = []

            def queue_follow_ups(group: Any) -> None:
                if state is JobState.SUCCEEDED and self._group_of(s, claim.parent_id) == claim.parent_id:
                    follow_ups.extend(self._queue_follow_ups(s, claim, group))

            # Last: a group's report, queued by the recount when this was its last job, sees the numbers above.
            self._tally(s, claim.parent_id, queue_follow_ups)
        made, self._reports = self._reports, []
        if follow_ups or made:
            self.publish_many(follow_ups + made)
        return True

    def _queue_follow_ups(self, s: Session, claim: Claim, group: Any) -> list[tuple[str, str]]:
        """The jobs a group asks for when one of its children succeeds (a sweep: the child's evaluation)."""
        kind = KINDS.get(group.kind)
        if kind is None or kind.follow_up is None or group.cancel_requested:
            return []
        if kind.finale is not None and claim.kind == kind.finale(group.spec):
            return []  # the group's report is not one of its children to follow up
        made = []
        child = s.get(Job, claim.job_id)
        for follow_kind, fields in kind.follow_up(group.spec, claim.job_id):
            follow = get_kind(follow_kind)
            spec = follow.parse(fields)
            job = Job(kind=follow.name, spec=spec.to_dict(), parent_id=claim.job_id, queue=follow.queue(spec),
                      max_attempts=self.max_attempts, tags=[], name=child_name(follow.name, child))
            s.add(job)
            s.flush()
            made.append((job.id, job.queue))
        return made

    # -- groups (sweeps): state and counts follow the children --------------------------------

    def _group_of(self, s: Session, parent_id: str | None) -> str | None:
        """The group a job with this parent belongs to: the parent, or for a follow-up the parent's parent.
        Kinds and parents never change, so the answer is remembered (a sweep's children ask it 2,000 times)."""
        if parent_id is None:
            return None
        if parent_id not in self._groups:
            group = None
            row = s.execute(select(Job.kind, Job.parent_id).where(Job.id == parent_id)).one_or_none()
            if row is not None and _is_group(row.kind):
                group = parent_id
            elif row is not None and row.parent_id is not None:
                grand = s.execute(select(Job.kind).where(Job.id == row.parent_id)).scalar_one_or_none()
                group = row.parent_id if _is_group(grand) else None
            self._groups[parent_id] = group
        return self._groups[parent_id]

    def _tally(self, s: Session, parent_id: str | None, before: Callable[[Any], None] | None = None) -> None:
        """After a job changed state: recount the group it belongs to, in the same transaction. ``before`` gets
        the locked group row first (to queue follow-ups that the count then includes)."""
        group_id = self._group_of(s, parent_id)
        if group_id is not None:
            self._recount(s, group_id, before)

    def _recount(self, s: Session, group_id: str, before: Callable[[Any], None] | None = None) -> None:
        # The group's row lock orders two workers finishing children at the same instant: the second counts
        # after the first has committed (PostgreSQL re-reads per statement; SQLite has one writer at a time).
        group = s.execute(select(Job.kind, Job.spec, Job.cancel_requested, Job.state).where(Job.id == group_id)
                          .with_for_update()).one()
        if before is not None:
            before(group)
        kind = KINDS[group.kind]
        report_kind = kind.finale(group.spec) if kind.finale else None
        child, follow = _CHILD, _FOLLOW_UP
        counted = union_all(
            select(Job.kind, Job.state, func.count()).where(Job.parent_id == group_id).group_by(Job.kind, Job.state),
            select(literal("follow_ups"), follow.state, func.count()).join(child, follow.parent_id == child.id)
            .where(child.parent_id == group_id).group_by(follow.state),
        )
        children: dict[str, int] = {}
        follow_ups: dict[str, int] = {}
        report: dict[str, int] = {}
        for which, state, n in s.execute(counted):
            counts = follow_ups if which == "follow_ups" else report if which == report_kind else children
            counts[state] = counts.get(state, 0) + n
        live = (JobState.QUEUED.value, JobState.RUNNING.value)
        unfinished = sum(n for st, n in (*children.items(), *follow_ups.items()) if st in live)
        if not unfinished and report_kind and not report and not group.cancel_requested:
            self._queue_report(s, group_id, report_kind)
            report = {JobState.QUEUED.value: 1}
        unfinished += sum(n for st, n in report.items() if st in live)
        progress = _group_progress(sum(children.values()), children, follow_ups)
        if report_kind:
            progress["report"] = report
        values: dict[str, Any] = {"progress": progress}
        if unfinished:
            values["state"] = JobState.RUNNING.value
        else:
            everything_succeeded = set(children) | set(follow_ups) | set(report) <= {JobState.SUCCEEDED.value}
            values["state"] = (JobState.CANCELLED.value if group.cancel_requested else
                               JobState.SUCCEEDED.value if everything_succeeded else JobState.FAILED.value)
            if group.state != values["state"]:
                values["finished_at"] = utcnow()
        s.execute(update(Job).where(Job.id == group_id).values(**_changed(**values)))

    def _queue_report(self, s: Session, group_id: str, report_kind: str) -> None:
        """The group's report job, with every child's spec, state and numbers as this transaction sees them. It
        is published by the reaper's pass over unpublished jobs (or at once by a finishing worker)."""
        rows = s.execute(select(Job.id, Job.spec, Job.state).where(Job.parent_id == group_id, Job.kind != report_kind)
                         .order_by(Job.created_at, Job.id)).all()
        numbers: dict[str, dict[str, float]] = {row.id: {} for row in rows}
        ids = list(numbers)
        for start in range(0, len(ids), ID_CHUNK):
            for job_id, name, value in s.execute(select(JobMetric.job_id, JobMetric.name, JobMetric.value)
                                                 .where(JobMetric.job_id.in_(ids[start:start + ID_CHUNK]))):
                numbers[job_id][name] = value
        kind = get_kind(report_kind)
        spec = kind.parse({"sweep_job": group_id, "runs": [
            {"id": row.id, "spec": row.spec, "state": row.state, "metrics": numbers[row.id]} for row in rows]})
        job = Job(kind=kind.name, spec=spec.to_dict(), parent_id=group_id, queue=kind.queue(spec), tags=[],
                  max_attempts=self.max_attempts, name="study report")
        s.add(job)
        s.flush()
        self._reports.append((job.id, job.queue))

    def cancel_group(self, group_id: str) -> str:
        """Cancel a group: every unfinished child and follow-up (queued ones at once, running ones asked to
        stop), and no more follow-ups. Returns the group's state after."""
        now = utcnow()
        with self.sessions.begin() as s:
            state = s.execute(select(Job.state).where(Job.id == group_id).with_for_update()).scalar_one_or_none()
            if state is None:
                raise JobNotFound(f"no job with id {group_id}")
            if JobState(state).finished:
                raise JobConflict(f"job {group_id} has already finished ({state})")
            s.execute(update(Job).where(Job.id == group_id).values(**_changed(cancel_requested=True)))
            children = select(Job.id).where(Job.parent_id == group_id).scalar_subquery()
            members = (Job.parent_id == group_id) | Job.parent_id.in_(children)
            s.execute(update(Job).where(members, Job.state == JobState.QUEUED.value).values(**_changed(
                state=JobState.CANCELLED.value, cancel_requested=True, finished_at=now, checkpoint=None)))
            s.execute(update(Job).where(members, Job.state == JobState.RUNNING.value)
                      .values(**_changed(cancel_requested=True)))
            self._recount(s, group_id)
            return s.execute(select(Job.state).where(Job.id == group_id)).scalar_one()

    @staticmethod
    def _record_metrics(s: Session, job_id: str, source_id: str, metrics: dict[str, float], scope: Iterable[str]
                        ) -> None:
        stale = delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.name.in_(list(scope)))
        own: set[str] = set()
        if job_id != source_id:
            # A parent's own numbers stay, and win over a child's of the same name (a VAE's final test_mse,
            # over the whole test split, against its scorecard's test_mse on a sample of it).
            stale = stale.where(JobMetric.source_id != job_id)
            own = set(s.scalars(select(JobMetric.name).where(JobMetric.job_id == job_id,
                                                             JobMetric.source_id == job_id,
                                                             JobMetric.name.in_(list(metrics)))))
        s.execute(stale)
        s.add_all(JobMetric(job_id=job_id, name=name, value=float(value), source_id=source_id)
                  for name, value in metrics.items() if name not in own)

    def hand_back(self, claim: Claim, reason: str) -> bool:
        """Return a running job to the queue at once, without spending an attempt (warm shutdown)."""
        now = utcnow()
        with self.sessions.begin() as s:
            handed = s.execute(self._fenced(claim).values(**_changed(
                state=JobState.QUEUED.value, attempts=Job.attempts - 1, worker=None, heartbeat_at=None,
                queued_at=now, published_at=None, last_interruption=reason,
            ))).rowcount == 1
            if handed:
                self._tally(s, claim.parent_id)
            queue = s.execute(select(Job.queue).where(Job.id == claim.job_id)).scalar_one()
        if handed:
            self._send_unpublished(claim.job_id, queue, now)
        return handed

    # -- cancelling -------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job at once, or ask a running one to stop. Returns the state after."""
        with self.sessions.begin() as s:
            if s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(**_changed(state=JobState.CANCELLED.value, cancel_requested=True, finished_at=utcnow(),
                                   checkpoint=None))
            ).rowcount:
                self._tally(s, s.execute(select(Job.parent_id).where(Job.id == job_id)).scalar_one())
                return JobState.CANCELLED.value
            if s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value)
                .values(**_changed(cancel_requested=True))
            ).rowcount:
                return JobState.RUNNING.value
            state = s.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
        if state is None:
            raise JobNotFound(f"no job with id {job_id}")
        raise JobConflict(f"job {job_id} has already finished ({state})")

    # -- attempts that ended without finishing -------------------------------------------

    def give_up_attempt(self, claim: Claim, reason: str, error_type: str) -> str | None:
        """End this attempt without a result (e.g. its artifact store stopped answering): the job is requeued
        while attempts remain, else it fails with ``reason``. Returns what happened; None if it lost the job."""
        with self.sessions() as s:
            row = s.execute(select(Job.id, Job.lease, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.queue)
                            .where(Job.id == claim.job_id)).one()
        if row.lease != claim.lease:
            return None
        counts = self._settle([row], lambda _row: reason, utcnow(), error_type=error_type)
        return next((outcome for outcome, count in counts.items() if count and outcome != "republished"), None)

    def _interrupt(self, s: Session, row: Any, reason: str, now: datetime, *extra_conditions: Any,
                   error_type: str = "WorkerLost") -> str | None:
        """Requeue, fail or cancel one running attempt that will not finish; returns what happened."""
        job_id, lease, attempts, max_attempts, cancel = row
        if cancel:
            values, outcome = {"state": JobState.CANCELLED.value, "finished_at": now, "checkpoint": None}, "cancelled"
        elif attempts < max_attempts:
            values = {"state": JobState.QUEUED.value, "worker": None, "heartbeat_at": None,
                      "queued_at": now, "published_at": None}
            outcome = "requeued"
        else:
            values = {"state": JobState.FAILED.value, "finished_at": now, "checkpoint": None,
                      "error_type": error_type,
                      "error_message": f"gave up after {attempts} attempts; the last one ended because {reason}"}
            outcome = "failed"
        done = s.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.lease == lease,
                              *extra_conditions)
            .values(**_changed(last_interruption=reason, **values))
        ).rowcount
        if done:
            self._tally(s, s.execute(select(Job.parent_id).where(Job.id == job_id)).scalar_one())
        return outcome if done else None

    def _settle(self, rows: Iterable[Any], reason_of: Callable[[Any], str], now: datetime,
                *extra_conditions: Any, error_type: str = "WorkerLost") -> dict[str, int]:
        counts = {"requeued": 0, "failed": 0, "cancelled": 0, "republished": 0}
        requeued: list[tuple[str, str]] = []
        with self.sessions.begin() as s:
            for row in rows:
                outcome = self._interrupt(s, row[:5], reason_of(row), now, *extra_conditions, error_type=error_type)
                if outcome is not None:
                    counts[outcome] += 1
                    log.warning("job %s: %s (%s)", row[0], outcome, reason_of(row))
                    if outcome == "requeued":
                        requeued.append((row[0], row[5]))
        # A requeued job goes back to the broker at once.
        counts["republished"] = sum(self._send_unpublished(job_id, queue, now) for job_id, queue in requeued)
        return counts

    def worker_crashed(self, worker: str, reason: str) -> dict[str, int]:
        """The worker process died (its supervisor saw it): settle its job now, not after the stale timeout."""
        now = utcnow()
        with self.sessions() as s:
            rows = s.execute(
                select(Job.id, Job.lease, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.queue)
                .where(Job.state == JobState.RUNNING.value, Job.worker == worker)
            ).all()
        counts = self._settle(rows, lambda _row: reason, now, Job.worker == worker)
        counts["registered"] = int(self.worker_gone(worker))
        return counts

    def reap(self, stale_after_s: float, now: datetime | None = None) -> dict[str, int]:
        """Requeue or fail jobs whose worker went silent; republish jobs never published."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=stale_after_s)
        with self.sessions() as s:
            stale = s.execute(
                select(Job.id, Job.lease, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.queue, Job.worker)
                .where(Job.state == JobState.RUNNING.value, Job.heartbeat_at < cutoff)
            ).all()
        counts = self._settle(
            stale, lambda row: f"its worker {row[6]} stopped sending heartbeats for over {stale_after_s:g} s",
            now, Job.heartbeat_at < cutoff,
        )
        # Jobs the API never published wait out the grace period first.
        counts["republished"] += self.republish_unpublished(now)
        return counts

    # -- publishing again ------------------------------------------------------------------

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

    def queued_published_before(self, cutoff: datetime) -> dict[str, str]:
        """Queued jobs published before ``cutoff``: {id: queue}. Their messages should be in the broker."""
        with self.sessions() as s:
            return dict(s.execute(select(Job.id, Job.queue).where(
                Job.state == JobState.QUEUED.value, Job.published_at.is_not(None), Job.published_at < cutoff,
            )).all())

    def republish(self, job_id: str, queue: str) -> bool:
        """Publish a queued job again (its message was lost); duplicates are harmless thanks to the claim."""
        now = utcnow()
        with self.sessions.begin() as s:
            if not s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                             .values(published_at=None)).rowcount:
                return False
        return self._send_unpublished(job_id, queue, now)

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

    # -- files --------------------------------------------------------------------------------

    def folders_in_use(self, job_id: str) -> set[str]:
        """Attempt folders to keep: the running or winning attempt's, the one the checkpoint points into, and the
        one whose files the job published (a failed or cancelled job publishes its log.txt).

        The winner is the last lease: nothing claims a job after it succeeded.
        """
        with self.sessions() as s:
            row = s.execute(select(Job.state, Job.lease, Job.checkpoint).where(Job.id == job_id)).one_or_none()
            published = s.execute(select(Artifact.path, Artifact.name).where(Artifact.job_id == job_id).limit(1)).first()
        if row is None:
            return set()
        keep: set[str] = set()
        if published is not None:  # the key is <attempt folder>/<name>
            keep.add(published.path[: -len(published.name) - 1])
        if row.state in (JobState.RUNNING.value, JobState.SUCCEEDED.value):
            keep.add(run_path(job_id, row.lease))
        if row.checkpoint:
            keep.add(run_path(job_id, int(row.checkpoint["lease"])))
        return keep

    def published_files(self, job_id: str, kinds: Iterable[str]) -> tuple[str, dict[str, str]] | None:
        """A finished job's folder key and {name: sha256} of its files of these kinds; None if it published none."""
        with self.sessions() as s:
            rows = s.execute(select(Artifact.path, Artifact.name, Artifact.sha256)
                             .where(Artifact.job_id == job_id, Artifact.kind.in_(list(kinds)))).all()
        if not rows:
            return None
        folder = rows[0].path[: -len(rows[0].name)].rstrip("/")
        return folder, {row.name: row.sha256 for row in rows}

    # -- leases ---------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the named lease for ``ttl_s`` seconds; False while another holder has it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with self.sessions.begin() as s:
            if s.execute(update(Lease).where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
                         .values(holder=holder, expires_at=expires)).rowcount:
                return True
        try:
            with self.sessions.begin() as s:
                s.execute(insert(Lease).values(name=name, holder=holder, expires_at=expires))
            return True
        except IntegrityError:
            return False

    def release_lease(self, name: str, holder: str) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

    # -- workers ----------------------------------------------------------------------

    def worker_seen(self, hostname: str, queues: str, current_job: str | None, draining: bool = False) -> None:
        with self.sessions.begin() as s:
            now = utcnow()
            if not s.execute(
                update(Worker).where(Worker.hostname == hostname)
                .values(last_seen=now, queues=queues, current_job=current_job, draining=draining)
            ).rowcount:
                s.add(Worker(hostname=hostname, queues=queues, started_at=now, last_seen=now, current_job=current_job,
                             draining=draining))

    def count_dropped(self, hostname: str) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Worker).where(Worker.hostname == hostname)
                      .values(dropped_messages=Worker.dropped_messages + 1))

    def worker_gone(self, hostname: str) -> bool:
        """Remove the worker's row; False when it had none (it never got ready)."""
        with self.sessions.begin() as s:
            worker = s.get(Worker, hostname)
            if worker is not None:
                s.delete(worker)
            return worker is not None

    def live_workers(self, stale_after_s: float) -> list[Worker]:
        with self.sessions() as s:
            cutoff = utcnow() - timedelta(seconds=stale_after_s)
            return list(s.scalars(select(Worker).where(Worker.last_seen >= cutoff).order_by(Worker.hostname)))

    def live_workers_on(self, host: str, stale_after_s: float) -> int:
        """How many live workers run on ``host`` (worker names are ``host:pid``)."""
        with self.sessions() as s:
            cutoff = utcnow() - timedelta(seconds=stale_after_s)
            return s.execute(select(func.count()).select_from(Worker).where(
                Worker.last_seen >= cutoff, Worker.hostname.like(like_prefix(host + ":"), escape="\\"),
            )).scalar_one()
