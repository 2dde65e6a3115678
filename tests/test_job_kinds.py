"""A job kind is one row plus its runner.

This module defines a throwaway kind, ``tally`` (its spec, runner and parent
rule), and registers it when imported. The embedded stack below names this
module in LATENTFORGE_PLUGINS, so its API, worker and CLI import it at start,
and the kind runs end to end over HTTP: validation, the parent rule, the
queue, the worker, the artifact manifest, the gallery's form and the CLI,
with nothing else in the code base changed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Mapping

import pytest
import requests
from pydantic import Field, StrictInt

from shared.artifacts import ArtifactFile, ArtifactKind
from shared.kinds import JobKind, ParentRule, RunContext, RunOutput, register
from shared.specs import ParentSpec


class TallySpec(ParentSpec):
    """Count the parent's epochs, ``times`` times over."""

    times: Annotated[StrictInt, Field(ge=1, le=10)] = 3


def at_most_the_parent_s_epochs(spec: TallySpec, parent_spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    if spec.times > parent_spec["epochs"]:
        return [("spec.times", f"at most the model's {parent_spec['epochs']} epochs")]
    return []


def run_tally(spec: TallySpec, ctx: RunContext) -> RunOutput:
    config = json.loads((ctx.parent_folder / "config.json").read_text())
    tally = {"times": spec.times, "epochs": config["result"]["epochs"] * spec.times}
    (ctx.folder / "tally.json").write_text(json.dumps(tally))
    ctx.log(f"tallied {tally['epochs']} epochs")
    return RunOutput([ArtifactFile.of("tally.json", ArtifactKind.FILE)], tally)


register(JobKind(name="tally", spec=TallySpec, runner=f"{__name__}:run_tally", help="count a model's epochs",
                 parent=ParentRule(kinds=("train",), check=at_most_the_parent_s_epochs)))


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", env={"LATENTFORGE_PLUGINS": __name__})


def test_a_kind_defined_here_runs_end_to_end(stack):
    model = stack.wait_job(stack.submit("train", {"epochs": 2, "device": "cpu"})["id"])
    assert model["state"] == "succeeded"

    # The API validates it by its spec and its parent rule, naming the field.
    for spec, status, field in (({"model_job": model["id"], "times": 0}, 422, "spec.times"),
                                ({"model_job": model["id"], "times": 3}, 422, "spec.times"),
                                ({"model_job": "nope"}, 422, "spec.model_job")):
        response = stack.post("/jobs", {"kind": "tally", "spec": spec})
        assert response.status_code == status and field in [e["field"] for e in response.json()["errors"]], response.text
    assert "at most the model's 2 epochs" in stack.post("/jobs", {"kind": "tally", "spec": {
        "model_job": model["id"], "times": 3}}).json()["detail"]

    # Queued, run by the worker's lookup in the table, its manifest recorded and served.
    job = stack.submit("tally", {"model_job": model["id"], "times": 2}, name="two tallies")
    assert job["parent"] == model["id"] and job["queue"] == "cpu"
    done = stack.wait_job(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"] == {"times": 2, "epochs": 4}
    [artifact] = [a for a in done["artifacts"] if a["kind"] != "log"]  # beside the job's log.txt
    assert (artifact["name"], artifact["kind"], artifact["content_type"]) == ("tally.json", "file", "application/json")
    assert requests.get(stack.url + artifact["url"], timeout=30).json() == {"times": 2, "epochs": 4}
    assert [c["id"] for c in stack.get(f"/jobs?parent={model['id']}").json()["items"]] == [job["id"]]

    # The OpenAPI document and the gallery know it: its schema, a filter choice and a form from its spec.
    schemas = stack.get("/openapi.json").json()["components"]["schemas"]
    tally = schemas["TallyJobCreate"]  # one branch of JobCreate's oneOf, chosen by kind
    assert tally["properties"]["kind"]["const"] == "tally" and tally["properties"]["spec"]["$ref"].endswith("/TallySpec")
    assert schemas["JobCreate"]["discriminator"]["mapping"]["tally"] == "#/components/schemas/TallyJobCreate"
    page = requests.get(stack.url + "/", timeout=30).text
    assert 'id="tally-form"' in page and 'name="times" value="3"' in page and '<option value="tally"' in page

    # So does the CLI.
    cli = stack.cli("submit", "tally", "--set", f"model_job={model['id']}", "--set", "times=1", "--wait",
                    "--url", stack.url, timeout=120)
    assert cli.returncode == 0 and "tally.json" in cli.stdout, cli.stdout + cli.stderr
