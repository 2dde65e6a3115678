"""Serving the API with gunicorn, from the CLI or a gunicorn config.

The default worker class is gevent: an open progress stream (SSE) is a parked
greenlet, so hundreds of them never take the threads that health, reads and
submits need (psycopg 3 cooperates with gevent on its own). ``gthread``
remains available; there, each open stream holds one of the threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


class StoreUnusable(RuntimeError):
    """The artifact store failed its start-up check; the message is its one line, naming the setting."""


def check_store_apart() -> None:
    """The artifact store's start-up check, run in a child process.

    Why apart: boto3 imports ssl, and a gunicorn master that has imported ssl
    forks gevent workers whose monkey-patching of ssl then recurses on every
    TLS context (RecursionError; seen at the first request).
    """
    result = subprocess.run([sys.executable, "-m", "latentforge.cli", "store", "check"], capture_output=True,
                            text=True, timeout=180)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["the artifact store check failed"]
        raise StoreUnusable(lines[-1].split("error: ", 1)[-1])


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


WORKER_CLASSES = ("gevent", "gthread")


def worker_options(worker_class: str, threads: int) -> dict[str, Any]:
    if worker_class == "gevent":
        return {"worker_class": "gevent", "worker_connections": 2000}
    # Under gthread every open stream holds a thread: unless told otherwise,
    # let streams take at most half of them, so health, reads and submits
    # always have threads left (streams beyond that get a 503).
    os.environ.setdefault("LATENTFORGE_MAX_STREAMS", str(max(1, threads // 2)))
    return {"worker_class": "gthread", "threads": threads}


def serve(host: str, port: int, workers: int = 2, threads: int = 8, worker_class: str = "gevent") -> None:
    from gunicorn.app.base import BaseApplication

    from api import create_app
    from api.metrics import prepare_multiprocess_folder
    from shared.logs import gunicorn_logconfig
    from shared.settings import load_settings

    settings = load_settings()
    prepare_multiprocess_folder(settings)  # before the workers fork: /metrics adds up their request counts

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers, **worker_options(worker_class, threads),
                "timeout": 60, "graceful_timeout": 10, "accesslog": "-", "errorlog": "-", "loglevel": "info",
            }
            if settings.log_format == "json":
                options["logconfig_dict"] = gunicorn_logconfig()
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Built in each worker after the fork: database connections (SQLite's
            # above all) must never be shared across a fork. The caller has
            # already checked the schema.
            return frozen(create_app(check_database=False))

    Server().run()
