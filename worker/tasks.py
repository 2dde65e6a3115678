"""The one module that joins the ML core to the database and the queue.

:class:`JobWorker` is built from a :class:`Settings` object and the queues
it takes, as rq builds a ``Worker`` from a connection and queues: its Celery
app, engine, job store and name are its own, made in ``__init__``, never at
import. Its Celery task receives a job id, claims the job (taking a new
lease), looks the kind up in the job-kind table and runs the kind's runner in
a folder that belongs to this attempt alone, records progress and the resume
point after every epoch, and ends the job, publishing exactly the files the
runner listed as its artifacts in the same fenced transaction. A monitor
thread keeps the worker's and the running job's heartbeats, notices cancel
requests and lost ownership, runs the reaper, and looks for queued jobs whose
message the broker lost. SIGTERM drains the worker: the running job ends its
epoch (or stops after the shutdown grace), is checkpointed and handed back.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from celery import signals
from celery.exceptions import Reject
from sqlalchemy.exc import SQLAlchemyError

from shared.artifacts import CHECKPOINT_KINDS, LOG_FILE, ArtifactFile, ArtifactKind
from shared.db import JobState, is_transient_db_error, make_engine, make_sessionmaker, utcnow
from shared.errors import LatentForgeError
from shared.jobstore import ArtifactRecord, Claim, JobStore
from shared.kinds import RunContext, RunOutput, get_kind, load_plugins
from shared.logs import JobLogFile, current_job, job_context, use_json
from shared.migrate import check_schema
from shared.queue import QUEUES, TASK_NAME, celery_monitored, held_job_ids, make_celery, parse_job_id, publish
from shared.settings import Settings
from shared.storage import ArtifactMismatch, ArtifactNameError, StoreUnavailable, artifact_key, open_store
from worker.files import sha256_of

log = logging.getLogger("latentforge.worker")

SWEEP_LEASE = "broker-sweep"
PUBLISH_THREADS = 4  # concurrent uploads of one job's artifacts to a remote store
DRAIN_LOG_SECONDS = 0.5  # how soon the monitor thread logs a shutdown that a signal began
RESUME_DIR = "resume"
LOG_ARTIFACT = ArtifactFile(LOG_FILE, ArtifactKind.LOG, "text/plain")  # served as UTF-8 (Flask's default for text/*)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>:/-])/(?:[^\s/'\"]+/)+([^\s/'\":,;()]+)")  # not inside a URL
T = TypeVar("T")


class AttemptLost(Exception):
    """Another attempt owns the job now: this one stops and publishes nothing."""


class HandBack(Exception):
    """The worker is shutting down: the job goes back to the queue from its newest checkpoint."""


def scrub(message: str, settings: Settings) -> str:
    """One line for users: no server paths (the folder names are replaced, other paths cut to the file name)."""
    line = " ".join(message.split())
    for root, label in ((settings.artifact_dir, "<artifacts>"), (settings.scratch_dir, "<scratch>"),
                        (settings.cache_dir, "<cache>"), (settings.data_dir, "<data dir>"), (settings.home, "<home>")):
        line = line.replace(str(root), label)
    return ABSOLUTE_PATH.sub(lambda m: m.group(1), line)[:500]


def error_for_user(exc: BaseException, settings: Settings) -> tuple[str, str]:
    """The (type, message) stored on a failed job: a user error's own message; for a bug a generic line
    (its traceback goes to the log)."""
    if isinstance(exc, LatentForgeError):
        return type(exc).__name__, scrub(str(exc), settings) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "OutOfMemory", "the job ran out of memory; try a smaller batch_size, hidden sizes or limit"
    if isinstance(exc, SQLAlchemyError):
        return "DatabaseError", "the worker could not save the job's state in the database; see the worker's log"
    return type(exc).__name__, f"the worker failed with an internal error ({type(exc).__name__}); see the worker's log"


class JobWorker:
    def __init__(self, settings: Settings, queues: Sequence[str] = QUEUES, name: str | None = None):
        load_plugins(settings.plugins)
        self.settings = settings
        self.queues = tuple(queues)
        self.host = socket.gethostname()
        self.name = name or f"{self.host}:{os.getpid()}"
        self.app = make_celery(settings)
        self.engine = make_engine(settings.database_url)
        self.artifacts = open_store(settings)
        self.store = JobStore(make_sessionmaker(self.engine), lambda job_id, queue: publish(self.app, job_id, queue),
                              settings.max_attempts)
        self.monitor = Monitor(self)
        self._host_workers: tuple[int, float] | None = None  # (count, when asked): see workers_on_this_host
        self.app.task(name=TASK_NAME, ignore_result=True)(self.receive)
        signals.worker_ready.connect(self._on_ready, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)
        if settings.log_format == "json":
            # JSON from the first line on (Celery's warnings at start too); Celery then keeps the root's handler
            # (hijack is off) and formats the handlers it adds itself as JSON, through these signals.
            root = logging.getLogger()
            if not root.handlers:
                root.addHandler(logging.StreamHandler())
            self._json_lines(root)
            signals.after_setup_logger.connect(self._json_lines, weak=False)
            signals.after_setup_task_logger.connect(self._json_lines, weak=False)

    def start(self, loglevel: str = "INFO") -> int:
        """Run Celery in this process: one job at a time, on the thread pool's one thread (nothing forks after
        CUDA starts), while the main thread keeps Celery's consumer loop: with a Redis broker it sends
        heartbeats and answers ``celery inspect`` during a job. Gossip and mingle stay off: no worker
        needs the others' events or revoked ids (cancels live in the database), and mingle's wait for
        replies would slow every start.

        Returns Celery's exit status (``worker_main`` drops it: a worker that
        died of an unrecoverable error would look like one that was stopped).
        """
        return self.app.start([
            "worker", "--queues", ",".join(self.queues), "--pool", "threads", "--concurrency", "1",
            "--loglevel", loglevel, "--hostname", self.name.replace(":", "-") + "@%h",
            "--without-gossip", "--without-mingle",
            *(() if celery_monitored(self.settings) else ("--without-heartbeat",)),
        ]) or 0

    # -- Celery's signals ---------------------------------------------------------------------

    def _json_lines(self, logger: logging.Logger, **_: Any) -> None:
        use_json(logger.handlers, {"worker": self.name})

    def _on_ready(self, **_: Any) -> None:
        check_schema(self.engine)
        self._run_celery_shutdown_once()
        if self.settings.worker_nice and hasattr(os, "nice"):
            os.nice(self.settings.worker_nice)  # below the API and other services on this host
        self.monitor.start()
        from worker.pipeline import warm_up

        log.info("worker %s warmed up in %.1f s", self.name, warm_up())
        log.info("worker %s ready (queues %s)", self.name, ",".join(self.queues))

    def _run_celery_shutdown_once(self) -> None:
        """Let Celery's shutdown signal handler run once; later SIGTERMs and SIGINTs only drain.

        Why: that handler is not re-entrant. Two SIGTERMs come together whenever the group
        is signalled (the supervisor forwards its own copy), and when the second landed
        inside the first's dispatch of ``worker_shutting_down`` it waited forever on the
        dispatcher's (non-reentrant) lock, held by the very frame it interrupted: the
        worker ignored the shutdown until the supervisor killed it (seen in CI).
        """
        celery_handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        handled = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal handled
            self.monitor.drain()  # one attribute write: safe at any point
            if not handled:
                handled = True  # before the call: a signal landing inside it stops above
                celery_handlers[signum](signum, frame)

        for signum, celery_handler in celery_handlers.items():
            if callable(celery_handler):
                signal.signal(signum, on_signal)

    def _on_shutting_down(self, **_: Any) -> None:
        self.monitor.drain()

    def _on_shutdown(self, **_: Any) -> None:
        self.monitor.stop()

    # -- database writes that survive a short outage --------------------------------------------

    def retrying(self, fn: Callable[..., T], *args: Any, patience_s: float | None = None, **kwargs: Any) -> T:
        """Call ``fn``; retry transient database errors with backoff for up to ``patience_s``.

        The default patience is the stale timeout: past it the reaper would hand
        the job to another worker anyway. Other database errors are raised at once.
        """
        deadline = time.monotonic() + (self.settings.stale_after_seconds if patience_s is None else patience_s)
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except SQLAlchemyError as exc:
                if not is_transient_db_error(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: database unavailable (%s); retrying in %.2f s", fn.__name__, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- files of one attempt -------------------------------------------------------------------

    def publish_artifacts(self, claim: Claim, folder: Path, manifest: list[ArtifactFile]) -> list[ArtifactRecord]:
        """Store each file the runner listed and return its rows: hashed now, recorded only once stored whole."""
        for item in manifest:  # every name is checked before anything is stored
            artifact_key(claim.folder, item.name)
            path = folder / item.name
            if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
                raise ArtifactNameError(f"artifact {item.name} lies outside its run's folder")
            if not path.is_file():
                raise RuntimeError(f"the runner listed {item.name}, which it did not write")

        def publish(item: ArtifactFile) -> ArtifactRecord:
            path = folder / item.name
            sha256 = sha256_of(path)
            key = self.artifacts.publish(claim.folder, item.name, sha256, item.content_type)
            return ArtifactRecord(name=item.name, kind=item.kind.value, content_type=item.content_type,
                                  size=path.stat().st_size, sha256=sha256, path=key)

        if not self.artifacts.remote or len(manifest) < 2:
            return [publish(item) for item in manifest]
        with ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="publish") as pool:  # round trips overlap
            # Each upload in a copy of this context: its log lines (retries) are the job's.
            uploads = [pool.submit(contextvars.copy_context().run, publish, item) for item in manifest]
            return [upload.result() for upload in uploads]

    def publish_log(self, claim: Claim, folder: Path) -> list[ArtifactRecord]:
        """A failed or cancelled job's log.txt alone (its only artifact), fenced like any file; none if it cannot be
        stored: the job's end is recorded all the same."""
        try:
            return self.publish_artifacts(claim, folder, [LOG_ARTIFACT])
        except Exception as exc:
            log.warning("job %s: its log.txt was not published (%s: %s)", claim.job_id, type(exc).__name__, exc)
            return []

    def prune_attempt_folders(self, job_id: str) -> None:
        """Remove the folders of attempts that lost, keeping the running or winning one and the checkpoint's."""
        try:
            keep = self.store.folders_in_use(job_id)
            stored = self.artifacts.attempt_folders(job_id)
        except (SQLAlchemyError, StoreUnavailable, OSError) as exc:
            log.debug("job %s: not pruning now (%s)", job_id, type(exc).__name__)
            return  # the next claim or finish prunes
        except Exception as exc:  # an object store that refuses a listing: leftovers cost space only
            log.warning("job %s: could not list its attempt folders (%s)", job_id, exc)
            return
        for folder in stored:
            if folder not in keep:
                self.artifacts.delete(folder)

    def resume_point(self, claim: Claim) -> Path | None:
        """The checkpoint an owning attempt recorded, fetched and verified; None to start afresh.

        A store that does not answer raises :class:`StoreUnavailable`: the
        attempt is retried later rather than throwing the progress away.
        """
        from worker.checkpoint import verify_training_state

        pointer = claim.checkpoint
        if not pointer:
            return None
        files = pointer.get("sha256") or {}
        try:
            folder = self.artifacts.local_folder(str(pointer.get("path", "")), files)
            problem = verify_training_state(folder, files)
        except (ArtifactNameError, ArtifactMismatch) as exc:
            problem = str(exc)
        if problem:
            log.warning("job %s: not resuming from epoch %s (%s); starting afresh", claim.job_id, pointer.get("epoch"),
                        problem)
            return None
        return folder

    def parent_folder(self, parent_id: str) -> Path:
        """A local copy of the checkpoint a parent job published (from the store's cache, by sha256)."""
        published = self.store.published_files(parent_id, CHECKPOINT_KINDS)
        if published is None:
            raise ArtifactMismatch(f"job {parent_id} published no checkpoint")
        return self.artifacts.local_folder(*published)

    def configure_threads(self, claim: Claim) -> int:
        """Intra-op threads for this job: the CPUs this worker may use shared among the workers on its host.

        A resumed job keeps the count of the attempt it resumes: reductions then
        run in the same order, so its losses match an uninterrupted run bit for bit.
        """
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.settings.torch_threads:
            threads, why = self.settings.torch_threads, "LATENTFORGE_TORCH_THREADS"
        elif claim.checkpoint and claim.checkpoint.get("torch_threads"):
            threads, why = int(claim.checkpoint["torch_threads"]), "as the attempt it resumes"
        else:
            workers_here = self.workers_on_this_host()
            threads = max(1, cpus // max(1, workers_here))
            why = f"{cpus} CPUs, {workers_here} worker(s) on this host"
        torch.set_num_threads(threads)
        log.info("job %s: %d torch thread(s) (%s)", claim.job_id, threads, why)
        return threads

    def workers_on_this_host(self) -> int:
        """Live workers on this host, asked of the database at most once per heartbeat interval (a sweep's tiny
        children would otherwise ask for every job)."""
        now = time.monotonic()
        if self._host_workers is None or now - self._host_workers[1] > self.settings.heartbeat_seconds:
            try:
                self._host_workers = (self.store.live_workers_on(self.host, self.settings.stale_after_seconds), now)
            except SQLAlchemyError:
                return 1
        return self._host_workers[0]

    # -- running one job ------------------------------------------------------------------------

    def run_claimed(self, claim: Claim, folder: Path) -> RunOutput:
        """Run one job's work with its kind's runner; raises on failure."""
        from worker.checkpoint import save_training_state

        kind = get_kind(claim.kind)
        spec = kind.parse(claim.spec)
        threads = self.configure_threads(claim)
        folder.mkdir(parents=True, exist_ok=True)
        resume_root = folder / RESUME_DIR
        parent = self.parent_folder(claim.parent_id) if kind.parent and claim.parent_id else None
        resume_from = self.resume_point(claim)
        shipper = ResumeShipper(self, claim, resume_root) if self.artifacts.remote else None

        def on_epoch(state: Any, metrics: Any) -> None:
            # The resume state first, in a folder of its own, stored whole; then
            # the pointer to it, fenced: only an attempt that owns the job moves it.
            epoch_folder = f"epoch-{state.epoch:06d}"
            relative = f"{claim.folder}/{RESUME_DIR}/{epoch_folder}"
            digests = save_training_state(resume_root / epoch_folder, state)
            pointer = {"lease": claim.lease, "epoch": state.epoch, "path": relative, "sha256": digests,
                       "torch_threads": threads}
            total = getattr(spec, "epochs", state.epoch)
            progress = {**metrics.to_dict(), "total": total, "history": [m.to_dict() for m in state.history]}
            if shipper is None:  # stored in place: the pointer moves with the progress
                for name, sha256 in digests.items():
                    self.artifacts.publish(relative, name, sha256, "application/octet-stream")
            if not self.retrying(self.store.record_progress, claim, progress, None if shipper else pointer):
                self.monitor.lost.set()
                raise AttemptLost(f"attempt {claim.attempt} lost the job after epoch {state.epoch}")
            if shipper is not None:
                shipper.offer(epoch_folder, pointer)
            else:
                for older in resume_root.iterdir():  # the pointer has moved on: older states are not needed
                    if older.name != epoch_folder:
                        shutil.rmtree(older, ignore_errors=True)
            if self.monitor.draining and state.epoch < total:
                if shipper is not None:
                    shipper.flush()  # the newest state stored and pointed to, then hand back
                raise HandBack(f"its worker shut down; handed back after epoch {state.epoch}")

        def report(progress: dict) -> None:
            if not self.retrying(self.store.record_progress, claim, progress):
                self.monitor.lost.set()
                raise AttemptLost(f"attempt {claim.attempt} lost the job")

        ctx = RunContext(
            folder=folder, data_dir=self.settings.data_dir, allow_download=self.settings.allow_download,
            cache_dir=self.settings.cache_dir, parent_folder=parent,
            log=lambda line: log.info("job %s: %s", claim.job_id, line), should_stop=self.monitor.should_stop,
            on_epoch=on_epoch, report=report, resume_from=resume_from,
        )
        try:
            return kind.load_runner()(spec, ctx)
        finally:
            if shipper is not None:
                shipper.close()

    def drop_message(self, what: str) -> None:
        """A message that cannot name a job: acknowledged and dropped, once, with one log line and a count."""
        log.error("dropped a message that names no job: %s", what)
        try:
            self.store.count_dropped(self.name)
        except SQLAlchemyError:
            pass

    def receive(self, *args: Any, **kwargs: Any) -> None:
        """The Celery task: a message should name one job."""
        job_id = parse_job_id(args, kwargs)
        if job_id is None:
            self.drop_message(ascii((args, kwargs))[:200])
            return
        self.execute(job_id)

    def execute(self, job_id: str) -> JobState | None:
        """Claim and run one job, wrapped so that every outcome ends in the job row (or, if the
        database stays away, in a running row with a stale heartbeat that the reaper requeues)."""
        if self.monitor.draining:
            raise Reject("the worker is shutting down", requeue=True)
        try:
            claim = self.store.claim(job_id, self.name)
        except SQLAlchemyError as exc:
            if not is_transient_db_error(exc):
                self.drop_message(f"job {job_id}: the claim failed with {type(exc).__name__}")
                log.debug("claim of %s failed", job_id, exc_info=True)
                return None
            # The database is away: hand the message back rather than acknowledge
            # (and so lose) it; the broker delivers it again.
            log.warning("job %s: cannot claim (%s); message returned to the queue", job_id, exc.__class__.__name__)
            time.sleep(self.settings.heartbeat_seconds)
            raise Reject(type(exc).__name__, requeue=True) from None
        if claim is None:
            log.info("job %s: not claimable (already taken, finished or cancelled); message dropped", job_id)
            return None
        with job_context(job_id, claim.attempt, claim.lease):  # every line from here on is the job's
            return self.run_attempt(claim)

    def run_attempt(self, claim: Claim) -> JobState | None:
        """Run the attempt ``claim`` took and record how it ended; its lines go to its log.txt as well."""
        from worker.train import TrainingCancelled

        job_id = claim.job_id
        folder = self.artifacts.workspace(claim.folder)
        context = current_job()
        assert context is not None
        job_log = JobLogFile.attach(folder / LOG_FILE, context, redact=lambda text: scrub(text, self.settings))
        log.info("job %s: %s, attempt %d, lease %d", job_id, claim.kind, claim.attempt, claim.lease)
        if claim.lease > 1:  # folders of earlier attempts that lost
            self.prune_attempt_folders(job_id)
        monitor = self.monitor
        monitor.begin(claim)
        outcome = "abandoned"  # until the attempt ends otherwise
        artifacts: list[ArtifactRecord] = []
        output: RunOutput | None = None
        error: tuple[str, str] | None = None
        hand_back_reason = "its worker shut down mid-epoch"
        try:
            output = self.run_claimed(claim, folder)
            job_log.close()  # whole before it is hashed
            manifest = [item for item in output.artifacts if item.name != LOG_FILE] + [LOG_ARTIFACT]
            artifacts = self.publish_artifacts(claim, folder, manifest)
            outcome = "succeeded"
        except (AttemptLost, TrainingCancelled, HandBack) as stop:
            outcome = ("lost" if monitor.lost.is_set() else "cancelled" if monitor.cancel.is_set()
                       else "handback" if monitor.draining else "lost")
            if isinstance(stop, HandBack):
                hand_back_reason = str(stop)
        except StoreUnavailable as exc:
            log.error("job %s: %s", job_id, exc)
            outcome, error = "store", ("ArtifactStoreUnavailable", scrub(str(exc), self.settings))
        except SQLAlchemyError as exc:
            if not is_transient_db_error(exc):
                log.exception("job %s failed", job_id)
                outcome, error = "failed", error_for_user(exc, self.settings)
            else:
                log.error("job %s: the database stayed away for over %g s; leaving the job to the reaper",
                          job_id, self.settings.stale_after_seconds)
                outcome = "abandoned"
        except Exception as exc:  # the one error wrapper: the client sees one line, the log the traceback
            if isinstance(exc, LatentForgeError):
                log.error("job %s failed: %s", job_id, exc)
            else:
                log.exception("job %s failed", job_id)
            outcome, error = "failed", error_for_user(exc, self.settings)
        finally:
            monitor.end()
            saved_resume_state = (folder / RESUME_DIR).is_dir()
            job_log.close()
            if outcome in ("failed", "cancelled") and not monitor.lost.is_set():
                artifacts = self.publish_log(claim, folder)  # why it failed, or how far it got
            self.artifacts.release(claim.folder)
        if monitor.lost.is_set():
            outcome = "lost"
        try:
            if outcome == "store":  # nothing half-published: retried while attempts remain, else failed with why
                assert error is not None
                ended = self.retrying(self.store.give_up_attempt, claim, error[1], error[0])
                if ended is not None:
                    log.warning("job %s: %s after its artifact store stopped answering", job_id, ended)
                    return None
                outcome = "lost"
            if outcome == "handback":
                if self.retrying(self.store.hand_back, claim, hand_back_reason):
                    log.info("job %s: handed back to the queue (%s)", job_id, hand_back_reason)
                    return None
                outcome = "lost"
            if outcome in ("succeeded", "failed", "cancelled"):
                state = JobState(outcome)
                metrics = output.metrics if output is not None and state is JobState.SUCCEEDED else {}
                scope = output.parent_scope if output is not None and state is JobState.SUCCEEDED else ()
                summary = output.summary if output is not None and state is JobState.SUCCEEDED else None
                if self.retrying(self.store.finish, claim, state, error=error, artifacts=artifacts, metrics=metrics,
                                 parent_scope=scope, progress=summary):
                    log.info("job %s: %s", job_id, state.value)
                    if saved_resume_state:  # the job has ended: nothing resumes from it again
                        self.artifacts.delete(f"{claim.folder}/{RESUME_DIR}")
                    if claim.lease > 1:  # an earlier attempt may have left files
                        self.prune_attempt_folders(job_id)
                    return state
                outcome = "lost"
        except SQLAlchemyError as exc:
            if is_transient_db_error(exc) or outcome != "succeeded":
                log.error("job %s: could not record its end (%s); the reaper requeues it", job_id, type(exc).__name__)
                return None
            # The database refused what the job produced (a bug, not an outage): running it again would only
            # be refused again, so the job fails with the reason instead of going round until its attempts run out.
            log.exception("job %s: its result could not be recorded", job_id)
            try:
                if self.store.finish(claim, JobState.FAILED, error=error_for_user(exc, self.settings)):
                    return JobState.FAILED
            except SQLAlchemyError:
                log.error("job %s: could not record its failure either; the reaper requeues it", job_id)
            return None
        if outcome == "lost":
            log.warning("job %s: attempt %d lost the job before finishing; its result is discarded", job_id,
                        claim.attempt)
            self.prune_attempt_folders(job_id)
        return None


class ResumeShipper:
    """Stores a train job's resume states in a remote artifact store from a thread of its own, newest first.

    Why: uploading on the training thread after every epoch made the seed job
    20% slower against a local SeaweedFS. Training hands each state over once
    it is on the local disk and goes on; this thread uploads it, at most once
    per ``resume_upload_seconds``, and only then moves the job's resume pointer
    (fenced), so the pointer never names a state that is not stored whole. A
    state replaced by a newer one before its upload began is dropped. A failure
    is raised on the training thread at its next epoch, or at ``flush``.
    """

    def __init__(self, worker: JobWorker, claim: Claim, resume_root: Path):
        self.worker, self.claim, self.resume_root = worker, claim, resume_root
        self._cond = threading.Condition()
        self._pending: tuple[str, dict[str, Any]] | None = None  # (epoch folder, pointer)
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._shipped: str | None = None  # the epoch folder the pointer names
        self._interval = worker.settings.resume_upload_seconds
        self._last_start = float("-inf")
        self._flushing = False
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),  # the job's lines
                                        name=f"resume-{claim.job_id[:8]}", daemon=True)
        self._thread.start()

    def offer(self, epoch_folder: str, pointer: dict[str, Any]) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            dropped, self._pending = self._pending, (epoch_folder, pointer)
            self._cond.notify_all()
        if dropped is not None:
            shutil.rmtree(self.resume_root / dropped[0], ignore_errors=True)

    def flush(self) -> None:
        """Wait until the newest state offered is stored and pointed to."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while (self._pending is not None or self._busy) and self._error is None:
                self._cond.wait()
            self._flushing = False
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """The attempt is over: drop what waits, let an upload under way end, and move no pointer after it."""
        with self._cond:
            self._closed, self._pending = True, None
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    wait = self._last_start + self._interval - time.monotonic()
                    if self._pending is not None and (wait <= 0 or self._flushing):
                        break
                    self._cond.wait(wait if self._pending is not None else None)
                if self._closed:
                    return
                (epoch_folder, pointer), self._pending, self._busy = self._pending, None, True
                self._last_start = time.monotonic()
            try:
                self._ship(epoch_folder, pointer)
            except BaseException as exc:  # raised on the training thread
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self._error is not None:
                return

    def _ship(self, epoch_folder: str, pointer: dict[str, Any]) -> None:
        worker, claim = self.worker, self.claim
        for name, sha256 in pointer["sha256"].items():
            worker.artifacts.publish(pointer["path"], name, sha256, "application/octet-stream")
        with self._cond:
            if self._closed:
                return
        if not worker.retrying(worker.store.record_checkpoint, claim, pointer):
            worker.monitor.lost.set()
            raise AttemptLost(f"attempt {claim.attempt} lost the job after epoch {pointer['epoch']}")
        previous, self._shipped = self._shipped, epoch_folder
        if previous is not None:  # the pointer has moved on: the older state is not needed
            shutil.rmtree(self.resume_root / previous, ignore_errors=True)
            worker.artifacts.delete(f"{claim.folder}/{RESUME_DIR}/{previous}")


# -- the monitor thread ---------------------------------------------------------------------------


class LostMessageSweeper:
    """Republishes queued jobs whose message the broker no longer holds.

    A broker restarted without persistence, or a flushed database, loses the
    messages of jobs that are queued in the database: nothing would ever run
    them. One worker at a time (the holder of a database lease) compares the
    broker's messages with the queued rows; a job missing in two sweeps in a
    row is published again. The second look keeps a message that is between
    the broker and a worker's claim from being taken for lost; a duplicate is
    harmless anyway, as the claim runs a job once.
    """

    def __init__(self, worker: JobWorker) -> None:
        self.worker = worker
        self.suspects: set[str] = set()

    def sweep(self) -> int:
        store, settings = self.worker.store, self.worker.settings
        interval = settings.broker_check_seconds
        if not store.acquire_lease(SWEEP_LEASE, self.worker.name, 3 * interval):
            self.suspects.clear()
            return 0
        queued = store.queued_published_before(utcnow() - timedelta(seconds=interval))
        if not queued:
            self.suspects.clear()
            return 0
        held = held_job_ids(self.worker.app, QUEUES, unacked_within_s=settings.stale_after_seconds)
        if held is None:  # a broker whose messages cannot be listed
            return 0
        missing = set(queued) - held
        confirmed, self.suspects = missing & self.suspects, missing - self.suspects
        count = sum(store.republish(job_id, queued[job_id]) for job_id in sorted(confirmed))
        if count:
            log.warning("republished %d queued job(s) whose message the broker no longer held", count)
        return count


class Monitor:
    """Background heartbeats, cancel and ownership checks, the reaper and the lost-message sweep."""

    def __init__(self, worker: JobWorker):
        self.worker = worker
        self.claim: Claim | None = None
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.drain_deadline = float("inf")  # set once, on shutdown
        self._drain_logged = False
        self.sweeper = LostMessageSweeper(worker)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="latentforge-monitor", daemon=True)

    def start(self) -> None:
        self.beat()  # registered at once: /health counts this worker from "ready" on
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.worker.store.release_lease(SWEEP_LEASE, self.worker.name)
            self.worker.store.worker_gone(self.worker.name)
        except SQLAlchemyError:
            log.warning("could not remove this worker's row; it expires on its own")

    @property
    def draining(self) -> bool:
        return self.drain_deadline != float("inf")

    def drain(self) -> None:
        """Warm shutdown: take no new job; the running one stops at its epoch's end or after the grace.

        Celery calls this from its signal handler, on the main thread, in the middle of
        whatever that thread was doing: so one attribute write and nothing else, no lock
        and no log line (a log call there can wait forever on a lock the interrupted
        code holds; seen once in CI as a worker that ignored SIGTERM). The monitor
        thread logs it.
        """
        if not self.draining:  # a second signal does not extend the grace
            self.drain_deadline = time.monotonic() + self.worker.settings.shutdown_grace_seconds

    def _log_drain(self) -> None:
        if self.draining and not self._drain_logged:
            self._drain_logged = True
            log.info("worker %s: shutting down; the running job (if any) is checkpointed and handed back within %g s",
                     self.worker.name, self.worker.settings.shutdown_grace_seconds)

    def begin(self, claim: Claim) -> None:
        with self._lock:
            self.claim = claim
            self.cancel.clear()
            self.lost.clear()
        self.beat()

    def end(self) -> None:
        with self._lock:
            self.claim = None

    def should_stop(self) -> bool:
        """Polled between batches: cancel, a lost job, or a shutdown whose grace has run out."""
        return self.cancel.is_set() or self.lost.is_set() or time.monotonic() >= self.drain_deadline

    def beat(self) -> None:
        # Held across the database calls: once end() returns, no heartbeat of
        # the finished attempt is in flight to find the job "lost".
        store = self.worker.store
        with self._lock:
            claim = self.claim
            store.worker_seen(self.worker.name, ",".join(self.worker.queues), claim.job_id if claim else None,
                              self.draining)
            if claim is not None:
                owned, cancel = store.heartbeat(claim)
                if not owned:
                    with job_context(claim.job_id, claim.attempt, claim.lease):
                        log.warning("job %s: attempt %d no longer owns the job; stopping", claim.job_id, claim.attempt)
                    self.lost.set()
                if cancel:
                    self.cancel.set()

    def _chore(self, name: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except SQLAlchemyError as exc:
            if not is_transient_db_error(exc):
                log.exception("monitor: %s failed", name)
            else:
                log.warning("monitor: %s: database unavailable (%s)", name, type(exc).__name__)
        except Exception as exc:  # the broker may be away too; keep beating
            log.warning("monitor: %s failed (%s: %s)", name, type(exc).__name__, exc)

    def _loop(self) -> None:
        settings = self.worker.settings
        next_reap = 0.0
        next_beat = time.monotonic() + settings.heartbeat_seconds  # start() has just beaten
        next_sweep = time.monotonic() + settings.broker_check_seconds
        while not self._stop.wait(min(settings.heartbeat_seconds, DRAIN_LOG_SECONDS)):
            self._log_drain()
            now = time.monotonic()
            if now < next_beat:
                continue
            next_beat = now + settings.heartbeat_seconds
            self._chore("heartbeat", self.beat)
            now = time.monotonic()
            if now >= next_reap:
                self._chore("reaper", self._reap)
                next_reap = now + settings.heartbeat_seconds * 2
            if now >= next_sweep and not self.draining:
                self._chore("lost-message sweep", self.sweeper.sweep)
                next_sweep = now + settings.broker_check_seconds

    def _reap(self) -> None:
        counts = self.worker.store.reap(self.worker.settings.stale_after_seconds)
        if any(counts.values()):
            log.info("reaper: %s", counts)
