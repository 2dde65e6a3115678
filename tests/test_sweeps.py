"""Sweeps: one request fans a grid of train jobs out; the sweep's state and counts follow its children.

On a real database (SQLite, and PostgreSQL for the race) and a real (filesystem) broker, through the job
service and the job store a worker uses: no worker process is needed to move children through their states.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from shared.db import Job, JobState, make_engine, make_sessionmaker
from shared.errors import JobConflict, SpecError
from shared.jobstore import JobStore
from shared.migrate import upgrade
from shared.queue import make_celery, publish
from shared.service import JobService
from shared.settings import load_settings

BASE = {"model": "beta_vae", "epochs": 1, "device": "cpu"}


def make_env(settings):
    upgrade(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    app = make_celery(settings)
    store = JobStore(sessions, lambda job_id, queue: publish(app, job_id, queue))
    return JobService(sessions, store), store, sessions


@pytest.fixture()
def env(tmp_path):
    settings = load_settings({"LATENTFORGE_HOME": str(tmp_path)})
    service, store, sessions = make_env(settings)
    queue_dir = settings.broker_dir / "queue"
    return service, store, sessions, lambda: len(list(queue_dir.glob("*.msg")))


def children_of(service, sweep_id):
    return service.children(sweep_id)


def run(store, job_id, state=JobState.SUCCEEDED):
    claim = store.claim(job_id, "w:1")
    assert claim is not None
    assert store.finish(claim, state)


def count_jobs(sessions) -> int:
    with sessions() as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def test_a_sweep_commits_its_children_together_and_publishes_only_them(env):
    service, store, sessions, messages = env
    sweep, replayed = service.submit({"kind": "sweep", "name": "betas",
                                      "spec": {"base": BASE, "grid": {"beta": [0.5, 4]}, "seeds": 3}})
    assert not replayed and sweep.kind == "sweep" and sweep.state == "running" and sweep.queue == "none"
    children = children_of(service, sweep.id)
    assert len(children) == 6 and messages() == 6  # the sweep itself is never queued
    assert [c.spec["beta"] for c in children] == [0.5] * 3 + [4.0] * 3
    assert [c.spec["seed"] for c in children] == [47, 48, 49] * 2
    assert all(c.kind == "train" and c.state == "queued" and c.published_at is not None for c in children)
    assert children[0].name == 'betas: beta=0.5, seed=47'
    assert sweep.progress["step"] == 0 and sweep.progress["steps"] == 6
    assert sweep.progress["children"] == {"queued": 6}
    # The reaper and the republisher leave the sweep row alone.
    assert store.reap(stale_after_s=0.0)["requeued"] == 0 and store.republish_unpublished(grace_s=0.0) == 0
    assert store.claim(sweep.id, "w:1") is None


def test_a_bad_value_is_named_and_nothing_is_stored(env):
    service, _, sessions, messages = env
    with pytest.raises(SpecError) as bad:
        service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2, -3]}}})
    assert bad.value.errors == [("spec.grid.beta[2]", "Input should be greater than or equal to 0")]
    with pytest.raises(SpecError) as big:
        service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"lr": [0.001] * 101, "beta": [1] * 10}}})
    assert big.value.errors[0][0] == "spec.grid" and "1,010 children" in big.value.errors[0][1]
    with pytest.raises(SpecError) as other:
        service.submit({"kind": "sweep", "spec": {"base": {"model": "ae"}, "overrides": [{"beta": 2}]}})
    assert other.value.errors == [("spec.overrides.0.beta", "not a field of model 'ae'")]
    assert count_jobs(sessions) == 0 and messages() == 0


def test_children_succeed_then_their_evaluations_then_the_sweep(env):
    service, store, _, messages = env
    sweep, _ = service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2]}}})
    first, second = children_of(service, sweep.id)
    run(store, first.id)
    evaluation = service.children(first.id)
    assert [(e.kind, e.spec["model_job"], e.state) for e in evaluation] == [("evaluate", first.id, "queued")]
    assert evaluation[0].published_at is not None and messages() == 3
    now = service.get(sweep.id)
    assert now.state == "running" and now.progress["step"] == 1
    assert now.progress["children"] == {"queued": 1, "succeeded": 1} and now.progress["follow_ups"] == {"queued": 1}
    run(store, second.id)
    run(store, evaluation[0].id)
    assert service.get(sweep.id).state == "running"  # the second evaluation is still queued
    run(store, service.children(second.id)[0].id)
    done = service.get(sweep.id)
    assert done.state == "succeeded" and done.finished_at is not None
    assert done.progress["children"] == {"succeeded": 2} and done.progress["follow_ups"] == {"succeeded": 2}


def test_a_failed_child_fails_the_sweep_and_no_evaluation_is_asked_for_it(env):
    service, store, _, _ = env
    sweep, _ = service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2]}, "evaluate": False}})
    first, second = children_of(service, sweep.id)
    run(store, first.id, JobState.FAILED)
    run(store, second.id)
    assert service.children(first.id) == [] and service.children(second.id) == []
    done = service.get(sweep.id)
    assert done.state == "failed" and done.progress["children"] == {"failed": 1, "succeeded": 1}


def test_cancelling_a_sweep_cancels_every_unfinished_child_and_evaluation(env):
    service, store, _, _ = env
    sweep, _ = service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2, 4, 8]}}})
    done, running, *queued = children_of(service, sweep.id)
    run(store, done.id)
    evaluation = service.children(done.id)[0]
    claim = store.claim(running.id, "w:2")
    cancelled = service.cancel(sweep.id)
    assert cancelled.state == "running" and cancelled.cancel_requested  # one child is still running
    assert {service.get(j.id).state for j in queued} == {"cancelled"}
    assert service.get(evaluation.id).state == "cancelled"
    assert store.heartbeat(claim) == (True, True)  # the running child is asked to stop
    assert store.finish(claim, JobState.SUCCEEDED)  # it finished its epoch anyway: no evaluation now
    assert service.children(running.id) == []
    final = service.get(sweep.id)
    assert final.state == "cancelled" and final.progress["children"] == {"cancelled": 2, "succeeded": 2}
    with pytest.raises(JobConflict):
        service.cancel(sweep.id)
    # One child of a sweep can be cancelled by itself too.
    other, _ = service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2]}}})
    one = children_of(service, other.id)[0]
    service.cancel(one.id)
    assert service.get(other.id).progress["children"] == {"cancelled": 1, "queued": 1}


def test_an_idempotency_key_covers_the_sweep_and_its_children(env):
    service, _, sessions, messages = env
    body = {"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": [1, 2, 3]}}}
    first, replayed_first = service.submit(body, "sweep-key")
    again, replayed = service.submit(body, "sweep-key")
    assert not replayed_first and replayed and again.id == first.id
    assert count_jobs(sessions) == 4 and messages() == 3


def test_two_workers_finishing_children_at_once_keep_the_counts_exact(tmp_path):
    """PostgreSQL, where two transactions really run at once: each finishing child recounts under the
    sweep's row lock, so the last count is the truth whatever the interleaving."""
    from tests.stack import postgres_database

    with postgres_database() as database_url:
        settings = load_settings({"LATENTFORGE_HOME": str(tmp_path), "LATENTFORGE_DATABASE_URL": database_url})
        service, store, _ = make_env(settings)
        sweep, _ = service.submit({"kind": "sweep", "spec": {"base": BASE, "grid": {"beta": list(range(40))},
                                                             "evaluate": False}})
        children = [c.id for c in children_of(service, sweep.id)]
        claims = [store.claim(job_id, f"w:{i % 2}") for i, job_id in enumerate(children)]
        barrier = threading.Barrier(2)

        def finish(mine):
            for claim in mine:
                barrier.wait()  # both workers commit a child at the same instant, forty times
                assert store.finish(claim, JobState.SUCCEEDED)

        threads = [threading.Thread(target=finish, args=(claims[i::2],)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        final = service.get(sweep.id)
        assert final.state == "succeeded" and final.progress["children"] == {"succeeded": 40}
        assert final.progress["step"] == 40


def test_a_models_own_number_wins_over_its_evaluations_of_the_same_name(env):
    """A VAE records its final test_mse; its scorecard has a test_mse too (on a sample of the split)."""
    service, store, _, _ = env
    model, _ = service.submit({"kind": "train", "spec": {"model": "vae", "epochs": 1}})
    claim = store.claim(model.id, "w:1")
    assert store.finish(claim, JobState.SUCCEEDED, metrics={"test_mse": 0.04, "test_loss": 150.0})
    evaluation, _ = service.submit({"kind": "evaluate", "spec": {"model_job": model.id}})
    claim = store.claim(evaluation.id, "w:1")
    assert store.finish(claim, JobState.SUCCEEDED, metrics={"test_mse": 0.05, "knn_accuracy": 0.6},
                        parent_scope=("test_mse", "knn_accuracy"))
    assert {m.name: m.value for m in service.get(model.id).metrics} == {
        "test_mse": 0.04, "test_loss": 150.0, "knn_accuracy": 0.6}
    assert {m.name: m.value for m in service.get(evaluation.id).metrics} == {"test_mse": 0.05, "knn_accuracy": 0.6}
