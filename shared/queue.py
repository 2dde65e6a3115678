"""The Celery app: JSON messages that carry a job id and nothing else.

Settings are for long GPU jobs: late acknowledgement (a message is acked
only after its job ran), rejection when the worker is lost, one message
prefetched at a time, and a visibility timeout longer than any job runs, set
in every place Celery reads it. There is no result backend: a job's state is
read from the database only. With Redis, workers send Celery's task events and
heartbeats and answer remote control, so Flower and ``celery -A shared.queue
inspect ...`` see them (they observe; they decide nothing).
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.transport import filesystem
from kombu.utils import json as kombu_json

from shared.settings import Settings, load_settings

TASK_NAME = "latentforge.run_job"
QUEUES = ("gpu", "cpu")
# Longer than any job may run: Redis redelivers an unacknowledged message
# after this long. A dead worker's job is requeued much sooner by the reaper
# from its stale heartbeat; this is only the broker's last resort.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def queue_for(kind: str, spec: dict) -> str:
    """Training that may use a GPU goes to the gpu queue; the rest to cpu."""
    if kind == "train" and spec.get("device", "auto") != "cpu":
        return "gpu"
    return "cpu"


class AtomicFilesystemChannel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Write the message beside its final name, then rename it into place.

        Why: kombu's filesystem transport creates the message file, then
        writes it; a consumer that takes the file in between reads an empty
        message and its worker stops with an unrecoverable JSONDecodeError
        (seen in the test suite). A rename is atomic: the consumer sees the
        whole message or none (the hidden name matches no queue).
        """
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        hidden = os.path.join(self.data_folder_out, f".{name}.tmp")
        with open(hidden, "wb") as fh:
            fh.write(kombu_json.dumps(payload).encode())
        os.replace(hidden, os.path.join(self.data_folder_out, name))


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel


def filesystem_folders(settings: Settings) -> dict[str, Path]:
    root = settings.broker_dir
    return {"data_folder_in": root / "queue", "data_folder_out": root / "queue", "processed_folder": root / "processed",
            "control_folder": root / "control"}


def celery_monitored(settings: Settings) -> bool:
    """Whether workers send task events and heartbeats and answer remote control (Flower, ``celery inspect``).

    On with Redis unless ``LATENTFORGE_CELERY_EVENTS=0``. Off with the
    filesystem broker: it has no publish/subscribe, so it writes every event
    as a file into each queue ever bound to the event exchange, and a Flower
    that stopped (even cleanly) stays bound: a file every 2 s per worker that
    nobody reads, in the folder each poll lists (seen in a trial). Redis fans
    events and broadcasts out by publish/subscribe, which keeps nothing.
    """
    return settings.celery_events and not settings.uses_embedded_broker


def make_celery(settings: Settings, cls: type[Celery] = Celery) -> Celery:
    app = cls("latentforge", broker=settings.broker_url, set_as_current=False)
    monitored = celery_monitored(settings)
    transport_options: dict = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if settings.uses_embedded_broker:
        folders = filesystem_folders(settings)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        transport_options.update({k: str(v) for k, v in folders.items()})
        transport_options.update({"store_processed": False, "polling_interval": 0.05})
        app.conf.broker_transport = f"{__name__}:AtomicFilesystemTransport"
    else:
        transport_options.update({"polling_interval": 0.05})
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Jobs run in the worker's own process (nothing forks after CUDA starts), one at a time, on the pool's
        # one thread: the main thread stays in Celery's consumer loop, so heartbeats and remote control are
        # answered while a job runs (the solo pool ran the job inside that loop: silent for the whole job).
        # The price: after a broker reconnect mid-job the new channel's prefetch is free again, so the worker
        # may reserve one more message behind its running job (seen with Redis restarted); that job waits
        # for the running one, or the lost-message check hands it to another worker after the stale timeout.
        worker_pool="threads",
        worker_max_tasks_per_child=None,
        worker_enable_remote_control=monitored,
        worker_send_task_events=monitored,
        task_send_sent_event=monitored,
        worker_hijack_root_logger=False,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        task_default_queue="cpu",
        task_create_missing_queues=True,
        task_routes={TASK_NAME: {"queue": "cpu"}},
        enable_utc=True,
    )
    return app


