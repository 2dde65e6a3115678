"""Queue and API latency on a real stack: Redis broker, PostgreSQL store, gunicorn API, one Celery worker.

Three measurements, each printed with its ratio to its target:

1. submit -> running: N short sample jobs, one at a time, each submitted
   while the worker is idle; latency is ``started_at - created_at`` of the
   job (server timestamps). Target: p50 under 50 ms.
2. POST /jobs throughput with the worker stopped: M train jobs from 4
   threads, each with its own requests.Session.
3. GET /jobs?limit=50 with 10,000 jobs stored (rows bulk-inserted with
   SQLAlchemy: realistic specs, per-epoch progress and artifacts), plus the
   cursor pages behind it. Target: p50 under 30 ms. GET /openapi.json (no
   database; it builds the document from the pydantic models on every call)
   and GET /jobs/not-a-uuid (a 404 answered before any query) are timed
   alongside as the server's floors.

Nothing is mocked; the Redis and PostgreSQL databases are created for the run
and dropped at exit (also on Ctrl-C).

    python bench/queue_latency.py [--jobs 100] [--posts 300] [--stored 10000] [--gets 200]
    python bench/queue_latency.py --quick      # 10 jobs, 50 posts, 1,000 stored, 50 gets
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from tests.stack import Stack, postgres_database, redis_database  # noqa: E402

LATENCY_TARGET_MS = 50.0
LIST_TARGET_MS = 30.0
POST_THREADS = 4
FINISHED = ("succeeded", "failed", "cancelled")


# -- small helpers ------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "max": max(values) if values else float("nan")}


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def mnist_dir() -> Path:
    return Path(os.environ.get("LATENTFORGE_DATA_DIR") or REPO.parent / "shared" / "data" / "mnist").resolve()


def say(message: str) -> None:
    print(message, flush=True)


class Client:
    """One requests.Session against the API, with the timing of each call."""

    def __init__(self, stack: Stack):
        self.base = stack.url + "/api/v1"
        self.session = requests.Session()
        self.session.headers.update(stack.headers())

    def close(self) -> None:
        self.session.close()

    def timed_get(self, path: str, status: int = 200) -> tuple[float, requests.Response]:
        start = time.perf_counter()
        response = self.session.get(self.base + path, timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != status:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:500]}")
        return elapsed, response

    def post_job(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        response = self.session.post(self.base + "/jobs", json=body, timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 201:
            raise RuntimeError(f"POST /jobs: {response.status_code} {response.text[:500]}")
        return elapsed, response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.timed_get(f"/jobs/{job_id}")[1].json()

    def wait_finished(self, job_id: str, timeout: float, first_poll_s: float = 0.25, every_s: float = 0.1) -> dict[str, Any]:
        # The first poll waits a little so that polling does not compete with
        # the worker for the CPU while it picks the job up.
        time.sleep(first_poll_s)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(every_s)


# -- 1. submit -> running ------------------------------------------------------------------------

def bench_latency(client: Client, engine: Any, parent_id: str, jobs: int) -> dict[str, Any]:
    from sqlalchemy import select

    from shared.db import Job

    latencies, client_latencies, post_ms, ids = [], [], [], []
    rng = random.Random(0)
    # One job first to warm the worker (its first sample job imports the runners).
    warm = client.post_job({"kind": "sample", "spec": {"model_job": parent_id, "latent_coords": [[0, 0]]}})[1]
    client.wait_finished(warm["id"], 120)
    for i in range(jobs):
        # The worker has finished the previous job; give it a moment to ack and
        # go back to the broker, at a random phase against any polling interval.
        time.sleep(0.1 + rng.random() * 0.1)
        sent = datetime.now(timezone.utc)  # same host, same clock as the server's timestamps
        elapsed, job = client.post_job({"kind": "sample", "spec": {"model_job": parent_id, "latent_coords": [[0, 0]]}})
        post_ms.append(elapsed)
        done = client.wait_finished(job["id"], 120)
        if done["state"] != "succeeded":
            raise RuntimeError(f"sample job {job['id']} ended {done['state']}: {done.get('error')}")
        latencies.append((parse_ts(done["started_at"]) - parse_ts(done["created_at"])).total_seconds() * 1000)
        client_latencies.append((parse_ts(done["started_at"]) - sent).total_seconds() * 1000)
        ids.append(job["id"])
        if (i + 1) % max(1, jobs // 10) == 0:
            say(f"  {i + 1}/{jobs} jobs, last submit->running {latencies[-1]:.1f} ms")
    # Where the time goes: created -> published_at (API: commit, send to Redis,
    # mark published) and published -> started (Redis -> worker -> claim).
    # published_at is written after the send returns, so the second part may be negative.
    with engine.connect() as conn:
        rows = conn.execute(select(Job.created_at, Job.published_at, Job.started_at).where(Job.id.in_(ids))).all()
    api_part = [(p - c).total_seconds() * 1000 for c, p, _ in rows if p is not None]
    worker_part = [(s - p).total_seconds() * 1000 for _, p, s in rows if p is not None]
    return {"latency": summary(latencies), "client_latency": summary(client_latencies), "post": summary(post_ms),
            "created_to_published": summary(api_part), "published_to_started": summary(worker_part), "raw": latencies}


# -- 2. POST /jobs throughput ----------------------------------------------------------------------

def bench_posts(stack: Stack, posts: int) -> dict[str, Any]:
    counter = iter(range(posts))
    lock = threading.Lock()
    per_request: list[float] = []

    def run() -> None:
        client = Client(stack)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                elapsed, _ = client.post_job({"kind": "train", "spec": {"epochs": 1 + i % 5, "device": "cpu"}, "name": f"bench-{i}"})
                with lock:
                    per_request.append(elapsed)
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(POST_THREADS) as pool:
        for future in [pool.submit(run) for _ in range(POST_THREADS)]:
            future.result()
    seconds = time.perf_counter() - start
    return {"jobs_per_s": posts / seconds, "seconds": seconds, "request": summary(per_request)}


# -- 3. GET /jobs with many stored jobs ------------------------------------------------------------

def fake_sha() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def epoch_history(epochs: int, rng: random.Random) -> list[dict[str, Any]]:
    history, train_loss, test_loss = [], 0.058 + rng.random() * 0.01, 0.05 + rng.random() * 0.01
    for epoch in range(1, epochs + 1):
        train_loss *= 0.985 + rng.random() * 0.01
        test_loss *= 0.986 + rng.random() * 0.01
        seconds = 0.2 + rng.random() * 0.05
        history.append({"epoch": epoch, "train_loss": round(train_loss, 6), "test_loss": round(test_loss, 6),
                        "seconds": round(seconds, 6), "samples_per_s": round(19690 / seconds, 1)})
    return history


def fill_store(engine: Any, templates: dict[str, dict[str, Any]], target: int, rng: random.Random) -> dict[str, Any]:
    """Bulk-insert jobs (and their artifacts) until the jobs table holds ``target`` rows.

    The mix is what a gallery accumulates: mostly finished train jobs of up to
    100 epochs (progress carries the per-epoch history, as the worker writes
    it) with every artifact a real train job records, and embed and sample
    children with theirs. They are timestamped as the newest jobs, so the
    pages timed below are full of them (the worst case for a page).
    """
    from sqlalchemy import func, insert, select

    from shared.db import Artifact, Job

    with engine.connect() as conn:
        existing, newest = conn.execute(select(func.count(), func.max(Job.created_at)).select_from(Job)).one()
    count = max(0, target - existing)
    if count == 0:
        return {"inserted": 0, "artifacts": 0, "seconds": 0.0}
    start = time.perf_counter()
    base = newest or datetime.now(timezone.utc)
    trains, children, artifacts = [], [], []
    train_ids: list[tuple[str, dict]] = []
    for i in range(count):
        job_id = str(uuid.uuid4())
        created = base + timedelta(microseconds=10 * (i + 1))  # dense, and newer than every job of the run
        roll = rng.random()
        kind = "train" if roll < 0.55 or not train_ids else ("embed" if roll < 0.75 else "sample")
        row: dict[str, Any] = {
            "id": job_id, "kind": kind, "name": None, "tags": [], "attempts": 1, "max_attempts": 3,
            "cancel_requested": False, "worker": "bench-host:4242", "created_at": created, "queued_at": created,
            "published_at": created + timedelta(milliseconds=3), "started_at": created + timedelta(milliseconds=40),
            "heartbeat_at": None, "error_type": None, "error_message": None, "parent_id": None,
            "idempotency_key": None, "request_hash": fake_sha(),
        }
        state = "succeeded"
        if kind == "train":
            epochs = rng.choice([5, 10, 20, 50, 50, 50, 100])
            spec = dict(templates["train"]["spec"], epochs=epochs, latent_dim=rng.choice([2, 2, 2, 8, 16]),
                        lr=rng.choice([1e-3, 3e-4]), seed=rng.randrange(1000))
            roll = rng.random()
            state = "succeeded" if roll < 0.85 else "failed" if roll < 0.93 else "cancelled" if roll < 0.98 else "running"
            done = epochs if state == "succeeded" else rng.randrange(1, epochs + 1)
            history = epoch_history(done, rng)
            row.update(spec=spec, queue="cpu" if spec.get("device") == "cpu" else "gpu",
                       progress={**history[-1], "total": epochs, "history": history},
                       name=rng.choice([None, f"ae-{spec['latent_dim']}d-{epochs}ep"]),
                       tags=rng.choice([[], ["sweep"], ["baseline", "mnist"]]))
            if state == "failed":
                row.update(error_type="RuntimeError", error_message="CUDA out of memory. Tried to allocate 2.00 GiB")
            train_ids.append((job_id, spec))
            trains.append(row)
        else:
            parent, parent_spec = rng.choice(train_ids)
            spec = dict(templates[kind]["spec"], model_job=parent)
            if kind == "sample":
                spec["latent_coords"] = [[round(rng.uniform(-5, 5), 3) for _ in range(parent_spec["latent_dim"])]
                                         for _ in range(rng.choice([1, 6, 16]))]
            row.update(spec=spec, queue="cpu", parent_id=parent, progress=dict(templates[kind]["progress"]))
            children.append(row)
        row["state"] = state
        row["finished_at"] = None if state == "running" else created + timedelta(seconds=5)
        row["heartbeat_at"] = created + timedelta(seconds=5)
        if state == "succeeded":
            for art in templates[kind]["artifacts"]:
                artifacts.append({"id": str(uuid.uuid4()), "job_id": job_id, "name": art["name"], "kind": art["kind"],
                                  "content_type": art["content_type"], "size": art["size"] + rng.randrange(-64, 64),
                                  "sha256": fake_sha(), "path": f"jobs/{job_id}/{art['name']}", "created_at": created})
    with engine.begin() as conn:
        for rows in (trains, children):  # parents first (foreign key)
            for chunk in range(0, len(rows), 1000):
                conn.execute(insert(Job), rows[chunk:chunk + 1000])
        for chunk in range(0, len(artifacts), 2000):
            conn.execute(insert(Artifact), artifacts[chunk:chunk + 2000])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE jobs")
        conn.exec_driver_sql("ANALYZE artifacts")
    return {"inserted": count, "artifacts": len(artifacts), "seconds": time.perf_counter() - start}


def bench_list(client: Client, gets: int, pages: int) -> dict[str, Any]:
    for _ in range(5):  # warm the connection pool and the caches
        client.timed_get("/openapi.json")
        client.timed_get("/jobs?limit=50")
    floor, bare, first, sizes = [], [], [], []
    for _ in range(gets):  # interleaved so that machine noise hits all three
        floor.append(client.timed_get("/openapi.json")[0])
        bare.append(client.timed_get("/jobs/not-a-uuid", 404)[0])
        elapsed, response = client.timed_get("/jobs?limit=50")
        first.append(elapsed)
        sizes.append(len(response.content))
    body = response.json()
    artifacts_per_page = sum(len(item["artifacts"]) for item in body["items"])
    deep, cursor, walked = [], body["next_cursor"], 1
    while cursor and walked < pages:
        elapsed, response = client.timed_get(f"/jobs?limit=50&cursor={cursor}")
        deep.append(elapsed)
        cursor = response.json()["next_cursor"]
        walked += 1
    return {"floor": summary(floor), "bare": summary(bare), "first": summary(first), "deep": summary(deep),
            "deepest": summary(deep[-10:]),
            "pages_walked": walked, "bytes": int(pct(sizes, 50)), "artifacts_per_page": artifacts_per_page,
            "items_per_page": len(body["items"])}


# -- the run -----------------------------------------------------------------------------------------

def templates_from(train: dict, embed: dict, sample: dict) -> dict[str, dict[str, Any]]:
    def shape(job: dict) -> dict[str, Any]:
        return {"spec": job["spec"], "progress": job["progress"],
                "artifacts": [{k: a[k] for k in ("name", "kind", "content_type", "size")} for a in job["artifacts"]]}
    return {"train": shape(train), "embed": shape(embed), "sample": shape(sample)}


def timed_step(what: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    say(f"  {what}: {time.perf_counter() - start:.1f} s")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from shared.db import make_engine

    data = mnist_dir()
    if not (data / "train-images-idx3-ubyte.gz").is_file() and not (data / "train-images-idx3-ubyte").is_file():
        raise SystemExit(f"MNIST not found in {data}: set LATENTFORGE_DATA_DIR")
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as cleanup:
        broker_url = cleanup.enter_context(redis_database())
        database_url = cleanup.enter_context(postgres_database())
        home = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="lf-bench-")))
        stack = Stack(home=home, data_dir=data, database_url=database_url, broker_url=broker_url,
                      heartbeat_s=args.heartbeat, stale_after_s=max(60.0, 6 * args.heartbeat))
        cleanup.callback(stack.close)
        engine = make_engine(database_url)
        cleanup.callback(engine.dispose)
        say(f"stack: Redis {broker_url}, PostgreSQL {database_url.rsplit('/', 1)[-1]}, home {home}")
        timed_step("db upgrade", stack.upgrade)
        timed_step("API up", stack.start_api)
        timed_step("worker up", stack.start_worker)
        client = Client(stack)
        cleanup.callback(client.close)

        say("parent model: train 1 epoch on the CPU")
        parent = client.post_job({"kind": "train", "spec": {"epochs": 1, "device": "cpu"}})[1]
        parent = client.wait_finished(parent["id"], 300)
        if parent["state"] != "succeeded":
            raise RuntimeError(f"parent train job ended {parent['state']}: {parent.get('error')}\n{stack.log('worker')[-3000:]}")
        embed = client.post_job({"kind": "embed", "spec": {"model_job": parent["id"], "limit": 2000}})[1]
        embed = client.wait_finished(embed["id"], 300)
        sample = client.post_job({"kind": "sample", "spec": {"model_job": parent["id"], "latent_coords": [[0, 0]]}})[1]
        sample = client.wait_finished(sample["id"], 300)
        for job in (embed, sample):
            if job["state"] != "succeeded":
                raise RuntimeError(f"{job['kind']} job ended {job['state']}: {job.get('error')}\n{stack.log('worker')[-3000:]}")
        templates = templates_from(parent, embed, sample)
        results["artifacts_per_kind"] = {kind: len(t["artifacts"]) for kind, t in templates.items()}
        say("  artifacts of a real job: " + ", ".join(f"{k} {n}" for k, n in results["artifacts_per_kind"].items()))

        say(f"1. submit -> running: {args.jobs} sample jobs, worker idle at each submit")
        results["latency"] = bench_latency(client, engine, parent["id"], args.jobs)

        say(f"2. POST /jobs: {args.posts} train jobs from {POST_THREADS} threads, worker stopped")
        stack.kill("worker")
        results["posts"] = bench_posts(stack, args.posts)

        say(f"3. GET /jobs?limit=50 with {args.stored:,} jobs stored")
        fill = timed_step("bulk insert", lambda: fill_store(engine, templates, args.stored, random.Random(1)))
        results["fill"] = fill
        say(f"  inserted {fill['inserted']:,} jobs and {fill['artifacts']:,} artifacts")
        results["list"] = bench_list(client, args.gets, args.pages)
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    lat, posts, lst = results["latency"], results["posts"], results["list"]
    rows = [
        ("submit -> running (started_at - created_at)", lat["latency"], LATENCY_TARGET_MS),
        ("  of which created -> published_at (API)", lat["created_to_published"], None),
        ("  of which published_at -> started (broker, worker)", lat["published_to_started"], None),
        ("client sends POST -> running (same clock)", lat["client_latency"], LATENCY_TARGET_MS),
        ("POST /jobs round trip, idle worker (client)", lat["post"], None),
        (f"POST /jobs, {POST_THREADS} threads, worker stopped (client)", posts["request"], None),
        ("GET /openapi.json (floor, no database)", lst["floor"], None),
        ("GET /jobs/not-a-uuid (404 before any query: bare floor)", lst["bare"], None),
        ("GET /jobs?limit=50 (first page)", lst["first"], LIST_TARGET_MS),
        (f"GET /jobs?limit=50&cursor= (pages 2-{lst['pages_walked']})", lst["deep"], LIST_TARGET_MS),
        ("  last 10 pages (the run's own sample and queued jobs)", lst["deepest"], LIST_TARGET_MS),
    ]
    say("")
    say(f"{'measurement':<56} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  p50/target")
    say("-" * 100)
    for name, s, target in rows:
        ratio = f"{s['p50'] / target:.2f}x of {target:.0f} ms" if target else ""
        say(f"{name:<56} {s['n']:>5} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['max']:>8.1f}  {ratio}")
    say("-" * 100)
    say(f"POST /jobs throughput: {posts['jobs_per_s']:.0f} jobs/s ({args.posts} jobs in {posts['seconds']:.2f} s)")
    say(f"GET /jobs page: {lst['items_per_page']} jobs, {lst['artifacts_per_page']} artifacts, {lst['bytes'] / 1024:.0f} KiB;"
        f" p50 over the openapi.json floor: {lst['first']['p50'] / lst['floor']['p50']:.1f}x")
    met = lat["latency"]["p50"] <= LATENCY_TARGET_MS, lst["first"]["p50"] <= LIST_TARGET_MS
    say(f"targets: submit->running p50 <= {LATENCY_TARGET_MS:.0f} ms: {'met' if met[0] else 'MISSED'};"
        f" GET /jobs p50 <= {LIST_TARGET_MS:.0f} ms: {'met' if met[1] else 'MISSED'}")
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {datetime.now().astimezone().isoformat(timespec='seconds')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="sample jobs for submit->running latency")
    parser.add_argument("--posts", type=int, default=300, help="train jobs POSTed for throughput")
    parser.add_argument("--stored", type=int, default=10_000, help="jobs in the store for the list timing")
    parser.add_argument("--gets", type=int, default=200, help="GET /jobs?limit=50 requests timed")
    parser.add_argument("--pages", type=int, default=10_000, help="most cursor pages to follow (default: to the end)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="worker heartbeat seconds (production default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 jobs, 50 posts, 1,000 stored, 50 gets")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.posts, args.stored, args.gets = 10, 50, 1000, 50

    # SIGTERM unwinds like Ctrl-C, so every context manager and stack.close() runs.
    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIGINT ignored)
    try:
        results = run(args)
    except KeyboardInterrupt:
        say("interrupted; the stack was stopped and its databases dropped")
        return 130
    report(results, args)
    if args.json:
        results["latency"].pop("raw", None)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
