"""End to end on each stack: a real gunicorn API and a real Celery worker process.

(a) embedded: SQLite + Celery's filesystem transport under LATENTFORGE_HOME;
(b) production-like: Redis (a database number of its own) + PostgreSQL (a
database created and dropped for the run);
(c) multi-host: Redis + PostgreSQL + an S3 bucket on a real SeaweedFS server,
where the API and the worker have different home folders and share no disk.
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

from shared.scorecard import flat_metrics

pytestmark = pytest.mark.usefixtures("services_up")


@pytest.fixture(scope="module", params=["embedded", "redis_pg", "redis_pg_s3"])
def stack(request, stack_factory):
    stack = stack_factory(request.param)
    stack.kind = request.param
    return stack


def skip_on_redis_pg(stack) -> None:
    """Scorecards are CPU-bound and the same on every broker: they run on SQLite and on redis_pg_s3, whose
    PostgreSQL ranks them and whose object store feeds the evaluation its parent's checkpoint."""
    if stack.kind == "redis_pg":
        pytest.skip("evaluations are checked on the embedded and redis_pg_s3 stacks (PostgreSQL and Redis too)")


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
    if stack.separate_homes:  # the files went through the object store: no host holds them
        for host in ("api", "worker1"):
            assert not (stack.host_home(host) / "artifacts").exists()
        scratch = stack.host_home("worker1") / "scratch"
        assert not any(path.is_file() for path in scratch.rglob("*"))
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
    assert done["state"] == "cancelled" and done["progress"]["epoch"] < 500
    assert [a["name"] for a in done["artifacts"]] == ["log.txt"]  # its log alone: how far it got
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
    assert job["state"] == "failed" and job["attempts"] == 1
    assert [a["name"] for a in job["artifacts"]] == ["log.txt"]  # its log alone: why it failed
    error = job["error"]
    assert error["type"] == "DatasetError"
    assert "not found in <data dir>/fashion_mnist" in error["message"], error
    assert str(mnist_dir) not in error["message"] and str(stack.home) not in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]


# -- the scorecard ----------------------------------------------------------------------------------

SCORECARD_FIGURES = {"figures/scorecard.png", "figures/interpolation_paths.png", "figures/judged_samples.png",
                     "figures/perturbations.png", "figures/lipschitz.png"}


def download_json(stack, job, name):
    artifact = next(a for a in job["artifacts"] if a["name"] == name)
    return requests.get(stack.url + artifact["url"], timeout=30).json()


@pytest.fixture(scope="module")
def evaluated(stack, trained):
    skip_on_redis_pg(stack)
    job = stack.submit("evaluate", {"model_job": trained["id"], "limit": 1000, "seed": 1})
    assert job["parent"] == trained["id"] and job["kind"] == "evaluate"
    return stack.wait_job(job["id"], timeout=300)


def test_evaluate_writes_a_scorecard_of_eight_properties(stack, evaluated):
    job = evaluated
    assert job["state"] == "succeeded", job["error"]
    names = {a["name"] for a in job["artifacts"]}
    assert "scorecard.json" in names and SCORECARD_FIGURES <= names
    assert {n.replace(".thumb", "") for n in names if ".thumb." in n} == SCORECARD_FIGURES
    card = download_json(stack, job, "scorecard.json")
    assert card["model"] == "ae" and card["dataset"] == "mnist" and card["latent_dim"] == 2
    assert card["samples"] == {"measured": 1000, "reference": 1000}
    properties = card["properties"]
    assert set(properties) == {"compactness", "structure", "disentanglement", "continuity", "generative",
                               "separation", "invariance", "smoothness"}
    gone = properties["disentanglement"]
    assert gone["score"] is None and "no known generative factors" in gone["reason"]
    for name, entry in properties.items():
        if name == "disentanglement":
            continue
        assert 0.0 <= entry["score"] <= 1.0, (name, entry)
        assert entry["headline_value"] == entry["metrics"][entry["headline"]]
        assert entry["direction"] in ("higher", "lower") and entry["samples"]
    compact = properties["compactness"]["metrics"]
    assert 0.03 < compact["test_mse"] < 0.07 and compact["active_units"] == 2
    assert compact["pca_mse_ratio"] == pytest.approx(compact["test_mse"] / compact["pca_mse"], rel=1e-4)
    assert properties["compactness"]["reference"]["test_mse"] == [0.037, 0.040]  # 2-D MNIST
    assert 0.3 < properties["separation"]["metrics"]["knn_accuracy"] <= 1.0
    generative = properties["generative"]
    assert generative["metrics"]["judge_accuracy"] >= 0.98 and generative["notes"]["source"] == "gmm"
    assert "frechet_distance_normal" in generative["metrics"]  # the plain AE is also judged at N(0, I)
    assert generative["metrics"]["frechet_floor"] < generative["metrics"]["frechet_distance"]
    # The job's metrics are the scorecard's numbers, and so are its model's (beside its final losses).
    model = stack.job(job["parent"])
    assert job["metrics"] == flat_metrics(card) and len(job["metrics"]) >= 30
    assert {k: v for k, v in model["metrics"].items() if k in job["metrics"]} == job["metrics"]
    assert model["metrics"]["test_loss"] == pytest.approx(model["progress"]["test_loss"])


