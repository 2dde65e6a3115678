"""Sweep fan-out and per-child overhead on Redis + PostgreSQL, with children that do nothing.

The children are ``noop`` jobs (bench/noop_kind.py, loaded as a plugin by the API and the workers): a sweep
of them goes through the same fan-out, publishing, claim, heartbeat, finish and recount as a sweep of train
jobs, with no training time, so what is measured is the queue's own cost.

1. create and publish: one sweep of N children through POST /jobs (validation, one transaction for the
   sweep and its children, then every child published to Redis). Target: at most 2 s for 1,000.
2. with W worker processes (2, then 4): from the sweep's submission to its end; children per second; the
   per-child overhead in a worker, wall time x W / N (claim, monitor, finish, recount). Target: at most 20 ms.
3. exactly once: every child ended succeeded after one attempt, and the workers' logs say "noop <i> ran"
   once for every i.

    python bench/sweep_overhead.py [--children 1000] [--workers 2,4]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stack import Stack, postgres_database, redis_database  # noqa: E402

CREATE_TARGET_S = 2.0
OVERHEAD_TARGET_MS = 20.0
RAN = re.compile(r"noop (\d+) ran")


def one_run(children: int, workers: int, data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as home, postgres_database() as db, redis_database() as broker:
        stack = Stack(Path(home), data_dir, database_url=db, broker_url=broker, heartbeat_s=1.0, stale_after_s=30.0,
                      extra_env={"LATENTFORGE_PLUGINS": "bench.noop_kind"})
        try:
            stack.upgrade()
            stack.start_api()
            for i in range(workers):
                stack.start_worker(f"worker{i + 1}", queues="cpu")
            time.sleep(2.0)  # every worker is up and listening
            started = time.perf_counter()
            response = stack.post("/jobs", {"kind": "noop_sweep", "spec": {"count": children}})
            created = time.perf_counter() - started
            assert response.status_code == 201, response.text
            sweep = stack.wait_job(response.json()["id"], timeout=3600)
            wall = time.perf_counter() - started
            assert sweep["state"] == "succeeded", sweep["progress"]
            runs = collections.Counter(int(m) for i in range(workers)
                                       for m in RAN.findall(stack.log(f"worker{i + 1}")))
            attempts, cursor = collections.Counter(), None
            while True:
                page = stack.get(f"/jobs?parent={sweep['id']}&limit=200" + (f"&cursor={cursor}" if cursor else "")).json()
                attempts.update(job["attempts"] for job in page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            return {"created_s": created, "wall_s": wall, "progress": sweep["progress"], "runs": runs,
                    "attempts": attempts}
        finally:
            stack.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared/data/mnist"))
    args = parser.parse_args()
    n = args.children
    for workers in (int(w) for w in args.workers.split(",")):
        result = one_run(n, workers, Path(args.data_dir))
        once = result["runs"] == collections.Counter(range(n)) and result["attempts"] == collections.Counter({1: n})
        overhead_ms = result["wall_s"] * workers / n * 1000
        print(f"\n{n} children, {workers} workers:")
        print(f"  create + publish (POST /jobs): {result['created_s']:.2f} s = {result['created_s'] / CREATE_TARGET_S:.2f}"
              f" x the {CREATE_TARGET_S:.0f} s target")
        print(f"  submit -> sweep succeeded: {result['wall_s']:.1f} s; {n / result['wall_s']:.1f} children/s")
        print(f"  per-child overhead in a worker: {overhead_ms:.1f} ms = {overhead_ms / OVERHEAD_TARGET_MS:.2f} x the"
              f" {OVERHEAD_TARGET_MS:.0f} ms target")
        print(f"  exactly once: {once} (runs logged: {sum(result['runs'].values())}, distinct {len(result['runs'])};"
              f" attempts {dict(result['attempts'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
