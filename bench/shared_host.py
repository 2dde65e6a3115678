"""Two workers on one host: do they share the CPUs politely, and does the API stay quick?

Every measurement runs the seed preset (8 epochs by default) on a real stack
(Redis, PostgreSQL, gunicorn API, supervised Celery workers), timed from the
submit of both jobs to the end of both, with the workers already started:

1. one after the other: one worker, two jobs (each job gets every CPU);
2. at once, with workers as LatentForge starts them: two workers, each
   job's torch threads = the worker's CPUs / live workers on the host, and
   workers at nice 10 below the API;
3. at once, the way it used to be: two workers, each with every CPU
   (LATENTFORGE_TORCH_THREADS = CPU count, nice 0).

Meanwhile a client POSTs /jobs (train jobs for the gpu queue, which these
workers do not consume) every 50 ms, and the latencies are reported per
measurement. Targets: (2) within 0.75x of (1), and POST /jobs p99 <= 100 ms
during (2). Also printed: the same two runs as plain ``latentforge train``
processes, the issue's original measurement.

    python bench/shared_host.py [--epochs 8] [--skip-cli] [--post-every 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench.queue_latency import mnist_dir, pct  # noqa: E402
from tests.stack import Stack, postgres_database, redis_database  # noqa: E402

CPUS = len(os.sched_getaffinity(0))


class Poster(threading.Thread):
    """POSTs a job every ``every_s`` seconds (none at 0) and keeps each request's latency."""

    def __init__(self, stack: Stack, every_s: float):
        super().__init__(daemon=True)
        self.stack, self.every_s, self.latencies, self.stop = stack, every_s, [], threading.Event()

    def run(self) -> None:
        session = requests.Session()
        body = {"kind": "train", "spec": {"epochs": 1, "device": "cuda"}}
        while self.every_s and not self.stop.wait(self.every_s):
            started = time.perf_counter()
            response = session.post(self.stack.url + "/api/v1/jobs", json=body, timeout=30)
            self.latencies.append(time.perf_counter() - started)
            assert response.status_code == 201, response.text


def two_jobs(workers: int, epochs: int, env: dict[str, str], post_every_s: float) -> tuple[float, list[float], list[int]]:
    """Seconds from submitting two seed jobs to both ending; POST latencies meanwhile; threads used."""
    with tempfile.TemporaryDirectory() as home, postgres_database() as db, redis_database() as broker:
        stack = Stack(Path(home), mnist_dir(), database_url=db, broker_url=broker, extra_env=env)
        try:
            stack.upgrade()
            stack.start_api()
            for i in range(workers):
                stack.start_worker(f"worker{i + 1}", queues="cpu")
            time.sleep(1.5)  # every worker has registered: each counts the others
            poster = Poster(stack, post_every_s)
            poster.start()
            started = time.perf_counter()
            jobs = [stack.submit("train", {"preset": "seed", "epochs": epochs, "device": "cpu"}) for _ in range(2)]
            done = [stack.wait_job(job["id"], timeout=1800) for job in jobs]
            seconds = time.perf_counter() - started
            poster.stop.set()
            poster.join()
            assert all(job["state"] == "succeeded" for job in done), [job["error"] for job in done]
            logs = "".join(stack.log(f"worker{i + 1}") for i in range(workers))
            threads = [int(part.split(" torch thread")[0].rsplit(" ", 1)[1])
                       for part in logs.split("\n") if " torch thread" in part]
            return seconds, poster.latencies, threads
        finally:
            stack.close()


def cli_runs(epochs: int, threads: int | None, together: bool) -> float:
    env = {**os.environ, "LATENTFORGE_DATA_DIR": str(mnist_dir())}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "latentforge.cli", "train", "--preset", "seed", "--epochs", str(epochs), "--device",
                   "cpu", "--overwrite", "--out"]
        started = time.perf_counter()
        if together:
            procs = [subprocess.Popen([*command, f"{out}/{i}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
                     for i in range(2)]
            assert all(proc.wait() == 0 for proc in procs)
        else:
            for i in range(2):
                subprocess.run([*command, f"{out}/{i}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--skip-cli", action="store_true", help="skip the plain latentforge train processes")
    parser.add_argument("--post-every", type=float, default=0.05, help="seconds between POST /jobs (0: none)")
    args = parser.parse_args()
    print(f"{CPUS} CPUs, seed preset, {args.epochs} epochs per job, two jobs per measurement\n")

    if not args.skip_cli:
        sequential = cli_runs(args.epochs, None, together=False)
        crowded = cli_runs(args.epochs, None, together=True)
        single = cli_runs(args.epochs, 1, together=True)
        print("latentforge train processes (start to end of both):")
        print(f"  one after the other             {sequential:6.1f} s")
        print(f"  at once, default threads        {crowded:6.1f} s  ({crowded / sequential:.2f}x)")
        print(f"  at once, one thread each        {single:6.1f} s  ({single / sequential:.2f}x)\n")

    rows = [
        ("one after the other (1 worker)", 1, {}),
        ("at once, 2 workers as started", 2, {}),
        ("at once, 2 workers, all CPUs each, nice 0", 2,
         {"LATENTFORGE_TORCH_THREADS": str(CPUS), "LATENTFORGE_WORKER_NICE": "0"}),
    ]
    results = []
    for label, workers, env in rows:
        seconds, latencies, threads = two_jobs(workers, args.epochs, env, args.post_every)
        results.append((label, seconds, latencies, threads))
    base = results[0][1]
    posting = f"POST /jobs every {args.post_every * 1000:.0f} ms" if args.post_every else "no POSTs"
    print(f"queued jobs on a real stack (submit of both to end of both), {posting} meanwhile:")
    print(f"  {'':42} {'seconds':>8} {'ratio':>6} {'threads':>8} {'POST p50':>9} {'POST p99':>9}")
    for label, seconds, latencies, threads in results:
        posts = f" {pct(latencies, 50) * 1000:7.1f}ms {pct(latencies, 99) * 1000:7.1f}ms" if latencies else ""
        print(f"  {label:42} {seconds:8.1f} {seconds / base:6.2f} {','.join(map(str, threads)):>8}{posts}")
    polite = results[1]
    p99 = pct(polite[2], 99) if polite[2] else 0.0
    ok = polite[1] / base <= 0.75 and p99 <= 0.100
    print(f"\ntargets: at once <= 0.75x one after the other ({polite[1] / base:.2f}x), POST p99 <= 100 ms"
          f" ({p99 * 1000:.1f} ms): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
