"""Shared fixtures. Tests read real MNIST from LATENTFORGE_DATA_DIR
(CI: ../shared/data/mnist beside the repository)."""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _find_mnist() -> Path:
    candidates = [os.environ.get("LATENTFORGE_DATA_DIR"), REPO.parent / "shared" / "data" / "mnist", REPO / "data"]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_file() for name in MNIST_FILES):
            return Path(candidate).resolve()
    raise pytest.UsageError(
        "MNIST IDX files not found: set LATENTFORGE_DATA_DIR to a folder holding "
        + ", ".join(MNIST_FILES)
    )


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _find_mnist()


@pytest.fixture(scope="session")
def mnist_train(mnist_dir):
    from worker.data import load_split

    return load_split("mnist", "train", mnist_dir)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from worker.data import load_split

    return load_split("mnist", "test", mnist_dir)


@pytest.fixture(scope="session")
def torchvision_root(mnist_dir, tmp_path_factory) -> Path:
    """The shared files laid out as torchvision's MNIST expects (root/MNIST/raw, unpacked)."""
    root = tmp_path_factory.mktemp("tv")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        with gzip.open(mnist_dir / name) as src, open(raw / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


@pytest.fixture(scope="session")
def trained_run(mnist_dir, tmp_path_factory):
    """One short seed-preset run through the whole pipeline, shared by read-only tests."""
    from shared.specs import TrainSpec
    from worker.pipeline import run_training

    out = tmp_path_factory.mktemp("run")
    result = run_training(TrainSpec.from_dict({"preset": "seed", "epochs": 2}), out, data_dir=mnist_dir, log=lambda _: None)
    return result


@pytest.fixture(scope="session")
def services_up():
    """Redis and PostgreSQL must be reachable (.ci/run starts them)."""
    import psycopg
    import redis

    from tests.stack import PG_ADMIN_URL, REDIS_URL

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:  # fail loudly: these tests need the real services
        pytest.fail(f"Redis ({REDIS_URL}) and PostgreSQL ({PG_ADMIN_URL}) must be running: {exc}")


@pytest.fixture(scope="session")
def judge_cache(tmp_path_factory) -> Path:
    """One cache folder for every stack's workers: the scorecard's judge is trained once per test session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint (SeaweedFS's ``weed``, tests/s3server.py) on fixed loopback ports for the session."""
    from tests.s3server import running_weed

    with running_weed(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def stack_factory(request, tmp_path_factory, mnist_dir, judge_cache):
    """Build stacks (closed at module end): factory(kind, token=None, workers=1).

    Kinds: ``embedded`` (SQLite, filesystem broker, one home), ``redis_pg``
    (Redis, PostgreSQL, one home), ``redis_pg_s3`` (Redis, PostgreSQL and a
    SeaweedFS bucket of its own; API and each worker have a home of their own,
    as on different hosts).
    """
    import contextlib

    from tests.stack import Stack, postgres_database, redis_database

    exits = contextlib.ExitStack()

    def make(kind: str = "embedded", *, token: str | None = None, workers: int = 1, api: bool = True,
             env: dict[str, str] | None = None) -> Stack:
        home = tmp_path_factory.mktemp(kind)
        env = {"LATENTFORGE_CACHE_DIR": str(judge_cache), **(env or {})}
        if kind == "embedded":
            stack = Stack(home, mnist_dir, token=token, extra_env=env)
        else:
            database = exits.enter_context(postgres_database())
            broker = exits.enter_context(redis_database())
            separate = kind == "redis_pg_s3"
            if separate:
                server = request.getfixturevalue("s3_server")
                bucket = f"lf-test-{uuid.uuid4().hex[:12]}"
                server.create_bucket(bucket)
                env = {**server.env(), "LATENTFORGE_ARTIFACT_URL": f"s3://{bucket}/artifacts", **env}
            elif kind != "redis_pg":
                raise ValueError(f"unknown stack kind {kind!r}")
            stack = Stack(home, mnist_dir, database_url=database, broker_url=broker, token=token, extra_env=env,
                          separate_homes=separate)
        exits.callback(stack.close)
        return stack.bring_up(api=api, workers=workers)

    with exits:
        yield make
