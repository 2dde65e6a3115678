"""Progress streams (Server-Sent Events) that cost no thread each and one query per tick in all.

One watcher per API process polls the jobs that its open streams follow,
every ``POLL_S``, with one query over a cheap column (``revision``, bumped by
every change of a job row); only rows that changed are read in full and
handed to the streams that follow them. Under gunicorn's gevent worker (the
default, api/server.py) a waiting stream is a parked greenlet, not a thread,
so open streams never starve health, reads or submits. Each process still
caps its open streams (503 beyond the cap), each stream closes after a
maximum lifetime (the browser's EventSource reconnects on its own) and sends
keep-alives while nothing changes.

A stream may follow many jobs (a page opens one stream for all its live
rows). Its first event for a job carries the whole job view; later events
carry only the latest epoch's progress, never the whole history again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from shared.db import Job, JobState

log = logging.getLogger("latentforge.api")

POLL_S = 0.5
KEEPALIVE_S = 15.0
RETRY_MS = 2000
MAX_JOBS_PER_STREAM = 100
ID_CHUNK = 500  # ids per IN (...) list


class TooManyStreams(Exception):
    """This process has as many open streams as it allows."""


def job_event(job: Job, *, history: bool) -> dict[str, Any]:
    progress = dict(job.progress or {})
    if not history:
        progress.pop("history", None)
    return {
        "id": job.id, "state": job.state, "attempts": job.attempts, "progress": progress,
        "cancel_requested": job.cancel_requested,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "error": {"type": job.error_type, "message": job.error_message or ""} if job.error_type else None,
    }


def sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Subscription:
    def __init__(self, job_ids: Iterable[str]):
        self.job_ids = frozenset(job_ids)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()


class JobWatcher:
    """Polls the jobs followed by this process's open streams and fans their changes out."""

    def __init__(self, sessions: sessionmaker, max_streams: int):
        self.sessions = sessions
        self.max_streams = max_streams
        self._subscriptions: set[Subscription] = set()
        self._revisions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def open_streams(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, job_ids: Iterable[str], revisions: dict[str, int]) -> Subscription:
        """Follow ``job_ids``, already sent to the client as of ``revisions``."""
        sub = Subscription(job_ids)
        with self._lock:
            if len(self._subscriptions) >= self.max_streams:
                raise TooManyStreams(f"this server process already has {self.max_streams} open progress streams")
            self._subscriptions.add(sub)
            for job_id, revision in revisions.items():
                self._revisions.setdefault(job_id, revision)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="latentforge-job-watcher", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)
            followed = {job_id for s in self._subscriptions for job_id in s.job_ids}
            for job_id in list(self._revisions):
                if job_id not in followed:
                    del self._revisions[job_id]

    def _run(self) -> None:
        while True:
            time.sleep(POLL_S)
            with self._lock:
                if not self._subscriptions:
                    self._thread = None
                    return
                known = dict(self._revisions)
            try:
                changed = self._changed_jobs(known)
            except SQLAlchemyError as exc:  # streams keep their keep-alives; the next tick retries
                log.warning("progress streams: database unavailable (%s)", type(exc).__name__)
                continue
            if not changed:
                continue
            with self._lock:
                for event in changed:
                    self._revisions[event["id"]] = event.pop("revision")
                subscriptions = list(self._subscriptions)
            for sub in subscriptions:
                for event in changed:
                    if event["id"] in sub.job_ids:
                        sub.events.put(event)

    def _changed_jobs(self, known: dict[str, int]) -> list[dict[str, Any]]:
        ids = list(known)
        with self.sessions() as session:
            changed_ids = [
                job_id
                for start in range(0, len(ids), ID_CHUNK)
                for job_id, revision in session.execute(
                    select(Job.id, Job.revision).where(Job.id.in_(ids[start:start + ID_CHUNK]))
                )
                if revision != known.get(job_id)
            ]
            if not changed_ids:
                return []
            jobs = session.scalars(select(Job).where(Job.id.in_(changed_ids))).all()
            return [{**job_event(job, history=False), "revision": job.revision} for job in jobs]


def stream_events(watcher: JobWatcher, sessions: sessionmaker, job_ids: list[str], max_seconds: float,
                  history: bool = True) -> Iterator[str] | None:
    """Open a stream of the jobs' progress: reads their current state now (so a database
    outage is an error before the response starts), then yields SSE text until every
    job has ended or the lifetime is over. With ``history``, the first event of each
    job carries its per-epoch history. None when no such job exists."""
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
        if not jobs:
            return None
        first = [job_event(job, history=history) for job in jobs]
        revisions = {job.id: job.revision for job in jobs}
    live = {event["id"] for event in first if not JobState(event["state"]).finished}
    sub = watcher.subscribe(live, revisions) if live else None
    return _events(watcher, sub, first, live, max_seconds)


def _events(watcher: JobWatcher, sub: Subscription | None, first: list[dict[str, Any]], live: set[str],
            max_seconds: float) -> Iterator[str]:
    try:
        yield f"retry: {RETRY_MS}\n\n"
        for event in first:
            yield sse("progress", event)
            if event["id"] not in live:
                yield sse("end", event)
        if sub is None:
            return
        deadline = time.monotonic() + max_seconds
        keepalive_s = min(KEEPALIVE_S, max_seconds / 3)
        while live:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # the client reconnects and gets a fresh first event
            try:
                event = sub.events.get(timeout=min(keepalive_s, remaining))
            except queue.Empty:
                yield ": keep-alive\n\n"
                continue
            yield sse("progress", event)
            if JobState(event["state"]).finished:
                live.discard(event["id"])
                yield sse("end", event)
    finally:
        if sub is not None:
            watcher.unsubscribe(sub)
