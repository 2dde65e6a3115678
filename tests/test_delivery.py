"""Queue semantics with real workers on Redis + PostgreSQL: exactly once, and surviving SIGKILL."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import requests

pytestmark = pytest.mark.usefixtures("services_up")


@pytest.fixture(scope="module")
def stack(stack_factory):
    # One thread per job, as two workers on this 2-core host would choose anyway: the
    # clean run below then reduces in the same order as the resumed one.
    return stack_factory("redis_pg", workers=2, env={"LATENTFORGE_TORCH_THREADS": "1"})


def executions(stack) -> Counter:
    """How many times each job started running, from the workers' own logs."""
    pattern = re.compile(r"job ([0-9a-f-]{36}): (?:train|embed|sample), attempt (\d+)")
    counts: Counter = Counter()
    for name in ("worker1", "worker2"):
        for job_id, _attempt in pattern.findall(stack.log(name)):
            counts[job_id] += 1
    return counts


def test_each_of_20_jobs_runs_exactly_once_even_when_delivered_twice(stack):
    from celery import Celery

    parent = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu"})["id"])
    assert parent["state"] == "succeeded"
    # Prior draws fit a mixture to the training codes: long enough that both workers take jobs.
    jobs = [stack.submit("sample", {"model_job": parent["id"], "n": 2, "seed": i}) for i in range(20)]
    # Deliver every message a second time, straight through the broker.
    duplicate = Celery(broker=stack.env["LATENTFORGE_BROKER_URL"])
    duplicate.conf.update(task_serializer="json", accept_content=["json"])
    for job in jobs:
        duplicate.send_task("latentforge.run_job", args=[job["id"]], queue=job["queue"])
    finished = [stack.wait_job(job["id"]) for job in jobs]
    assert all(job["state"] == "succeeded" for job in finished), [j["error"] for j in finished]
    assert all(job["attempts"] == 1 for job in finished)
    runs = executions(stack)
    assert all(runs[job["id"]] == 1 for job in jobs), {j["id"]: runs[j["id"]] for j in jobs}
    # Both workers took part, and the 20 duplicates were dropped, not run.
    workers = Counter(job["worker"] for job in finished)
    assert len(workers) == 2, workers
    def dropped() -> int:
        return sum(stack.log(n).count("not claimable") for n in ("worker1", "worker2"))

    stack.wait_until(lambda: dropped() >= 20, 60, "all 20 duplicate messages to be dropped")
    assert dropped() == 20
    assert executions(stack) == runs  # dropping them ran nothing


@pytest.mark.parametrize("spec", [
    {"epochs": 8, "device": "cpu"},
    # A kind with a prior: three optimizers and a prior draw every batch, all restored on resume.
    {"model": "aae", "prior": "mixture", "epochs": 8, "device": "cpu"},
], ids=["ae", "aae"])
def test_sigkill_mid_training_resumes_on_the_other_worker(stack, spec):
    job = stack.submit("train", spec)
    running = stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 3)
    victim = stack.worker_proc_name(running["worker"])
    survivor = "worker2" if victim == "worker1" else "worker1"
    stack.kill(victim)
    try:
        done = stack.wait_job(job["id"], timeout=180)
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 2
        assert stack.worker_proc_name(done["worker"]) == survivor
        resumed = re.search(rf"job {job['id']}: resuming after epoch (\d+)", stack.log(survivor))
        assert resumed and int(resumed.group(1)) >= 3, stack.log(survivor)[-2000:]

        # One set of artifacts: each name once, and the metrics hold every epoch once.
        names = [a["name"] for a in done["artifacts"]]
        assert len(names) == len(set(names)) and "model.safetensors" in names
        assert not any(n.startswith("resume/") for n in names)
        metrics = next(a for a in done["artifacts"] if a["name"] == "metrics.jsonl")
        rows = [json.loads(line) for line in requests.get(stack.url + metrics["url"], timeout=30).text.splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, spec["epochs"] + 1))

        # Resuming restores weights, optimizers and random streams: every metric is
        # that of an uninterrupted run, to the last bit, and so are the weights.
        clean = stack.wait_job(stack.submit("train", spec)["id"], timeout=180)
        timings = ("seconds", "samples_per_s")
        assert [{k: v for k, v in r.items() if k not in timings} for r in clean["progress"]["history"]] == \
            [{k: v for k, v in r.items() if k not in timings} for r in rows]
        weights = {j["id"]: next(a["sha256"] for a in j["artifacts"] if a["name"] == "model.safetensors") for j in (clean, done)}
        assert weights[clean["id"]] == weights[done["id"]]
    finally:
        stack.start_worker(victim)  # the next test finds two workers again


def test_a_message_that_arrives_while_the_database_is_away_is_not_lost(stack):
    import os
    import signal

    import psycopg

    from tests.stack import PG_ADMIN_URL

    database = stack.env["LATENTFORGE_DATABASE_URL"].rsplit("/", 1)[1]
    worker = stack.procs["worker1"] if stack.procs["worker1"].poll() is None else stack.procs["worker2"]
    others = [n for n, p in stack.procs.items() if p is not worker and p.poll() is None and n.startswith("worker")]
    # One worker only, so we know who receives the message. The others shut down rather than
    # pause: a paused worker's pending BRPOP would still take the message from Redis.
    for name in others:
        stack.kill(name, signal.SIGTERM)
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        job = stack.submit("train", {"epochs": 1, "device": "cpu"})
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            conn.execute(f'ALTER DATABASE "{database}" RENAME TO "{database}_away"')
        os.killpg(worker.pid, signal.SIGCONT)
        name = next(n for n, p in stack.procs.items() if p is worker)
        stack.wait_until(lambda: f"job {job['id']}: cannot claim" in stack.log(name), 60, "a failed claim")
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (f"{database}_away",))
            conn.execute(f'ALTER DATABASE "{database}_away" RENAME TO "{database}"')
        os.killpg(worker.pid, signal.SIGCONT)
    done = stack.wait_job(job["id"], timeout=120)
    for name in others:
        stack.start_worker(name)
    assert done["state"] == "succeeded" and done["attempts"] == 1
