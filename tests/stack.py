"""Real stacks for end-to-end tests: API server and Celery worker processes on real brokers and databases.

Nothing is mocked: the API is gunicorn on a free port, each worker is a
``latentforge worker`` process, the broker is Celery's filesystem transport or
a Redis database of its own, the store a SQLite file or a PostgreSQL database
created for the run and dropped after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import requests

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("LATENTFORGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LATENTFORGE_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database created for this run and dropped after it."""
    import psycopg

    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """An empty Redis database number of its own, flushed after the run."""
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        # SETNX a claim key so that two concurrent runs do not share a database.
        if client.dbsize() == 0 and client.set("latentforge-test-claim", "1", nx=True, ex=3600):
            try:
                yield f"{REDIS_URL}/{number}"
            finally:
                client.flushdb()
            return
    raise RuntimeError("no empty Redis database (1-15) for this test run")


def stop_process_groups(procs, grace_s: float = 15) -> None:
    """SIGTERM each process group, wait, then SIGKILL the ones still alive."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class Stack:
    """Environment plus role processes for one stack; ``close`` stops them all."""

    def __init__(self, home: Path, data_dir: Path, *, database_url: str | None = None, broker_url: str | None = None,
                 token: str | None = None, heartbeat_s: float = 0.5, stale_after_s: float = 4.0, extra_env: dict | None = None,
                 separate_homes: bool = False):
        """``separate_homes``: each process (API, each worker) gets a home folder of its own, as on different
        hosts; only the database, the broker and the object store are shared."""
        self.home = home
        self.separate_homes = separate_homes
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTFORGE_")}
        self.env.update({
            "LATENTFORGE_HOME": str(home),
            "LATENTFORGE_DATA_DIR": str(data_dir),
            "LATENTFORGE_HEARTBEAT_SECONDS": str(heartbeat_s),
            "LATENTFORGE_STALE_AFTER_SECONDS": str(stale_after_s),
            "PYTHONUNBUFFERED": "1",
        })
        if database_url:
            self.env["LATENTFORGE_DATABASE_URL"] = database_url
        if broker_url:
            self.env["LATENTFORGE_BROKER_URL"] = broker_url
        if token:
            self.env["LATENTFORGE_API_TOKEN"] = token
        self.env.update(extra_env or {})
        self.token = token
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = ""

    @property
    def database_url(self) -> str:
        return self.env.get("LATENTFORGE_DATABASE_URL") or f"sqlite:///{self.home / 'latentforge.db'}"

    # -- processes ------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "latentforge.cli", *args], cwd=REPO, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def host_home(self, name: str) -> Path:
        """The home folder of process ``name``: its own with ``separate_homes``, else the stack's."""
        return self.home / "hosts" / name if self.separate_homes else self.home

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        env = {**self.env, **(env or {})}
        if self.separate_homes:
            env["LATENTFORGE_HOME"] = str(self.host_home(name))
            env.pop("LATENTFORGE_CACHE_DIR", None)  # nothing on disk is shared, caches included
        proc = subprocess.Popen([sys.executable, "-m", "latentforge.cli", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def bring_up(self, *, api: bool = True, workers: int = 1) -> "Stack":
        """Migrate, then start the API (if asked) and workers named worker1, worker2, ..."""
        self.upgrade()
        if api:
            self.start_api()
        for i in range(workers):
            self.start_worker(f"worker{i + 1}")
        return self

    def upgrade(self) -> None:
        result = self.cli("db", "upgrade")
        assert result.returncode == 0, result.stderr

    def start_api(self, port: int | None = None) -> str:
        port = port or free_port()
        self.spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", "16"])
        self.url = f"http://127.0.0.1:{port}"
        self.wait_until(lambda: self._answers(), 60, "the API to answer")
        return self.url

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/api/v1/openapi.json", headers=self.headers(), timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, name: str = "worker", queues: str = "gpu,cpu", env: dict[str, str] | None = None
                     ) -> subprocess.Popen:
        seen = len(self.log(name))  # a restarted worker appends to its log
        proc = self.spawn(name, ["worker", "--queues", queues], env)
        self.wait_until(lambda: "ready (queues" in self.log(name)[seen:] or proc.poll() is not None, 90, f"{name} to start")
        assert proc.poll() is None, self.log(name)
        return proc

    def worker_proc_name(self, worker: str) -> str:
        """The spawned process whose group runs this worker (``host:pid``; the pid is the supervisor's child)."""
        pgid = os.getpgid(int(worker.rsplit(":", 1)[1]))
        return next(name for name, proc in self.procs.items() if proc.pid == pgid)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def close(self) -> None:
        stop_process_groups(self.procs.values())

    # -- HTTP ---------------------------------------------------------------------------------

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra)
        return headers

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return requests.get(self.url + "/api/v1" + path, headers=headers if headers is not None else self.headers(),
                            timeout=30, **kw)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + "/api/v1" + path, json=body, headers=headers if headers is not None else self.headers(),
                             timeout=30, **kw)

    def submit(self, kind: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
        response = self.post("/jobs", {"kind": kind, "spec": spec, **extra})
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                 timeout: float = 180, until=None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states and (until is None or until(job)):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {states} in {timeout}s: {job}\n--- logs ---\n"
                             + "\n".join(f"[{n}]\n{self.log(n)[-3000:]}" for n in self.procs))

    @staticmethod
    def wait_until(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
