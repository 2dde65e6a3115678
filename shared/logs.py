"""Log lines as JSON objects, and the job a line belongs to.

``LATENTFORGE_LOG_FORMAT=json`` turns the lines of every role (API, worker,
supervisor) into one JSON object per line: time, level, logger, message, and,
on every line logged while a job runs, its job id, attempt and lease. The
worker marks the lines of a job with :func:`job_context`; a context variable
carries the mark, so lines that other threads log at the same time (the
reaper, about other jobs) are not taken for the job's. A thread that works
for the job (resume uploads, artifact uploads) runs in a copy of the context.

:class:`JobLogFile` keeps one attempt's lines in a file: the worker publishes
it as the job's ``log.txt``. It takes the lines that reach the root logger,
so it follows the worker's log level.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

LOG_FORMATS = ("text", "json")
JOB_FIELDS = ("job_id", "attempt", "lease")


@dataclass(frozen=True)
class JobContext:
    job_id: str
    attempt: int
    lease: int


_current_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("latentforge_job", default=None)


def current_job() -> JobContext | None:
    return _current_job.get()


@contextlib.contextmanager
def job_context(job_id: str, attempt: int, lease: int) -> Iterator[JobContext]:
    """Lines logged inside this block (in this thread, and in threads started with its context) are the job's."""
    context = JobContext(job_id, attempt, lease)
    token = _current_job.set(context)
    try:
        yield context
    finally:
        _current_job.reset(token)


def iso_time(created: float) -> str:
    """``2026-05-09T07:35:25.123Z``: UTC, milliseconds."""
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobContextFilter(logging.Filter):
    """Puts the running job's id, attempt and lease on each record (a handler filter: it sees every logger's lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current_job.get()
        if context is not None and getattr(record, "job_id", None) is None:
            record.job_id, record.attempt, record.lease = context.job_id, context.attempt, context.lease
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, the job's fields, and ``static`` ones.

    An exception is one ``exception`` string (its traceback); gunicorn's access
    lines also carry the request's method, path, status and duration as fields.
    """

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": iso_time(record.created), "level": record.levelname, "logger": record.name,
                                 "message": record.getMessage(), "pid": record.process, **self.static}
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            entry.update(access_fields(record.args))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """The request of one gunicorn access line (its atoms: h remote, m method, U path, s status, D microseconds)."""
    fields: dict[str, Any] = {"remote": atoms.get("h"), "method": atoms.get("m"), "path": atoms.get("U")}
    status, micros = str(atoms.get("s", "")), str(atoms.get("D", ""))
    if status.isdigit():
        fields["status"] = int(status)
    if micros.isdigit():
        fields["duration_ms"] = round(int(micros) / 1000, 3)
    return fields


def use_json(handlers: list[logging.Handler], static: dict[str, Any] | None = None) -> None:
    """Turn these handlers' lines into JSON objects with the job's fields; Python's warnings go through them too."""
    for handler in handlers:
        handler.setFormatter(JsonFormatter(static))
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
    logging.captureWarnings(True)  # a warning is a log line then, not free text on stderr


def gunicorn_logconfig() -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` for JSON lines: errors (and the app's loggers) to stderr, access to stdout.

    Each logger has one handler and gunicorn's loggers do not propagate: gunicorn's own defaults would print every
    error line twice (once by its logger, once by the root's).
    """
    def stream(name: str) -> dict[str, Any]:
        return {"class": "logging.StreamHandler", "formatter": "json", "filters": ["job"], "stream": f"ext://sys.{name}"}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": {"job": {"()": f"{__name__}.JobContextFilter"}},
        "handlers": {"stderr": stream("stderr"), "stdout": stream("stdout")},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }


class JobLogFile(logging.Handler):
    """Writes the lines of one attempt of one job (by its context) into a file, one ``time LEVEL message`` a line.

    ``redact`` rewrites each line before it is written (the worker removes
    server paths, as from the errors users see); an exception is its last line
    (type and message), never the traceback, which stays in the worker's log.
    Past ``max_bytes`` only the last ``tail_lines`` lines are kept, after a
    line that says how many were left out.
    """

    def __init__(self, path: Path, context: JobContext, redact: Callable[[str], str] = lambda text: text,
                 max_bytes: int = 4 << 20, tail_lines: int = 200):
        super().__init__(logging.NOTSET)
        self.path, self.context, self.redact, self.max_bytes = path, context, redact, max_bytes
        self._file = open(path, "w", encoding="utf-8")
        self._written = 0
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._left_out = 0
        self._prefix = f"job {context.job_id}"  # the worker's messages name their job; the file is the job's
        self.addFilter(lambda record: _current_job.get() == self.context)

    def line(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith(self._prefix):  # "job <id>: epoch 1/2 ..." -> "epoch 1/2 ...", "job <id> failed" -> "failed"
            message = message[len(self._prefix):].lstrip(":").lstrip()
        if record.exc_info and record.exc_info[1] is not None:
            last = traceback.format_exception_only(record.exc_info[0], record.exc_info[1])[-1].strip()
            message = f"{message} ({last})"
        return f"{iso_time(record.created)} {record.levelname} {self.redact(message)}\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.line(record)
            if self._file.closed:
                return
            size = len(text.encode("utf-8"))
            if self._written + size <= self.max_bytes and not self._tail:
                self._file.write(text)
                self._file.flush()
                self._written += size
            else:
                if len(self._tail) == self._tail.maxlen:
                    self._left_out += 1
                self._tail.append(text)
        except Exception:
            self.handleError(record)

    @classmethod
    def attach(cls, path: Path, context: JobContext, redact: Callable[[str], str] = lambda text: text) -> "JobLogFile":
        """Start writing the job's lines to ``path`` (besides wherever they go already) until :meth:`close`."""
        handler = cls(path, context, redact)
        logging.getLogger().addHandler(handler)
        return handler

    def close(self) -> None:
        """Stop taking lines and close the file (complete: it may be hashed and published now). Idempotent."""
        logging.getLogger().removeHandler(self)
        self.acquire()
        try:
            if not self._file.closed:
                if self._tail:
                    self._file.write(f"... {self._left_out} line(s) left out: the file keeps at most"
                                     f" {self.max_bytes:,} bytes and the last {self._tail.maxlen} lines ...\n")
                    self._file.writelines(self._tail)
                self._file.close()
        finally:
            self.release()
        super().close()

