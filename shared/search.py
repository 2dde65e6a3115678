"""Finding runs: the filters of a job list (tags, name, spec fields, time range, archived) as SQL conditions.

One parser for every caller (GET /jobs, the runs page, the CLI through the
API): it takes the query's (name, value) pairs, refuses a parameter it does
not know by name, and builds conditions that mean the same on SQLite and
PostgreSQL. Spec fields are compared as JSON values, so ``spec.latent_dim=2``
finds 2 whether the run stored it as 2 or 2.0, and ``spec.model=vae`` finds the
string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from typing import Any, Iterable

from sqlalchemy import ColumnElement, and_, cast, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import Job
from shared.errors import QueryError
from shared.kinds import KINDS

# The list's own parameters (paging and order); the filters below come on top.
PAGE_PARAMETERS = ("kind", "state", "parent", "limit", "cursor", "sort")
FILTER_PARAMETERS = ("tag", "q", "created_after", "created_before", "archived")
SPEC_PREFIX = "spec."
ARCHIVED_CHOICES = ("0", "1", "all")
FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_TAGS, MAX_TEXT = 20, 200


@dataclass(frozen=True)
class RunFilter:
    """What a list asks for beyond kind, state and parent; the empty filter shows every live (unarchived) run."""

    tags: tuple[str, ...] = ()
    text: str | None = None
    spec: tuple[tuple[str, Any], ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    archived: str = "0"
    raw: dict[str, list[str]] = field(default_factory=dict, compare=False)  # as given, for links to more pages

    def conditions(self, dialect: str) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.archived == "0":
            found.append(Job.archived_at.is_(None))
        elif self.archived == "1":
            found.append(Job.archived_at.is_not(None))
        found += [_has_tag(tag, dialect) for tag in self.tags]
        if self.text:
            found.append(func.lower(Job.name).contains(self.text.lower(), autoescape=True))
        found += [_spec_equals(name, value, dialect) for name, value in self.spec]
        if self.created_after is not None:
            found.append(Job.created_at >= self.created_after)
        if self.created_before is not None:
            found.append(Job.created_at < self.created_before)
        return found

    @property
    def active(self) -> bool:
        """True when it narrows the list (an archived view counts)."""
        return bool(self.tags or self.text or self.spec or self.created_after or self.created_before
                    or self.archived != "0")


def spec_field_names() -> set[str]:
    """Every field some kind's spec has (plugins' kinds included, as loaded)."""
    return {name for kind in KINDS.values() for name in kind.spec.field_names()}


def parse_filter(pairs: Iterable[tuple[str, str]], allowed: Iterable[str] = PAGE_PARAMETERS) -> RunFilter:
    """The filter of a query's (name, value) pairs; QueryError naming any parameter this does not know.

    ``allowed`` are the other parameters the caller reads itself (paging, sort); they pass unchecked.
    """
    allowed = set(allowed)
    raw: dict[str, list[str]] = {}
    for name, value in pairs:
        raw.setdefault(name, []).append(value)
    problems: list[tuple[str, str]] = []
    known_fields: set[str] | None = None
    spec: list[tuple[str, Any]] = []
    for name, values in raw.items():
        if name in allowed or name in FILTER_PARAMETERS:
            if name != "tag" and len(values) > 1:
                problems.append((name, "give it once"))
            continue
        if name.startswith(SPEC_PREFIX):
            field_name = name[len(SPEC_PREFIX):]
            known_fields = known_fields if known_fields is not None else spec_field_names()
            if not FIELD_NAME.fullmatch(field_name) or field_name not in known_fields:
                problems.append((name[:80], f"no job kind's spec has a field {field_name[:64]!r}; spec fields are"
                                            f" {', '.join(sorted(known_fields))}"))
                continue
            if len(values) > 1:
                problems.append((name, "give it once"))
                continue
            spec.append((field_name, _spec_value(values[0])))
            continue
        problems.append((name[:80], "unknown query parameter; filters are " + ", ".join(
            (*PAGE_PARAMETERS, *FILTER_PARAMETERS, "spec.<field>"))))
    tags = tuple(tag.strip() for tag in raw.get("tag", []) if tag.strip())
    if len(tags) > MAX_TAGS or any(len(tag) > 50 for tag in tags):
        problems.append(("tag", f"give at most {MAX_TAGS} tags of at most 50 characters"))
    text = (raw.get("q") or [""])[0].strip()
    if len(text) > MAX_TEXT:
        problems.append(("q", f"at most {MAX_TEXT} characters"))
    archived = (raw.get("archived") or ["0"])[0] or "0"
    if archived not in ARCHIVED_CHOICES:
        problems.append(("archived", f"must be 0 (live runs, the default), 1 (archived only) or all, got {archived[:20]!r}"))
    times = {}
    for name in ("created_after", "created_before"):
        value = (raw.get(name) or [""])[0].strip()
        if value:
            try:
                times[name] = parse_time(value)
            except ValueError:
                problems.append((name, f"must be an ISO 8601 date or date-time (2026-11-26 or 2026-11-26T14:00:00Z),"
                                       f" got {value[:40]!r}"))
    if problems:
        raise QueryError(problems)
    return RunFilter(tags=tags, text=text or None, spec=tuple(spec), created_after=times.get("created_after"),
                     created_before=times.get("created_before"), archived=archived, raw=raw)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date (midnight) or date-time; without a zone it is UTC."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        moment = datetime.combine(datetime.fromisoformat(text).date(), time())
    else:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _spec_value(text: str) -> Any:
    """A JSON value when the text is one (2, 0.5, true, [256,128], "x"), else the text itself (vae)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _has_tag(tag: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return cast(Job.tags, JSONB).contains([tag])
    each = func.json_each(Job.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def _spec_equals(name: str, value: Any, dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        # jsonb equality is JSON value equality: 2 = 2.0, and a string never equals a number.
        return cast(Job.spec, JSONB)[name] == literal(value, JSONB)
    stored = func.json_extract(Job.spec, f'$."{name}"')
    kind = func.json_type(Job.spec, f'$."{name}"')
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, (int, float)):
        return and_(kind.in_(("integer", "real")), stored == value)
    if isinstance(value, str):
        return and_(kind == "text", stored == value)
    if value is None:
        return kind == "null"
    # Arrays and objects: json_extract gives them back minified, keys in stored order.
    return and_(kind.in_(("array", "object")), stored == json.dumps(value, separators=(",", ":")))

