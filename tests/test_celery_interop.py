"""Celery's own tools on the Redis stack: real Flower and ``celery inspect`` see the worker and its running job.

The database stays the source of truth: Flower only observes Celery's events
(its task is "SUCCESS" once the worker has handled the message, whatever the
job's own end), and nothing here reads a result backend.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from shared.queue import make_celery
from shared.settings import load_settings
from tests.stack import REPO, free_port, stop_process_groups

pytestmark = pytest.mark.usefixtures("services_up")

FLOWER_AUTH = ("flower", "interop-test")
EVENTS_OFF = {"LATENTFORGE_CELERY_EVENTS": "0"}


@pytest.fixture(scope="module")
def stack(stack_factory):
    # worker1 (events on) takes the cpu queue; "quiet" (events off) the gpu queue, which a train job
    # with device "auto" goes to: each test picks its worker by the job's device.
    stack = stack_factory("redis_pg", workers=0, env={"LATENTFORGE_TORCH_THREADS": "1"})
    procs = [stack.spawn("worker1", ["worker", "--queues", "cpu"]),
             stack.spawn("quiet", ["worker", "--queues", "gpu"], EVENTS_OFF)]  # started together: half the wait
    stack.wait_until(lambda: all("ready (queues" in stack.log(name) or proc.poll() is not None
                                 for name, proc in zip(("worker1", "quiet"), procs)), 90, "both workers to start")
    assert all(proc.poll() is None for proc in procs), stack.log("worker1") + stack.log("quiet")
    return stack


@pytest.fixture(scope="module")
def flower(stack):
    """Real Flower on the stack's broker, as the README starts it; yields a GET of its HTTP API."""
    port = free_port()
    log = open(stack.logs / "flower.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "shared.queue", "flower", f"--port={port}",
                             "--address=127.0.0.1", f"--basic-auth={':'.join(FLOWER_AUTH)}"],
                            cwd=REPO, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.procs["flower"] = proc  # its log joins a failed wait's report

    def get(path: str) -> dict:
        response = requests.get(f"http://127.0.0.1:{port}{path}", auth=FLOWER_AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def answers() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).text == "OK"
        except requests.RequestException:
            return False

    try:
        stack.wait_until(lambda: answers() or proc.poll() is not None, 30, "Flower to answer")
        assert proc.poll() is None, stack.log("flower")
        yield get
    finally:
        stop_process_groups([proc], grace_s=5)


def celery_name(worker: str) -> str:
    """A job's worker ("host:pid") as Celery names it (worker/tasks.py: ``host-pid@%h``)."""
    return worker.replace(":", "-") + "@" + socket.gethostname()


def inspect(stack, *command: str, destination: str | None = None) -> dict:
    """``celery -A shared.queue inspect ...`` as a user runs it, with the stack's settings; the replies by worker."""
    target = ["--destination", destination] if destination else []
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "shared.queue", "inspect", *command, "--json",
                             "--timeout", "5" if destination else "1.5", *target],
                            cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=60)
    if result.returncode == 69:  # EX_UNAVAILABLE: no worker replied
        return {}
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def flower_task(flower, job_id: str) -> dict | None:
    """Flower's record of the task whose message carries ``job_id`` (the job id is its one argument)."""
    found = [task for task in flower("/api/tasks").values() if job_id in (task.get("args") or "")]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_flower_and_inspect_see_the_worker_and_its_running_job(stack, flower):
    stack.wait_until(lambda: any(flower("/api/workers?status=true").values()), 20, "Flower to see a worker online")
    job = stack.submit("train", {"epochs": 500, "device": "cpu"})  # cancelled once seen: as long as the checks need
    running = stack.wait_job(job["id"], ("running",))
    started = time.monotonic()
    name = celery_name(running["worker"])
    assert flower("/api/workers?status=true") == {name: True}  # the quiet worker sends no heartbeat

    stack.wait_until(lambda: (flower_task(flower, job["id"]) or {}).get("state") == "STARTED", 20,
                     "Flower to see the job's task started")
    task = flower_task(flower, job["id"])
    assert task["name"] == "latentforge.run_job" and task["worker"] == name
    assert task["args"] == repr([job["id"]])

    # Remote control answers while the job runs (the pool's thread runs it; Celery's loop stays free).
    active = inspect(stack, "active", destination=name)
    assert [(request["name"], request["args"]) for request in active[name]] == [("latentforge.run_job", [job["id"]])]
    assert inspect(stack, "ping", destination=name) == {name: {"ok": "pong"}}
    stats = inspect(stack, "stats", destination=name)[name]
    assert stats["pool"]["max-concurrency"] == 1 and stats["prefetch_count"] == 1

    # Heartbeats go on during the job: Flower counts a worker offline 4 s after its last one.
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))
    assert flower("/api/workers?status=true") == {name: True}
    assert stack.job(job["id"])["state"] == "running"

    assert stack.post(f"/jobs/{job['id']}/cancel").status_code == 202
    assert stack.wait_job(job["id"])["state"] == "cancelled"
    # Celery's view ends in SUCCESS (the worker handled the message); the job's own state is the database's.
    stack.wait_until(lambda: flower_task(flower, job["id"])["state"] == "SUCCESS", 15, "Flower to see the task end")
    assert inspect(stack, "active", destination=name) == {name: []}


def test_a_worker_with_events_off_stays_invisible_to_flower_and_inspect(stack, flower):
    job = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "auto"})["id"])  # the gpu queue: "quiet"
    assert job["state"] == "succeeded" and job["queue"] == "gpu"
    quiet = celery_name(job["worker"])
    replies = inspect(stack, "ping")
    assert replies and quiet not in replies  # worker1 answers; the quiet one does not listen
    assert quiet not in flower("/api/workers?status=true")
    # The API still announced the message (its events are on): Flower heard nothing after that.
    task = flower_task(flower, job["id"])
    assert task is not None and task["state"] == "PENDING" and "worker" not in task


def test_events_are_off_with_the_filesystem_broker_and_by_the_switch(tmp_path):
    def monitored(env: dict[str, str]) -> tuple[bool, bool, bool]:
        conf = make_celery(load_settings({"LATENTFORGE_HOME": str(tmp_path), **env})).conf
        return conf.worker_send_task_events, conf.task_send_sent_event, conf.worker_enable_remote_control

    redis = {"LATENTFORGE_BROKER_URL": "redis://127.0.0.1:6379/0"}
    assert monitored(redis) == (True, True, True)
    assert monitored({**redis, **EVENTS_OFF}) == (False, False, False)
    assert monitored({}) == (False, False, False)  # the embedded filesystem broker (see celery_monitored)


def test_the_tools_app_refuses_to_run_a_worker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTFORGE_")}
    env["LATENTFORGE_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "shared.queue", "worker"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "start workers with `latentforge worker`" in result.stderr
