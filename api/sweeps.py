"""A sweep as its page shows it: the children with the parameters they vary and the numbers they reached.

The rows come from the job service (children of the sweep, ranked server-side
by any metric); what a child varies is read off the sweep's own spec, so the
table and the chart never guess from the children's specs.
"""

from __future__ import annotations

from typing import Any

from shared.scorecard import METRICS, PROPERTIES

TOP_K = 4


def varied_keys(spec: dict[str, Any]) -> list[str]:
    """The train fields a sweep varies: its grid's, its overrides', and the seed when it runs several."""
    keys = list(spec.get("grid", {}))
    for override in spec.get("overrides", []):
        keys += [k for k in override if k not in keys]
    if spec.get("seeds", 1) > 1 and "seed" not in keys:
        keys.append("seed")
    return keys


def metric_columns(children: list[dict[str, Any]]) -> list[str]:
    """The numbers worth a column: the final test loss, then each property's score any child has."""
    present = {name for child in children for name in child["metrics"]}
    columns = [name for name in ("test_loss",) if name in present]
    return columns + [p.score_name for p in PROPERTIES if p.score_name in present]


def best_child(children: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    direction = METRICS[metric].direction if metric in METRICS else "lower"  # a loss: lower is better
    scored = [c for c in children if c["metrics"].get(metric) is not None]
    if not scored or direction is None:
        return None
    pick = max if direction == "higher" else min
    return pick(scored, key=lambda c: c["metrics"][metric])


def sweep_view(job: dict[str, Any], children: list[dict[str, Any]], sort: str | None) -> dict[str, Any]:
    keys = varied_keys(job["spec"])
    columns = metric_columns(children)
    ranked_by = sort.split("metrics.", 1)[1] if sort and "metrics." in sort else None
    highlight = ranked_by or (columns[-1] if len(columns) > 1 else columns[0] if columns else None)
    best = best_child(children, highlight) if highlight else None
    ranking = sorted((c for c in children if highlight and c["metrics"].get(highlight) is not None),
                     key=lambda c: c["metrics"][highlight], reverse=METRICS.get(highlight) is not None
                     and METRICS[highlight].direction == "higher")
    rows = [{"id": c["id"], "params": {k: c["spec"].get(k) for k in keys}, "metrics": c["metrics"],
             "state": c["state"]} for c in children]
    charted = columns + sorted({name for c in children for name in c["metrics"]} - set(columns))
    return {"varied": keys, "columns": columns, "charted": charted, "labels": {c: label(c) for c in charted},
            "best": best,
            "highlight": highlight, "top": [c["id"] for c in ranking[:TOP_K]], "rows": rows}


def label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric.replace("_", " ")
