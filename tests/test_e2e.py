"""End to end on each stack: a real gunicorn API and a real Celery worker process.

(a) embedded: SQLite + Celery's filesystem transport under LATENTFORGE_HOME;
(b) production-like: Redis (a database number of its own) + PostgreSQL (a
database created and dropped for the run).
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.usefixtures("services_up")


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def stack(request, stack_factory):
    return stack_factory(request.param)


@pytest.fixture(scope="module")
def trained(stack):
    job = stack.submit("train", {"preset": "seed", "epochs": 2, "device": "cpu"}, name="e2e seed", tags=["e2e", "seed"])
    assert job["state"] == "queued" and job["kind"] == "train"
    return stack.wait_job(job["id"], timeout=240)


def test_train_succeeds_with_progress_and_every_artifact(stack, trained):
    job = trained
    assert job["state"] == "succeeded", job["error"]
    assert job["name"] == "e2e seed" and job["tags"] == ["e2e", "seed"]
    assert job["attempts"] == 1 and job["worker"] and job["error"] is None
    assert job["spec"]["preset"] == "seed" and job["spec"]["epochs"] == 2 and job["spec"]["lr"] == 0.001
    progress = job["progress"]
    assert progress["epoch"] == 2 and progress["total"] == 2
    assert [row["epoch"] for row in progress["history"]] == [1, 2]
    assert 0.04 < progress["train_loss"] < 0.07 and 0.04 < progress["test_loss"] < 0.07
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]

    names = {a["name"] for a in job["artifacts"]}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "figures/latent_scatter.png", "figures/reconstructions.png",
            "figures/generated.png", "figures/loss_curve.png", "figures/latent_manifold.png",
            "figures/interpolation.png"} <= names
    assert not any(name.startswith("resume/") for name in names)
    for artifact in job["artifacts"]:
        response = requests.get(stack.url + artifact["url"], timeout=30)
        assert response.status_code == 200, artifact
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        assert int(response.headers["Content-Length"]) == artifact["size"] == len(response.content)
        assert response.headers["Content-Type"].startswith(artifact["content_type"])
        assert response.headers["ETag"].strip('"') == artifact["sha256"]
        if artifact["name"].endswith(".png"):
            with Image.open(io.BytesIO(response.content)) as image:
                image.load()
                assert image.size[0] > 0 and image.size[1] > 0
    scatter = next(a for a in job["artifacts"] if a["name"] == "figures/latent_scatter.png")
    cached = requests.get(stack.url + scatter["url"], headers={"If-None-Match": f'"{scatter["sha256"]}"'}, timeout=30)
    assert cached.status_code == 304
    metrics = next(a for a in job["artifacts"] if a["name"] == "metrics.jsonl")
    rows = [json.loads(line) for line in requests.get(stack.url + metrics["url"], timeout=30).text.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_embed_and_sample_on_the_trained_model(stack, trained):
    embed = stack.submit("embed", {"model_job": trained["id"], "split": "test", "limit": 500})
    assert embed["parent"] == trained["id"] and embed["queue"] == "cpu"
    sample = stack.submit("sample", {"model_job": trained["id"], "latent_coords": [[0, 0], [-2, 2], [1.5, -1]]})
    prior = stack.submit("sample", {"model_job": trained["id"], "n": 6, "seed": 3})
    embed, sample, prior = (stack.wait_job(j["id"]) for j in (embed, sample, prior))
    for job in (embed, sample, prior):
        assert job["state"] == "succeeded", job["error"]

    def array(job, name):
        artifact = next(a for a in job["artifacts"] if a["name"] == name)
        return np.load(io.BytesIO(requests.get(stack.url + artifact["url"], timeout=30).content), allow_pickle=False)

    codes, labels = array(embed, "codes.npy"), array(embed, "labels.npy")
    assert codes.shape == (500, 2) and codes.dtype == np.float32 and np.isfinite(codes).all()
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert {a["name"] for a in embed["artifacts"]} >= {"figures/embedding.png", "figures/embedding.thumb.png"}

    images, coords = array(sample, "images.npy"), array(sample, "coords.npy")
    assert images.shape == (3, 28, 28) and coords.tolist() == [[0, 0], [-2, 2], [1.5, -1]]
    assert not np.allclose(images[0], images[1])  # different points decode differently
    assert prior["progress"]["source"] == "gmm" and array(prior, "images.npy").shape == (6, 28, 28)

    children = stack.get(f"/jobs?parent={trained['id']}&limit=10").json()["items"]
    assert {c["id"] for c in children} == {embed["id"], sample["id"], prior["id"]}


def test_idempotent_retry_returns_the_same_job(stack):
    body = {"kind": "train", "spec": {"epochs": 1, "device": "cpu"}, "name": "idem"}
    headers = stack.headers(**{"Idempotency-Key": f"retry-{time.time_ns()}"})
    first = stack.post("/jobs", body, headers=headers)
    second = stack.post("/jobs", body, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    clash = stack.post("/jobs", {**body, "name": "other"}, headers=headers)
    assert clash.status_code == 422 and "different request" in clash.json()["detail"]
    named = stack.get("/jobs?kind=train&limit=200").json()["items"]
    assert sum(1 for j in named if j["name"] == "idem") == 1
    assert stack.wait_job(first.json()["id"])["state"] == "succeeded"


def test_cancel_a_running_job_and_a_queued_one(stack):
    running = stack.submit("train", {"epochs": 500, "device": "cpu"})
    stack.wait_job(running["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 1)
    queued = stack.submit("train", {"epochs": 1, "device": "cpu"})  # the only worker is busy
    response = stack.post(f"/jobs/{queued['id']}/cancel")
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    response = stack.post(f"/jobs/{running['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    done = stack.wait_job(running["id"], timeout=60)
    assert done["state"] == "cancelled" and done["progress"]["epoch"] < 500 and done["artifacts"] == []
    again = stack.post(f"/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and again.headers["Content-Type"] == "application/problem+json"
    # The queued job that was cancelled never starts, even after the worker is free.
    time.sleep(2)
    never = stack.job(queued["id"])
    assert never["state"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None


def test_progress_as_server_sent_events(stack):
    job = stack.submit("train", {"epochs": 3, "device": "cpu"})
    events = []
    with requests.get(stack.url + job["links"]["events"], stream=True, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    break
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    epochs = [data["progress"].get("epoch") for name, data in events if data["progress"].get("epoch")]
    assert epochs == sorted(epochs) and epochs[-1] == 3 and len(set(epochs)) >= 2


def test_list_pagination_and_filters(stack):
    seen, cursor = [], None
    while True:
        page = stack.get("/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    everything = stack.get("/jobs?limit=200").json()["items"]
    assert seen == [j["id"] for j in everything] and len(seen) == len(set(seen)) >= 4
    created = [j["created_at"] for j in everything]
    assert created == sorted(created, reverse=True)
    cancelled = stack.get("/jobs?state=cancelled").json()["items"]
    assert cancelled and all(j["state"] == "cancelled" for j in cancelled)
    samples = stack.get("/jobs?kind=sample").json()["items"]
    assert samples and all(j["kind"] == "sample" for j in samples)


def test_health_reports_every_part(stack):
    response = stack.get("/health")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["status"] == "ok" and report["database"]["ok"] and report["broker"]["ok"]
    assert report["workers"]["count"] == 1


def test_a_failed_job_stores_one_line_for_users_without_server_paths(stack, mnist_dir):
    job = stack.wait_job(stack.submit("train", {"dataset": "fashion_mnist", "epochs": 1, "device": "cpu"})["id"])
    assert job["state"] == "failed" and job["attempts"] == 1 and job["artifacts"] == []
    error = job["error"]
    assert error["type"] == "DatasetError"
    assert "not found in <data dir>/fashion_mnist" in error["message"], error
    assert str(mnist_dir) not in error["message"] and str(stack.home) not in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
