"""The job service: submit, read, page, cancel, with no Flask in it.

The JSON routes, the gallery and the CLI (through the API) all go through
it; a sweep's children are made here too, with the sweep, in one
transaction. It takes plain arguments, opens a short session per call (no
request-scoped session held across a call), returns job rows with their
artifacts and metrics loaded, and raises the errors of shared/errors.py,
which each caller maps in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker

from shared.db import FINISHED_STATES, Artifact, Job, JobMetric, JobState, child_name, utcnow
from shared.errors import (IdempotencyKeyReused, JobConflict, JobNotFinished, JobNotFound, LatentForgeError, ParentNotReady,
                           QueryError, RunHasChildren, SpecError)
from shared.jobstore import JobStore
from shared.kinds import JobKind, get_kind, names
from shared.scorecard import METRICS
from shared.search import RunFilter
from shared.storage import ArtifactStore
from shared.specs import JobCreate, RunEdit, Spec

PAGE_DEFAULT, PAGE_MAX = 50, 200
LOADED = (selectinload(Job.artifacts), selectinload(Job.metrics))  # what job_out reads after the session closes
ASCII_NUMBER = re.compile(r"[0-9]{1,9}")  # str.isdigit() also takes '²' and other digits int() refuses
METRIC_SORT = re.compile(r"(-?)metrics\.([a-z][a-z0-9_]{0,63})")


def parse_id(value: Any, what: str = "job") -> str:
    """A canonical UUID, or JobNotFound saying the value is no id at all."""
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise JobNotFound(f"{value!r} is not a {what} id (ids are UUIDs)") from None


def request_fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), str(uuid.UUID(job_id))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise QueryError([("cursor", "is not a cursor this API returned")]) from None


def encode_offset_cursor(sort: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{sort}|{offset}".encode()).decode().rstrip("=")


def decode_offset_cursor(cursor: str, sort: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        cursor_sort, offset = raw.rsplit("|", 1)
        if cursor_sort == sort and ASCII_NUMBER.fullmatch(offset):
            return int(offset)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise QueryError([("cursor", f"is not a cursor this API returned for sort={sort}")])


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None


class JobService:
    def __init__(self, sessions: sessionmaker, store: JobStore, artifacts: ArtifactStore | None = None):
        self.sessions = sessions
        self.store = store
        self.artifacts = artifacts  # where delete() removes a run's files; None: rows only
        self.dialect = sessions.kw["bind"].dialect.name

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, body: Any, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Validate and queue a job request ({kind, spec, name, tags}); returns (job, replayed).

        With ``idempotency_key``, the same request again returns the job the
        first one made; the key with another request is refused.
        """
        fingerprint = request_fingerprint(body)
        if idempotency_key and (existing := self._replay(idempotency_key, fingerprint)) is not None:
            return existing, True
        request = JobCreate.parse(body)
        kind = get_kind(request.kind)
        if kind.internal:
            raise SpecError([("kind", f"{kind.name} jobs are made by the queue itself ({kind.help}), not submitted")])
        spec = kind.parse(request.spec)
        parent = self._check_parent(kind, spec)
        # A run made from another is named after it unless the request names it: lists show names, not ids.
        name = request.name or (child_name(kind.name, parent) if parent is not None else None)
        fields = dict(kind=kind.name, spec=spec.to_dict(), name=name, tags=request.tags,
                      parent_id=parent.id if parent is not None else None,
                      queue=kind.queue(spec), idempotency_key=idempotency_key, request_hash=fingerprint)
        with self.sessions() as session:
            try:
                if kind.fan_out is not None:
                    job = self.store.create_group(session, self._children(kind, spec, request.name), **fields)
                else:
                    job = self.store.create(session, **fields)
            except IntegrityError:
                session.rollback()  # a concurrent retry with the same key won the insert
                if idempotency_key and (existing := self._replay(idempotency_key, fingerprint)) is not None:
                    return existing, True
                raise
            job.artifacts, job.metrics  # loaded now (none yet): answered as committed, not as a worker changed it since
            return job, False

    @staticmethod
    def _children(kind: JobKind, spec: Spec, name: str | None) -> list[dict[str, Any]]:
        """The rows of a fan-out job's children, named after the group and what each varies."""
        rows = []
        for child in kind.fan_out(spec):
            child_kind = get_kind(child.kind)
            varied = ", ".join(f"{k}={json.dumps(v)}" for k, v in child.varied.items())
            label = f"{name or kind.name}: {varied}" if varied else (name or kind.name)
            rows.append(dict(kind=child_kind.name, spec=child.spec.to_dict(), name=label[:200], tags=[],
                             queue=child_kind.queue(child.spec)))
        return rows

    def _replay(self, key: str, fingerprint: str) -> Job | None:
        with self.sessions() as session:
            existing = session.scalars(
                select(Job).where(Job.idempotency_key == key).options(*LOADED)
            ).one_or_none()
        if existing is not None and existing.request_hash != fingerprint:
            raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was already used with a different request")
        return existing

    def _check_parent(self, kind: JobKind, spec: Spec) -> Job | None:
        """The parent a kind needs: it exists, is of an allowed kind, fits the request and has succeeded."""
        rule = kind.parent
        if rule is None:
            return None
        parent_id = getattr(spec, rule.field)
        with self.sessions() as session:
            parent = session.get(Job, parent_id)
        field = f"spec.{rule.field}"
        if parent is None:
            raise SpecError([(field, f"no job with id {parent_id}")])
        if parent.kind not in rule.kinds:
            raise SpecError([(field, f"job {parent.id} is a {parent.kind} job, not a {' or '.join(rule.kinds)} job")])
        if rule.check and (problems := rule.check(spec, parent.spec)):
            raise SpecError(problems)
        if parent.state != JobState.SUCCEEDED.value:
            raise ParentNotReady(f"{field}: job {parent.id} is {parent.state}; {kind.name} needs a"
                                 f" {' or '.join(rule.kinds)} job that has succeeded")
        return parent

    # -- reading --------------------------------------------------------------------------------

    @staticmethod
    def _loaded(session: Session, job_id: str) -> Job | None:
        return session.get(Job, job_id, options=list(LOADED), populate_existing=True)

    def get(self, job_id: Any) -> Job:
        job_id = parse_id(job_id)
        with self.sessions() as session:
            job = self._loaded(session, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def artifact(self, artifact_id: Any) -> Artifact:
        artifact_id = parse_id(artifact_id, "artifact")
        with self.sessions() as session:
            artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise JobNotFound(f"no artifact with id {artifact_id}")
        return artifact

    def page(self, *, kind: str | None = None, state: str | None = None, parent: str | None = None,
             limit: str | int | None = None, cursor: str | None = None, sort: str | None = None,
             where: RunFilter | None = None) -> Page:
        """Jobs with these filters, newest first or by ``sort``; an empty filter means none.

        ``where`` adds tags, name text, spec fields, a time range and the archived view (shared/search.py);
        without it archived runs are left out, as with an empty RunFilter.

        ``sort`` is ``-created`` (the default), ``created``, or ``metrics.<name>``
        / ``-metrics.<name>`` for any metric a run records (shared/scorecard.py,
        final losses): runs without it come last, ties newest first. Bad values:
        QueryError naming them.
        """
        query = select(Job).options(*LOADED).where(*(where or RunFilter()).conditions(self.dialect))
        if kind := _choice("kind", kind, names()):
            query = query.where(Job.kind == kind)
        if state := _choice("state", state, [s.value for s in JobState]):
            query = query.where(Job.state == state)
        if parent:
            try:
                query = query.where(Job.parent_id == str(uuid.UUID(parent)))
            except ValueError:
                raise QueryError([("parent", f"{parent!r} is not a job id (a UUID)")]) from None
        limit = _limit(limit)
        sort = sort or "-created"
        if sort in ("-created", "created"):
            newest_first = sort == "-created"
            if cursor:
                created, job_id = decode_cursor(cursor)
                # Rows after the cursor in (created_at, id) order, as one index bound.
                after = tuple_(Job.created_at, Job.id)
                query = query.where(after < tuple_(created, job_id) if newest_first else after > tuple_(created, job_id))
            order = (Job.created_at.desc(), Job.id.desc()) if newest_first else (Job.created_at, Job.id)
            with self.sessions() as session:
                jobs = list(session.scalars(query.order_by(*order).limit(limit + 1)))
            return Page(jobs[:limit], encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None)
        descending, metric = self._metric_sort(sort)
        # Ranked pages are offsets into one total order (value, then newest first, then id): stable while the
        # rows do not change, and a cursor names its sort so it cannot be replayed against another.
        offset = decode_offset_cursor(cursor, sort) if cursor else 0
        value = aliased(JobMetric)
        query = query.outerjoin(value, (value.job_id == Job.id) & (value.name == metric)).order_by(
            value.value.is_(None), value.value.desc() if descending else value.value,
            Job.created_at.desc(), Job.id.desc())
        with self.sessions() as session:
            jobs = list(session.scalars(query.offset(offset).limit(limit + 1)))
        more = len(jobs) > limit
        return Page(jobs[:limit], encode_offset_cursor(sort, offset + limit) if more else None)

    def _metric_sort(self, sort: str) -> tuple[bool, str]:
        match = METRIC_SORT.fullmatch(sort)
        known = set(METRICS) | set(self.metric_names())
        if match is None or match.group(2) not in known:
            what = "unknown metric" if match else "unknown sort key"
            raise QueryError([("sort", f"{what} {sort[:80]!r}: use -created, created, metrics.<name> or"
                                       f" -metrics.<name>, with a name from {', '.join(sorted(known))}")])
        return match.group(1) == "-", match.group(2)

    def metric_names(self) -> list[str]:
        """Every metric some run has recorded (final losses, scorecard numbers), sorted."""
        with self.sessions() as session:
            return list(session.scalars(select(JobMetric.name).distinct().order_by(JobMetric.name)))

    def children(self, job_id: str) -> list[Job]:
        with self.sessions() as session:
            return list(session.scalars(select(Job).where(Job.parent_id == job_id)
                                        .options(*LOADED).order_by(Job.created_at)))

    def names(self, job_ids: list[str]) -> dict[str, str]:
        """{id: name} of these jobs (their kind and short id when unnamed), for links to them."""
        if not job_ids:
            return {}
        with self.sessions() as session:
            rows = session.execute(select(Job.id, Job.name, Job.kind).where(Job.id.in_(job_ids))).all()
        return {row.id: row.name or f"{row.kind} {row.id[:8]}" for row in rows}

    def child_counts(self, job_ids: list[str]) -> dict[str, int]:
        if not job_ids:
            return {}
        with self.sessions() as session:
            return dict(session.execute(select(Job.parent_id, func.count()).where(Job.parent_id.in_(job_ids))
                                        .group_by(Job.parent_id)).all())

    def state_counts(self) -> dict[str, int]:
        with self.sessions() as session:
            return dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())

    def succeeded(self, kinds: tuple[str, ...], limit: int = 100) -> list[dict[str, Any]]:
        """Finished jobs of these kinds, newest first, as plain rows (for a form's choice of parent)."""
        with self.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.name, Job.spec).where(Job.kind.in_(kinds), Job.state == JobState.SUCCEEDED.value)
                .order_by(Job.created_at.desc()).limit(limit)
            ).all()
        return [{"id": r.id, "name": r.name, "spec": r.spec} for r in rows]

    # -- cancelling -----------------------------------------------------------------------------

    def cancel(self, job_id: Any) -> Job:
        """Cancel a queued job, or ask a running one to stop; JobConflict once it has finished. Cancelling a
        group (a sweep) cancels every unfinished child and follow-up."""
        job = self.get(job_id)
        kind = get_kind(job.kind) if job.kind in names() else None
        if kind is not None and kind.fan_out is not None:
            self.store.cancel_group(job.id)
        else:
            self.store.cancel(job.id)
        return self.get(job.id)

    # -- tidying up -----------------------------------------------------------------------------

    def edit(self, job_id: Any, body: Any) -> Job:
        """Change a run's name, tags or note (RunEdit); the rest of the row is what ran and stays."""
        changes = RunEdit.parse(body).changes()
        job_id = self.get(job_id).id
        with self.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**changes, revision=Job.revision + 1))
        return self.get(job_id)

    def archive(self, job_id: Any) -> Job:
        """Hide a finished run, and every run made from it, from lists (archived=0); restore() brings them back."""
        job_id = self.get(job_id).id
        with self.sessions.begin() as session:
            ids = self._subtree(session, job_id)
            self._refuse_unfinished(session, ids, "archived")
            session.execute(update(Job).where(Job.id.in_(ids), Job.archived_at.is_(None))
                            .values(archived_at=utcnow(), revision=Job.revision + 1))
        return self.get(job_id)

    def restore(self, job_id: Any) -> Job:
        job_id = self.get(job_id).id
        with self.sessions.begin() as session:
            ids = self._subtree(session, job_id)
            session.execute(update(Job).where(Job.id.in_(ids), Job.archived_at.is_not(None))
                            .values(archived_at=None, revision=Job.revision + 1))
        return self.get(job_id)

    def delete(self, job_id: Any, cascade: bool = False) -> list[str]:
        """Delete a finished run, its rows and its files; returns the ids deleted.

        A run that others were made from (a sweep's children, a model's
        evaluations) goes only with ``cascade``, and then with all of them. A
        run inside a sweep goes only with its sweep: the sweep's tallies count
        it. Metrics that a deleted evaluation gave its model go too. Rows go
        first, in one transaction that re-checks every state; files after, best
        effort (a leftover folder costs space, never a wrong answer).
        """
        job = self.get(job_id)
        with self.sessions.begin() as session:
            if (group := self._group_above(session, job)) is not None:
                raise JobConflict(f"job {job.id} is part of {group.kind} {group.id} ({group.name or 'unnamed'}):"
                                  f" delete or archive the {group.kind} instead")
            ids = self._subtree(session, job.id)
            if len(ids) > 1 and not cascade:
                raise RunHasChildren(f"job {job.id} has {len(ids) - 1} run(s) made from it (children, evaluations):"
                                     " pass cascade=true to delete them with it")
            self._refuse_unfinished(session, ids, "deleted")
            session.execute(delete(JobMetric).where(JobMetric.job_id.in_(ids) | JobMetric.source_id.in_(ids)))
            session.execute(delete(Artifact).where(Artifact.job_id.in_(ids)))
            finished = [state.value for state in FINISHED_STATES]
            try:
                gone = session.execute(delete(Job).where(Job.id.in_(ids), Job.state.in_(finished))).rowcount
            except IntegrityError:  # a run was made from one of these meanwhile (an evaluation submitted)
                raise JobConflict(f"job {job.id} gained a run made from it meanwhile; retry to see it") from None
            if gone != len(ids):  # one started meanwhile (a requeue): the transaction rolls back
                raise JobNotFinished(f"job {job.id} or a run below it is no longer finished; cancel it first")
        if self.artifacts is not None:
            for gone_id in ids:
                self.artifacts.delete(f"jobs/{gone_id}")
        return ids

    def bulk(self, action: str, ids: Any, cascade: bool = False) -> list[dict[str, Any]]:
        """archive, restore or delete each of ``ids``; one result per id, as its own call would have answered."""
        operations = {"archive": self.archive, "restore": self.restore,
                      "delete": lambda job_id: self.delete(job_id, cascade)}
        if action not in operations:
            raise SpecError([("action", f"must be one of {', '.join(operations)}, got {str(action)[:40]!r}")])
        if not isinstance(ids, list) or not 1 <= len(ids) <= PAGE_MAX or not all(isinstance(i, str) for i in ids):
            raise SpecError([("ids", f"must be a list of 1 to {PAGE_MAX} job ids")])
        results = []
        for job_id in ids:
            try:
                operations[action](job_id)
                results.append({"id": job_id, "ok": True, "status": 204 if action == "delete" else 200, "detail": None})
            except LatentForgeError as exc:
                results.append({"id": job_id, "ok": False, "status": exc.status, "detail": str(exc)})
        return results

    @staticmethod
    def _subtree(session: Session, job_id: str) -> list[str]:
        """The job and every job below it (children, their follow-ups, ...), the job first."""
        found, frontier = [job_id], [job_id]
        while frontier:
            frontier = list(session.scalars(select(Job.id).where(Job.parent_id.in_(frontier))))
            found += frontier
        return found

    @staticmethod
    def _refuse_unfinished(session: Session, ids: list[str], verb: str) -> None:
        live = session.execute(select(Job.id, Job.state).where(
            Job.id.in_(ids), Job.state.not_in([s.value for s in FINISHED_STATES]))).first()
        if live is not None:
            which = "it" if live.id == ids[0] else f"job {live.id} below it"
            raise JobNotFinished(f"job {ids[0]} cannot be {verb} while {which} is {live.state}; cancel it first")

    @staticmethod
    def _group_above(session: Session, job: Job) -> Job | None:
        """The nearest fan-out job (a sweep) this job was made under, if any."""
        parent_id = job.parent_id
        while parent_id is not None:
            parent = session.get(Job, parent_id)
            if parent is None:
                return None
            if parent.kind in names() and get_kind(parent.kind).fan_out is not None:
                return parent
            parent_id = parent.parent_id
        return None


def _choice(name: str, value: str | None, allowed: list[str]) -> str | None:
    if value and value not in allowed:
        raise QueryError([(name, f"must be one of {', '.join(allowed)}, got {value!r}")])
    return value or None


def _limit(raw: str | int | None) -> int:
    text = str(PAGE_DEFAULT if raw is None else raw)
    if not ASCII_NUMBER.fullmatch(text) or not 1 <= int(text) <= PAGE_MAX:
        raise QueryError([("limit", f"must be a whole number from 1 to {PAGE_MAX}, got {text!r}")])
    return int(text)
