"""The S3 artifact store's cost, against a local SeaweedFS server (tests/s3server.py), with baselines from the same run.

1. throughput for one 50 MB artifact: ``S3Store.publish`` (multipart upload, then a HEAD that checks size and
   sha256) and a cold ``local_folder`` fetch (download, then sha256 check), against copying the same file on
   the local disk (what the folder store's API and worker would do at most) and against bare boto3
   ``upload_file``/``download_file`` (what the checks add);
2. the seed train job (the seed preset, 50 epochs) on Redis + PostgreSQL with the local folder store, then
   on Redis + PostgreSQL + S3 with a home folder per process (resume states uploaded at most every 10 s, the
   default, and after every epoch), alternating: the job's wall time (started to finished) on each, and the
   seconds the store adds. Goal: at most 5% of the job's wall time.

    python bench/object_store.py [--mb 50] [--rounds 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.settings import load_settings  # noqa: E402
from shared.storage import S3Store, open_store  # noqa: E402
from tests.s3server import running_weed  # noqa: E402
from tests.stack import Stack, postgres_database, redis_database  # noqa: E402

GOAL_FRACTION = 0.05


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput(server, work: Path, megabytes: int, rounds: int) -> None:
    bucket = f"lf-bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
    store = open_store(load_settings({**server.env(), "LATENTFORGE_HOME": str(work / "home"),
                                      "LATENTFORGE_ARTIFACT_URL": f"s3://{bucket}/bench"}))
    assert isinstance(store, S3Store)
    data = os.urandom(megabytes << 20)
    digest = hashlib.sha256(data).hexdigest()
    folder = store.workspace("jobs/bench/run-1")
    source = folder / "blob.bin"
    source.write_bytes(data)
    client = server.client()
    times: dict[str, list[float]] = {k: [] for k in ("disk copy", "boto3 upload", "publish", "boto3 download", "fetch")}
    for i in range(rounds):
        times["disk copy"].append(timed(lambda: shutil.copyfile(source, work / "copy.bin")))
        times["boto3 upload"].append(timed(lambda: client.upload_file(str(source), bucket, f"raw/{i}.bin")))
        times["publish"].append(timed(lambda: store.publish("jobs/bench/run-1", "blob.bin", digest,
                                                            "application/octet-stream")))
        times["boto3 download"].append(timed(lambda: client.download_file(bucket, f"raw/{i}.bin",
                                                                          str(work / "raw.bin"))))
        shutil.rmtree(store.objects, ignore_errors=True)
        shutil.rmtree(store.views, ignore_errors=True)
        times["fetch"].append(timed(lambda: store.local_folder("jobs/bench/run-1", {"blob.bin": digest})))
    print(f"\n1. one {megabytes} MB artifact, median of {rounds} (SeaweedFS on loopback, 8 MB parts)")
    print(f"{'operation':<16} {'seconds':>8} {'MB/s':>8}")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:<16} {seconds:8.3f} {megabytes / seconds:8.0f}")
    print(f"publish / boto3 upload: {statistics.median(times['publish']) / statistics.median(times['boto3 upload']):.2f}x"
          f"   fetch / boto3 download: {statistics.median(times['fetch']) / statistics.median(times['boto3 download']):.2f}x")


def job_seconds(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def seed_jobs(server, work: Path, data_dir: Path, jobs: int) -> None:
    with contextlib.ExitStack() as services:
        bucket = f"lf-bench-{uuid.uuid4().hex[:8]}"
        server.create_bucket(bucket)
        s3_env = {**server.env(), "LATENTFORGE_ARTIFACT_URL": f"s3://{bucket}/artifacts"}
        configurations = {
            "local folder": ({}, False),
            "S3": (s3_env, True),
            "S3, every epoch": ({**s3_env, "LATENTFORGE_RESUME_UPLOAD_SECONDS": "0"}, True),
        }
        stacks = {}
        for i, (name, (env, separate)) in enumerate(configurations.items()):
            stacks[name] = Stack(work / f"stack{i}", data_dir, database_url=services.enter_context(postgres_database()),
                                 broker_url=services.enter_context(redis_database()), heartbeat_s=1.0,
                                 stale_after_s=30.0, separate_homes=separate, extra_env=env)
        try:
            for stack in stacks.values():
                stack.bring_up(workers=1)
            walls: dict[str, list[float]] = {name: [] for name in stacks}
            for round_ in range(jobs):
                for name, stack in stacks.items():
                    job = stack.wait_job(stack.submit("train", {"preset": "seed"})["id"], timeout=900)
                    assert job["state"] == "succeeded", job["error"]
                    walls[name].append(job_seconds(job))
                    print(f"  round {round_ + 1}, {name}: {walls[name][-1]:.2f} s", flush=True)
            local = statistics.median(walls["local folder"])
            print(f"\n2. the seed train job (50 epochs), median wall time of {jobs}; local folder {local:.2f} s")
            for name in list(stacks)[1:]:
                added = statistics.median(walls[name]) - local
                print(f"   {name:<16} {local + added:6.2f} s: adds {added:+.2f} s = {added / local:+.1%}"
                      f" (goal at most {GOAL_FRACTION:.0%}: {'met' if added <= GOAL_FRACTION * local else 'NOT met'})")
        finally:
            for stack in stacks.values():
                stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="seed jobs per store (0: skip part 2)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("LATENTFORGE_DATA_DIR", REPO.parent / "shared" / "data" / "mnist")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_weed(Path(tmp)) as server:
        work = Path(tmp)
        throughput(server, work, args.mb, args.rounds)
        if args.jobs:
            seed_jobs(server, work, args.data_dir.resolve(), args.jobs)


if __name__ == "__main__":
    main()
