"""gunicorn settings for production (docker-compose): gevent for SSE (api/server.py), and the token rule.

Read from the one settings object, like everything else: LATENTFORGE_BIND,
LATENTFORGE_API_WORKERS, LATENTFORGE_API_WORKER_CLASS, LATENTFORGE_API_THREADS,
LATENTFORGE_LOG_FORMAT (json: gunicorn's lines and the app's as JSON objects).
"""

import sys

from api.metrics import prepare_multiprocess_folder
from api.server import StoreUnusable, check_bind, check_store_apart, host_of, worker_options
from shared.logs import gunicorn_logconfig
from shared.settings import load_settings

_settings = load_settings()
bind = _settings.bind
workers = _settings.api_workers
_options = worker_options(_settings.api_worker_class, _settings.api_threads)
worker_class = _options["worker_class"]
worker_connections = _options.get("worker_connections", 1000)
threads = _options.get("threads", 1)
timeout = 60
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
if _settings.log_format == "json":
    logconfig_dict = gunicorn_logconfig()


def on_starting(server):
    for address in server.cfg.bind:
        check_bind(host_of(address), _settings.api_token)
    try:
        if _settings.uses_object_store:
            check_store_apart()
    except StoreUnusable as exc:
        server.log.error("%s", exc)
        sys.exit(1)
    prepare_multiprocess_folder(_settings)  # before the workers fork: /metrics adds up their request counts


def post_worker_init(worker):
    import gc

    gc.collect()
    gc.freeze()  # see api.server.frozen
