"""Faults and hostile clients against real stacks: Redis + PostgreSQL (private servers a test may
stop and crash), a gunicorn API and supervised Celery workers.

Each test asserts the suite's invariants (tests/reliability/invariants.py) and adds one line to
the table printed at the end: fault, jobs, lost, run twice, files overwritten, recovery seconds.
Every worker runs one torch thread, so an interrupted job and an uninterrupted one reduce in the
same order and their weights can be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.reliability.conftest import child_pid, frozen, record, record_handover, wait_for
from tests.reliability.invariants import check

pytestmark = pytest.mark.reliability

SMALL = {"epochs": 3, "device": "cpu"}
BASELINES: dict[str, str] = {}  # spec (JSON) -> sha256 of model.safetensors of an uninterrupted run


def sha_of(job: dict, name: str = "model.safetensors") -> str:
    return next(a["sha256"] for a in job["artifacts"] if a["name"] == name)


def uninterrupted_sha(stack, spec: dict) -> str:
    """model.safetensors of the same spec run without any fault (once per spec; one thread: the same bits)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in BASELINES:
        job = stack.wait_job(stack.submit("train", spec)["id"], timeout=300)
        assert job["state"] == "succeeded" and job["attempts"] == 1, job
        BASELINES[key] = sha_of(job)
    return BASELINES[key]


