"""Finding and tidying runs in the gallery, in real headless Chromium against a real server and worker.

Search by name, tag and spec field; archive a selection and restore it; delete with the confirmation page
(a parent only with its children); edit a run's name, tags and note; download a run as a zip whose manifest
matches every artifact's sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import requests

from tests.test_gallery_browser import browser, chromium_present, shot, signed_in_page  # noqa: F401 (fixtures)

TOKEN = "tidy-token-81c3"
TINY = {"epochs": 1, "device": "cpu", "hidden": [32], "batch_size": 2048}


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", token=TOKEN)


@pytest.fixture(scope="module")
def runs(stack):
    """Three finished runs and an embedding made from one of them."""
    made = {
        "alpha": stack.submit("train", TINY, name="alpha demo run", tags=["demo"]),
        "beta": stack.submit("train", TINY, name="beta run"),
        "gamma": stack.submit("train", {**TINY, "model": "vae"}, name="gamma vae"),
    }
    done = {key: stack.wait_job(job["id"]) for key, job in made.items()}
    assert all(job["state"] == "succeeded" for job in done.values()), done
    embed = stack.wait_job(stack.submit("embed", {"model_job": done["gamma"]["id"], "limit": 200})["id"])
    assert embed["state"] == "succeeded" and embed["name"] == "embed of gamma vae"
    return {**done, "embed": embed}


@pytest.fixture()
def page(browser, stack):
    context, page = signed_in_page(browser, stack, TOKEN, width=1400)
    yield page
    assert page.console.problems == [], page.console.problems
    context.close()


def listed(page) -> list[str]:
    return page.locator("#runs tbody tr[data-job-id]").evaluate_all("rows => rows.map(r => r.dataset.jobId)")


def filter_runs(page, stack, **fields) -> list[str]:
    page.goto(stack.url + "/")
    form = page.locator("#filter-form")
    for name, value in fields.items():
        if name in ("kind", "state", "archived"):
            form.locator(f"[name={name}]").select_option(value)
        else:
            form.locator(f"[name={name}]").fill(value)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    return listed(page)


def select_and(page, job_ids: list[str], button: str) -> None:
    for job_id in job_ids:
        page.locator(f"#runs input.pick[value='{job_id}']").check()
    with page.expect_navigation():
        page.locator(button).click()


def test_search_by_name_tag_and_spec_field(stack, runs, page):
    ids = {key: job["id"] for key, job in runs.items()}
    assert filter_runs(page, stack, q="ALPHA") == [ids["alpha"]]
    assert filter_runs(page, stack, tag="demo") == [ids["alpha"]]
    assert filter_runs(page, stack, where="model=vae epochs=1") == [ids["gamma"]]
    assert set(filter_runs(page, stack, where="latent_dim=2", kind="")) >= {ids["alpha"], ids["beta"], ids["gamma"]}
    assert page.locator("[name=where]").input_value() == "latent_dim=2"  # the form keeps what was asked
    # The embedding's row names its model, not an id.
    page.goto(stack.url + "/?q=embed")
    row = page.locator(f"#runs tr[data-job-id='{ids['embed']}']")
    assert row.locator("td").nth(1).inner_text().startswith("embed of gamma vae")
    assert "gamma vae" in row.locator("td").nth(7).inner_text()
    assert "ago" in row.locator("time").inner_text() or row.locator("time").inner_text() == "just now"
    # A misspelt filter is an error that names it, not every run.
    response = page.goto(stack.url + "/?tags=demo")
    assert response.status == 400 and "tags" in page.locator("body").inner_text()
    assert [p for p in page.console.problems if "status of 400" not in p] == []
    page.console.problems.clear()


def test_archive_a_selection_then_restore_one(stack, runs, page):
    alpha, beta = runs["alpha"]["id"], runs["beta"]["id"]
    page.goto(stack.url + "/")
    select_and(page, [alpha, beta], "#archive-selected")
    assert alpha not in listed(page) and beta not in listed(page)
    assert stack.job(alpha)["archived"] and stack.job(beta)["archived"]

    archived = filter_runs(page, stack, archived="1")
    assert set(archived) == {alpha, beta}
    assert page.locator(f"tr[data-job-id='{beta}'] [data-role=archived]").is_visible()
    shot(page, "tidy-archived")
    select_and(page, [beta], "#restore-selected")
    assert not stack.job(beta)["archived"] and stack.job(alpha)["archived"]
    page.goto(stack.url + "/")
    assert beta in listed(page) and alpha not in listed(page)

    # The run page restores an archived run too.
    page.goto(stack.url + f"/runs/{alpha}")
    with page.expect_navigation():
        page.locator("#restore-button").click()
    assert not stack.job(alpha)["archived"]
    assert page.locator("#archive-button").is_visible()


def test_edit_name_tags_and_note_on_the_run_page(stack, runs, page):
    job_id = runs["beta"]["id"]
    page.goto(stack.url + f"/runs/{job_id}")
    page.locator("#edit-run summary").click()
    form = page.locator("#edit-run form")
    form.locator("[name=name]").fill("beta, renamed")
    form.locator("[name=tags]").fill("keep, <b>x</b>")
    form.locator("[name=note]").fill("lr too high?\nsee epoch 1")
    with page.expect_navigation():
        form.locator("#save-edit").click()
    job = stack.job(job_id)
    assert (job["name"], job["tags"], job["note"]) == ("beta, renamed", ["keep", "<b>x</b>"], "lr too high?\nsee epoch 1")
    assert page.locator("#run-note").inner_text() == "lr too high?\nsee epoch 1"
    assert page.locator("h1").inner_text().startswith("beta, renamed")
    assert page.locator(".ids .tag", has_text="<b>x</b>").count() == 1  # shown as text, never as markup


def test_download_a_run_as_a_zip_with_a_manifest(stack, runs, page):
    job = runs["alpha"]
    page.goto(stack.url + f"/runs/{job['id']}")
    href = page.locator("#download-zip").get_attribute("href")
    response = requests.get(stack.url + href, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=alpha-demo-run-")
    bundle = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = json.loads(bundle.read("manifest.json"))
    expected = {a["name"]: a["sha256"] for a in stack.job(job["id"])["artifacts"]}
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == expected and len(expected) >= 5
    for name, sha in expected.items():
        assert hashlib.sha256(bundle.read(name)).hexdigest() == sha, name
    assert manifest["job"]["id"] == job["id"]
    unfinished = stack.submit("train", {**TINY, "epochs": 30})
    refused = stack.get(f"/jobs/{unfinished['id']}/download")
    assert refused.status_code == 409 and refused.json()["type"].endswith("/job-not-finished")
    stack.post(f"/jobs/{unfinished['id']}/cancel")
    stack.wait_job(unfinished["id"])


def test_delete_asks_first_and_a_parent_goes_only_with_its_children(stack, runs, page):
    gamma, embed = runs["gamma"]["id"], runs["embed"]["id"]
    files = [a["url"] for a in runs["gamma"]["artifacts"] + runs["embed"]["artifacts"]]
    page.goto(stack.url + f"/runs/{gamma}")
    with page.expect_navigation():
        page.locator("#delete-button").click()
    assert page.locator("#to-delete tr[data-job-id]").count() == 1
    shot(page, "tidy-confirm-delete")
    with page.expect_navigation():  # without the cascade box: refused, nothing lost
        page.locator("#confirm-delete-button").click()
    assert "pass cascade=true" in page.locator(".errors").inner_text()
    assert [p for p in page.console.problems if "status of 409" not in p] == []
    page.console.problems.clear()
    assert stack.job(gamma)["state"] == "succeeded"

    page.goto(stack.url + f"/runs/{gamma}")
    with page.expect_navigation():
        page.locator("#delete-button").click()
    page.locator("#cascade").check()
    with page.expect_navigation():
        page.locator("#confirm-delete-button").click()
    assert page.url.rstrip("/") == stack.url
    for job_id in (gamma, embed):
        assert stack.get(f"/jobs/{job_id}").status_code == 404
    for url in files:  # their files went with them
        assert requests.get(stack.url + url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 404

    # A selection deletes from the runs page after the same confirmation; "Keep them" keeps them.
    beta = runs["beta"]["id"]
    page.goto(stack.url + "/")
    select_and(page, [beta], "#delete-selected")
    with page.expect_navigation():
        page.locator("#cancel-delete").click()
    assert stack.job(beta)["state"] == "succeeded"
    select_and(page, [beta], "#delete-selected")
    with page.expect_navigation():
        page.locator("#confirm-delete-button").click()
    assert stack.get(f"/jobs/{beta}").status_code == 404 and beta not in listed(page)
