"""Gallery speed: server time of the runs page with 1,000 jobs stored (target: <= 300 ms).

Starts a real API server (gunicorn) on the embedded defaults in a temporary
home, stores 1,000 finished train jobs, each with its 17 artifacts as a real
train job has, and times sequential requests. The baseline, measured in the
same run, is GET /api/v1/openapi.json (no database).

    python bench/gallery_render.py [--jobs 1000] [--requests 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from tests.stack import Stack  # noqa: E402

ARTIFACTS = [
    ("config.json", "config", "application/json"), ("metrics.jsonl", "metrics", "application/x-ndjson"),
    ("model.safetensors", "checkpoint", "application/octet-stream"), ("decoder.safetensors", "decoder", "application/octet-stream"),
    ("latent_codes.safetensors", "codes", "application/octet-stream"),
] + [(f"figures/{n}{s}", k, "image/png") for n in ("latent_scatter", "reconstructions", "generated", "loss_curve",
                                                      "latent_manifold", "interpolation")
     for s, k in ((".png", "figure"), (".thumb.png", "thumbnail"))]


def store_jobs(database_url: str, count: int) -> str:
    from datetime import timedelta

    from shared.db import Artifact, Job, make_engine, make_sessionmaker, utcnow

    sessions = make_sessionmaker(make_engine(database_url))
    start = utcnow() - timedelta(hours=count)
    history = [{"epoch": e, "train_loss": 0.07 - e * 0.001, "test_loss": 0.06 - e * 0.0008, "seconds": 0.2,
                "samples_per_s": 90000.0} for e in range(1, 51)]
    with sessions.begin() as session:
        for i in range(count):
            job = Job(kind="train", name=f"run {i}", tags=["bench"], state="succeeded", attempts=1,
                      spec={"model": "ae", "dataset": "mnist", "latent_dim": 2, "hidden": [128, 64], "epochs": 50,
                            "batch_size": 256, "lr": 0.001, "beta": 1.0, "seed": i, "device": "cpu", "preset": None},
                      progress={**history[-1], "total": 50, "history": history}, queue="cpu",
                      created_at=start + timedelta(hours=i), queued_at=start + timedelta(hours=i),
                      started_at=start + timedelta(hours=i), finished_at=start + timedelta(hours=i, seconds=15))
            session.add(job)
            session.flush()
            for name, kind, content_type in ARTIFACTS:
                session.add(Artifact(job_id=job.id, name=name, kind=kind, content_type=content_type, size=1000,
                                     sha256="0" * 64, path=f"jobs/{job.id}/{name}"))
        last = job.id
    return last


def timed(url: str, n: int) -> list[float]:
    session = requests.Session()
    session.get(url, timeout=30).raise_for_status()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = session.get(url, timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    return times


def summary(name: str, times: list[float], target: float | None = None) -> str:
    p50, p95 = statistics.median(times), sorted(times)[int(0.95 * (len(times) - 1))]
    verdict = f"  {p50 / target:.2f}x of the {target:.0f} ms target" if target else ""
    return f"{name:<44} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms{verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    data_dir = Path(os.environ.get("LATENTFORGE_DATA_DIR", REPO.parent / "shared/data/mnist"))
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), data_dir)
        try:
            stack.upgrade()
            last = store_jobs(f"sqlite:///{Path(tmp) / 'latentforge.db'}", args.jobs)
            stack.start_api()
            baseline = timed(stack.url + "/api/v1/openapi.json", args.requests)
            runs = timed(stack.url + "/", args.requests)
            deep = timed(stack.url + "/?state=succeeded&kind=train", args.requests)
            run = timed(stack.url + f"/runs/{last}", args.requests)
            print(f"{args.jobs:,} train jobs stored, {len(ARTIFACTS)} artifacts each; SQLite, gunicorn gthread, 1 process")
            print(summary("GET /api/v1/openapi.json (baseline)", baseline))
            print(summary("GET / (runs page, 50 rows)", runs, 300))
            print(summary("GET /?state=succeeded&kind=train", deep, 300))
            print(summary("GET /runs/<id> (run page)", run, 300))
            print(f"runs page / baseline: {statistics.median(runs) / statistics.median(baseline):.1f}x")
        except Exception:
            print(stack.log("api")[-3000:], file=sys.stderr)
            raise
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
