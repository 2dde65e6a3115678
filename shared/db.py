"""The job store: SQLAlchemy 2.0 typed models and the engine.

The database is the source of truth for every job; the broker only carries
job ids. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Stores UTC; always returns aware datetimes (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The user's free-text note on the run (editable after it ran, as name and tags are).
    note: Mapped[str | None] = mapped_column(Text)
    # Set when archived: hidden from lists by default, restorable; None for a live run.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Fencing token: +1 on every claim, never reused; an attempt's writes are
    # checked against it, and its files live in a folder named after it.
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # +1 on every change of the row, so progress streams can poll one cheap column.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The newest resume state written by an attempt that still owned the job:
    # {"lease", "epoch", "path", "sha256", "torch_threads"}.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Why the previous attempt ended without finishing (a worker crash, a hand-over).
    last_interruption: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))

    artifacts: Mapped[list["Artifact"]] = relationship(
        back_populates="job", order_by="Artifact.name", cascade="all, delete-orphan"
    )
    metrics: Mapped[list["JobMetric"]] = relationship(
        foreign_keys="JobMetric.job_id", order_by="JobMetric.name", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_parent", "parent_id"),
    )


def child_name(kind: str, parent: Job) -> str:
    """ "evaluate of seed notebook": a run made from another is named after it, so lists show names, not ids."""
    return f"{kind} of {parent.name or parent.kind + ' ' + parent.id[:8]}"[:200]


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(300))  # path inside the job's folder
    kind: Mapped[str] = mapped_column(String(32))  # checkpoint, figure, thumbnail, array, metrics, config
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))  # relative to the artifact root
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifact_job_name"),)


class JobMetric(Base):
    """One number a run is ranked by: a train job's final losses, and its latest scorecard's metrics.

    Rows, not a JSON column, so that sorting hundreds of runs by any metric
    is one indexed join on both SQLite and PostgreSQL.
    """

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # shared/scorecard.py, or a loss's name
    value: Mapped[float] = mapped_column(Float)
    # The job that measured it: the job itself, or the evaluate job whose scorecard this is.
    source_id: Mapped[str] = mapped_column(String(36))

    __table_args__ = (Index("ix_job_metrics_name_value", "name", "value"),)


class Worker(Base):
    """A live worker process; ``last_seen`` is refreshed by its heartbeat thread."""

    __tablename__ = "workers"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    current_job: Mapped[str | None] = mapped_column(String(36))
    # Messages that could not name a job, acknowledged and dropped.
    dropped_messages: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Shutting down: finishing its epoch, then handing its job back.
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Lease(Base):
    """A named, expiring lock in the database: one holder does a periodic chore at a time."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        url = make_url(database_url)
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes; foreign keys are off by default.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # A short connect timeout: an unreachable server is an error to retry, not a hang.
    connect_args = {"connect_timeout": 5} if database_url.startswith("postgresql") else {}
    return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=10,
                         connect_args=connect_args)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


# SQLSTATEs worth retrying: serialisation failure, deadlock, the server
# shutting down or not yet accepting connections, connection exceptions, too
# many connections.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300",
                                 "08000", "08001", "08003", "08004", "08006", "08007"})
SQLITE_TRANSIENT = ("database is locked", "database is busy", "disk i/o error", "unable to open database file")


def is_transient_db_error(exc: BaseException) -> bool:
    """True for a database error that may pass if retried: connection loss, lock or serialisation conflicts.

    Everything else (DataError, ProgrammingError, IntegrityError, a missing
    table) is a bug or bad data and retrying it only repeats it.
    """
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):  # TimeoutError: pool exhausted
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if type(orig).__module__.startswith("sqlite3"):
        return isinstance(exc, sa_exc.OperationalError) and str(orig).lower().startswith(SQLITE_TRANSIENT)
    # Connection failures carry no SQLSTATE (psycopg raises OperationalError before any server reply).
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
