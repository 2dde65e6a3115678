"""The artifact store on its own: the local folder, and S3 against a real SeaweedFS server (tests/s3server.py)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest
import requests

from shared.settings import load_settings
from shared.storage import (
    MULTIPART_BYTES, ArtifactMismatch, ArtifactNameError, LocalStore, S3Store, StoreSetupError, StoreUnavailable,
    artifact_key, open_store,
)

HOSTILE_NAMES = ["../escape.txt", "figures/../../escape.txt", "/etc/passwd", "..", ".", "", "a//b", "a/./b",
                 "..%2Fescape.txt", "figures%2F..%2F..%2Fescape", "a\\..\\b", ".hidden", "figures/", "~/x", "a b"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_that_could_leave_its_folder_is_refused(name):
    with pytest.raises(ArtifactNameError, match="could leave its job's folder"):
        artifact_key("jobs/j1/run-1", name)


def test_plain_names_make_keys():
    assert artifact_key("jobs/j1/run-1", "figures/latent_scatter.thumb.png") == "jobs/j1/run-1/figures/latent_scatter.thumb.png"
    assert artifact_key("jobs/j1/run-1/resume/epoch-000003", "state.safetensors").endswith("epoch-000003/state.safetensors")


def test_the_local_store_publishes_in_place_and_stays_under_its_root(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    store.check()
    folder = store.workspace("jobs/j1/run-1")
    assert folder == tmp_path / "artifacts" / "jobs" / "j1" / "run-1" and folder.is_dir()
    (folder / "a.json").write_text("{}")
    assert store.publish("jobs/j1/run-1", "a.json", sha(b"{}"), "application/json") == "jobs/j1/run-1/a.json"
    assert store.local_folder("jobs/j1/run-1", {"a.json": sha(b"{}")}) == folder
    (tmp_path / "outside.txt").write_text("secret")
    (folder / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ArtifactNameError):
        store.publish("jobs/j1/run-1", "link.txt", sha(b"secret"), "text/plain")
    with pytest.raises(ArtifactNameError):
        store.path_of("../outside.txt")
    store.workspace("jobs/j1/run-2")
    assert sorted(store.attempt_folders("j1")) == ["jobs/j1/run-1", "jobs/j1/run-2"]
    store.delete("jobs/j1/run-1")
    assert store.attempt_folders("j1") == ["jobs/j1/run-2"] and (tmp_path / "outside.txt").exists()


def test_the_local_store_names_its_setting_when_unusable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreSetupError, match=r"^LATENTFORGE_ARTIFACT_DIR=.*cannot create"):
        LocalStore(tmp_path / "file" / "artifacts").check()


# -- S3 against SeaweedFS -------------------------------------------------------------------------


@pytest.fixture()
def bucket(s3_server):
    name = f"lf-unit-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(name)
    return name


def s3_store(s3_server, bucket: str, tmp_path: Path, patience_s: float = 20.0, prefix: str = "pre/fix") -> S3Store:
    env = {**s3_server.env(), "LATENTFORGE_HOME": str(tmp_path / "home"),
           "LATENTFORGE_ARTIFACT_URL": f"s3://{bucket}/{prefix}", "LATENTFORGE_STORE_PATIENCE_SECONDS": str(patience_s)}
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        store = open_store(load_settings(env))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert isinstance(store, S3Store)
    return store


def test_s3_publish_fetch_and_the_cache(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, tmp_path)
    store.check()
    folder = store.workspace("jobs/j1/run-1")
    assert folder.is_relative_to(tmp_path / "home" / "scratch")
    data = os.urandom(MULTIPART_BYTES * 2 + 12345)  # multipart: three parts
    (folder / "figures").mkdir()
    (folder / "model.safetensors").write_bytes(data)
    (folder / "figures" / "a.png").write_bytes(b"png")
    key = store.publish("jobs/j1/run-1", "model.safetensors", sha(data), "application/octet-stream")
    store.publish("jobs/j1/run-1", "figures/a.png", sha(b"png"), "image/png")
    assert key == "jobs/j1/run-1/model.safetensors"
    raw = s3_server.client().head_object(Bucket=bucket, Key="pre/fix/jobs/j1/run-1/model.safetensors")
    assert raw["ContentLength"] == len(data) and raw["Metadata"]["sha256"] == sha(data)
    assert store.head(key).sha256 == sha(data)

    store.release("jobs/j1/run-1")
    assert not folder.exists()
    files = {"model.safetensors": sha(data), "figures/a.png": sha(b"png")}
    local = store.local_folder("jobs/j1/run-1", files)
    assert (local / "model.safetensors").read_bytes() == data and (local / "figures" / "a.png").read_bytes() == b"png"

    # A range, read the way the API streams it.
    stored, chunks = store.open(key, 10, 19)
    assert b"".join(chunks) == data[10:20] and stored == store.head(key)
    # A presigned URL serves the same bytes to anyone holding it, for a few minutes.
    url = store.presigned_url(key, "model.safetensors", "application/octet-stream")
    assert sha(requests.get(url, timeout=30).content) == sha(data)

    # The cache is keyed by sha256: a second local copy reads nothing from the store.
    s3_server.client().delete_object(Bucket=bucket, Key="pre/fix/jobs/j1/run-1/model.safetensors")
    again = store.local_folder("jobs/j1/run-1", {"model.safetensors": sha(data)})
    assert (again / "model.safetensors").read_bytes() == data
    with pytest.raises(ArtifactMismatch, match="cannot be read"):
        store.local_folder("jobs/j1/run-1", {"model.safetensors": sha(b"something else")})

    # Listing and pruning attempt folders.
    store.workspace("jobs/j1/run-2")
    (store.workspace("jobs/j1/run-2") / "x.json").write_text("{}")
    store.publish("jobs/j1/run-2", "x.json", sha(b"{}"), "application/json")
    assert sorted(store.attempt_folders("j1")) == ["jobs/j1/run-1", "jobs/j1/run-2"]
    store.delete("jobs/j1/run-1")
    assert store.attempt_folders("j1") == ["jobs/j1/run-2"]


def test_s3_a_stored_object_that_differs_from_its_record_is_not_loaded(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, tmp_path)
    s3_server.client().put_object(Bucket=bucket, Key="pre/fix/jobs/j2/run-1/config.json", Body=b'{"tampered": 1}')
    with pytest.raises(ArtifactMismatch, match="sha256"):
        store.local_folder("jobs/j2/run-1", {"config.json": sha(b"{}")})


def test_s3_hostile_keys_never_leave_the_prefix(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, tmp_path)
    for name in HOSTILE_NAMES:
        with pytest.raises(ArtifactNameError):
            store.publish("jobs/j3/run-1", name, sha(b""), "text/plain")
        with pytest.raises(ArtifactNameError):
            store.head(f"jobs/j3/run-1/{name}")
    with pytest.raises(ArtifactNameError):
        store.local_folder("jobs/../../other", {"x": sha(b"")})
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert listed == 0


def test_s3_start_up_checks_name_the_setting(s3_server, bucket, tmp_path, monkeypatch):
    with pytest.raises(StoreSetupError, match=r"^LATENTFORGE_ARTIFACT_URL=s3://lf-missing-bucket/x: bucket "
                                              r"'lf-missing-bucket' does not exist"):
        s3_store(s3_server, "lf-missing-bucket", tmp_path, prefix="x").check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    env = {"LATENTFORGE_HOME": str(tmp_path), "LATENTFORGE_ARTIFACT_URL": f"s3://{bucket}",
           "LATENTFORGE_S3_ENDPOINT_URL": s3_server.endpoint}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.env()["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StoreSetupError, match=r"refused these credentials \(SignatureDoesNotMatch|403"):
        open_store(load_settings(env)).check()
    env["LATENTFORGE_S3_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard: nothing listens
    with pytest.raises(StoreSetupError, match=r"^LATENTFORGE_S3_ENDPOINT_URL=http://127.0.0.1:9: the object store is"
                                              r" unreachable"):
        open_store(load_settings(env)).check()


def test_s3_uploads_wait_out_a_short_outage_and_give_up_after_the_patience(s3_server, bucket, tmp_path):
    if s3_server.proc is None:
        pytest.skip("the S3 server was already running (not started by this session): it cannot be paused")
    store = s3_store(s3_server, bucket, tmp_path, patience_s=30)
    folder = store.workspace("jobs/j4/run-1")
    (folder / "a.bin").write_bytes(b"a" * 1000)
    s3_server.pause()
    started = time.monotonic()
    try:
        import threading

        threading.Timer(4.0, s3_server.resume).start()
        store.publish("jobs/j4/run-1", "a.bin", sha(b"a" * 1000), "application/octet-stream")
    finally:
        s3_server.resume()
    assert time.monotonic() - started >= 3.5
    assert store.head("jobs/j4/run-1/a.bin").sha256 == sha(b"a" * 1000)

    impatient = s3_store(s3_server, bucket, tmp_path, patience_s=2)
    s3_server.pause()
    try:
        with pytest.raises(StoreUnavailable, match="did not answer for 2 s while uploading a.bin"):
            impatient.publish("jobs/j4/run-1", "a.bin", sha(b"a" * 1000), "application/octet-stream")
    finally:
        s3_server.resume()
