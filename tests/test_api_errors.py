"""Bad input against a real API server with a token: the right 4xx, a problem+json body
naming the field or reason, never a 500 or a traceback, and nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import requests

from tests.stack import REPO, Stack, free_port

TOKEN = "test-token-7c1f"


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", token=TOKEN, workers=0)


@pytest.fixture(scope="module")
def jobs(stack):
    """A queued train job (no worker runs it) and a succeeded sample job, made in the store."""
    from shared.db import Job, make_engine, make_sessionmaker, utcnow

    queued = stack.submit("train", {"epochs": 1})
    sessions = make_sessionmaker(make_engine(f"sqlite:///{stack.home / 'latentforge.db'}"))
    with sessions.begin() as session:
        sample = Job(kind="sample", spec={"model_job": queued["id"]}, state="succeeded", finished_at=utcnow())
        session.add(sample)
        session.flush()
        sample_id = sample.id
    return {"queued": queued["id"], "sample": sample_id}


def count_jobs(stack) -> int:
    return len(stack.get("/jobs?limit=200").json()["items"])


def files_under(stack) -> set[str]:
    root = stack.home / "artifacts"
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def assert_problem(response: requests.Response, status: int, *needles: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text
    for needle in needles:
        assert needle in text, (needle, body)
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


BAD_BODIES = [
    ({"kind": "dance", "spec": {}}, "kind", "must be one of train, embed, sample"),
    ({"kind": "train", "spec": {"colour": "red"}}, "spec.colour", "not a field of model 'ae'"),
    ({"kind": "train", "spec": {}, "owner": "me"}, "owner", "Extra inputs are not permitted"),
    ({"kind": "train", "spec": {"epochs": "5"}}, "spec.epochs", "valid integer"),
    ({"kind": "train", "spec": {"epochs": 0}}, "spec.epochs", "greater than or equal to 1"),
    ({"kind": "train", "spec": {"epochs": 10**7}}, "spec.epochs", "less than or equal to 10000"),
    ({"kind": "train", "spec": {"latent_dim": 0}}, "spec.latent_dim", "greater than or equal to 1"),
    ({"kind": "train", "spec": {"batch_size": 0}}, "spec.batch_size", "greater than or equal to 1"),
    ({"kind": "train", "spec": {"lr": float("nan")}}, "spec.lr", "finite number"),
    ({"kind": "train", "spec": {"lr": -1}}, "spec.lr", "greater than 0"),
    ({"kind": "train", "spec": {"hidden": [128, "x"]}}, "spec.hidden.1", "valid integer"),
    ({"kind": "train", "spec": {"model": "gan"}}, "spec.model", "must be one of ae, vae, beta_vae, aae"),
    # The model kinds' own fields: each kind takes only its own, and checks them.
    ({"kind": "train", "spec": {"beta": 2.0}}, "spec.beta", "not a field of model 'ae'"),
    ({"kind": "train", "spec": {"model": "vae", "prior": "gaussian"}}, "spec.prior", "not a field of model 'vae'"),
    ({"kind": "train", "spec": {"model": "vae", "beta": -0.5}}, "spec.beta", "greater than or equal to 0"),
    ({"kind": "train", "spec": {"model": "beta_vae", "beta": float("nan")}}, "spec.beta", "finite number"),
    ({"kind": "train", "spec": {"model": "beta_vae", "capacity_max": 25}}, "spec.capacity_epochs", "required with capacity_max"),
    ({"kind": "train", "spec": {"model": "beta_vae", "gamma": 100}}, "spec.gamma", "only with a capacity schedule"),
    ({"kind": "train", "spec": {"model": "vae", "likelihood": "poisson"}}, "spec.likelihood", "'bernoulli' or 'gaussian'"),
    ({"kind": "train", "spec": {"model": "vae", "gaussian_std": 0.1}}, "spec.gaussian_std", "only with likelihood 'gaussian'"),
    ({"kind": "train", "spec": {"model": "aae", "prior": "uniform"}}, "spec.prior", "'gaussian' or 'mixture'"),
    ({"kind": "train", "spec": {"model": "aae", "disc_hidden": []}}, "spec.disc_hidden", "at least 1 item"),
    ({"kind": "train", "spec": {"model": "aae", "beta": 1}}, "spec.beta", "not a field of model 'aae'"),
    ({"kind": "embed", "spec": {"model_job": str(uuid.uuid4()), "color_by": ""}}, "spec.color_by", "at least 1 character"),
    ({"kind": "train", "spec": [1, 2]}, "spec", "valid dictionary"),
    ({"kind": "embed", "spec": {}}, "spec.model_job", "Field required"),
    ({"kind": "embed", "spec": {"model_job": "not-an-id"}}, "spec.model_job", "not a job id"),
    ({"kind": "sample", "spec": {"model_job": str(uuid.uuid4()), "n": 0}}, "spec.n", "greater than or equal to 1"),
    ({"kind": "train", "name": "x" * 201}, "name", "at most 200 characters"),
    ({"kind": "train", "tags": ["ok", 5]}, "tags.1", "valid string"),
    ({"kind": "train", "name": "a\u0000b"}, "name", "must not contain control characters (found U+0000 at position 1)"),
    ({"kind": "train", "name": "bell\u0007"}, "name", "U+0007"),
    ({"kind": "train", "tags": ["ok", "t\u001bab"]}, "tags.1", "control characters"),
    ({"kind": "embed", "spec": {"model_job": "0b7c9c6e-3f0e-4c1b-9d8e-2f4b1a3c5d7\u0000"}}, "spec.model_job", "not a job id"),
]


def test_every_bad_input_is_refused_cleanly_and_leaves_nothing(stack, jobs):
    before_jobs, before_files = count_jobs(stack), files_under(stack)
    for body, field, needle in BAD_BODIES:
        # json.dumps writes NaN as the bare token clients such as JavaScript's send.
        raw = requests.post(stack.url + "/api/v1/jobs", data=json.dumps(body), timeout=10,
                            headers={**stack.headers(), "Content-Type": "application/json"})
        assert_problem(raw, 422, needle, field=field)

    # Parent checks: missing, not a train job, not finished.
    missing = str(uuid.uuid4())
    assert_problem(stack.post("/jobs", {"kind": "embed", "spec": {"model_job": missing}}), 422,
                   f"no job with id {missing}", field="spec.model_job")
    assert_problem(stack.post("/jobs", {"kind": "sample", "spec": {"model_job": jobs["sample"]}}), 422,
                   "is a sample job, not a train job", field="spec.model_job")
    assert_problem(stack.post("/jobs", {"kind": "embed", "spec": {"model_job": jobs["queued"]}}), 409,
                   "is queued", "has succeeded")

    # Transport-level faults.
    big = {"kind": "train", "spec": {}, "name": "x", "tags": ["y" * 50] * 20, "pad": "z" * (1 << 20)}
    assert_problem(stack.post("/jobs", big), 413, "larger than 1,048,576 bytes")
    assert_problem(requests.post(stack.url + "/api/v1/jobs", data="kind=train", timeout=10,
                                 headers={**stack.headers(), "Content-Type": "application/x-www-form-urlencoded"}),
                   415, "must be JSON")
    assert_problem(requests.post(stack.url + "/api/v1/jobs", data="{not json", timeout=10,
                                 headers={**stack.headers(), "Content-Type": "application/json"}),
                   400, "not valid JSON")
    assert_problem(stack.post("/jobs", ["train"]), 422, "must be a JSON object", field="(body)")

    # Auth: none, wrong scheme, wrong token.
    no_token = stack.post("/jobs", {"kind": "train"}, headers={})
    assert_problem(no_token, 401, "requires a token")
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(stack.post("/jobs", {"kind": "train"}, headers={"Authorization": f"Basic {TOKEN}"}), 401, "not valid")
    assert_problem(stack.post("/jobs", {"kind": "train"}, headers={"Authorization": "Bearer nope"}), 401, "not valid")
    assert_problem(stack.post(f"/jobs/{jobs['queued']}/cancel", headers={}), 401)

    # Ids that are not ids, and ids of nothing.
    assert_problem(stack.get("/jobs/abc"), 404, "'abc' is not a job id")
    assert_problem(stack.post("/jobs/abc/cancel"), 404, "'abc' is not a job id")
    assert_problem(stack.get(f"/jobs/{missing}"), 404, f"no job with id {missing}")
    assert_problem(stack.get("/artifacts/../../etc/passwd"), 404)
    assert_problem(stack.get("/artifacts/xyz"), 404, "not a artifact id")
    assert_problem(stack.get(f"/artifacts/{missing}"), 404, "no artifact")
    assert_problem(stack.get("/jobs/abc/events"), 404, "'abc' is not a job id")

    # Query parameters.
    assert_problem(stack.get("/jobs?limit=0"), 400, "whole number from 1 to 200", field="limit")
    assert_problem(stack.get("/jobs?limit=abc"), 400, field="limit")
    assert_problem(stack.get("/jobs?state=done"), 400, field="state")
    assert_problem(stack.get("/jobs?kind=eval"), 400, field="kind")
    assert_problem(stack.get("/jobs?parent=x"), 400, field="parent")
    assert_problem(stack.get("/jobs?cursor=%%%"), 400, field="cursor")
    assert_problem(stack.get("/jobs?limit=%C2%B2"), 400, field="limit")  # '²'.isdigit() is true; int() refuses it
    assert_problem(stack.get("/jobs?limit=%D9%A1"), 400, field="limit")  # an Arabic-Indic one, which int() takes
    assert_problem(stack.get("/jobs?limit=+5"), 400, field="limit")
    assert_problem(stack.get("/jobs?state=%00"), 400, field="state")
    assert_problem(stack.get("/jobs?parent=%00"), 400, field="parent")
    assert_problem(stack.get("/jobs/%00"), 404)
    assert_problem(stack.get("/events?jobs=x"), 400, field="jobs")
    assert_problem(stack.get("/events"), 400, field="jobs")
    assert_problem(stack.get(f"/events?jobs={missing}&history=2"), 400, field="history")
    for key in ("", "caf\u00e9", "a\tb"):
        assert_problem(stack.post("/jobs", {"kind": "train"}, headers={**stack.headers(), "Idempotency-Key": key.encode("utf-8").decode("latin-1")}),
                       400, "printable ASCII", field="Idempotency-Key")
    assert_problem(stack.get("/nowhere"), 404)
    assert_problem(requests.delete(stack.url + "/api/v1/jobs", headers=stack.headers(), timeout=10), 405)

    assert count_jobs(stack) == before_jobs
    assert files_under(stack) == before_files


def test_writes_with_the_token_work(stack):
    response = stack.post("/jobs", {"kind": "train", "spec": {"epochs": 1}})
    assert response.status_code == 201
    cancel = stack.post(f"/jobs/{response.json()['id']}/cancel")
    assert cancel.status_code == 202 and cancel.json()["state"] == "cancelled"
    # Reads need the token too; the scheme word is case-insensitive, the token exact.
    url = stack.url + f"/api/v1/jobs/{response.json()['id']}"
    assert_problem(requests.get(url, timeout=10), 401, "requires a token")
    assert requests.get(url, headers={"Authorization": f"bEaReR {TOKEN}"}, timeout=10).status_code == 200
    assert_problem(requests.get(url, headers={"Authorization": f"Bearer {TOKEN.upper()}"}, timeout=10), 401, "not valid")
    assert_problem(requests.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=10), 401, "not valid")
    assert requests.get(stack.url + "/api/v1/health", timeout=10).status_code in (200, 503)  # health stays open


def test_openapi_document_describes_the_api(stack):
    doc = stack.get("/openapi.json").json()
    # Every status the server sends is stated: the database outage and the HTTP server's 414 on every route.
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert {"414", "503"} <= set(operation["responses"]), (path, method)
            if path != "/health":
                assert "401" in operation["responses"], (path, method)
    key = doc["paths"]["/jobs"]["post"]["parameters"][0]
    assert key["name"] == "Idempotency-Key" and key["schema"]["minLength"] == 1 and "400" in doc["paths"]["/jobs"]["post"]["responses"]
    kinds = next(p for p in doc["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "kind")
    assert kinds["allowEmptyValue"] and "" in kinds["schema"]["enum"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["openapi"].startswith("3.1")
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/events", "/artifacts/{artifact_id}",
            "/health"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    # A train spec is one of the model kinds' specs, chosen by "model"; each has only its own fields.
    union = schemas["TrainSpec"]
    assert union["discriminator"]["propertyName"] == "model"
    assert set(union["discriminator"]["mapping"]) == {"ae", "vae", "beta_vae", "aae"}
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in union["oneOf"]} == {"AETrainSpec", "VAETrainSpec", "BetaVAETrainSpec", "AAETrainSpec"}
    train = schemas["AETrainSpec"]["properties"]
    assert train["epochs"]["minimum"] == 1 and train["epochs"]["maximum"] == 10000 and train["epochs"]["default"] == 50
    assert "beta" not in train and schemas["AETrainSpec"]["additionalProperties"] is False
    assert schemas["VAETrainSpec"]["properties"]["beta"]["default"] == 1.0 and "prior" not in schemas["VAETrainSpec"]["properties"]
    assert schemas["BetaVAETrainSpec"]["properties"]["beta"]["default"] == 4.0
    assert schemas["AAETrainSpec"]["properties"]["prior"]["enum"] == ["gaussian", "mixture"]
    assert doc["paths"]["/jobs"]["post"]["security"] == [{"bearer": []}]


def test_api_refuses_an_open_address_without_token_and_a_stale_schema(tmp_path, mnist_dir):
    bare = Stack(tmp_path / "bare", mnist_dir)
    open_bind = bare.cli("api", "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
    assert open_bind.returncode == 2 and "refusing to listen on 0.0.0.0 without LATENTFORGE_API_TOKEN" in open_bind.stderr
    for role in (["api", "--port", str(free_port())], ["worker"]):
        result = bare.cli(*role, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "has no LatentForge tables" in result.stderr and "run `latentforge db upgrade`" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_cli_submit_reports_api_errors_in_one_line(stack):
    env = {**stack.env, "LATENTFORGE_API_URL": stack.url}
    result = subprocess.run([sys.executable, "-m", "latentforge.cli", "submit", "train", "--set", "epochs=0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "latentforge submit: error: spec.epochs: Input should be greater than or equal to 1"
    env.pop("LATENTFORGE_API_TOKEN")
    result = subprocess.run([sys.executable, "-m", "latentforge.cli", "submit", "train"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "requires a token" in result.stderr


def test_public_read_opens_reads_on_purpose_and_only_reads(stack_factory):
    public = stack_factory("embedded", token=TOKEN, workers=0, env={"LATENTFORGE_PUBLIC_READ": "1"})
    job = public.submit("train", {"epochs": 1})
    assert requests.get(public.url + f"/api/v1/jobs/{job['id']}", timeout=10).status_code == 200
    page = requests.get(public.url + f"/runs/{job['id']}", timeout=10)
    assert page.status_code == 200 and "Sign in</a> to submit" in page.text
    assert_problem(requests.post(public.url + "/api/v1/jobs", json={"kind": "train"}, timeout=10), 401, "requires a token")
    assert_problem(requests.post(public.url + f"/api/v1/jobs/{job['id']}/cancel", timeout=10), 401)


def test_under_gthread_streams_take_at_most_half_the_threads(stack_factory):
    threaded = stack_factory("embedded", workers=0, api=False)
    port = free_port()
    threaded.spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                           "--worker-class", "gthread", "--threads", "4"])
    threaded.url = f"http://127.0.0.1:{port}"
    threaded.wait_until(threaded._answers, 60, "the gthread API to answer")
    job = threaded.submit("train", {"epochs": 1})  # no worker: it stays queued, its stream stays open
    streams = [requests.get(threaded.url + f"/api/v1/jobs/{job['id']}/events", stream=True, timeout=10) for _ in range(2)]
    try:
        assert [s.status_code for s in streams] == [200, 200]
        assert_problem(threaded.get(f"/jobs/{job['id']}/events"), 503, "2 open progress streams")
        assert threaded.get("/jobs").status_code == 200  # the other two threads still answer
    finally:
        for s in streams:
            s.close()
