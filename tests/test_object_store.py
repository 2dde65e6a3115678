"""Workers on many hosts: Redis + PostgreSQL + a real S3 server (SeaweedFS), and no disk shared by anyone.

The API and every worker have a home folder of their own (tests/stack.py,
``separate_homes``); artifacts and resume states exist only in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from datetime import datetime, timezone

import pytest
import requests

from tests.stack import Stack
from tests.test_gallery_browser import (  # noqa: F401  (fixtures, shared with the gallery's browser tests)
    TOKEN, anonymous_page, browser, explore_then_decode_on_server, page,
)

pytestmark = pytest.mark.usefixtures("services_up")

TIMINGS = ("seconds", "samples_per_s")


@pytest.fixture(scope="module")
def stack(stack_factory) -> Stack:
    return stack_factory("redis_pg_s3", token=TOKEN, workers=2,
                         env={"LATENTFORGE_TORCH_THREADS": "1", "LATENTFORGE_PLUGINS": "tests.hostile_kind"})


def bucket_of(stack: Stack) -> tuple[str, str]:
    bucket, prefix = stack.env["LATENTFORGE_ARTIFACT_URL"][len("s3://"):].split("/", 1)
    return bucket, prefix


def stored_keys(stack: Stack, s3_server) -> list[str]:
    bucket, _ = bucket_of(stack)
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for listing in pages for item in listing.get("Contents", [])]


def check_every_artifact(stack: Stack, job: dict) -> None:
    for artifact in job["artifacts"]:
        response = requests.get(stack.url + artifact["url"], headers=stack.headers(), timeout=30)
        assert response.status_code == 200, (artifact, response.text[:300])
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"], artifact["name"]


def history(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def metrics_rows(stack: Stack, job: dict) -> list[dict]:
    metrics = next(a for a in job["artifacts"] if a["name"] == "metrics.jsonl")
    text = requests.get(stack.url + metrics["url"], headers=stack.headers(), timeout=30).text
    return [json.loads(line) for line in text.splitlines()]


def test_sigkill_mid_training_resumes_on_another_host_from_the_store(stack, s3_server):
    spec = {"epochs": 16, "device": "cpu"}
    job = stack.submit("train", spec)
    running = stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 3)
    victim = stack.worker_proc_name(running["worker"])
    survivor = "worker2" if victim == "worker1" else "worker1"
    stack.kill(victim)
    shutil.rmtree(stack.host_home(victim))  # the dead host's disk is gone too
    assert not (stack.host_home(survivor) / "scratch" / "jobs" / job["id"]).exists()
    try:
        done = stack.wait_job(job["id"], timeout=240)
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 2 and stack.worker_proc_name(done["worker"]) == survivor
        resumed = re.search(rf"job {job['id']}: resuming after epoch (\d+)", stack.log(survivor))
        # States go up at most every LATENTFORGE_RESUME_UPLOAD_SECONDS (10 s): the first one at once.
        assert resumed and int(resumed.group(1)) >= 1, stack.log(survivor)[-3000:]
        rows = metrics_rows(stack, done)
        assert [r["epoch"] for r in rows] == list(range(1, 17))
        check_every_artifact(stack, done)

        # Bit for bit what an uninterrupted run gives: every epoch's numbers and the weights.
        clean = stack.wait_job(stack.submit("train", spec)["id"], timeout=240)
        assert history(clean["progress"]["history"]) == history(rows)
        weights = [next(a["sha256"] for a in j["artifacts"] if a["name"] == "model.safetensors") for j in (clean, done)]
        assert weights[0] == weights[1]

        # The store keeps the winning attempt only: the first attempt's folder and the resume states are pruned.
        _, prefix = bucket_of(stack)
        keys = [k for k in stored_keys(stack, s3_server) if f"/jobs/{job['id']}/" in k]
        assert len({k.split("/")[3] for k in keys}) == 1 and not any("/run-1/" in k for k in keys), keys
        assert not any("/resume/" in k for k in keys) and all(k.startswith(f"{prefix}/jobs/") for k in keys)
    finally:
        stack.start_worker(victim)


def test_an_object_store_away_for_ten_seconds_during_uploads_is_waited_out(stack, s3_server):
    if s3_server.proc is None:
        pytest.skip("the S3 server was not started by this session: it cannot be paused")
    job = stack.submit("train", {"epochs": 12, "device": "cpu"})
    running = stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 2)
    s3_server.pause()
    back: list[datetime] = []
    timer = threading.Timer(10.0, lambda: (s3_server.resume(), back.append(datetime.now(timezone.utc))))
    timer.start()
    try:
        done = stack.wait_job(job["id"], timeout=240)
    finally:
        timer.join()
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    # Training went on meanwhile (uploads of resume states are off its thread); the job's end, which needs its
    # files stored, waited for the store.
    assert datetime.fromisoformat(done["finished_at"]) > back[0]
    assert running["worker"] == done["worker"] and "artifact store" not in (done["error"] or {}).get("message", "")
    assert [r["epoch"] for r in metrics_rows(stack, done)] == list(range(1, 13))
    check_every_artifact(stack, done)


def test_range_requests_and_conditional_gets_from_the_store(stack):
    job = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu"})["id"])
    weights = next(a for a in job["artifacts"] if a["name"] == "model.safetensors")
    url = stack.url + weights["url"]
    whole = requests.get(url, headers=stack.headers(), timeout=30).content
    part = requests.get(url, headers=stack.headers(Range="bytes=100-199"), timeout=30)
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(whole)}" and part.headers["Content-Length"] == "100"
    tail = requests.get(url, headers=stack.headers(Range="bytes=-10"), timeout=30)
    assert tail.status_code == 206 and tail.content == whole[-10:]
    beyond = requests.get(url, headers=stack.headers(Range=f"bytes={len(whole) + 5}-"), timeout=30)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(whole)}"
    head = requests.head(url, headers=stack.headers(), timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(whole) and not head.content
    etag = f'"{weights["sha256"]}"'
    assert requests.get(url, headers=stack.headers(**{"If-None-Match": etag}), timeout=30).status_code == 304
    stale_range = requests.get(url, headers=stack.headers(Range="bytes=0-9", **{"If-Range": '"other"'}), timeout=30)
    assert stale_range.status_code == 200 and stale_range.content == whole


def test_redirects_to_presigned_urls_when_asked(stack, s3_server):
    api = Stack(stack.home, stack.env["LATENTFORGE_DATA_DIR"], token=stack.token,
                extra_env={**stack.env, "LATENTFORGE_ARTIFACT_REDIRECT": "1"}, separate_homes=True)
    try:
        api.start_api()
        job = stack.wait_job(stack.submit("sample", {"model_job": trained_model(stack), "n": 4})["id"])
        for artifact in job["artifacts"]:
            response = requests.get(api.url + artifact["url"], headers=api.headers(), timeout=30, allow_redirects=False)
            assert response.status_code == 302 and response.headers["Location"].startswith(s3_server.endpoint)
            assert response.headers["Cache-Control"] == "private, no-store"
            stored = requests.get(response.headers["Location"], timeout=30)  # no token: the URL is the grant
            assert hashlib.sha256(stored.content).hexdigest() == artifact["sha256"]
        html = requests.get(api.url + f"/runs/{job['id']}", headers=api.headers(Accept="text/html"), timeout=30)
        assert f"img-src 'self' data: blob: {s3_server.endpoint};" in html.headers["Content-Security-Policy"]
    finally:
        api.close()


_trained: dict[str, str] = {}


def trained_model(stack: Stack) -> str:
    if "id" not in _trained:
        job = stack.wait_job(stack.submit("train", {"epochs": 2, "device": "cpu"}, name="s3 model")["id"])
        assert job["state"] == "succeeded", job["error"]
        _trained["id"] = job["id"]
    return _trained["id"]


def test_the_explorer_works_on_the_object_store(stack, page):  # noqa: F811
    explore_then_decode_on_server(stack, page, trained_model(stack))


def test_the_api_refuses_stored_files_that_differ_from_their_rows(stack, s3_server):
    from sqlalchemy import create_engine, update

    from shared.db import Artifact

    job = stack.job(trained_model(stack))
    bucket, prefix = bucket_of(stack)
    by_name = {a["name"]: a for a in job["artifacts"]}
    key_of = {name: next(k for k in stored_keys(stack, s3_server) if k.startswith(f"{prefix}/jobs/{job['id']}/")
                         and k.endswith("/" + name)) for name in by_name}
    client = s3_server.client()

    def get(name: str) -> requests.Response:
        return requests.get(stack.url + by_name[name]["url"], headers=stack.headers(), timeout=30)

    # Other bytes under the key (a hand edit, a second writer): refused, never served under the row's ETag.
    client.put_object(Bucket=bucket, Key=key_of["figures/loss_curve.png"], Body=b"not the figure",
                      Metadata={"sha256": by_name["figures/loss_curve.png"]["sha256"]})
    tampered = get("figures/loss_curve.png")
    assert tampered.status_code == 410 and "no longer matches its recorded sha256" in tampered.json()["detail"]
    client.delete_object(Bucket=bucket, Key=key_of["figures/loss_curve.thumb.png"])
    missing = get("figures/loss_curve.thumb.png")
    assert missing.status_code == 410 and "is no longer stored" in missing.json()["detail"]
    # A row whose key could leave the prefix is never looked up.
    engine = create_engine(stack.database_url)
    with engine.begin() as conn:
        conn.execute(update(Artifact).where(Artifact.id == by_name["figures/interpolation.png"]["id"])
                     .values(path="jobs/../../../other-bucket/secret"))
    engine.dispose()
    assert get("figures/interpolation.png").status_code == 404
    assert get("model.safetensors").status_code == 200  # the rest of the run is served as before


@pytest.mark.parametrize("name", ["../escape.txt", "../../../../escape.txt", "/tmp/escape.txt",
                                  "figures%2F..%2F..%2Fescape.txt", "a/../../escape.txt", "..\\escape.txt"])
def test_hostile_artifact_names_fail_the_job_and_never_leave_its_prefix(stack, s3_server, name):
    job = stack.wait_job(stack.submit("hostile_files", {"artifact_name": name})["id"])
    assert job["state"] == "failed" and job["error"]["type"] == "ArtifactNameError", job
    assert "could leave its job's folder" in job["error"]["message"]
    assert [a["name"] for a in job["artifacts"]] == ["log.txt"]  # none of the runner's files: only the job's log
    _, prefix = bucket_of(stack)
    assert all(key.startswith(f"{prefix}/jobs/") for key in stored_keys(stack, s3_server))
    assert not any("escape" in key for key in stored_keys(stack, s3_server))


def test_workers_and_api_refuse_to_start_on_a_store_they_cannot_use(stack):
    env = {**stack.env, "LATENTFORGE_ARTIFACT_URL": "s3://lf-no-such-bucket/x"}
    for role in (["worker"], ["api", "--port", "1"]):
        result = stack.cli(*role, env=env, timeout=120)
        assert result.returncode == 2, result
        line = result.stderr.strip()
        assert "\n" not in line and "LATENTFORGE_ARTIFACT_URL=s3://lf-no-such-bucket/x: bucket 'lf-no-such-bucket'" \
            " does not exist" in line, line
    wrong = {**stack.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    result = stack.cli("worker", env=wrong, timeout=120)
    assert result.returncode == 2 and "refused these credentials" in result.stderr, result.stderr
    unreachable = {**stack.env, "LATENTFORGE_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = stack.cli("worker", env=unreachable, timeout=120)
    assert result.returncode == 2 and "LATENTFORGE_S3_ENDPOINT_URL=http://127.0.0.1:9: the object store is" \
        " unreachable" in result.stderr, result.stderr


def test_a_store_that_stays_away_fails_the_job_with_the_reason_after_bounded_retries(stack, s3_server):
    """Last: it replaces the two workers with one that waits 2 s for the store."""
    if s3_server.proc is None:
        pytest.skip("the S3 server was not started by this session: it cannot be paused")
    for name in ("worker1", "worker2"):
        stack.kill(name)
    stack.start_worker("impatient", env={"LATENTFORGE_STORE_PATIENCE_SECONDS": "2",
                                         "LATENTFORGE_RESUME_UPLOAD_SECONDS": "0"})
    job = stack.submit("train", {"epochs": 30, "device": "cpu"})
    stack.wait_job(job["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 1)
    s3_server.pause()
    try:
        done = stack.wait_job(job["id"], ("failed", "succeeded"), timeout=120)
    finally:
        s3_server.resume()
    assert done["state"] == "failed" and done["error"]["type"] == "ArtifactStoreUnavailable", done
    assert done["attempts"] == 3 and done["artifacts"] == []
    assert re.fullmatch(r"gave up after 3 attempts; the last one ended because the artifact store s3://\S+ did not"
                        r" answer for 2 s while .+", done["error"]["message"]), done["error"]["message"]
    # Once the store is back the same worker runs the next job.
    again = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu"})["id"])
    assert again["state"] == "succeeded", again["error"]
