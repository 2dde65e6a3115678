"""GET /metrics: the state of the whole system in Prometheus's text format.

What every API process would count differently (jobs, queues, workers, how
long jobs took) is read at scrape time, from the database and the broker, so
any process answers the same. Request latency is counted where requests are
served: in gunicorn's several processes it is kept in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a folder the gunicorn master
prepares under the scratch folder before it forks), and a scrape adds up the
files of every process, so the counts never jump between processes.

prometheus_client is imported only once a worker builds its app: it picks its
single- or multiprocess mode at import, from the environment the master set.
Behind the API token, like every read, unless ``LATENTFORGE_PUBLIC_METRICS=1``
(api/auth.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator

from celery import Celery
from flask import Blueprint, Flask, Response, current_app, g, request
from sqlalchemy import and_, case, extract, func, select
from sqlalchemy.exc import SQLAlchemyError

from api.context import Services
from shared.db import FINISHED_STATES, Job, JobState, Worker, utcnow
from shared.kinds import KINDS
from shared.queue import QUEUES
from shared.settings import Settings

bp = Blueprint("metrics", __name__)
log = logging.getLogger("latentforge.api")

METRICS_PATH = "/metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Job durations run from seconds (a sample) to a day (a long training); waits from instant to hours.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 3600, 14400, 86400)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BROKER_TIMEOUT_S = 2.0
UNMATCHED_ROUTE = "(unmatched)"  # a 404's path is not a label: anyone could make up endless ones


def prepare_multiprocess_folder(settings: Settings) -> Path | None:
    """In the gunicorn master, before it forks: a fresh folder for the workers' counts, removed when it exits.

    One folder per master (``scratch/prometheus/api-<pid>``), so two APIs on
    one home do not add up each other's counts; folders of masters that are
    gone are removed. A folder the operator named in the environment is used
    as it is (wiping it between runs is then theirs).
    """
    if os.environ.get(MULTIPROCESS_ENV):
        return None
    root = settings.scratch_dir / "prometheus"
    master = os.getpid()
    folder = root / f"api-{master}"
    if root.is_dir():
        for other in root.glob("api-*"):
            pid = other.name[4:]
            if other != folder and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(other, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)  # a master before this one had this pid (a container restarted)
    folder.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(folder)
    # Workers inherit this hook; only the master, the last to exit, removes the folder.
    atexit.register(lambda: os.getpid() == master and shutil.rmtree(folder, ignore_errors=True))
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """One app's request-latency histogram and the registry a scrape reads."""

    def __init__(self, svc: Services):
        from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
        from prometheus_client.multiprocess import MultiProcessCollector

        disable_created_metrics()  # the *_created series only repeat when each process started
        folder = os.environ.get(MULTIPROCESS_ENV)
        self.registry = CollectorRegistry()
        if folder:  # counts live in the shared files; the histogram below writes there and is read from there
            MultiProcessCollector(self.registry, path=folder)
        self.latency = Histogram(
            "latentforge_http_request_duration_seconds", "Time to answer an API or gallery request (to its first byte)",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=None if folder else self.registry,
        )
        self.registry.register(SystemCollector(svc))

    def started(self) -> None:
        g.metrics_started = time.perf_counter()

    def answered(self, response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
            self.latency.labels(route, request.method, f"{response.status_code // 100}xx").observe(
                time.perf_counter() - started)
        return response


def install(app: Flask, svc: Services) -> None:
    """Time every request (this hook first, so refused requests count too) and serve GET /metrics."""
    metrics = Metrics(svc)
    app.extensions["latentforge_metrics"] = metrics
    app.before_request(metrics.started)
    app.after_request(metrics.answered)
    app.register_blueprint(bp)


@bp.get(METRICS_PATH)
def scrape() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = current_app.extensions["latentforge_metrics"].registry
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                        "Cache-Control": "no-store"})


# -- what the database and the broker say, read at scrape time --------------------------------------


