"""What every fault test asserts, read from independent witnesses: the API, the database rows
and files, and the workers' own logs.

* every job is terminal;
* at most one attempt of a job succeeded (its "succeeded" line appears once);
* no two attempts of one job worked at the same time (their work lines never
  interleave: a frozen process prints nothing, a fenced-out one stops);
* attempts <= max_attempts;
* every recorded artifact's bytes on disk match its recorded sha256.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, text

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] job ([0-9a-f-]{36}): (.*)$")
START = re.compile(r"^(train|embed|sample), attempt (\d+), lease (\d+)$")
# Lines that are work (the attempt computing or writing), as opposed to noticing that it lost the job.
WORK = re.compile(r"^(epoch \d+/\d+|training |resuming after|done in |embedding |fitted |t-SNE )")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class Attempt:
    job_id: str
    log: str
    lease: int
    work: list[datetime] = field(default_factory=list)
    succeeded: bool = False

    @property
    def span(self) -> tuple[datetime, datetime] | None:
        return (min(self.work), max(self.work)) if self.work else None


def parse_attempts(logs: dict[str, str]) -> dict[str, list[Attempt]]:
    """Attempts per job, from every worker log (a restarted child writes on into the same log)."""
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    current: dict[tuple[str, str], Attempt] = {}
    for name, content in logs.items():
        for line in content.splitlines():
            if "] worker " in line and " ready (queues" in line:  # a new process: nothing carries over
                current = {k: v for k, v in current.items() if k[0] != name}
                continue
            match = LINE.match(line)
            if not match:
                continue
            stamp, job_id, message = match.groups()
            when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            if start := START.match(message):
                attempt = Attempt(job_id, name, int(start.group(3)), [when])
                attempts[job_id].append(attempt)
                current[(name, job_id)] = attempt
                continue
            attempt = current.get((name, job_id))
            if attempt is None:
                continue
            if WORK.match(message):
                attempt.work.append(when)
            elif message == "succeeded":
                attempt.succeeded = True
    return attempts


def overlapping(attempts: list[Attempt]) -> bool:
    """Two attempts worked at the same time: each has a work line inside the other's span.

    One-sided containment is not concurrency: an attempt frozen (SIGSTOP) while
    another ran and finished prints nothing in between.
    """
    def inside(lines: list[datetime], span: tuple[datetime, datetime]) -> bool:
        return any(span[0] < when < span[1] for when in lines)

    worked = [a for a in attempts if a.span]
    return any(inside(x.work, y.span) and inside(y.work, x.span)
               for i, x in enumerate(worked) for y in worked[i + 1:])


@dataclass
class Report:
    jobs: int
    not_terminal: list[str]
    run_twice: list[str]
    over_attempts: list[str]
    files_overwritten: list[str]

    def assert_holds(self) -> None:
        assert not self.not_terminal, f"jobs not terminal: {self.not_terminal}"
        assert not self.run_twice, f"jobs run twice or concurrently: {self.run_twice}"
        assert not self.over_attempts, f"jobs over their attempt limit: {self.over_attempts}"
        assert not self.files_overwritten, f"artifacts whose bytes differ from their sha256: {self.files_overwritten}"


def check(stack, job_ids: list[str]) -> Report:
    """Read the witnesses once every job has settled; returns what does not hold."""
    jobs = [stack.job(job_id) for job_id in job_ids]
    logs = {name: stack.log(name) for name in stack.procs if name != "api"}
    attempts = parse_attempts(logs)
    run_twice = [job_id for job_id in job_ids
                 if sum(a.succeeded for a in attempts[job_id]) > 1 or overlapping(attempts[job_id])]
    return Report(
        jobs=len(jobs),
        not_terminal=[j["id"] for j in jobs if j["state"] not in FINISHED],
        run_twice=run_twice,
        over_attempts=[j["id"] for j in jobs if j["attempts"] > j["max_attempts"]],
        files_overwritten=overwritten_files(stack, job_ids),
    )


def overwritten_files(stack, job_ids: list[str]) -> list[str]:
    """Recorded artifacts whose file on disk does not hold the recorded bytes (read from the database)."""
    engine = create_engine(stack.database_url)
    root = Path(stack.home) / "artifacts"
    bad = []
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, name, path, sha256 FROM artifacts WHERE job_id = ANY(:ids)"
                                     if engine.dialect.name == "postgresql" else
                                     "SELECT job_id, name, path, sha256 FROM artifacts"), {"ids": job_ids}).all()
    finally:
        engine.dispose()
    for job_id, name, path, sha256 in rows:
        if job_id not in job_ids:
            continue
        file = root / path
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != sha256:
            bad.append(f"{job_id}/{name}")
    return bad
