"""Delivery rules of the job store on a real database and a real (filesystem) broker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.db import Job, JobState, make_engine, make_sessionmaker, utcnow
from shared.jobstore import JobConflict, JobNotFound, JobStore
from shared.migrate import upgrade
from shared.queue import make_celery, publish
from shared.settings import load_settings


@pytest.fixture()
def env(tmp_path):
    settings = load_settings({"LATENTFORGE_HOME": str(tmp_path)})
    upgrade(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    app = make_celery(settings)
    store = JobStore(sessions, lambda job_id, queue: publish(app, job_id, queue), max_attempts=2)
    queue_dir = settings.broker_dir / "queue"

    def messages() -> int:
        return len(list(queue_dir.glob("*.msg")))

    return store, sessions, messages


def new_job(store, sessions) -> str:
    with sessions() as session:
        return store.create(session, kind="train", spec={"epochs": 1}, queue="cpu").id


def set_fields(sessions, job_id, **values):
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def get(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_create_commits_then_publishes_once(env):
    store, sessions, messages = env
    job_id = new_job(store, sessions)
    job = get(sessions, job_id)
    assert job.state == "queued" and job.published_at is not None and job.max_attempts == 2
    assert messages() == 1


def test_only_one_claim_wins(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    first = store.claim(job_id, "w1:1")
    second = store.claim(job_id, "w2:2")
    assert first is not None and first.attempt == 1 and second is None
    assert get(sessions, job_id).state == "running"


def test_writes_of_an_attempt_that_lost_the_job_are_refused(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    old = store.claim(job_id, "w1:1")
    set_fields(sessions, job_id, heartbeat_at=utcnow() - timedelta(seconds=120))
    assert store.reap(stale_after_s=60)["requeued"] == 1
    new = store.claim(job_id, "w2:2")
    assert new.attempt == 2
    assert store.heartbeat(old) == (False, False)
    assert store.record_progress(old, {"epoch": 9}) is False
    assert store.finish(old, JobState.SUCCEEDED) is False
    assert store.finish(new, JobState.SUCCEEDED) is True
    assert get(sessions, job_id).state == "succeeded"


def test_reaper_requeues_then_fails_after_max_attempts(env):
    store, sessions, messages = env
    job_id = new_job(store, sessions)
    stale = utcnow() - timedelta(seconds=120)
    store.claim(job_id, "w1:1")
    set_fields(sessions, job_id, heartbeat_at=stale)
    counts = store.reap(stale_after_s=60, now=utcnow() + timedelta(seconds=10))
    assert counts["requeued"] == 1 and counts["republished"] == 1
    job = get(sessions, job_id)
    assert job.state == "queued" and job.worker is None and job.published_at is not None
    assert messages() == 2  # the original and the republished message
    store.claim(job_id, "w2:2")
    set_fields(sessions, job_id, heartbeat_at=stale)
    assert store.reap(stale_after_s=60)["failed"] == 1
    job = get(sessions, job_id)
    assert job.state == "failed" and job.error_type == "WorkerLost" and "2 attempts" in job.error_message


def test_fresh_heartbeats_are_left_alone(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    claim = store.claim(job_id, "w1:1")
    assert store.heartbeat(claim) == (True, False)
    assert store.reap(stale_after_s=60) == {"requeued": 0, "failed": 0, "cancelled": 0, "republished": 0}


def test_a_committed_job_that_never_reached_the_broker_is_republished(env):
    store, sessions, messages = env
    with sessions.begin() as session:  # as if the API died between commit and publish
        job = Job(kind="train", spec={}, queue="cpu", queued_at=utcnow() - timedelta(seconds=30))
        session.add(job)
        session.flush()
        job_id = job.id
    assert messages() == 0
    assert store.republish_unpublished() == 1
    assert messages() == 1 and get(sessions, job_id).published_at is not None
    assert store.republish_unpublished() == 0  # once only


def test_recent_unpublished_jobs_wait_for_the_grace_period(env):
    store, sessions, messages = env
    with sessions.begin() as session:
        session.add(Job(kind="train", spec={}, queue="cpu"))
    assert store.republish_unpublished() == 0 and messages() == 0


def test_cancel_queued_running_and_finished(env):
    store, sessions, _ = env
    queued = new_job(store, sessions)
    assert store.cancel(queued) == "cancelled"
    assert store.claim(queued, "w:1") is None  # a cancelled queued job never starts
    running = new_job(store, sessions)
    claim = store.claim(running, "w:1")
    assert store.cancel(running) == "running"
    assert store.heartbeat(claim) == (True, True)
    store.finish(claim, JobState.CANCELLED)
    with pytest.raises(JobConflict, match="already finished"):
        store.cancel(running)
    with pytest.raises(JobNotFound):
        store.cancel("00000000-0000-0000-0000-000000000000")


def test_stale_job_with_cancel_requested_ends_cancelled(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    store.claim(job_id, "w:1")
    store.cancel(job_id)
    set_fields(sessions, job_id, heartbeat_at=utcnow() - timedelta(seconds=120))
    assert store.reap(stale_after_s=60)["cancelled"] == 1
    assert get(sessions, job_id).state == "cancelled"


def test_worker_registry(env):
    store, sessions, _ = env
    store.worker_seen("host:1", "gpu,cpu", None)
    store.worker_seen("host:1", "gpu,cpu", "job")
    live = store.live_workers(stale_after_s=60)
    assert [(w.hostname, w.current_job) for w in live] == [("host:1", "job")]
    store.worker_gone("host:1")
    assert store.live_workers(stale_after_s=60) == []
    assert list(sessions().scalars(select(Job))) == []


def test_each_claim_takes_a_new_lease_and_fences_by_it(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    first = store.claim(job_id, "w1:1")
    assert (first.attempt, first.lease, first.folder) == (1, 1, f"jobs/{job_id}/run-1")
    assert store.hand_back(first, "shutting down") is True
    job = get(sessions, job_id)
    assert job.state == "queued" and job.attempts == 0 and job.last_interruption == "shutting down"
    assert job.published_at is not None  # handed back and republished at once
    second = store.claim(job_id, "w1:1")  # the same worker name: only the lease tells the attempts apart
    assert (second.attempt, second.lease) == (1, 2)
    assert store.record_progress(first, {"epoch": 9}) is False
    assert store.finish(first, JobState.SUCCEEDED) is False
    assert store.hand_back(first, "again") is False
    assert store.finish(second, JobState.SUCCEEDED) is True


def test_the_resume_pointer_moves_only_with_the_owning_attempt(env):
    store, sessions, _ = env
    job_id = new_job(store, sessions)
    old = store.claim(job_id, "w1:1")
    pointer = {"lease": old.lease, "epoch": 3, "path": f"{old.folder}/resume/epoch-000003", "sha256": {}}
    assert store.record_progress(old, {"epoch": 3}, pointer)
    set_fields(sessions, job_id, heartbeat_at=utcnow() - timedelta(seconds=120))
    assert store.reap(stale_after_s=60)["requeued"] == 1
    new = store.claim(job_id, "w2:2")
    assert new.checkpoint == pointer
    # The stale attempt cannot move the pointer, and its folder is kept while the pointer names it.
    assert not store.record_progress(old, {"epoch": 4}, {**pointer, "epoch": 4})
    assert get(sessions, job_id).checkpoint["epoch"] == 3
    assert store.folders_in_use(job_id) == {new.folder, old.folder}
    assert store.finish(new, JobState.SUCCEEDED)
    assert get(sessions, job_id).checkpoint is None
    assert store.folders_in_use(job_id) == {new.folder}


def test_a_crashed_worker_s_job_is_settled_at_once_with_the_reason(env):
    store, sessions, messages = env
    job_id = new_job(store, sessions)
    store.claim(job_id, "w1:1")
    counts = store.worker_crashed("w1:1", "its worker process 1 was killed by SIGSEGV")
    assert counts["requeued"] == 1 and counts["republished"] == 1 and messages() == 2
    job = get(sessions, job_id)
    assert job.state == "queued" and "SIGSEGV" in job.last_interruption
    store.claim(job_id, "w2:2")
    assert store.worker_crashed("w2:2", "its worker process 2 was killed by SIGKILL")["failed"] == 1
    job = get(sessions, job_id)
    assert job.state == "failed" and job.error_type == "WorkerLost"
    assert job.error_message == "gave up after 2 attempts; the last one ended because its worker process 2 was killed by SIGKILL"


def test_a_queued_job_is_republished_only_through_its_queued_row(env):
    store, sessions, messages = env
    job_id = new_job(store, sessions)
    later = utcnow() + timedelta(seconds=1)
    assert store.queued_published_before(later) == {job_id: "cpu"}
    assert store.republish(job_id, "cpu") is True and messages() == 2
    store.claim(job_id, "w:1")
    assert store.queued_published_before(later) == {}
    assert store.republish(job_id, "cpu") is False and messages() == 2


def test_a_lease_has_one_holder_until_it_expires(env):
    store, *_ = env
    assert store.acquire_lease("chore", "a", ttl_s=60)
    assert store.acquire_lease("chore", "a", ttl_s=60)  # renewed
    assert not store.acquire_lease("chore", "b", ttl_s=60)
    assert store.acquire_lease("gone", "a", ttl_s=-1)
    assert store.acquire_lease("gone", "b", ttl_s=60)  # expired: taken over
    store.release_lease("chore", "a")
    assert store.acquire_lease("chore", "b", ttl_s=60)


def test_the_broker_inventory_lists_queued_messages(env, tmp_path):
    from shared.queue import held_job_ids

    store, sessions, _ = env
    ids = {new_job(store, sessions) for _ in range(3)}
    app = make_celery(load_settings({"LATENTFORGE_HOME": str(tmp_path)}))  # the env fixture's home
    assert held_job_ids(app) == ids
    assert held_job_ids(app, queues=("gpu",)) == set()


def test_message_job_ids_are_parsed_strictly():
    from shared.queue import parse_job_id

    job_id = "0b7c9c6e-3f0e-4c1b-9d8e-2f4b1a3c5d7e"
    assert parse_job_id([job_id]) == job_id
    assert parse_job_id((job_id.upper(),)) == job_id
    for args, kwargs in (([], None), ([job_id, 1], None), ([{"id": job_id}], None), (["a\x00b"], None),
                         ([job_id[:-1] + "\x00"], None), ([job_id], {"x": 1}), ("not a list", None),
                         (["１" * 36], None)):
        assert parse_job_id(args, kwargs) is None, (args, kwargs)


def test_database_errors_are_classified():
    import sqlite3

    from sqlalchemy import exc as sa_exc

    from shared.db import is_transient_db_error

    def wrapped(cls, orig):
        return cls("SELECT 1", {}, orig)

    class PgError(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    assert is_transient_db_error(wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")))
    assert not is_transient_db_error(wrapped(sa_exc.OperationalError, sqlite3.OperationalError("no such table: jobs")))
    assert is_transient_db_error(wrapped(sa_exc.OperationalError, PgError("40001")))  # serialisation failure
    assert is_transient_db_error(wrapped(sa_exc.OperationalError, PgError("57P01")))  # admin shutdown
    assert is_transient_db_error(wrapped(sa_exc.OperationalError, Exception("connection refused")))
    assert not is_transient_db_error(wrapped(sa_exc.DataError, PgError("22021")))  # NUL in a string
    assert not is_transient_db_error(wrapped(sa_exc.ProgrammingError, PgError("42P01")))
    assert not is_transient_db_error(wrapped(sa_exc.IntegrityError, PgError("23505")))
    assert is_transient_db_error(sa_exc.TimeoutError("pool exhausted"))
    assert not is_transient_db_error(ValueError("not a database error"))


def test_workers_are_counted_per_host_with_like_wildcards_taken_literally(env):
    store, *_ = env
    for name in ("gpu_1:10", "gpu_1:11", "gpuX1:12", "gpu_1.lan:13"):
        store.worker_seen(name, "cpu", None)
    assert store.live_workers_on("gpu_1", stale_after_s=60) == 2
    assert store.live_workers_on("gpu%", stale_after_s=60) == 0