class SystemCollector:
    """Jobs, their durations and waits, and live workers (two aggregate queries on one connection), and the
    messages waiting in each queue of the broker. A part that does not answer is reported down (``*_up 0``) and
    the rest is still scraped."""

    def __init__(self, svc: Services):
        self.svc = svc

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        database_up = GaugeMetricFamily("latentforge_database_up", "1 when the database answered this scrape")
        try:
            families = list(self.database_families())
            database_up.add_metric([], 1)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            families = []
            database_up.add_metric([], 0)
        yield database_up
        yield from families
        yield from self.broker_families()

    def database_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        settings = self.svc.settings
        with self.svc.sessions() as session:
            dialect = session.get_bind().dialect.name
            rows = session.execute(jobs_query(dialect)).all()
            cutoff = utcnow() - timedelta(seconds=settings.stale_after_seconds)
            live = session.execute(select(Worker.queues, Worker.draining).where(Worker.last_seen >= cutoff)).all()

        jobs = GaugeMetricFamily("latentforge_jobs", "Jobs in the database by kind and state", labels=["kind", "state"])
        by_label = {(kind, state.value): 0 for kind in KINDS for state in JobState}  # zeros too: rates need them
        by_label.update({(row[0], row[1]): row[2] for row in rows})
        for (kind, state), count in sorted(by_label.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        yield from timing_families((row[0], row[1], *row[3:]) for row in rows)

        alive = GaugeMetricFamily("latentforge_workers_alive",
                                  f"Workers whose heartbeat is under {settings.stale_after_seconds:g} s old")
        alive.add_metric([], len(live))
        yield alive
        draining = GaugeMetricFamily("latentforge_workers_draining", "Live workers that are shutting down")
        draining.add_metric([], sum(1 for w in live if w.draining))
        yield draining
        serving = GaugeMetricFamily("latentforge_queue_workers", "Live workers that take jobs from each queue",
                                    labels=["queue"])
        for queue in QUEUES:
            serving.add_metric([queue], sum(1 for w in live if queue in w.queues.split(",")))
        yield serving

    def broker_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("latentforge_broker_up", "1 when the broker answered this scrape")
        try:
            waiting = waiting_messages(self.svc.celery, QUEUES)
        except Exception as exc:  # a broker that is away must not break the scrape
            log.warning("metrics: the broker did not answer (%s: %s)", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        if waiting is not None:
            family = GaugeMetricFamily("latentforge_queue_messages", "Messages waiting in each queue of the broker",
                                       labels=["queue"])
            for queue, count in waiting.items():
                family.add_metric([queue], count)
            yield family


def seconds_between(start: Any, end: Any, dialect: str) -> Any:
    if dialect == "sqlite":  # stored as text: julianday() reads it
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


def jobs_query(dialect: str) -> Any:
    """Per kind and state, in one pass over the table: the number of jobs, and the histograms of the run time of
    finished jobs (the attempt that ended them) and of the wait before the start of jobs that started, as sums of
    indicator columns.

    Each row's two durations are computed once, in a materialized CTE: written into every bucket's column, SQLite
    computed them again for each (20,000 jobs: 450 ms rather than 60).
    """
    finished = Job.state.in_([state.value for state in FINISHED_STATES])
    ran = and_(finished, Job.finished_at.is_not(None), Job.finished_at >= Job.started_at)
    waited = Job.started_at >= Job.queued_at  # a requeued job's start is its previous attempt's: not a wait
    timed = select(
        Job.kind, Job.state,
        case((ran, seconds_between(Job.started_at, Job.finished_at, dialect))).label("duration"),
        case((waited, seconds_between(Job.queued_at, Job.started_at, dialect))).label("wait"),  # NULL: not started
    ).cte("timed").prefix_with("MATERIALIZED")

    def at_most(column: Any, bound: float) -> Any:
        return func.sum(case((column <= bound, 1), else_=0))  # a NULL (not timed) counts in no bucket

    columns = [func.count(), func.count(timed.c.duration), func.sum(timed.c.duration)]
    columns += [at_most(timed.c.duration, bound) for bound in DURATION_BUCKETS]
    columns += [func.count(timed.c.wait), func.sum(timed.c.wait)]
    columns += [at_most(timed.c.wait, bound) for bound in WAIT_BUCKETS]
    return select(timed.c.kind, timed.c.state, *columns).group_by(timed.c.kind, timed.c.state)


def timing_families(rows: Iterable[Any]) -> Iterator[Any]:
    from prometheus_client.core import HistogramMetricFamily

    durations = HistogramMetricFamily("latentforge_job_duration_seconds",
                                      "Run time of finished jobs: from the start of the attempt that ended them",
                                      labels=["kind", "state"])
    waits: dict[str, list[float]] = {}
    n = len(DURATION_BUCKETS)
    for row in rows:
        kind, state, values = row[0], row[1], [float(v or 0) for v in row[2:]]
        ran, ran_sum, ran_buckets = values[0], values[1], values[2:2 + n]
        waited = values[2 + n:]
        if ran:
            durations.add_metric([kind, state], _buckets(DURATION_BUCKETS, ran_buckets, ran), ran_sum)
        if waited[0]:
            total = waits.setdefault(kind, [0.0] * len(waited))
            waits[kind] = [a + b for a, b in zip(total, waited)]
    yield durations
    queue_wait = HistogramMetricFamily("latentforge_job_queue_wait_seconds",
                                       "Time jobs waited in the queue before the attempt that runs or ran them",
                                       labels=["kind"])
    for kind, (count, total, *buckets) in sorted(waits.items()):
        queue_wait.add_metric([kind], _buckets(WAIT_BUCKETS, buckets, count), total)
    yield queue_wait


def _buckets(bounds: Iterable[float], cumulative: Iterable[float], count: float) -> list[tuple[str, float]]:
    from prometheus_client.utils import floatToGoString

    return [(floatToGoString(bound), value) for bound, value in zip(bounds, cumulative)] + [("+Inf", count)]


def waiting_messages(app: Celery, queues: Iterable[str]) -> dict[str, int] | None:
    """Messages waiting in each queue (not those delivered and unacknowledged); None for a broker this cannot
    count. Raises when the broker does not answer: one try, no retry, so a scrape is never held up for long."""
    queues = tuple(queues)
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_S)
        transport = conn.transport.driver_type
        if transport == "filesystem":
            folder = Path(app.conf.broker_transport_options["data_folder_in"])
            counts = dict.fromkeys(queues, 0)
            for entry in os.scandir(folder):
                queue = entry.name.rsplit(".", 2)[-2] if entry.name.endswith(".msg") else None
                if queue in counts:
                    counts[queue] += 1
            return counts
        if transport != "redis":
            return None
        channel = conn.default_channel
        pipe = channel.client.pipeline(transaction=False)
        keys = {queue: list(dict.fromkeys(channel._q_for_pri(queue, p) for p in channel.priority_steps))
                for queue in queues}
        for queue in queues:
            for key in keys[queue]:
                pipe.llen(key)
        lengths = iter(pipe.execute())
        return {queue: sum(next(lengths) for _ in keys[queue]) for queue in queues}
