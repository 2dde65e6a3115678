"""A sweep end to end on Redis + PostgreSQL with two real worker processes, over HTTP, the CLI and the page."""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.usefixtures("services_up")

EVALUATE = {"limit": 300, "properties": ["separation", "compactness"]}


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("redis_pg", workers=2)


@pytest.fixture(scope="module")
def swept(stack):
    body = {"kind": "sweep", "name": "dims", "spec": {"base": {"epochs": 1, "device": "cpu"},
                                                      "grid": {"latent_dim": [2, 3]}, "seeds": 2,
                                                      "evaluate": EVALUATE}}
    response = stack.post("/jobs", body, headers=stack.headers(**{"Idempotency-Key": f"sweep-{time.time_ns()}"}))
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["kind"] == "sweep" and sweep["state"] == "running" and sweep["progress"]["steps"] == 4
    return stack.wait_job(sweep["id"], timeout=300)


def test_every_child_runs_once_on_either_worker_and_is_evaluated(stack, swept):
    assert swept["state"] == "succeeded", swept
    assert swept["progress"]["children"] == {"succeeded": 4} and swept["progress"]["follow_ups"] == {"succeeded": 4}
    children = stack.get(f"/jobs?parent={swept['id']}&limit=50").json()["items"]
    assert len(children) == 4 and all(c["kind"] == "train" and c["attempts"] == 1 for c in children)
    assert sorted((c["spec"]["latent_dim"], c["spec"]["seed"]) for c in children) == [(2, 47), (2, 48), (3, 47), (3, 48)]
    assert len({c["worker"] for c in children}) == 2  # both workers took children
    for child in children:
        evaluations = stack.get(f"/jobs?parent={child['id']}").json()["items"]
        assert [(e["kind"], e["state"], e["spec"]["limit"]) for e in evaluations] == [("evaluate", "succeeded", 300)]
        assert {"knn_accuracy", "test_mse", "test_loss"} <= set(child["metrics"])
    ranked = stack.get(f"/jobs?parent={swept['id']}&sort=-metrics.knn_accuracy").json()["items"]
    values = [c["metrics"]["knn_accuracy"] for c in ranked]
    assert values == sorted(values, reverse=True)


def test_the_sweep_page_ranks_children_and_links_the_best(stack, swept):
    page = requests.get(stack.url + f"/runs/{swept['id']}?sort=-metrics.separation_score", timeout=30)
    assert page.status_code == 200
    html = page.text
    table = html[html.index('id="sweep-children"'):]
    table = table[:table.index("</table>")]
    assert table.count('<tr data-job-id="') == 4 and table.count('class="best"') == 1
    assert 'id="compare-top"' in html and 'id="sweep-chart"' in html and "<th>latent_dim</th>" in html
    best = max(stack.get(f"/jobs?parent={swept['id']}").json()["items"],
               key=lambda c: c["metrics"]["separation_score"])
    assert f'<tr data-job-id="{best["id"]}" data-state="succeeded" class="best">' in html


def test_a_bad_grid_value_is_a_422_naming_it_and_stores_nothing(stack):
    before = len(stack.get("/jobs?limit=200").json()["items"])
    bad = stack.post("/jobs", {"kind": "sweep", "spec": {"base": {"model": "vae"}, "grid": {"beta": [1, -2]}}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "spec.grid.beta[1]"
    assert len(stack.get("/jobs?limit=200").json()["items"]) == before


def test_cancelling_a_sweep_cancels_its_children(stack):
    sweep = stack.submit("sweep", {"base": {"epochs": 200, "device": "cpu"}, "grid": {"lr": [0.001, 0.002, 0.003]},
                                   "evaluate": False})
    first = stack.get(f"/jobs?parent={sweep['id']}&sort=created").json()["items"][0]
    assert first["spec"]["lr"] == 0.001  # children are created in the grid's order
    stack.wait_job(first["id"], ("running",))
    response = stack.post(f"/jobs/{sweep['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    done = stack.wait_job(sweep["id"], timeout=120)
    assert done["state"] == "cancelled" and done["progress"]["children"] == {"cancelled": 3}


def test_cli_sweep_waits_with_one_progress_bar(stack):
    done = stack.cli("sweep", "--set", "epochs=1", "--set", "device=cpu", "--grid", "lr=0.001,0.003",
                     "--no-evaluate", "--wait", "--url", stack.url, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2/2 children finished" in done.stdout and "children: {'succeeded': 2}" in done.stdout


def test_two_workers_finishing_many_tiny_children_keep_the_counts_exact(stack_factory):
    """Sixty children that do nothing (bench/noop_kind.py), so the two workers finish them as fast as they
    can, often at the same instant: every child runs once and the sweep's last count is exact."""
    tiny = stack_factory("redis_pg", workers=2, env={"LATENTFORGE_PLUGINS": "bench.noop_kind"})
    sweep = tiny.submit("noop_sweep", {"count": 60})
    done = tiny.wait_job(sweep["id"], timeout=180)
    assert done["state"] == "succeeded" and done["progress"]["children"] == {"succeeded": 60}
    assert done["progress"]["step"] == done["progress"]["steps"] == 60
    children = tiny.get(f"/jobs?parent={sweep['id']}&limit=200").json()["items"]
    assert len(children) == 60 and {c["attempts"] for c in children} == {1}
    assert len({c["worker"] for c in children}) == 2
    logs = tiny.log("worker1") + tiny.log("worker2")
    assert sorted(int(line.split("noop ")[1].split(" ran")[0]) for line in logs.splitlines()
                  if " ran" in line and "noop " in line) == list(range(60))
