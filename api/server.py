"""Serving the API with gunicorn (threads, for SSE), from the CLI or a gunicorn config."""

from __future__ import annotations

from typing import Any

from api.auth import is_loopback


class OpenBindWithoutToken(RuntimeError):
    pass


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token for writes."""
    if not token and not is_loopback(host):
        raise OpenBindWithoutToken(
            f"refusing to listen on {host} without LATENTFORGE_API_TOKEN: anyone who can reach it could submit"
            " and cancel jobs; set a token or listen on 127.0.0.1"
        )


def host_of(bind: str) -> str:
    if bind.startswith("unix:"):
        return "localhost"
    host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 or bind.startswith("[") else bind
    return host.strip("[]") or "0.0.0.0"


def frozen(app: Any) -> Any:
    """Move everything allocated so far out of the collector's view.

    Why: a full collection otherwise walks the ~130k objects of the imported
    libraries about once every 20 list requests, a 50-100 ms stall.
    """
    import gc

    gc.collect()
    gc.freeze()
    return app


def serve(host: str, port: int, workers: int = 2, threads: int = 8) -> None:
    from gunicorn.app.base import BaseApplication

    from api import create_app

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers, "threads": threads, "worker_class": "gthread",
                "timeout": 60, "graceful_timeout": 10, "accesslog": "-", "errorlog": "-", "loglevel": "info",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Built in each worker after the fork: database connections (SQLite's
            # above all) must never be shared across a fork. The caller has
            # already checked the schema.
            return frozen(create_app(check_database=False))

    Server().run()
