"""``latentforge worker``: one Celery worker process, kept alive, and told apart when it dies.

A job that segfaults or is killed by the kernel's out-of-memory killer takes
its worker process with it, and nothing in that process can record why. This
small parent (no torch, no Celery) runs the worker as a child, and when the
child dies from a signal it settles the child's job at once (requeued, or
failed at its attempt limit) with the reason, then starts a new child.
SIGTERM and SIGINT are passed on as SIGTERM: the child drains (its job is
checkpointed and handed back) and the parent waits for it, up to a hard bound.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from typing import Sequence

from shared.settings import Settings

log = logging.getLogger("latentforge.supervisor")

# A child that dies before it registered (it never got ready) failed to
# start: the next try waits longer each time, and after START_FAILURES in a
# row the supervisor gives up. A child that ran and crashed is replaced at once.
START_FAILURES = 5
STOP_MARGIN_S = 30.0  # beyond the shutdown grace: checkpoint, hand-back and exit


def death_reason(pid: int, returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"its worker process {pid} was killed by {name}{hint}"
    return f"its worker process {pid} exited with status {returncode}"


def settle_crash(settings: Settings, worker_name: str, reason: str) -> bool | None:
    """Requeue (or fail, at its attempt limit) the job the dead child was running.

    Returns whether the child had registered (got ready); None when the database could not say.
    """
    from shared.db import make_engine, make_sessionmaker
    from shared.jobstore import JobStore
    from shared.queue import make_celery, publish

    engine = make_engine(settings.database_url)
    try:
        celery_app = make_celery(settings)
        store = JobStore(make_sessionmaker(engine), lambda job_id, queue: publish(celery_app, job_id, queue),
                         settings.max_attempts)
        counts = store.worker_crashed(worker_name, reason)
        registered = bool(counts.pop("registered"))
        if any(counts.values()):
            log.warning("worker %s: %s; its job: %s", worker_name, reason, counts)
        return registered
    except Exception as exc:  # the database may be away: the reaper settles the job later
        log.warning("could not settle the job of %s (%s: %s); the reaper will", worker_name, type(exc).__name__, exc)
        return None
    finally:
        engine.dispose()


def supervise(child_argv: Sequence[str], settings: Settings) -> int:
    if settings.log_format == "json":  # the child formats its own lines the same way (it reads the same setting)
        from shared.logs import use_json

        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.StreamHandler())
        use_json(root.handlers)
    host = socket.gethostname()
    stopping: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        # Always as SIGTERM (a warm shutdown): a terminal's Ctrl-C reaches the
        # child itself too, and a second SIGINT would make Celery stop cold.
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    start_failures = 0
    while True:
        child = subprocess.Popen(list(child_argv))
        returncode, killed = _wait(child, stopping, settings.shutdown_grace_seconds + STOP_MARGIN_S)
        if killed:
            settle_crash(settings, f"{host}:{child.pid}",
                         f"its worker process {child.pid} did not stop within"
                         f" {settings.shutdown_grace_seconds + STOP_MARGIN_S:g} s of shutdown and was killed")
        if stopping:
            return 0 if returncode in (0, -signal.SIGTERM, -signal.SIGINT) else abs(returncode)
        if returncode == 0:
            return 0
        reason = death_reason(child.pid, returncode)
        log.error("%s", reason)
        registered = settle_crash(settings, f"{host}:{child.pid}", reason)
        start_failures = 0 if registered else start_failures + 1
        if start_failures >= START_FAILURES:
            log.error("the worker failed to start %d times in a row; giving up", start_failures)
            return returncode if returncode > 0 else 1
        time.sleep(min(30.0, 0.5 * 2.0 ** start_failures))


def _wait(child: subprocess.Popen, stopping: list[int], stop_bound_s: float) -> tuple[int, bool]:
    """Wait for the child; once a stop was asked, kill it if it outlives ``stop_bound_s``.

    Returns (its return code, whether it had to be killed).
    """
    deadline: float | None = None
    while True:
        try:
            return child.wait(timeout=0.5), False
        except subprocess.TimeoutExpired:
            pass
        if stopping and deadline is None:
            deadline = time.monotonic() + stop_bound_s
        if deadline is not None and time.monotonic() > deadline:
            log.error("the worker did not stop within %g s of the signal; killing it", stop_bound_s)
            child.kill()
            return child.wait(), True
