"""gunicorn settings for production (docker-compose): gevent for SSE (api/server.py), and the token rule."""

import os

from api.server import check_bind, host_of, worker_options

bind = os.environ.get("LATENTFORGE_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("LATENTFORGE_API_WORKERS", "2"))
_options = worker_options(os.environ.get("LATENTFORGE_API_WORKER_CLASS", "gevent"),
                          int(os.environ.get("LATENTFORGE_API_THREADS", "8")))
worker_class = _options["worker_class"]
worker_connections = _options.get("worker_connections", 1000)
threads = _options.get("threads", 1)
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