def poll_job(stack, job_id: str, predicate, timeout: float = 120, interval: float = 0.03) -> dict:
    """Like wait_job, but tight: for faults that must land in a short window."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.job(job_id)
        if predicate(job):
            return job
        time.sleep(interval)
    raise AssertionError(f"job {job_id} never matched within {timeout} s: {job}")


def broker_messages(stack) -> int:
    client = redis.Redis.from_url(stack.env["LATENTFORGE_BROKER_URL"])
    waiting = sum(client.llen(key) for key in client.scan_iter() if client.type(key) == b"list")
    return waiting + client.hlen("unacked")


# -- 1. a stale attempt and the files it once owned ------------------------------------------


def test_a_stale_attempt_never_changes_a_published_file(fault_stack):
    stack = fault_stack(workers=2)
    job = stack.submit("train", SMALL)
    # Freeze worker A right after its last epoch, while it draws the figures.
    running = poll_job(stack, job["id"], lambda j: j["state"] == "running" and j["progress"].get("epoch") == 3)
    stale = stack.worker_proc_name(running["worker"])
    with frozen(stack, stale):
        assert stack.job(job["id"])["state"] == "running", "worker A finished before it was frozen"
        started = time.monotonic()
        done = stack.wait_job(job["id"], timeout=120)  # B takes over after the stale timeout and succeeds
        recovery = time.monotonic() - started
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        published = {a["name"]: a["sha256"] for a in done["artifacts"]}
    # A wakes up, finds the job lost and publishes nothing; the published bytes stay those of B.
    wait_for(lambda: "lost the job before finishing" in stack.log(stale), 30, "the stale attempt to give up")
    for artifact in stack.job(job["id"])["artifacts"]:
        response = requests.get(stack.url + artifact["url"], timeout=30)
        assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == published[artifact["name"]]
        assert response.headers["ETag"].strip('"') == artifact["sha256"]
    assert not (stack.home / "artifacts" / "jobs" / job["id"] / "run-1").exists(), "the losing folder is removed"
    # The hand-over after the last epoch ends with the bytes of an uninterrupted run.
    record_handover("SIGSTOP past the stale timeout", published["model.safetensors"], uninterrupted_sha(stack, SMALL))
    assert published["model.safetensors"] == uninterrupted_sha(stack, SMALL)
    report = check(stack, [job["id"]])
    record("worker SIGSTOPped past the stale timeout after its last epoch, then resumed", report, recovery)
    report.assert_holds()


def test_sigkill_mid_training_hands_over_to_the_same_bytes(fault_stack):
    stack = fault_stack(workers=2)
    spec = {"epochs": 6, "device": "cpu"}
    job = stack.submit("train", spec)
    running = poll_job(stack, job["id"], lambda j: j["progress"].get("epoch", 0) >= 2)
    victim = stack.worker_proc_name(running["worker"])
    stack.kill(victim)  # the whole host: supervisor and worker
    killed = time.monotonic()
    resumed = poll_job(stack, job["id"], lambda j: j["state"] != "running" or j["attempts"] == 2, interval=0.1)
    recovery = time.monotonic() - killed
    done = stack.wait_job(job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2, (resumed, done)
    record_handover("SIGKILL of the worker's host", sha_of(done), uninterrupted_sha(stack, spec))
    assert sha_of(done) == uninterrupted_sha(stack, spec)
    report = check(stack, [job["id"]])
    record("worker host SIGKILLed mid-training", report, recovery)
    report.assert_holds()


# -- 2. the broker loses its messages -----------------------------------------------------------


def test_jobs_whose_messages_the_broker_lost_run_again(fault_stack, private_redis):
    stack = fault_stack(workers=0)
    jobs = [stack.submit("train", {"epochs": 1, "device": "cpu"}) for _ in range(5)]
    assert broker_messages(stack) == 5
    private_redis.restart()  # SHUTDOWN NOSAVE: every message is gone, the rows stay queued
    back = time.monotonic()
    assert broker_messages(stack) == 0
    stack.start_worker("worker1")
    stack.start_worker("worker2")
    wait_for(lambda: all(stack.job(j["id"])["state"] != "queued" for j in jobs), 90, "every lost job to start")
    recovery = time.monotonic() - back
    finished = [stack.wait_job(j["id"]) for j in jobs]
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in finished), finished
    assert recovery <= 60
    assert "republished" in stack.log("worker1") + stack.log("worker2")
    report = check(stack, [j["id"] for j in jobs])
    record("Redis restarted empty with 5 queued jobs", report, recovery)
    report.assert_holds()


def test_a_long_healthy_queue_gets_no_duplicates(fault_stack):
    # The only worker takes cpu jobs; 40 jobs wait on the gpu queue through many sweeps.
    stack = fault_stack(workers=0)
    stack.start_worker("worker1", queues="cpu")
    jobs = [stack.submit("train", {"epochs": 1, "device": "auto"}) for _ in range(40)]
    assert {j["queue"] for j in jobs} == {"gpu"}
    time.sleep(4 * 1.5 + 2)  # four sweeps
    assert broker_messages(stack) == 40
    assert "republished" not in stack.log("worker1")


# -- 3, 4. the database goes away ----------------------------------------------------------------


def test_a_database_outage_is_a_503_with_retry_after_never_a_500(fault_stack, private_pg):
    stack = fault_stack(workers=1)
    job = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu"})["id"])
    artifact = job["artifacts"][0]
    private_pg.stop()
    try:
        answers = {
            "GET /jobs": stack.get("/jobs"),
            "GET /jobs/{id}": stack.get(f"/jobs/{job['id']}"),
            "POST /jobs": stack.post("/jobs", {"kind": "train", "spec": {"epochs": 1}}),
            "POST /jobs/{id}/cancel": stack.post(f"/jobs/{job['id']}/cancel"),
            "GET /artifacts/{id}": stack.get(artifact["url"][len("/api/v1"):]),
            "GET /jobs/{id}/events": stack.get(f"/jobs/{job['id']}/events"),
            "GET /events": stack.get(f"/events?jobs={job['id']}"),
            "GET /": requests.get(stack.url + "/", headers={"Accept": "text/html"}, timeout=30),
            "GET /runs/{id}": requests.get(stack.url + f"/runs/{job['id']}", headers={"Accept": "text/html"}, timeout=30),
            "POST /runs/{id}/cancel": requests.post(stack.url + f"/runs/{job['id']}/cancel", data={"csrf_token": "t"},
                                                    cookies={"lf_csrf": "t"}, headers={"Accept": "text/html"}, timeout=30),
        }
        for route, response in answers.items():
            assert response.status_code == 503, (route, response.status_code, response.text[:300])
            assert int(response.headers["Retry-After"]) > 0, route
            assert "SELECT" not in response.text and "psycopg" not in response.text, route
            json_api = route.split(" ")[1].startswith(("/jobs", "/artifacts", "/events"))
            assert response.headers["Content-Type"].startswith("application/problem+json" if json_api else "text/html"), route
        health = stack.get("/health")
        assert health.status_code == 503 and not health.json()["database"]["ok"]
    finally:
        private_pg.start()
    back = time.monotonic()
    recovery = wait_for(lambda: stack.get("/jobs").status_code == 200, 30, "the API to answer again")
    assert time.monotonic() - back < 30
    assert "Traceback" not in stack.log("api")
    report = check(stack, [job["id"]])
    record("PostgreSQL stopped under the API (every route)", report, recovery)
    report.assert_holds()


def test_killed_database_connections_do_not_fail_a_job(fault_stack, private_pg):
    import psycopg

    stack = fault_stack(workers=1)
    job = stack.submit("train", {"epochs": 12, "device": "cpu"})
    stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 1)
    database = stack.database_url.rsplit("/", 1)[1]
    kills = 0
    with psycopg.connect(private_pg.admin_url, autocommit=True) as conn:
        while stack.job(job["id"])["state"] == "running" and kills < 20:
            kills += conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  " WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()[0]
            time.sleep(0.3)
    done = stack.wait_job(job["id"])
    assert kills >= 3
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["error"] is None, done
    report = check(stack, [job["id"]])
    record(f"{kills} database connections of a training worker killed", report)
    report.assert_holds()


def test_postgresql_restarted_mid_job_the_job_finishes_once(fault_stack, private_pg):
    stack = fault_stack(workers=2)
    job = stack.submit("train", {"epochs": 10, "device": "cpu"})
    stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 2)
    private_pg.stop(mode="immediate")  # a crash: the next start runs recovery
    time.sleep(2)
    private_pg.start()
    back = time.monotonic()
    recovery = wait_for(lambda: stack.get(f"/jobs/{job['id']}").status_code == 200, 30, "the API to read again")
    done = stack.wait_job(job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["error"] is None, done
    report = check(stack, [job["id"]])
    record("PostgreSQL crashed and restarted mid-job", report, recovery)
    report.assert_holds()
    assert time.monotonic() - back < 120


# -- 5. poison messages and a job that kills its worker ---------------------------------------------


def test_poison_messages_are_dropped_once(fault_stack):
    from celery import Celery

    stack = fault_stack(workers=1)
    raw = Celery(broker=stack.env["LATENTFORGE_BROKER_URL"])
    raw.conf.update(task_serializer="json", accept_content=["json"])
    poison = [[{"id": "x"}], ["a\x00b"], [], ["0b7c9c6e-3f0e-4c1b-9d8e-2f4b1a3c5d7e", 2], [12345],
              ["0b7c9c6e-3f0e-4c1b-9d8e-2f4b1a3c5d7e"]]  # the last: a well-formed id of no job
    started = time.monotonic()
    for args in poison:
        raw.send_task("latentforge.run_job", args=args, queue="cpu")
    job = stack.submit("train", {"epochs": 1, "device": "cpu"})  # queued behind them
    done = stack.wait_job(job["id"], timeout=60)
    elapsed = time.monotonic() - started
    assert done["state"] == "succeeded"
    time.sleep(1)
    log = stack.log("worker1")
    assert log.count("dropped a message that names no job") == 5, log[-3000:]
    assert log.count("not claimable") == 1
    assert broker_messages(stack) == 0  # nothing redelivered, nothing waiting
    workers = stack.get("/health").json()["workers"]["items"]
    assert workers[0]["dropped_messages"] == 5
    report = check(stack, [job["id"]])
    record("6 poison messages ahead of a job", report, elapsed)
    report.assert_holds()


def test_a_job_that_kills_its_worker_every_time_fails_at_its_limit(fault_stack):
    stack = fault_stack(workers=2, env={"LATENTFORGE_MAX_ATTEMPTS": "3"})
    job = stack.submit("train", {"epochs": 50, "device": "cpu"})
    crashes = 0
    while True:
        current = poll_job(stack, job["id"], lambda j: j["state"] != "queued" and
                           (j["state"] != "running" or j["attempts"] > crashes), timeout=90, interval=0.1)
        if current["state"] != "running":
            break
        os.kill(int(current["worker"].rsplit(":", 1)[1]), signal.SIGSEGV)  # as a segfault in the job would
        crashes += 1
    assert crashes == 3 and current["state"] == "failed" and current["attempts"] == 3, current
    assert current["error"]["type"] == "WorkerLost"
    assert "gave up after 3 attempts" in current["error"]["message"] and "SIGSEGV" in current["error"]["message"]
    report = check(stack, [job["id"]])
    record("a job whose worker dies of SIGSEGV every attempt", report, lost=0)
    report.assert_holds()


# -- 6. warm shutdown ---------------------------------------------------------------------------------

LONG_EPOCHS = {"epochs": 3, "hidden": [1536, 1536], "device": "cpu", "seed": 7}


def test_sigterm_finishes_the_epoch_then_hands_the_job_back(fault_stack):
    # Epochs here last longer than the stale timeout (4 s): heartbeats must go on while draining.
    stack = fault_stack(workers=2, env={"LATENTFORGE_SHUTDOWN_GRACE_SECONDS": "60"})
    job = stack.submit("train", LONG_EPOCHS)
    running = poll_job(stack, job["id"], lambda j: j["state"] == "running" and j["progress"].get("epoch") == 1,
                       timeout=180, interval=0.1)
    first_epoch_s = running["progress"]["seconds"]
    assert first_epoch_s > 4, f"an epoch took {first_epoch_s:.1f} s: not longer than the stale timeout"
    draining = stack.worker_proc_name(running["worker"])
    time.sleep(0.5)
    os.killpg(stack.procs[draining].pid, signal.SIGTERM)
    sent = time.monotonic()
    stack.procs[draining].wait(timeout=first_epoch_s + 30)
    exit_s = time.monotonic() - sent
    assert exit_s < first_epoch_s + 10, exit_s  # one epoch, a checkpoint and the hand-over
    assert "handed back to the queue" in stack.log(draining)
    done = stack.wait_job(job["id"], timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done  # a hand-over spends no attempt
    assert "reaper" not in stack.log("worker1") + stack.log("worker2")  # never requeued as lost
    record_handover("SIGTERM (warm shutdown)", sha_of(done), uninterrupted_sha(stack, LONG_EPOCHS))
    assert sha_of(done) == uninterrupted_sha(stack, LONG_EPOCHS)
    report = check(stack, [job["id"]])
    record(f"SIGTERM mid-epoch (epochs of {first_epoch_s:.0f} s > stale timeout)", report, exit_s)
    report.assert_holds()


def test_a_shutdown_longer_than_its_grace_stops_mid_epoch(fault_stack):
    stack = fault_stack(workers=1, env={"LATENTFORGE_SHUTDOWN_GRACE_SECONDS": "1.5"})
    job = stack.submit("train", {**LONG_EPOCHS, "epochs": 2})
    stack.wait_job(job["id"], ("running",), timeout=120, until=lambda j: j["progress"].get("epoch") == 1)
    time.sleep(0.5)
    os.killpg(stack.procs["worker1"].pid, signal.SIGTERM)
    sent = time.monotonic()
    stack.procs["worker1"].wait(timeout=30)
    exit_s = time.monotonic() - sent
    assert exit_s < 1.5 + 5, exit_s
    queued = stack.job(job["id"])
    assert queued["state"] == "queued" and queued["attempts"] == 0
    stack.start_worker("worker2")
    done = stack.wait_job(job["id"], timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    assert "resuming after epoch 1" in stack.log("worker2")
    report = check(stack, [job["id"]])
    record("SIGTERM with a 1.5 s grace, mid-epoch", report, exit_s)
    report.assert_holds()


# -- SIGKILL during checkpoint writes ---------------------------------------------------------------


def test_sigkill_during_checkpoint_writes_never_loads_a_torn_file(fault_stack):
    # Each cycle: let the attempt record one epoch, then kill its worker process while the next
    # epoch's resume state is being written (its staging folder exists). The supervisor settles the
    # job at once; the other, idle worker takes it and must resume from the last recorded epoch,
    # while the killed one's replacement starts.
    # 12 in the suite (each cycle costs about 11 s on 2 cores); `make test-reliability` runs 20.
    kills = int(os.environ.get("LATENTFORGE_TEST_CHECKPOINT_KILLS", "12"))
    spec = {"epochs": kills + 2, "hidden": [384, 384], "device": "cpu", "seed": 11}
    stack = fault_stack(workers=2, env={"LATENTFORGE_MAX_ATTEMPTS": str(kills + 1)})
    job = stack.submit("train", spec)
    resume_root = stack.home / "artifacts" / "jobs" / job["id"]
    torn = 0
    for cycle in range(kills):
        current = poll_job(stack, job["id"], lambda j: j["state"] == "running" and j["attempts"] == cycle + 1,
                           timeout=120, interval=0.05)
        recorded = current["progress"].get("epoch", 0)
        poll_job(stack, job["id"], lambda j: j["progress"].get("epoch", 0) > recorded, timeout=120, interval=0.02)
        pid = int(current["worker"].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(p.name.startswith(".epoch-") for p in resume_root.glob("run-*/resume/.epoch-*")):
                os.kill(pid, signal.SIGKILL)
                torn += 1
                break
            time.sleep(0.001)
        else:
            raise AssertionError("never saw a checkpoint being written")
    done = stack.wait_job(job["id"], timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == kills + 1, done
    log = stack.log("worker1") + stack.log("worker2")
    assert log.count("resuming after epoch") == kills
    assert "not resuming" not in log  # every recorded checkpoint was whole
    record_handover(f"{kills} SIGKILLs during checkpoint writes", sha_of(done), uninterrupted_sha(stack, spec))
    assert sha_of(done) == uninterrupted_sha(stack, spec)  # and every resume still gives the same bytes
    report = check(stack, [job["id"]])
    record(f"worker SIGKILLed {torn} times while writing a checkpoint", report)
    report.assert_holds()


# -- between commit and publish; cancel across restarts ---------------------------------------------


def test_a_job_committed_but_never_published_runs_once(fault_stack):
    stack = fault_stack(workers=2, api=False)
    # An API whose broker is unreachable commits the row and cannot publish: as if it died in between.
    dead_broker = socket.socket()
    dead_broker.bind(("127.0.0.1", 0))
    port = dead_broker.getsockname()[1]
    dead_broker.close()
    stack.env["LATENTFORGE_BROKER_URL"], broker = f"redis://127.0.0.1:{port}/0", stack.env["LATENTFORGE_BROKER_URL"]
    stack.start_api()
    stack.env["LATENTFORGE_BROKER_URL"] = broker
    job = stack.submit("train", {"epochs": 1, "device": "cpu"})
    stack.kill("api")
    committed = time.monotonic()
    stack.start_api()
    done = stack.wait_job(job["id"], timeout=120)
    recovery = time.monotonic() - committed
    assert done["state"] == "succeeded" and done["attempts"] == 1
    report = check(stack, [job["id"]])
    record("API killed after commit, before publish", report, recovery)
    report.assert_holds()


def test_cancel_of_a_running_job_holds_across_a_restart_of_every_worker(fault_stack):
    stack = fault_stack(workers=2)
    job = stack.submit("train", {"epochs": 200, "device": "cpu"})
    stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 1)
    for name in ("worker1", "worker2"):
        os.killpg(stack.procs[name].pid, signal.SIGSTOP)  # nobody notices the cancel...
    assert stack.post(f"/jobs/{job['id']}/cancel").status_code == 202
    for name in ("worker1", "worker2"):
        stack.kill(name)  # ...before every worker is gone
    stopped = time.monotonic()
    stack.start_worker("worker3")
    stack.start_worker("worker4")
    done = stack.wait_job(job["id"], timeout=60)
    recovery = time.monotonic() - stopped
    assert done["state"] == "cancelled" and done["progress"]["epoch"] < 200 and done["artifacts"] == []
    time.sleep(1)
    assert "job " + job["id"] + ": train, attempt" not in stack.log("worker3") + stack.log("worker4")
    report = check(stack, [job["id"]])
    record("cancel, then every worker killed and replaced", report, recovery)
    report.assert_holds()


# -- 7. progress streams cannot starve the API ---------------------------------------------------------


def open_stream(url: str, headers: dict, opened: list, stop: threading.Event) -> None:
    try:
        with requests.get(url, headers=headers, stream=True, timeout=(5, 60)) as response:
            opened.append(response.status_code)
            for _ in response.iter_lines():
                if stop.is_set():
                    return
    except requests.RequestException:
        opened.append(-1)


def test_200_open_streams_leave_health_reads_and_submits_answering(fault_stack):
    stack = fault_stack(workers=1, token="stream-token")
    job = stack.submit("train", {"epochs": 500, "device": "cpu"})
    stack.wait_job(job["id"], ("running",))
    stop, opened = threading.Event(), []
    threads = [threading.Thread(target=open_stream, daemon=True,
                                args=(stack.url + f"/api/v1/jobs/{job['id']}/events", stack.headers(), opened, stop))
               for _ in range(200)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(opened) == 200, 60, "200 streams to open")
        assert opened.count(200) == 200, {code: opened.count(code) for code in set(opened)}
        slowest = 0.0
        for _ in range(5):
            for method, path, body in (("GET", "/health", None), ("GET", "/jobs?limit=50", None),
                                       ("GET", f"/jobs/{job['id']}", None),
                                       ("POST", "/jobs", {"kind": "train", "spec": {"epochs": 1}})):
                started = time.monotonic()
                response = requests.request(method, stack.url + "/api/v1" + path, json=body, headers=stack.headers(),
                                            timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                assert response.status_code in (200, 201), (path, response.status_code)
        assert slowest < 1.0, slowest
    finally:
        stop.set()
        stack.post(f"/jobs/{job['id']}/cancel")
    stack.wait_job(job["id"])
    report = check(stack, [job["id"]])
    record(f"200 open progress streams (slowest health/read/submit {slowest * 1000:.0f} ms)", report)
    report.assert_holds()


def test_streams_are_capped_end_after_their_lifetime_and_keep_alive(fault_stack):
    stack = fault_stack(workers=1, env={"LATENTFORGE_MAX_STREAMS": "5", "LATENTFORGE_STREAM_MAX_SECONDS": "3"})
    job = stack.submit("train", {"epochs": 500, "device": "cpu"})
    stack.wait_job(job["id"], ("running",))
    url = stack.url + f"/api/v1/jobs/{job['id']}/events"
    stop, opened = threading.Event(), []
    threads = [threading.Thread(target=open_stream, args=(url, {}, opened, stop), daemon=True) for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(opened) == 5, 30, "5 streams")
    over = requests.get(url, timeout=10)
    assert over.status_code == 503 and over.headers["Retry-After"] and "open progress streams" in over.text
    stop.set()
    # A stream ends by itself after its lifetime, with keep-alives while nothing else happened.
    lines, started = [], time.monotonic()
    time.sleep(3.5)  # the five above have ended by now
    with requests.get(url, stream=True, timeout=30) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines(decode_unicode=True))
    lifetime = time.monotonic() - started - 3.5
    assert 2.5 < lifetime < 6, lifetime
    assert lines[0] == "retry: 2000" and ": keep-alive" in lines
    stack.post(f"/jobs/{job['id']}/cancel")


# -- 10. workers that share a host ---------------------------------------------------------------------


def test_workers_on_one_host_share_its_cpus_and_yield_to_the_api(fault_stack):
    stack = fault_stack(workers=2, env={"LATENTFORGE_TORCH_THREADS": "", "LATENTFORGE_WORKER_NICE": "10"})
    jobs = [stack.submit("train", {"epochs": 1, "device": "cpu"}) for _ in range(2)]
    assert all(stack.wait_job(job["id"])["state"] == "succeeded" for job in jobs)
    cpus = len(os.sched_getaffinity(0))
    logs = stack.log("worker1") + stack.log("worker2")
    assert logs.count(f"{max(1, cpus // 2)} torch thread(s) ({cpus} CPUs, 2 worker(s) on this host)") == 2, logs[-2000:]
    for name in ("worker1", "worker2"):
        stat = (Path("/proc") / str(child_pid(stack, name)) / "stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[16]) == 10  # nice: below the API
