"""docker-compose.yml, unmodified, brought up with Podman: images built, services healthy, the end-to-end path
through the published API port, a worker killed mid-training, and ``down -v`` leaving nothing behind.

Run with ``make compose-test`` (LATENTFORGE_COMPOSE_TEST=1); skipped otherwise, and where Podman cannot run
(one line says why). tests/compose/podman.py explains the stand-in images and the staged bring-up.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import requests

from tests.compose.podman import ComposeProject, Unavailable, build_standins, ensure_podman, sh

pytestmark = [pytest.mark.compose, pytest.mark.skipif(os.environ.get("LATENTFORGE_COMPOSE_TEST") != "1",
                                                      reason="the Podman compose test runs with make compose-test")]

TOKEN = "compose-podman-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:16]
API = "http://127.0.0.1:8000/api/v1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def project(mnist_dir):
    try:
        ensure_podman()
    except Unavailable as exc:
        pytest.skip(str(exc))
    build_standins()
    project = ComposeProject({"LATENTFORGE_API_TOKEN": TOKEN})
    project.down()  # a run that was stopped half way
    timings = project.build()
    print(f"\nimage builds: {timings}")
    try:
        project.up_staged(workers=2)
        # The data volume starts empty (README: copy the dataset in); both workers mount it.
        sh("podman", "cp", f"{mnist_dir}/.", f"{project.container('worker')}:/data/")
        yield project
    finally:
        project.down()


def wait_job(job_id: str, timeout: float = 300, until=lambda job: job["state"] in ("succeeded", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{API}/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id}: {job}")


def submit(kind: str, spec: dict) -> dict:
    response = requests.post(f"{API}/jobs", json={"kind": kind, "spec": spec}, headers=AUTH, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def check_artifacts(job: dict) -> None:
    for artifact in job["artifacts"]:
        response = requests.get("http://127.0.0.1:8000" + artifact["url"], headers=AUTH, timeout=60)
        assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == artifact["sha256"]


def test_every_service_is_healthy_and_the_jobs_run_end_to_end(project):
    for worker in (1, 2):
        project.wait_healthy(project.container("worker", worker), 180)
    health = requests.get(f"{API}/health", timeout=30).json()
    assert health["status"] == "ok" and health["workers"]["count"] == 2, health
    trained = wait_job(submit("train", {"epochs": 2, "device": "cpu"})["id"])
    assert trained["state"] == "succeeded", trained["error"]
    children = [wait_job(submit(kind, spec)["id"]) for kind, spec in (
        ("embed", {"model_job": trained["id"], "limit": 500}),
        ("sample", {"model_job": trained["id"], "n": 4}),
        ("evaluate", {"model_job": trained["id"], "limit": 1000, "properties": ["compactness", "structure"]}),
    )]
    for job in (trained, *children):
        assert job["state"] == "succeeded", job["error"]
        check_artifacts(job)
    for page in ("/", f"/runs/{trained['id']}", f"/runs/{trained['id']}/explore"):
        response = requests.get("http://127.0.0.1:8000" + page, headers={**AUTH, "Accept": "text/html"}, timeout=30)
        assert response.status_code == 200, page


def test_a_worker_killed_mid_training_hands_the_job_to_the_other(project):
    job = submit("train", {"epochs": 30, "device": "cpu"})
    running = wait_job(job["id"], until=lambda j: j["state"] == "running" and j["progress"].get("epoch", 0) >= 2)
    victim = next(project.container("worker", i) for i in (1, 2)
                  if sh("podman", "inspect", "--format", "{{.Config.Hostname}}",
                        project.container("worker", i)).stdout.strip() in running["worker"])
    sh("podman", "kill", victim)
    done = wait_job(job["id"], timeout=600)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert done["worker"] != running["worker"]
    check_artifacts(done)


def test_down_leaves_no_container_network_or_volume(project):
    project.down()
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}
