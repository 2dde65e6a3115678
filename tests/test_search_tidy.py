"""Finding and tidying runs through the job service, on SQLite and on PostgreSQL.

Filters (tags, name text, spec fields, a time range, the archived view), edits, archive and restore, delete
(alone, refused while running, cascading) and bulk actions. No worker is needed: jobs move through their
states with the job store a worker uses, and files are real files in a local artifact store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from shared.db import Artifact, Job, JobMetric, JobState, make_engine, make_sessionmaker
from shared.errors import JobConflict, JobNotFinished, JobNotFound, QueryError, RunHasChildren, SpecError
from shared.jobstore import JobStore
from shared.migrate import upgrade
from shared.search import parse_filter
from shared.service import JobService
from shared.settings import load_settings
from shared.storage import LocalStore
from tests.stack import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path):
    settings = {"LATENTFORGE_HOME": str(tmp_path)}
    if request.param == "postgresql":
        database = request.getfixturevalue("pg_url")
        settings["LATENTFORGE_DATABASE_URL"] = database
    settings = load_settings(settings)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    files = LocalStore(tmp_path / "artifacts")
    service = JobService(sessions, JobStore(sessions, lambda job_id, queue: None), files)
    yield service, sessions, files
    engine.dispose()


@pytest.fixture()
def pg_url():
    with postgres_database() as url:
        yield url


def train(service, name, tags=(), **spec):
    job, _ = service.submit({"kind": "train", "name": name, "tags": list(tags),
                             "spec": {"epochs": 1, "device": "cpu", **spec}})
    return job.id


def finish(service, job_id, state=JobState.SUCCEEDED, files=None):
    claim = service.store.claim(job_id, "w:1")
    assert claim is not None
    assert service.store.finish(claim, state)
    if files is not None:  # a published file, as a worker leaves it
        folder = files.workspace(f"jobs/{job_id}/run-{claim.lease}")
        (folder / "metrics.json").write_text("{}")
        with service.sessions.begin() as s:
            s.add(Artifact(job_id=job_id, name="metrics.json", kind="metrics", content_type="application/json",
                           size=2, sha256="x" * 64, path=f"jobs/{job_id}/run-{claim.lease}/metrics.json"))
    return job_id


def ids(service, **query):
    pairs = []
    for name, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name.replace("__", "."), str(item)))
    return {job.id for job in service.page(where=parse_filter(pairs), limit=200).items}


def test_filters_by_tag_name_spec_field_and_time(env):
    service, sessions, _ = env
    seed = train(service, "Seed notebook", ["demo", "mnist"], preset="seed")
    vae2 = train(service, "small VAE", ["demo"], model="vae", latent_dim=2, lr=0.002)
    vae10 = train(service, "big vae", ["mnist"], model="vae", latent_dim=10, hidden=[256, 128])
    old = train(service, "old 100% run", [], model="aae", latent_dim=3)
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == old).values(created_at=datetime(2025, 1, 2, tzinfo=timezone.utc)))

    assert ids(service, tag="demo") == {seed, vae2}
    assert ids(service, tag=["demo", "mnist"]) == {seed}
    assert ids(service, q="VAE") == {vae2, vae10}
    assert ids(service, q="100%") == {old}  # a LIKE wildcard in the text is a literal
    assert ids(service, spec__model="vae") == {vae2, vae10}
    assert ids(service, spec__latent_dim=2) == {seed, vae2}  # the seed preset is latent 2 too
    assert ids(service, spec__latent_dim="2.0") == {seed, vae2}  # a number is a number, however written
    assert ids(service, spec__latent_dim=10, spec__model="vae") == {vae10}
    assert ids(service, spec__lr="2e-3") == {vae2}
    assert ids(service, spec__hidden="[256,128]") == {vae10}
    assert ids(service, spec__hidden="[256, 128]") == {vae10}
    assert ids(service, spec__model="2") == set()  # a string field never equals a number
    assert ids(service, created_before="2025-06-01") == {old}
    assert ids(service, created_after="2026-01-01T00:00:00Z") == {seed, vae2, vae10}
    now = datetime.now(timezone.utc)
    assert ids(service, created_after=(now - timedelta(hours=1)).isoformat(),
               created_before=(now + timedelta(hours=1)).isoformat()) == {seed, vae2, vae10}


def test_an_unknown_or_bad_parameter_is_refused_by_name():
    for pairs, field, says in [
        ([("tags", "demo")], "tags", "unknown query parameter"),
        ([("spec.latent_dims", "2")], "spec.latent_dims", "no job kind's spec has a field 'latent_dims'"),
        ([("archived", "yes")], "archived", "must be 0"),
        ([("created_after", "last tuesday")], "created_after", "ISO 8601"),
        ([("q", "a"), ("q", "b")], "q", "give it once"),
    ]:
        with pytest.raises(QueryError) as caught:
            parse_filter(pairs)
        assert caught.value.errors[0][0] == field and says in caught.value.errors[0][1], caught.value.errors


def test_edit_name_tags_and_note(env):
    service, _, _ = env
    job_id = train(service, "before", ["a"])
    job = service.edit(job_id, {"name": "after", "tags": ["b", "c"], "note": "line one\nline two\ttabbed"})
    assert (job.name, job.tags, job.note) == ("after", ["b", "c"], "line one\nline two\ttabbed")
    assert service.edit(job_id, {"note": None}).note is None and service.get(job_id).name == "after"
    for body, field in [({"spec": {"epochs": 9}}, "spec"), ({"name": "x\x00"}, "name"), ({"tags": None}, "tags"),
                        ({"note": "x" * 10_001}, "note"), ({}, "(body)")]:
        with pytest.raises(SpecError) as caught:
            service.edit(job_id, body)
        assert caught.value.errors[0][0] == field
    with pytest.raises(JobNotFound):
        service.edit("00000000-0000-0000-0000-000000000000", {"name": "x"})


def test_archive_hides_a_run_and_its_children_until_restored(env):
    service, _, _ = env
    model = finish(service, train(service, "model"))
    embed, _ = service.submit({"kind": "embed", "spec": {"model_job": model}})
    finish(service, embed.id)
    live = train(service, "still queued")

    with pytest.raises(JobNotFinished, match="queued"):
        service.archive(live)
    assert service.archive(model).archived_at is not None
    assert service.get(embed.id).archived_at is not None
    assert ids(service) == {live}
    assert ids(service, archived=1) == {model, embed.id}
    assert ids(service, archived="all") == {model, embed.id, live}
    assert service.restore(model).archived_at is None
    assert ids(service) == {model, embed.id, live}


def test_delete_refuses_running_runs_and_parents_without_cascade(env):
    service, sessions, files = env
    model = finish(service, train(service, "model"), files=files)
    evaluate, _ = service.submit({"kind": "evaluate", "spec": {"model_job": model, "limit": 100}})
    with sessions.begin() as s:  # the scorecard the evaluation gave its model
        s.add(JobMetric(job_id=model, name="knn_accuracy", value=0.9, source_id=evaluate.id))

    with pytest.raises(RunHasChildren, match="cascade"):
        service.delete(model)
    with pytest.raises(JobNotFinished, match="queued"):
        service.delete(model, cascade=True)
    finish(service, evaluate.id, files=files)
    assert files.attempt_folders(model) and files.attempt_folders(evaluate.id)

    assert service.delete(evaluate.id) == [evaluate.id]
    with sessions() as s:  # its scorecard went with it
        assert s.scalars(select(JobMetric.name).where(JobMetric.job_id == model)).all() == []
    assert files.attempt_folders(evaluate.id) == [] and files.attempt_folders(model)
    assert service.delete(model) == [model]
    with pytest.raises(JobNotFound):
        service.get(model)
    assert files.attempt_folders(model) == []
    with sessions() as s:
        assert s.scalars(select(Artifact.id)).all() == []


def test_a_sweep_s_runs_go_only_with_the_sweep(env):
    service, sessions, _ = env
    sweep, _ = service.submit({"kind": "sweep", "spec": {"base": {"epochs": 1, "device": "cpu"},
                                                          "grid": {"latent_dim": [2, 3]}, "evaluate": False}})
    children = [child.id for child in service.children(sweep.id)]
    with pytest.raises(JobConflict, match="part of sweep"):
        service.delete(children[0], cascade=True)
    for child in children:
        finish(service, child)
    assert service.get(sweep.id).state == "succeeded"
    assert sorted(service.delete(sweep.id, cascade=True)) == sorted([sweep.id, *children])
    with sessions() as s:
        assert s.scalars(select(Job.id)).all() == []


def test_bulk_answers_each_id_as_its_own_call_would(env):
    service, _, _ = env
    done = finish(service, train(service, "done"))
    queued = train(service, "queued")
    missing = "00000000-0000-0000-0000-000000000000"
    results = service.bulk("archive", [done, queued, missing, "nope"])
    assert [(r["id"], r["ok"], r["status"]) for r in results] == [
        (done, True, 200), (queued, False, 409), (missing, False, 404), ("nope", False, 404)]
    assert "cancel it first" in results[1]["detail"]
    assert [r["status"] for r in service.bulk("delete", [done, queued])] == [204, 409]
    for action, given, field in [("purge", [done], "action"), ("archive", [], "ids"), ("archive", done, "ids")]:
        with pytest.raises(SpecError) as caught:
            service.bulk(action, given)
        assert caught.value.errors[0][0] == field


def test_an_archived_sweep_s_page_still_lists_its_runs(tmp_path):
    from api import create_app

    settings = load_settings({"LATENTFORGE_HOME": str(tmp_path)})
    upgrade(settings.database_url)
    app = create_app(settings)
    service = app.config["LATENTFORGE"].jobs
    sweep, _ = service.submit({"kind": "sweep", "name": "archived sweep",
                               "spec": {"base": {"epochs": 1, "device": "cpu"}, "grid": {"latent_dim": [2, 3]},
                                        "evaluate": False}})
    children = [child.id for child in service.children(sweep.id)]
    for child in children:
        finish(service, child)
    service.archive(sweep.id)
    client = app.test_client()
    assert client.get("/api/v1/jobs").json["items"] == []
    page = client.get(f"/runs/{sweep.id}").get_data(as_text=True)
    ranked = page.split('id="sweep-children"', 1)[1].split("</table>", 1)[0]  # the sweep's table of its runs
    assert all(child in ranked for child in children)
    listed = client.get(f"/?parent={sweep.id}&archived=all").get_data(as_text=True)
    assert all(f'data-job-id="{child}"' in listed for child in children)