class ToolsCelery(Celery):
    """The app of Celery's own tools (inspect, control, events, Flower): it observes, and runs no worker.

    Why: ``celery -A shared.queue worker`` would take job messages without the
    job's task registered, and Celery drops such a message; workers are
    ``latentforge worker``.
    """

    @property
    def Worker(self) -> Any:  # noqa: N802 (Celery's name)
        raise SystemExit("shared.queue's app is for Celery's tools (inspect, control, events, flower); "
                         "start workers with `latentforge worker`")


_tools_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """``shared.queue.app``: the app of ``celery -A shared.queue inspect ...`` and ``... flower``.

    Built from the settings on first access, not at import: the API and the
    worker import this module and build apps of their own.
    """
    global _tools_app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _tools_app is None:
        _tools_app = make_celery(load_settings(), ToolsCelery)
    return _tools_app


def publish(app: Celery, job_id: str, queue: str) -> None:
    """Send a job id to ``queue``; raises when the broker cannot be reached."""
    app.send_task(TASK_NAME, args=[job_id], queue=queue)


def check_broker(app: Celery, timeout: float = 2.0) -> None:
    """Raise when the broker cannot be reached within ``timeout`` seconds."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        if conn.transport_cls == "filesystem" or conn.transport.driver_type == "filesystem":
            folder = Path(app.conf.broker_transport_options["data_folder_in"])
            if not folder.is_dir():
                raise ConnectionError(f"broker folder {folder} is missing")


def parse_job_id(args: Any, kwargs: Any = None) -> str | None:
    """The job id a message names, or None for a message that cannot name one (a poison message)."""
    if kwargs or not isinstance(args, (list, tuple)) or len(args) != 1 or not isinstance(args[0], str):
        return None
    text = args[0]
    if len(text) != 36 or not text.isascii():
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _job_id_in(envelope: Any) -> str | None:
    """The job id inside a raw kombu message (Celery protocol 2: a base64 JSON body [args, kwargs, embed])."""
    try:
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        return parse_job_id(args, kwargs)
    except (KeyError, TypeError, ValueError):
        return None


def held_job_ids(app: Celery, queues: tuple[str, ...] = QUEUES, unacked_within_s: float = 60.0) -> set[str] | None:
    """Ids of the jobs whose messages the broker holds now, or None for a broker this cannot read.

    Held means waiting in one of ``queues``, or delivered to a consumer less
    than ``unacked_within_s`` seconds ago and not yet acknowledged. An older
    unacknowledged message belongs to a consumer that died or hangs: Redis
    would only redeliver it after the visibility timeout (days), so it does
    not count.
    """
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        transport = conn.transport.driver_type
        if transport == "filesystem":
            return _held_in_folder(Path(app.conf.broker_transport_options["data_folder_in"]), queues)
        if transport != "redis":
            return None
        channel = conn.default_channel
        client = channel.client
        keys = list(dict.fromkeys(channel._q_for_pri(q, p) for q in queues for p in channel.priority_steps))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        waiting = [item for items in pipe.execute() for item in items]
        tags = client.zrangebyscore(channel.unacked_index_key, time.time() - unacked_within_s, "+inf")
        delivered = [row for row in (client.hmget(channel.unacked_key, tags) if tags else []) if row]
    held = {_job_id_in(json.loads(item)) for item in waiting}
    held |= {_job_id_in(json.loads(row)[0]) for row in delivered}
    held.discard(None)
    return held  # type: ignore[return-value]


def _held_in_folder(folder: Path, queues: tuple[str, ...]) -> set[str]:
    held: set[str] = set()
    suffixes = tuple(f".{queue}.msg" for queue in queues)
    for path in folder.iterdir():
        if not path.name.endswith(suffixes):
            continue
        try:
            job_id = _job_id_in(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue  # taken by a consumer meanwhile, or still being written
        if job_id:
            held.add(job_id)
    return held
