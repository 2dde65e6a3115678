"""Times as people read them: "3 min ago", "1 h 05 min", and a running job's time left.

The gallery's pages (with the exact ISO time in a tooltip) and the CLI's lists show these; the API keeps
ISO 8601.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def parse_iso(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def duration(seconds: float | None) -> str:
    """A span in its two largest units: 45 s, 3 min 05 s, 2 h 10 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the largest unit that fits: just now, 40 s ago, 3 min ago, 5 h ago, 2 d ago, or a date."""
    moment = parse_iso(value)
    if moment is None:
        return "—"
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit} ago" if unit != "d" or count < 30 else moment.strftime("%Y-%m-%d")
    return "just now"


def run_time(job: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds a job ran (so far, while it runs); None before it started."""
    started = parse_iso(job.get("started_at"))
    if started is None:
        return None
    ended = parse_iso(job.get("finished_at")) or now or datetime.now(timezone.utc)
    return max(0.0, (ended - started).total_seconds())


def eta(job: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds a running job has left, from its pace so far (epochs, or an evaluation's steps); None if unknown."""
    if job.get("state") != "running":
        return None
    progress = job.get("progress") or {}
    done, total = (progress.get("epoch"), progress.get("total")) if progress.get("total") else (
        progress.get("step"), progress.get("steps"))
    elapsed = run_time(job, now)
    if not done or not total or done >= total or elapsed is None:
        return None
    return elapsed / done * (total - done)
