"""The study: the claims table judged on known numbers, and the report a study sweep queues at its end."""

from __future__ import annotations

import json

import pytest

from shared.db import JobState
from shared.kinds import RunContext
from shared.specs import StudySpec, SweepSpec
from shared.study import CLAIMS, study_spec
from tests.test_sweeps import env, run  # noqa: F401  (the fixture)
from worker.study import judge_claims, run_study


def fake_runs(numbers_of) -> list[dict]:
    """Three seeds of every study setting, with the numbers ``numbers_of(model, dataset, beta)`` gives."""
    runs = []
    for i, (fields, _) in enumerate(SweepSpec.from_dict(study_spec(epochs=1)).settings()):
        spec = {"model": fields["model"], "dataset": fields["dataset"], "latent_dim": fields["latent_dim"],
                "beta": fields.get("beta")}
        for seed in range(3):
            metrics = {k: v + 0.001 * seed for k, v in numbers_of(spec["model"], spec["dataset"], spec["beta"]).items()}
            runs.append({"id": f"{i}-{seed}", "spec": spec, "state": "succeeded", "metrics": metrics})
    return runs


def as_the_seed_says(model, dataset, beta):
    """Numbers for which every claim of the seed document holds."""
    regularised = model != "ae"
    return {
        "continuity": 0.95 if regularised else 0.90,
        "judge_score": {"ae": 0.80, "vae": 0.85, "beta_vae": 0.80, "aae": 0.86}[model],
        "judge_score_normal": 0.70,
        "mig": {"ae": 0.03, "vae": 0.10, "aae": 0.05}.get(model, 0.05 + 0.02 * (beta or 4)),
        "test_mse": 0.01 + 0.001 * (beta or 0),
        "path_max_step_ratio": 5.0 if regularised else 15.0,
        "frechet_distance": {"ae": 150, "vae": 120, "beta_vae": 130, "aae": 100}[model],
        "frechet_distance_normal": 200,
        "trustworthiness": {"ae": 0.90, "vae": 0.88, "beta_vae": 0.87, "aae": 0.89}[model],
    }


def test_every_claim_holds_on_numbers_made_to_agree_with_the_seed():
    table = judge_claims(fake_runs(as_the_seed_says))
    assert [row["verdict"] for row in table] == ["holds"] * len(CLAIMS)
    ae_sampling = table[1]["evidence"]
    assert [e["setting"] for e in ae_sampling] == ["mnist z=2", "mnist z=10", "sprites z=10"]
    assert ae_sampling[0]["numbers"]["ae judge_score_normal"] == {"mean": pytest.approx(0.701), "sd": pytest.approx(0.001),
                                                                  "n": 3}
    frontier = table[6]["evidence"][0]
    assert [p["beta"] for p in frontier["points"]] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_verdicts_follow_the_numbers_setting_by_setting():
    def mixed(model, dataset, beta):
        numbers = as_the_seed_says(model, dataset, beta)
        if model == "aae" and dataset == "sprites":
            numbers["trustworthiness"] = 0.5  # worse than the VAE here only
        if model == "vae":
            numbers["path_max_step_ratio"] = 20.0  # less continuous than the AE everywhere
            numbers["frechet_distance"] = 250 if dataset == "mnist" else 120  # judged better, yet further away
        return numbers

    verdicts = {row["claim"]: row["verdict"] for row in judge_claims(fake_runs(mixed))}
    assert verdicts["improved structure"] == "mixed"
    assert verdicts["continuous latent space"] == "does not hold"
    assert verdicts["enhanced disentanglement"] == "holds"
    assert verdicts["Gaussian prior for proper sampling, better generation"] == "mixed"  # both halves must hold
    assert {row["verdict"] for row in judge_claims([])} == {"not measured"}


def test_a_study_sweep_queues_its_report_with_every_childs_numbers(env, tmp_path):  # noqa: F811
    service, store, _, messages = env
    spec = {"base": {"epochs": 1, "model": "vae"}, "grid": {"beta": [1, 4]}, "evaluate": True, "report": "study"}
    sweep, _ = service.submit({"kind": "sweep", "spec": spec})
    first, second = service.children(sweep.id)
    claim = store.claim(first.id, "w:1")
    assert store.finish(claim, JobState.SUCCEEDED, metrics={"test_mse": 0.02, "mig": 0.1})
    assert service.children(sweep.id)[-1].kind == "train"  # no report while a child is unfinished
    run(store, second.id)
    for child in (first, second):
        assert [j for j in service.children(sweep.id) if j.kind == "study"] == []  # an evaluation is still queued
        run(store, service.children(child.id)[0].id)
    report = [j for j in service.children(sweep.id) if j.kind == "study"]
    assert len(report) == 1 and report[0].state == "queued" and report[0].published_at is not None
    assert messages() == 5 and service.get(sweep.id).state == "running"  # until the report ends
    runs = report[0].spec["runs"]
    assert [(r["spec"]["beta"], r["state"], r["metrics"]) for r in runs] == [
        (1.0, "succeeded", {"test_mse": 0.02, "mig": 0.1}), (4.0, "succeeded", {})]
    output = run_study(StudySpec.from_dict(report[0].spec), RunContext(folder=tmp_path, log=lambda _: None))
    assert {f.name for f in output.artifacts} == {"study.json", "study.md"}
    assert json.loads((tmp_path / "study.json").read_text())["runs"] == 2
    assert "| vae | continuous latent space |" in (tmp_path / "study.md").read_text()
    run(store, report[0].id)
    assert service.children(report[0].id) == []  # a report is not a child to evaluate (the real study did once)
    done = service.get(sweep.id)
    assert done.state == "succeeded" and done.progress["report"] == {"succeeded": 1}
    assert done.progress["children"] == {"succeeded": 2}  # the report is not counted as a child


def test_the_report_sees_the_numbers_of_the_evaluation_that_ended_last(env):  # noqa: F811
    service, store, _, _ = env
    spec = {"base": {"epochs": 1}, "evaluate": {"properties": ["separation"]}, "report": "study"}
    sweep, _ = service.submit({"kind": "sweep", "spec": spec})
    (child,) = service.children(sweep.id)
    run(store, child.id)
    (evaluation,) = service.children(child.id)
    claim = store.claim(evaluation.id, "w:1")
    assert store.finish(claim, JobState.SUCCEEDED, metrics={"knn_accuracy": 0.7}, parent_scope=("knn_accuracy",))
    (report,) = [j for j in service.children(sweep.id) if j.kind == "study"]
    assert report.spec["runs"][0]["metrics"] == {"knn_accuracy": 0.7}


def test_reports_are_made_by_the_queue_not_submitted(env):  # noqa: F811
    service, *_ = env
    from shared.errors import SpecError

    with pytest.raises(SpecError) as refused:
        service.submit({"kind": "study", "spec": {"sweep_job": "00000000-0000-4000-8000-000000000000"}})
    assert refused.value.errors[0][0] == "kind" and "made by the queue" in refused.value.errors[0][1]
