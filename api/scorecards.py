"""Scorecards as the gallery shows them: the eight properties with their metrics, references and best values.

The numbers come from the job rows (a train job carries its final losses and
its latest scorecard's metrics; an evaluate job its own), so no page reads a
file; shared/scorecard.py says what each number is.
"""

from __future__ import annotations

from typing import Any

from shared.artifacts import SCORECARD_FIGURE, thumbnail_name
from shared.scorecard import METRICS, PROPERTIES, best_of, reference_ranges


def evaluations(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's succeeded evaluate jobs, newest first: each property's numbers are the newest that measured it."""
    done = [c for c in children if c["kind"] == "evaluate" and c["state"] == "succeeded"]
    return sorted(done, key=lambda c: (c["finished_at"] or "", c["id"]), reverse=True)


def has_scorecard(job: dict[str, Any]) -> bool:
    return any(prop.score_name in job["metrics"] for prop in PROPERTIES)


def scorecard_view(job: dict[str, Any], evaluated: list[dict[str, Any]], model_spec: dict[str, Any]
                   ) -> dict[str, Any] | None:
    """The scorecard of ``job`` (a train job with its ``evaluated`` jobs, newest first, or an evaluate job, which
    is its own), ready for the template; None when it has none. ``model_spec`` is the train spec."""
    if not has_scorecard(job):
        return None
    evaluated = evaluated or [job]
    evaluation = evaluated[0]
    metrics = job["metrics"]
    # Why a property has no number: the newest evaluation that tried it says (e.g. no factors to measure).
    reasons: dict[str, str] = {}
    for done in reversed(evaluated):
        for name, reason in (done["progress"] or {}).get("reasons", {}).items():
            if reason != "not requested" or name not in reasons:
                reasons[name] = reason
    references = reference_ranges(model_spec.get("dataset", ""), int(model_spec.get("latent_dim") or 0))
    properties = []
    for prop in PROPERTIES:
        rows = []
        for metric in prop.metrics:
            if metric.name not in metrics:
                continue
            value = metrics[metric.name]
            reference = references.get(metric.name)
            rows.append({"name": metric.name, "label": metric.label, "value": value, "direction": metric.direction,
                         "description": metric.description, "reference": reference,
                         "in_range": None if reference is None else reference[0] <= value <= reference[1]})
        properties.append({"name": prop.name, "label": prop.label, "question": prop.question,
                           "score": metrics.get(prop.score_name), "headline": prop.headline,
                           "normalisation": prop.normalisation, "metrics": rows,
                           "reason": reasons.get(prop.name, "not measured")})
    by_name = {a["name"]: a for a in evaluation["artifacts"]}
    return {"evaluation": evaluation, "properties": properties, "radar": by_name.get(SCORECARD_FIGURE),
            "radar_thumb": by_name.get(thumbnail_name(SCORECARD_FIGURE))}


def compare_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scorecard metrics side by side: one row per metric any run has, grouped by property, best value marked."""
    rows = []
    for prop in PROPERTIES:
        for name in (prop.score_name, *(m.name for m in prop.metrics)):
            values = [job["metrics"].get(name) for job in jobs]
            if all(v is None for v in values):
                continue
            metric = METRICS[name]
            rows.append({"name": name, "label": metric.label, "property": prop.label, "cells": values,
                         "direction": metric.direction, "description": metric.description,
                         "best": best_of(name, values), "is_score": name == prop.score_name})
    return rows


def sort_choices(recorded: list[str]) -> list[tuple[str, str]]:
    """The runs page's sort menu: newest/oldest, each property's score and every metric, then any other number
    runs have recorded (final losses), best first for metrics with a direction."""
    choices = [("-created", "newest first"), ("created", "oldest first")]
    named = [METRICS[p.score_name] for p in PROPERTIES] + [m for p in PROPERTIES for m in p.metrics]
    for metric in named:
        first = "-" if metric.direction != "lower" else ""
        choices.append((f"{first}metrics.{metric.name}", f"{metric.label} ({'best' if metric.direction else 'high'} first)"))
    for name in recorded:
        if name not in METRICS:
            choices.append((f"metrics.{name}", f"{name.replace('_', ' ')} (low first)"))
            choices.append((f"-metrics.{name}", f"{name.replace('_', ' ')} (high first)"))
    return choices
