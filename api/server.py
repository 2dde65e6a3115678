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


def serve(host: str, port: int, workers: int = 2, threads: int = 8) -> None:
    from gunicorn.app.base import BaseApplication

    from api import create_app

    app = create_app()  # checks the schema before any worker forks

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
            return app

    Server().run()
