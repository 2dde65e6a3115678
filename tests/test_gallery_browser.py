"""The gallery in real headless Chromium (Playwright driving Debian's chromium) against a real server and worker.

Screenshots of every page land in test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.stack import REPO

TOKEN = "gallery-token-5d2e"
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module", autouse=True)
def chromium_present():
    if not Path(CHROMIUM).exists():  # fail loudly: .ci/run installs it
        pytest.fail(f"Debian chromium not found at {CHROMIUM}: apt-get install -y chromium")


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", token=TOKEN)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Console:
    """Every console error and uncaught exception of a page, with the URL it happened on."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"{page.url}: uncaught {e}"))
        page.on("dialog", lambda d: (self.problems.append(f"{page.url}: dialog {d.message}"), d.dismiss()))


def sign_in(page, stack, token: str = TOKEN, *, go: bool = True) -> None:
    if go:
        page.goto(stack.url + "/signin")
    page.locator("#signin-form [name=token]").fill(token)
    with page.expect_navigation():
        page.locator("#signin-form button[type=submit]").click()


def signed_in_page(browser, stack, token: str, width: int = 1300, height: int = 900):
    """A new context's page, its console watched, signed in with ``token``: (context, page)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.console = Console(page)
    sign_in(page, stack, token)
    return context, page


@pytest.fixture()
def anonymous_page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.console = Console(page)
    yield page
    assert page.console.problems == [], page.console.problems
    context.close()


@pytest.fixture()
def page(anonymous_page, stack):
    sign_in(anonymous_page, stack)
    return anonymous_page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def load_all_images(page, selector: str) -> list[int]:
    """Scroll each lazy image into view and return the natural widths."""
    widths = []
    for img in page.locator(selector).all():
        img.scroll_into_view_if_needed()
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=20_000)
        widths.append(img.evaluate("el => el.naturalWidth"))
    return widths


def submit_train_form(page, stack, selects: dict[str, str] | None = None, go: bool = True, **fields) -> str:
    if go:
        page.goto(stack.url + "/")
    form = page.locator("#train-form")
    for name, value in (selects or {}).items():
        form.locator(f"[name={name}]").select_option(value)
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(str(value))
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    match = re.search(r"/runs/([0-9a-f-]{36})$", page.url)
    assert match, page.url
    return match.group(1)


def explore_then_decode_on_server(stack, page, job_id: str, shoot: bool = False) -> str:
    """Two pointer positions decode to two different images in the browser, equal within 1/255 per pixel
    to the server's decode of the same points (a sample job the page submits); returns that job's id."""
    page.goto(stack.url + f"/runs/{job_id}/explore")
    page.wait_for_function("() => document.getElementById('explorer-status').dataset.ready === 'true'", timeout=30_000)
    box = page.locator("#plane").bounding_box()
    points = [(box["x"] + 0.3 * box["width"], box["y"] + 0.35 * box["height"]),
              (box["x"] + 0.75 * box["width"], box["y"] + 0.7 * box["height"])]
    browser_decodes = []
    for x, y in points:
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        browser_decodes.append(page.evaluate("() => window.latentExplorer.last"))
    first, second = (np.array(d["pixels"]) for d in browser_decodes)
    assert first.shape == (784,) and np.abs(first - second).max() > 50
    assert json.loads(page.locator("#pinned-coords").input_value()) == [d["z"] for d in browser_decodes]
    if shoot:
        shot(page, "explorer")
    with page.expect_navigation():
        page.locator("#decode-on-server").click()
    sample_id = re.search(r"/runs/([0-9a-f-]{36})$", page.url).group(1)
    sample = stack.wait_job(sample_id)
    assert sample["state"] == "succeeded" and sample["spec"]["latent_coords"] == [d["z"] for d in browser_decodes]
    images_url = next(a["url"] for a in sample["artifacts"] if a["name"] == "images.npy")
    server = np.load(io.BytesIO(requests.get(stack.url + images_url, headers=stack.headers(), timeout=30).content))
    for decoded, image in zip(browser_decodes, server):
        server_pixels = np.round(np.clip(image.reshape(-1), 0, 1) * 255)
        assert np.abs(server_pixels - np.array(decoded["pixels"])).max() <= 1
    return sample_id


def test_seed_run_from_the_form_then_compare_and_explore(stack, page):
    # 1. Submit the seed preset (2 epochs) from the form: the form is prefilled with it.
    page.goto(stack.url + "/")
    assert page.locator("#train-form [name=preset]").input_value() == "seed"
    assert page.locator("#train-form [name=lr]").input_value() == "0.001"
    # Keep the only worker busy for a moment, so the page opens while the new run is still queued.
    busy = stack.submit("train", {"epochs": 8, "device": "cpu"}, name="warm-up")
    stack.wait_job(busy["id"], ("running",))
    job_id = submit_train_form(page, stack, epochs=2, name="seed from the form")
    assert page.locator("#run [data-role=state]").inner_text() == "queued"

    # 2. The progress bar advances without a reload.
    page.evaluate("window.__sameDocument = true")
    start = page.locator("#run progress").evaluate("el => el.value")
    page.wait_for_function("() => window.__sameDocument && document.querySelector('#run progress').value > %f" % start,
                           timeout=60_000)
    shot(page, "run-training")
    # ...and when it ends the page shows its figures, every one loaded.
    page.wait_for_function("() => !window.__sameDocument && document.querySelectorAll('.figure img').length === 7",
                           timeout=120_000)
    assert page.locator("#run [data-role=state]").inner_text() == "succeeded"
    widths = load_all_images(page, ".figure img")
    assert len(widths) == 7 and min(widths) > 0
    assert page.locator("#loss-chart svg path").count() == 2
    assert page.locator("a[download]").count() >= 7 + 5  # each figure and the checkpoint files
    shot(page, "run")

    # 3. A second run, then compare the two from the runs page.
    other = stack.submit("train", {"epochs": 1, "lr": 0.003, "device": "cpu"}, name="lr 0.003")
    stack.wait_job(other["id"])
    page.goto(stack.url + "/")
    page.locator(f"tr[data-job-id='{job_id}'] input.pick").check()
    page.locator(f"tr[data-job-id='{other['id']}'] input.pick").check()
    load_all_images(page, "td.thumb img")
    shot(page, "runs")
    with page.expect_navigation():
        page.locator("#compare-selected").click()
    assert "/compare?ids=" in page.url
    headers = page.locator("#compare-table thead th").all_inner_texts()
    assert len(headers) == 3 and "seed from the form" in headers[1] + headers[2]
    differing = page.locator("#compare-table tr.differs th").all_inner_texts()
    assert {"epochs", "lr"} <= set(differing) and "batch_size" not in differing
    rows = page.locator("#compare-table tr.figure-row")
    assert rows.count() == 7
    for i in range(rows.count()):
        assert rows.nth(i).locator("img").count() == 2  # the same figure of both runs side by side
    assert min(load_all_images(page, "#compare-table img")) > 0
    assert page.locator("#compare-chart svg path").count() == 4
    shot(page, "compare")

    # 4. The latent explorer decodes in the browser what the server decodes.
    sample_id = explore_then_decode_on_server(stack, page, job_id, shoot=True)
    page.wait_for_function("() => document.querySelectorAll('.figure img').length === 1", timeout=30_000)
    assert min(load_all_images(page, ".figure img")) > 0
    shot(page, "sample")

    # 5. The runs page links the model to its child, and lists only children when asked.
    page.goto(stack.url + "/")
    link = page.locator(f"tr[data-job-id='{job_id}'] a.children")
    assert link.inner_text() == "1 child"
    with page.expect_navigation():
        link.click()
    assert page.locator("#runs tbody tr[data-job-id]").evaluate_all("rows => rows.map(r => r.dataset.jobId)") == [sample_id]


def test_a_vae_from_the_form_shows_its_own_metrics_and_explores_like_the_server(stack, page):
    # The form sends the chosen model's own fields only: the AAE's stay disabled for a VAE.
    page.goto(stack.url + "/")
    form = page.locator("#train-form")
    form.locator("[name=model]").select_option("vae")
    assert form.locator("[name=prior]").is_disabled() and not form.locator("[name=beta]").is_disabled()
    job_id = submit_train_form(page, stack, go=False, epochs=3, beta=0.5, name="vae from the form")
    job = stack.wait_job(job_id)
    assert job["state"] == "succeeded", job.get("error")
    assert job["spec"]["model"] == "vae" and job["spec"]["beta"] == 0.5 and "prior" not in job["spec"]
    assert "figures/prior_samples.png" in {a["name"] for a in job["artifacts"]}
    page.goto(stack.url + f"/runs/{job_id}")
    legend = page.locator("#loss-chart [data-role=metric-legend]")
    metrics = legend.locator("button[data-metric]").evaluate_all(
        "bs => Object.fromEntries(bs.map(b => [b.dataset.metric, b.getAttribute('aria-pressed')]))")
    assert {"train_loss", "test_loss", "train_kl", "test_kl", "test_elbo", "test_mse"} <= set(metrics)
    assert metrics["train_loss"] == metrics["test_loss"] == "true" and metrics["train_kl"] == "false"
    legend.locator("[data-metric=train_kl]").click()
    assert page.locator("#loss-chart svg path[data-metric=train_kl]").count() == 1
    log = page.locator("#loss-chart [data-role=log-scale]")
    legend.locator("[data-metric=test_elbo]").click()  # a negative quantity: no log scale
    assert log.is_disabled() and "test elbo" in log.get_attribute("title")
    shot(page, "run-vae")
    # The explorer applies the Bernoulli mean (the sigmoid) as the server does.
    explore_then_decode_on_server(stack, page, job_id)


def test_the_explorer_matches_the_server_for_an_adversarial_autoencoder(stack, page):
    job = stack.wait_job(stack.submit("train", {"model": "aae", "prior": "mixture", "epochs": 2, "device": "cpu"},
                                      name="aae")["id"])
    assert job["state"] == "succeeded", job.get("error")
    explore_then_decode_on_server(stack, page, job["id"])


def test_evaluate_from_the_run_page_then_rank_runs_by_a_scorecard_metric(stack, page):
    model = stack.wait_job(stack.submit("train", {"epochs": 1, "device": "cpu"}, name="to evaluate")["id"])
    page.goto(stack.url + f"/runs/{model['id']}")
    assert page.locator("#scorecard").count() == 0
    with page.expect_navigation():
        page.locator("#evaluate-button").click()
    assert re.search(r"/runs/[0-9a-f-]{36}$", page.url) and "evaluate" in page.locator("p.ids").inner_text()
    evaluation = page.url.rsplit("/", 1)[1]
    # The evaluation's page counts its properties as they are measured, without a reload.
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function("() => window.__sameDocument && /[1-7]\\/8 /.test("
                           "document.querySelector('#run [data-role=progress-label]').textContent)", timeout=300_000)
    page.wait_for_function("() => document.querySelector('#run [data-role=state]').textContent === 'succeeded'",
                           timeout=300_000)
    page.goto(stack.url + f"/runs/{model['id']}")
    rows = page.locator("#scorecard tr[data-property]")
    assert rows.count() == 8
    assert rows.locator("meter").count() == 7  # MNIST has no factors: disentanglement is n/a, with the reason
    assert "no known generative factors" in page.locator("#scorecard tr[data-property=disentanglement]").inner_text()
    knn = page.locator("#scorecard [data-metric=knn_accuracy]")
    assert "5-NN accuracy" in knn.inner_text() and "ref 0.75" in knn.inner_text()
    assert "higher is better" in knn.get_attribute("title")
    assert min(load_all_images(page, "#scorecard img.radar")) > 0
    shot(page, "scorecard")
    # Rank the runs by that metric from the runs page's sort menu.
    page.goto(stack.url + "/")
    page.locator("select#sort").select_option("-metrics.knn_accuracy")
    with page.expect_navigation():
        page.locator("#filter-form button[type=submit]").click()
    assert "sort=-metrics.knn_accuracy" in page.url
    # The only runs with the number: the evaluation and its model (which carries its scorecard), tied, newest first.
    top = page.locator("#runs tbody tr[data-job-id]")
    assert [top.nth(i).get_attribute("data-job-id") for i in range(2)] == [evaluation, model["id"]]
    assert float(top.nth(1).locator("[data-role=ranked-value]").inner_text()) == pytest.approx(
        stack.job(model["id"])["metrics"]["knn_accuracy"], abs=1e-3)
    assert top.nth(2).locator("[data-role=ranked-value]").inner_text() == "—"


def test_a_sweep_page_charts_a_metric_against_what_it_varies(stack, page):
    sweep = stack.submit("sweep", {"base": {"epochs": 1, "device": "cpu"}, "grid": {"lr": [0.001, 0.004]},
                                   "seeds": 2, "evaluate": False}, name="lr sweep")
    done = stack.wait_job(sweep["id"], timeout=240)
    assert done["state"] == "succeeded" and done["progress"]["step"] == 4
    page.goto(stack.url + f"/runs/{sweep['id']}?sort=metrics.test_loss")
    rows = page.locator("#sweep-children tbody tr")
    assert rows.count() == 4 and page.locator("#sweep-children tr.best").count() == 1
    losses = [float(v) for v in page.locator("#sweep-children td[data-metric=test_loss]").all_inner_texts()]
    assert losses == sorted(losses)
    assert page.locator("#sweep-children tr").nth(1).get_attribute("class") == "best"  # ranked first
    # Test loss against lr: one line of means over the two seeds, dashed lines at ± sd.
    page.locator("[data-role=sweep-x]").select_option("lr")
    paths = page.locator("#sweep-chart svg path")
    assert paths.count() == 3 and paths.first.get_attribute("data-metric") == "test_loss"
    # One line per seed instead: two lines, no spread to draw (one run each).
    page.locator("[data-role=sweep-x]").select_option("lr")
    page.locator("[data-role=sweep-group]").select_option("seed")
    assert page.locator("#sweep-chart svg path").count() == 2
    assert {p.get_attribute("data-group") for p in page.locator("#sweep-chart svg path").all()} == {"47", "48"}
    shot(page, "sweep")
    with page.expect_navigation():
        page.locator("#compare-top").click()
    assert page.locator("#compare-table thead th").count() == 5  # the top 4 side by side


def test_the_study_button_queues_the_built_in_study(stack, page):
    page.goto(stack.url + "/")
    page.locator("#study-form [name=epochs]").fill("0")
    page.locator("#study-button").click()
    page.wait_for_load_state()
    assert "spec.base.epochs" in page.locator("body").inner_text()
    page.console.problems.clear()  # the page of the refused form comes with its 422
    page.goto(stack.url + "/")
    page.locator("#study-form [name=epochs]").fill("1")
    with page.expect_navigation():
        page.locator("#study-button").click()
    sweep_id = page.url.rsplit("/", 1)[1]
    sweep = stack.job(sweep_id)
    assert sweep["kind"] == "sweep" and sweep["spec"]["report"] == "study" and sweep["progress"]["steps"] == 51
    assert "The claims table appears when every child and evaluation has ended" in page.locator("#sweep").inner_text()
    assert stack.post(f"/jobs/{sweep_id}/cancel").status_code == 202  # 51 trainings are not this test's business
    done = stack.wait_job(sweep_id, timeout=120)
    assert done["state"] == "cancelled" and "report" not in done["progress"] or done["progress"]["report"] == {}


def test_names_render_as_text_never_as_markup(stack, page):
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    job = stack.submit("train", {"epochs": 1, "device": "cpu"}, name=hostile, tags=["<b>tag</b>"])
    stack.wait_job(job["id"])
    for url in ("/", f"/runs/{job['id']}", f"/compare?ids={job['id']}"):
        page.goto(stack.url + url)
        assert page.get_by_text(hostile).first.is_visible()
        html = requests.get(stack.url + url, headers=stack.headers(), timeout=30).text
        assert hostile not in html and "&lt;script&gt;" in html
        assert page.locator("img[src=x]").count() == 0
    shot(page, "escaped-name")


def test_pages_send_a_csp_they_satisfy_and_forms_need_csrf(stack, page):
    response = requests.get(stack.url + "/", headers=stack.headers(), timeout=30)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in response.text and " style=" not in response.text  # nothing inline to allow
    # A form post of a signed-in browser without the CSRF field is refused, and queues nothing.
    before = len(stack.get("/jobs?limit=200").json()["items"])
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert "lf_session" in cookies
    forged = requests.post(stack.url + "/runs", data={"kind": "train", "epochs": "1"}, cookies=cookies, timeout=30)
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert len(stack.get("/jobs?limit=200").json()["items"]) == before


def test_a_token_guards_every_page_until_sign_in_and_sign_out_ends_it(stack, anonymous_page):
    page = anonymous_page
    job = stack.submit("train", {"epochs": 1, "device": "cpu"}, name="guarded")
    # Reads need the token too: pages send the browser to the sign-in page, the API answers 401.
    for path in ("/", f"/runs/{job['id']}", f"/compare?ids={job['id']}"):
        page.goto(stack.url + path)
        assert "/signin" in page.url and page.locator("#signin-form").count() == 1
    assert requests.get(stack.url + f"/api/v1/jobs/{job['id']}", timeout=30).status_code == 401
    assert requests.get(stack.url + "/api/v1/health", timeout=30).status_code in (200, 503)  # open on purpose
    # A wrong token signs nobody in.
    sign_in(page, stack, "wrong")
    assert page.locator("#signin-form").count() == 1 and "not valid" in page.content()
    page.console.problems.clear()  # Chromium logs the 401 of the page itself
    # The right one, once: the session cookie is signed, HttpOnly and SameSite=Strict, and it
    # opens the page it was asked for, its API reads (images, progress) but not JSON writes.
    page.goto(stack.url + f"/runs/{job['id']}")
    sign_in(page, stack, go=False)
    assert page.url.endswith(f"/runs/{job['id']}") and page.locator("#run").count() == 1
    session = next(c for c in page.context.cookies() if c["name"] == "lf_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    api = page.request.get(stack.url + f"/api/v1/jobs/{job['id']}")
    assert api.status == 200 and api.json()["name"] == "guarded"
    assert page.request.post(stack.url + "/api/v1/jobs", data={"kind": "train"}).status == 401
    # Signed out, the pages need the token again.
    with page.expect_navigation():
        page.locator("#signout").click()
    page.goto(stack.url + "/")
    assert "/signin" in page.url
    # An open redirect through ?next= is refused.
    page.goto(stack.url + "/signin?next=//evil.example/")
    page.locator("#signin-form [name=token]").fill(TOKEN)
    with page.expect_navigation():
        page.locator("#signin-form button[type=submit]").click()
    assert page.url == stack.url + "/"


def test_invalid_form_input_is_shown_next_to_the_form(stack, page):
    page.goto(stack.url + "/")
    form = page.locator("#train-form")
    form.locator("[name=epochs]").fill("0")
    form.locator("[name=lr]").fill("fast")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    errors = page.locator(".errors li").all_inner_texts()
    assert any("spec.epochs" in e and "greater than or equal to 1" in e for e in errors)
    assert any("spec.lr" in e for e in errors)
    assert page.locator("#train-form [name=epochs]").input_value() == "0"  # what the user typed is kept
    page.console.problems.clear()  # Chromium logs the 422 status of the page itself


def test_fifty_live_rows_share_one_stream_and_the_page_stays_quick(stack, page):
    # 50 live rows: one job running and 49 queued behind it (the stack has one worker).
    runner = stack.submit("train", {"epochs": 400, "device": "cpu"}, name="long runner")
    stack.wait_job(runner["id"], ("running",), until=lambda j: j["progress"].get("epoch", 0) >= 1)
    queued = [stack.submit("train", {"epochs": 1, "device": "cpu"}, name=f"waiting {i}") for i in range(49)]
    streams = []
    page.on("request", lambda request: streams.append(request.url) if "/events" in request.url else None)
    try:
        page.goto(stack.url + "/")
        assert page.locator("#runs tbody tr[data-state=queued]").count() == 49
        # The running row advances without a reload...
        label = f"tr[data-job-id='{runner['id']}'] [data-role=progress-label]"
        before = page.locator(label).inner_text()
        page.wait_for_function(f"() => document.querySelector(\"{label}\").textContent !== {json.dumps(before)}",
                               timeout=30_000)
        # ...queued rows cancelled elsewhere turn cancelled on the page...
        for job in queued[:5]:
            assert stack.post(f"/jobs/{job['id']}/cancel").status_code == 202
        page.wait_for_function("() => document.querySelectorAll('#runs tr[data-state=cancelled]').length >= 5",
                               timeout=10_000)
        # ...all of it over one stream, and links answer at once.
        assert len(streams) == 1 and streams[0].count(",") == 49, streams
        shot(page, "fifty-live-rows")
        for job in queued[10:13]:
            started = time.monotonic()
            with page.expect_navigation():
                page.locator(f"tr[data-job-id='{job['id']}'] td a").first.click()
            page.wait_for_selector("#run")
            assert time.monotonic() - started < 1.0
            page.go_back()
    finally:
        for job in [runner, *queued]:
            stack.post(f"/jobs/{job['id']}/cancel")
