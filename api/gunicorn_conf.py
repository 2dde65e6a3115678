"""gunicorn settings for production (docker-compose): threads for SSE, and the token rule."""

import os

from api.server import check_bind, host_of

bind = os.environ.get("LATENTFORGE_BIND", "0.0.0.0:8000")
worker_class = "gthread"
workers = int(os.environ.get("LATENTFORGE_API_WORKERS", "2"))
threads = int(os.environ.get("LATENTFORGE_API_THREADS", "8"))
timeout = 60
graceful_timeout = 10
accesslog = "-"
errorlog = "-"


def on_starting(server):
    token = os.environ.get("LATENTFORGE_API_TOKEN", "").strip() or None
    for address in server.cfg.bind:
        check_bind(host_of(address), token)


def post_worker_init(worker):
    import gc

    gc.collect()
    gc.freeze()  # see api.server.frozen
