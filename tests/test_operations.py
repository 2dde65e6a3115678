"""Operations on a real stack: GET /metrics scraped and parsed by prometheus_client, JSON log lines, and each
job's log.txt, on its run page too.

One embedded stack with a token and ``LATENTFORGE_LOG_FORMAT=json`` for every role; its worker is started here
with stdout and stderr apart, so that every line of its stderr can be read as JSON. Two jobs: a tiny train job
that succeeds and one that fails at once (its dataset is missing).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import REPO, free_port

pytestmark = pytest.mark.usefixtures("services_up")

TOKEN = "ops-token-8c1f"
TINY = {"epochs": 2, "hidden": [16], "batch_size": 1024, "device": "cpu"}
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CHROMIUM = "/usr/bin/chromium"


def start_worker(stack, name: str = "worker1") -> subprocess.Popen:
    """A ``latentforge worker`` whose stdout (Celery's banner) and stderr (the log lines) go to files of their own."""
    out, err = (open(stack.logs / f"{name}.{stream}", "ab") for stream in ("out", "err"))
    proc = subprocess.Popen([sys.executable, "-m", "latentforge.cli", "worker", "--queues", "gpu,cpu"], cwd=REPO,
                            env=stack.env, stdout=out, stderr=err, start_new_session=True)
    stack.procs[name] = proc
    stack.wait_until(lambda: "ready (queues" in (stack.logs / f"{name}.err").read_text(errors="replace")
                     or proc.poll() is not None, 90, f"{name} to start")
    assert proc.poll() is None, (stack.logs / f"{name}.err").read_text()
    return proc


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory("embedded", token=TOKEN, workers=0,
                          env={"LATENTFORGE_LOG_FORMAT": "json", "LATENTFORGE_TORCH_THREADS": "1"})
    start_worker(stack)
    return stack


@pytest.fixture(scope="module")
def jobs(stack):
    trained = stack.submit("train", TINY, name="ops tiny")
    failed = stack.submit("train", {**TINY, "dataset": "fashion_mnist"})  # not in the data folder: fails at once
    return {"trained": stack.wait_job(trained["id"], timeout=180), "failed": stack.wait_job(failed["id"], timeout=60)}


def scrape(url: str, **headers: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a /metrics answer, read by prometheus_client's own parser."""
    response = requests.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict[tuple, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def artifact(job: dict, name: str) -> dict:
    return next(a for a in job["artifacts"] if a["name"] == name)


# -- /metrics --------------------------------------------------------------------------------------------------


def test_metrics_need_the_token(stack):
    missing = requests.get(stack.url + "/metrics", timeout=30)
    assert missing.status_code == 401 and missing.headers["Content-Type"] == "application/problem+json"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")  # a 401, not the gallery's sign-in page
    wrong = requests.get(stack.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert value(scrape(stack.url, **auth()), "latentforge_database_up") == 1


def test_metrics_count_jobs_durations_workers_queues_and_requests(stack, jobs):
    trained, failed = jobs["trained"], jobs["failed"]
    assert trained["state"] == "succeeded" and failed["state"] == "failed", (trained["error"], failed["error"])
    before = scrape(stack.url, **auth())
    for _ in range(3):
        assert stack.get(f"/jobs/{trained['id']}").status_code == 200
    assert requests.get(stack.url + "/metrics", timeout=30).status_code == 401
    samples = scrape(stack.url, **auth())

    assert value(samples, "latentforge_jobs", kind="train", state="succeeded") == 1
    assert value(samples, "latentforge_jobs", kind="train", state="failed") == 1
    assert value(samples, "latentforge_jobs", kind="embed", state="queued") == 0  # every kind and state, zeros too

    ran = (datetime.fromisoformat(trained["finished_at"]) - datetime.fromisoformat(trained["started_at"])).total_seconds()
    labels = {"kind": "train", "state": "succeeded"}
    assert value(samples, "latentforge_job_duration_seconds_count", **labels) == 1
    assert value(samples, "latentforge_job_duration_seconds_sum", **labels) == pytest.approx(ran, abs=0.01)
    assert value(samples, "latentforge_job_duration_seconds_bucket", le="1.0", **labels) == 0  # it ran for seconds
    assert value(samples, "latentforge_job_duration_seconds_bucket", le="+Inf", **labels) == 1
    assert value(samples, "latentforge_job_duration_seconds_count", kind="train", state="failed") == 1
    assert value(samples, "latentforge_job_queue_wait_seconds_count", kind="train") == 2
    assert value(samples, "latentforge_job_queue_wait_seconds_sum", kind="train") >= 0

    assert value(samples, "latentforge_workers_alive") == 1
    assert value(samples, "latentforge_queue_workers", queue="gpu") == value(samples, "latentforge_queue_workers",
                                                                             queue="cpu") == 1
    assert value(samples, "latentforge_broker_up") == 1 and value(samples, "latentforge_database_up") == 1
    assert value(samples, "latentforge_queue_messages", queue="cpu") == 0
    assert value(samples, "latentforge_queue_messages", queue="gpu") == 0

    latency = "latentforge_http_request_duration_seconds_count"
    route = {"route": "/api/v1/jobs/<job_id>", "method": "GET", "status": "2xx"}
    assert value(samples, latency, **route) - (value(before, latency, **route) or 0) == 3
    refused = {"route": "/metrics", "method": "GET", "status": "4xx"}
    assert value(samples, latency, **refused) - value(before, latency, **refused) == 1
    assert value(samples, "latentforge_http_request_duration_seconds_bucket", le="+Inf", **route) == value(
        samples, latency, **route)


def test_queue_depth_counts_waiting_messages(stack, jobs):
    """With the worker stopped (the tests after this one need none), queued jobs wait in the broker."""
    stack.kill("worker1")
    queued = [stack.submit("train", TINY)["id"] for _ in range(2)]
    samples = scrape(stack.url, **auth())
    assert value(samples, "latentforge_queue_messages", queue="cpu") == 2
    assert value(samples, "latentforge_queue_messages", queue="gpu") == 0
    assert value(samples, "latentforge_jobs", kind="train", state="queued") == 2
    for job_id in queued:
        assert stack.post(f"/jobs/{job_id}/cancel").status_code == 202


def test_metrics_add_up_the_requests_of_every_gunicorn_process(stack):
    """Two gunicorn workers share their counts (multiprocess files under the scratch folder): every scrape, whichever
    process answers it, shows the same total; and LATENTFORGE_PUBLIC_METRICS=1 opens /metrics alone."""
    port = free_port()
    stack.spawn("api2", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                env={"LATENTFORGE_PUBLIC_METRICS": "1"})
    url = f"http://127.0.0.1:{port}"
    stack.wait_until(lambda: _answers(url), 60, "the second API to answer")
    assert requests.get(url + "/api/v1/jobs", timeout=30).status_code == 401  # the rest still needs the token
    for _ in range(12):
        assert requests.get(url + "/api/v1/jobs?limit=1", headers=auth(), timeout=30).status_code == 200
    route = {"route": "/api/v1/jobs", "method": "GET", "status": "2xx"}
    counts = {value(scrape(url), "latentforge_http_request_duration_seconds_count", **route) for _ in range(8)}
    assert counts == {12}
    folders = list((stack.home / "scratch" / "prometheus").glob("api-*"))
    master = stack.procs["api2"].pid
    assert stack.home / "scratch" / "prometheus" / f"api-{master}" in folders
    assert list(folders[0].glob("histogram_*.db"))  # the counts are in the shared files, not in one process
    stack.kill("api2", 15)
    assert not (stack.home / "scratch" / "prometheus" / f"api-{master}").exists()  # the master removed it


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/metrics", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_a_broker_or_database_that_is_away_does_not_break_the_scrape(stack, jobs):
    from api import create_app
    from shared.settings import load_settings

    closed = free_port()
    base = {"LATENTFORGE_HOME": str(stack.home), "LATENTFORGE_DATABASE_URL": stack.database_url,
            "LATENTFORGE_API_TOKEN": TOKEN}
    no_broker = create_app(load_settings({**base, "LATENTFORGE_BROKER_URL": f"redis://127.0.0.1:{closed}/0"}))
    answer = no_broker.test_client().get("/metrics", headers=auth())
    assert answer.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(answer.get_data(as_text=True)) for s in family.samples}
    assert value(samples, "latentforge_broker_up") == 0 and value(samples, "latentforge_queue_messages", queue="cpu") is None
    assert value(samples, "latentforge_database_up") == 1
    assert value(samples, "latentforge_jobs", kind="train", state="succeeded") == 1

    no_database = create_app(load_settings({**base, "LATENTFORGE_DATABASE_URL":
                                            f"postgresql+psycopg://postgres@127.0.0.1:{closed}/nowhere"}),
                             check_database=False)
    answer = no_database.test_client().get("/metrics", headers=auth())
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    assert "latentforge_database_up 0.0" in text and "latentforge_broker_up 1.0" in text
    assert "latentforge_jobs{" not in text


# -- JSON log lines and log.txt ----------------------------------------------------------------------------


def test_json_logs_carry_the_job_on_every_line(stack, jobs):
    trained = jobs["trained"]
    lines = (stack.logs / "worker1.err").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line of stderr is one JSON object
    assert len(entries) > 10
    for entry in entries:
        assert {"time", "level", "logger", "message", "pid", "worker"} <= entry.keys(), entry
        assert ISO_TIME.fullmatch(entry["time"]), entry
    mine = [e for e in entries if e.get("job_id") == trained["id"]]
    assert all(e["attempt"] == 1 and e["lease"] == 1 and e["worker"] == trained["worker"] for e in mine)
    messages = [e["message"] for e in mine]
    assert any("epoch 1/2" in m for m in messages) and any("epoch 2/2" in m for m in messages)
    assert messages[-1] == f"job {trained['id']}: succeeded"
    # Every line of the worker's own that names the job was logged in its context: it carries the job's fields.
    named = [e for e in entries if trained["id"] in e["message"] and e["logger"].startswith("latentforge")]
    assert len(named) >= 5 and all(e.get("job_id") == trained["id"] for e in named)
    assert '"level"' not in (stack.logs / "worker1.out").read_text()  # stdout holds Celery's banner only

    api_lines = [json.loads(line) for line in stack.log("api").splitlines() if line.strip()]  # API: JSON as well
    access = [e for e in api_lines if e["logger"] == "gunicorn.access" and e.get("path") == "/metrics"]
    assert {401, 200} <= {e["status"] for e in access} and all(e["duration_ms"] >= 0 for e in access)


SUPERVISE_A_FAILING_CHILD = """
import logging, sys
from latentforge.supervisor import supervise
from shared.settings import load_settings
logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s")  # as the CLI
sys.exit(supervise([sys.executable, "-c", "import sys; sys.exit(3)"], load_settings()))
"""


def test_the_supervisor_logs_json_too(stack):
    """A child that exits at once: the supervisor's line about it is JSON (then SIGTERM stops it during its wait)."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE_A_FAILING_CHILD], cwd=REPO, env=stack.env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = json.loads(proc.stderr.readline())
    proc.terminate()
    rest = proc.communicate(timeout=30)[1]
    assert first["logger"] == "latentforge.supervisor" and first["level"] == "ERROR", first
    assert re.fullmatch(r"its worker process \d+ exited with status 3", first["message"])
    assert all(json.loads(line)["logger"] == "latentforge.supervisor" for line in rest.splitlines() if line.strip())


def test_each_job_keeps_its_log_lines_as_log_txt(stack, jobs):
    trained, failed = jobs["trained"], jobs["failed"]
    log_file = artifact(trained, "log.txt")
    assert log_file["kind"] == "log" and log_file["content_type"] == "text/plain"
    response = requests.get(stack.url + log_file["url"], headers=auth(), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert hashlib.sha256(response.content).hexdigest() == log_file["sha256"] and len(response.content) == log_file["size"]
    lines = response.text.splitlines()
    assert all(ISO_TIME.match(line) for line in lines), lines
    assert any(re.search(r" INFO epoch 1/2 +train \d", line) for line in lines), lines
    assert any(re.search(r" INFO epoch 2/2 +train \d", line) for line in lines), lines
    assert lines[0].endswith(" INFO train, attempt 1, lease 1")  # the file is the job's: lines do not name it
    assert str(stack.home) not in response.text and str(REPO) not in response.text  # no server paths, as in errors

    # A failed job publishes its log alone: the line that says why, without the traceback.
    assert [a["name"] for a in failed["artifacts"]] == ["log.txt"]
    text = requests.get(stack.url + artifact(failed, "log.txt")["url"], headers=auth(), timeout=30).text
    assert re.search(r" ERROR failed: .*not found in <data dir>/fashion_mnist", text), text
    assert "Traceback" not in text and str(stack.home) not in text


def test_the_run_page_shows_the_log(stack, jobs):
    from playwright.sync_api import sync_playwright

    trained = jobs["trained"]
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian chromium not found at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(extra_http_headers=auth()).new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(f"{stack.url}/runs/{trained['id']}")
            log_text = page.locator("#job-log [data-role=log-text]")
            assert not log_text.is_visible()  # folded until asked for
            page.click("#job-log summary")
            page.wait_for_selector("#job-log[data-loaded=true]")
            shown = log_text.inner_text()
            assert "epoch 1/2" in shown and "epoch 2/2" in shown
            assert page.locator("#job-log summary a").get_attribute("href") == artifact(trained, "log.txt")["url"]
            assert problems == []
        finally:
            browser.close()