def test_evaluating_again_gives_the_same_numbers(stack, trained, evaluated):
    again = stack.wait_job(stack.submit("evaluate", {"model_job": trained["id"], "limit": 1000, "seed": 1})["id"],
                           timeout=300)
    assert again["state"] == "succeeded", again["error"]
    assert again["id"] != evaluated["id"] and again["metrics"] == evaluated["metrics"]


def test_evaluate_a_subset_of_properties_and_bad_specs(stack, trained, evaluated):
    bad = stack.post("/jobs", {"kind": "evaluate", "spec": {"model_job": trained["id"], "properties": ["beauty"]}})
    assert bad.status_code == 422 and "spec.properties.0" in bad.text
    twice = stack.post("/jobs", {"kind": "evaluate",
                                 "spec": {"model_job": trained["id"], "properties": ["separation", "separation"]}})
    assert twice.status_code == 422 and "more than once" in twice.text
    job = stack.wait_job(stack.submit("evaluate", {"model_job": trained["id"], "limit": 500,
                                                   "properties": ["separation"]})["id"])
    assert job["state"] == "succeeded", job["error"]
    card = download_json(stack, job, "scorecard.json")
    assert card["properties"]["separation"]["score"] is not None
    assert all(e["score"] is None and e["reason"] == "not requested"
               for name, e in card["properties"].items() if name != "separation")
    assert set(job["metrics"]) == {"separation_score", "knn_accuracy", "probe_accuracy", "silhouette"}
    # The model's scorecard is the newest measurement of each property: separation from this job, the rest kept.
    model = stack.job(trained["id"])["metrics"]
    assert model["knn_accuracy"] == job["metrics"]["knn_accuracy"] != evaluated["metrics"]["knn_accuracy"]
    assert model["trustworthiness"] == evaluated["metrics"]["trustworthiness"]


def test_runs_ranked_by_a_metric(stack, trained, evaluated):
    other = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu", "latent_dim": 3})["id"])
    stack.wait_job(stack.submit("evaluate", {"model_job": other["id"], "limit": 300,
                                             "properties": ["separation"]})["id"])
    ranked = stack.get("/jobs?kind=train&sort=-metrics.knn_accuracy&limit=200").json()["items"]
    values = [j["metrics"].get("knn_accuracy") for j in ranked]
    known = [v for v in values if v is not None]
    assert len(known) >= 2 and known == sorted(known, reverse=True)
    assert values[:len(known)] == known  # runs without the metric come last
    ascending = stack.get("/jobs?kind=train&sort=metrics.knn_accuracy&limit=200").json()["items"]
    assert [j["metrics"].get("knn_accuracy") for j in ascending][:len(known)] == known[::-1]
    # Paged: the same order, one run per page, nothing repeated or lost.
    seen, cursor = [], None
    while True:
        page = stack.get("/jobs?kind=train&sort=-metrics.knn_accuracy&limit=1"
                         + (f"&cursor={cursor}" if cursor else "")).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [j["id"] for j in ranked]
    for bad in ("-metrics.beauty", "metrics.", "name", "-metrics.knn_accuracy;drop"):
        response = stack.get(f"/jobs?sort={bad}")
        assert response.status_code == 400, bad
        assert response.json()["errors"][0]["field"] == "sort" and "unknown" in response.json()["errors"][0]["message"]
    replayed = stack.get(f"/jobs?sort=created&cursor={page_cursor(stack)}")
    assert replayed.status_code == 400 and "cursor" in replayed.text


def page_cursor(stack) -> str:
    return stack.get("/jobs?kind=train&sort=-metrics.knn_accuracy&limit=1").json()["next_cursor"]


def test_the_gallery_shows_ranks_and_compares_scorecards(stack, trained, evaluated):
    page = requests.get(stack.url + f"/runs/{trained['id']}", timeout=30).text
    assert 'id="scorecard"' in page and "5-NN accuracy" in page and "Evaluate</button>" in page
    assert f'/runs/{evaluated["id"]}' in page or "from <a" in page
    assert 'data-property="disentanglement"' in page and "no known generative factors" in page
    runs = requests.get(stack.url + "/?kind=train&sort=-metrics.knn_accuracy", timeout=30).text
    assert 'id="ranked-by"' in runs and 'data-role="ranked-value"' in runs
    bad = requests.get(stack.url + "/?sort=-metrics.beauty", timeout=30)
    assert bad.status_code == 400 and "sort" in bad.text
    others = stack.get("/jobs?kind=train&sort=-metrics.knn_accuracy&limit=2").json()["items"]
    compare = requests.get(stack.url + "/compare?ids=" + ",".join(j["id"] for j in others), timeout=30).text
    assert 'data-metric="knn_accuracy"' in compare and 'class="num best"' in compare


def test_cli_evaluate_waits_and_prints_the_scorecard(stack, trained):
    skip_on_redis_pg(stack)
    done = stack.cli("evaluate", trained["id"], "--wait", "--set", "limit=300", "--set", 'properties=["separation"]',
                     "--url", stack.url, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Class separation" in done.stdout and "knn_accuracy =" in done.stdout
    assert "scorecard.json" in done.stdout
