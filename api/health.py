"""GET /health: database, broker, artifact store and workers; 503 when one of them is down."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import text

from api.context import services
from shared.migrate import check_schema
from shared.queue import check_broker

bp = Blueprint("health", __name__)


def _probe(check) -> dict[str, Any]:
    try:
        detail = check()
        return {"ok": True, **(detail or {})}
    except Exception as exc:  # report, never raise: this endpoint must answer
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


@bp.get("/health")
def health() -> Any:
    svc = services()

    def database() -> None:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        check_schema(svc.engine)

    def broker() -> dict[str, Any]:
        check_broker(svc.celery)
        return {"transport": svc.settings.broker_url.split("://", 1)[0]}

    def workers() -> dict[str, Any]:
        live = svc.store.live_workers(svc.settings.stale_after_seconds)
        if not live:
            raise RuntimeError("no worker has sent a heartbeat recently")
        return {"count": len(live), "items": [
            {"hostname": w.hostname, "queues": w.queues, "last_seen": w.last_seen.isoformat(), "current_job": w.current_job,
             "draining": w.draining, "dropped_messages": w.dropped_messages}
            for w in live
        ]}

    def artifact_store() -> dict[str, Any]:
        svc.artifacts.check()
        return {"store": svc.artifacts.description}

    report = {"database": _probe(database), "broker": _probe(broker), "artifact_store": _probe(artifact_store),
              "workers": _probe(workers)}
    healthy = all(part["ok"] for part in report.values())
    response = jsonify({"status": "ok" if healthy else "unavailable", **report})
    response.status_code = 200 if healthy else 503
    return response
