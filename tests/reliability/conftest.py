"""Fixtures of the fault-injection suite: private PostgreSQL and Redis servers that a test may
stop, crash and restart (never the shared ones), stacks on them, and the suite's result table.

Run alone with ``pytest -m reliability`` (``make test-reliability``); the table of faults is
printed at the end of the run and written to test-output/reliability.md.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.invariants import Report
from tests.reliability.servers import PrivatePostgres, PrivateRedis
from tests.stack import REPO, Stack

pytestmark = pytest.mark.reliability


@dataclass
class Row:
    fault: str
    jobs: int
    lost: int
    run_twice: int
    overwritten: int
    recovery_s: float | None


RESULTS: list[Row] = []
HANDOVERS: list[tuple[str, str, str]] = []  # (hand-over, sha256 after it, sha256 of an uninterrupted run)


def record(fault: str, report: Report, recovery_s: float | None = None, lost: int | None = None) -> None:
    """Add the test's line to the suite's table (then the caller asserts the invariants)."""
    RESULTS.append(Row(fault, report.jobs, len(report.not_terminal) if lost is None else lost, len(report.run_twice),
                       len(report.files_overwritten), recovery_s))


def record_handover(what: str, resumed_sha: str, uninterrupted_sha: str) -> None:
    HANDOVERS.append((what, resumed_sha, uninterrupted_sha))


def table() -> str:
    lines = ["| fault | jobs | lost | run twice | files overwritten | recovery (s) |", "|---|---:|---:|---:|---:|---:|"]
    for row in RESULTS:
        recovery = "" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lines.append(f"| {row.fault} | {row.jobs} | {row.lost} | {row.run_twice} | {row.overwritten} | {recovery} |")
    if HANDOVERS:
        lines += ["", "| hand-over | model.safetensors sha256 | uninterrupted run | equal |", "|---|---|---|---|"]
        lines += [f"| {what} | `{got[:16]}…` | `{want[:16]}…` | {'yes' if got == want else 'NO'} |"
                  for what, got, want in HANDOVERS]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    text = table()
    terminalreporter.section("reliability: faults and what they cost")
    terminalreporter.write_line(text)
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    (out / "reliability.md").write_text(text + "\n")


@pytest.fixture(scope="session")
def private_pg():
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def private_redis():
    with PrivateRedis() as redis_server:
        yield redis_server


@pytest.fixture()
def fault_stack(tmp_path_factory, mnist_dir, private_pg, private_redis):
    """factory(workers=2, env={...}, api=True): a stack on the private servers, closed after the test."""
    import redis

    stacks: list[Stack] = []

    def make(*, workers: int = 2, env: dict[str, str] | None = None, api: bool = True, token: str | None = None) -> Stack:
        database = private_pg.create_database(f"lf_rel_{uuid.uuid4().hex[:10]}")
        db_number = len(stacks)
        redis.Redis.from_url(private_redis.url(db_number)).flushdb()
        defaults = {"LATENTFORGE_TORCH_THREADS": "1", "LATENTFORGE_BROKER_CHECK_SECONDS": "1.5",
                    "LATENTFORGE_WORKER_NICE": "0"}
        stack = Stack(tmp_path_factory.mktemp("fault"), mnist_dir, database_url=database,
                      broker_url=private_redis.url(db_number), token=token, extra_env={**defaults, **(env or {})})
        stacks.append(stack)
        return stack.bring_up(api=api, workers=workers)

    yield make
    for stack in stacks:
        stack.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> float:
    """Wait until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def frozen(stack: Stack, name: str):
    """SIGSTOP a role's whole process group (supervisor and worker), SIGCONT on exit."""
    import os
    import signal

    os.killpg(stack.procs[name].pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(stack.procs[name].pid, signal.SIGCONT)


def child_pid(stack: Stack, name: str) -> int:
    """The pid of the Celery worker process that a role's supervisor runs now."""
    parent = stack.procs[name].pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                return int(stat.parent.name)
    raise AssertionError(f"{name} has no worker process")


def artifacts_dir(stack: Stack) -> Path:
    return Path(stack.home) / "artifacts"
