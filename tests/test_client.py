"""The Python client (latentforge.client) against a real API and worker: submit, wait, search, tidy up,
downloads checked against sha256, the decoder as a torch module, and the README's example run as it is."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from latentforge import ApiError, ApiUnreachable, ChecksumMismatch, Client, Run, SpecError
from tests.stack import REPO, free_port

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", token=TOKEN)


@pytest.fixture(scope="module")
def client(stack) -> Client:
    return Client(stack.url, TOKEN)


@pytest.fixture(scope="module")
def trained(client) -> Run:
    """One small model (2 epochs, CPU) that the read-only tests share."""
    run = client.train(epochs=2, device="cpu", hidden=[64], name="Client AE", tags=["client", "ae"])
    assert run.state == "queued" and run.kind == "train" and run.name == "Client AE"
    return run.wait(timeout=180, progress=False)


def test_import_latentforge_is_cheap():
    code = "import sys, latentforge; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pydantic', 'shared'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_a_bad_field_fails_before_anything_is_sent(client):
    before = len(client.list(archived="all", limit=200))
    with pytest.raises(SpecError) as caught:
        client.train(model="vae", latent_dim=0, epochs=1)
    assert str(caught.value) == "spec.latent_dim: Input should be greater than or equal to 1"
    assert caught.value.errors == [("spec.latent_dim", "Input should be greater than or equal to 1")]
    with pytest.raises(SpecError, match=r"^spec\.prior: not a field of model 'vae'"):
        client.train(model="vae", prior="mixture")
    with pytest.raises(SpecError, match=r"^tags\.0: String should have at least 1 character"):
        client.train(epochs=1, tags=[""])
    with pytest.raises(SpecError, match=r"^spec\.grid\.lr\[1\]: Input should be greater than 0"):
        client.sweep(base={"epochs": 1}, grid={"lr": [0.001, -1]})
    assert len(client.list(archived="all", limit=200)) == before  # nothing was queued


def test_what_only_the_server_knows_comes_back_as_an_api_error(client, trained):
    # A kind this process does not know (a plugin only the server loaded) is sent as it is; the server judges it.
    with pytest.raises(ApiError) as unknown:
        client.submit("tally", model_job=trained)
    assert unknown.value.status == 422 and unknown.value.errors[0][0] == "kind"
    # The parent's latent size is checked against the points by the server.
    with pytest.raises(ApiError) as wide:
        client.sample(trained, latent_coords=[[0.0, 0.0, 0.0]])
    assert wide.value.status == 422
    assert wide.value.errors == [("spec.latent_coords", "points have 3 coordinates but the model's latent space has 2")]
    assert wide.value.problem["status"] == 422
    with pytest.raises(ApiError) as missing:
        client.get("00000000-0000-4000-8000-000000000000")
    assert missing.value.status == 404 and "00000000-0000-4000-8000-000000000000" in str(missing.value)
    with pytest.raises(ApiError) as refused:
        Client(client.url, "wrong-token").train(epochs=1)
    assert refused.value.status == 401


def test_wait_reports_progress_and_returns_the_finished_run(client, trained, capsys):
    assert trained.state == "succeeded" and trained.succeeded and trained.finished
    assert trained.progress["epoch"] == trained.progress["total"] == 2
    assert trained.spec["hidden"] == [64] and trained.tags == ["client", "ae"]
    assert {"train_loss", "test_loss"} <= set(trained.metrics) and 0 < trained.metrics["test_loss"] < 0.2
    assert trained.created_at.tzinfo is not None
    assert trained.created_at <= trained.started_at <= trained.finished_at <= datetime.now(timezone.utc)
    assert timedelta(0) < trained.duration() < timedelta(minutes=3) and trained.eta() is None
    assert trained.archived is False and trained.raw["id"] == trained.id

    seen: list[tuple[str, int | None]] = []
    run = client.embed(trained, split="test", limit=200, name="codes")
    assert run.parent_id == trained.id and run.spec["model_job"] == trained.id
    assert run.wait(timeout=120, progress=lambda r: seen.append((r.state, r.progress.get("count")))) is run
    assert run.state == "succeeded" and seen[-1][0] == "succeeded" and len(set(seen)) == len(seen)
    assert run.wait(progress=True) is run  # already finished: one line, the final state
    assert capsys.readouterr().err.strip() == "succeeded"

    long = client.train(epochs=1000, device="cpu", hidden=[8], name="cancel me")
    with pytest.raises(TimeoutError, match=r"is still (queued|running) after 0\.2 s"):
        long.wait(timeout=0.2, progress=False)
    assert long.cancel() is long and long.state in ("cancelled", "running")  # running: it stops after a batch
    assert long.wait(timeout=60, progress=False).state == "cancelled"


def test_download_checks_every_file_against_its_sha256(client, trained, tmp_path):
    files = trained.download(tmp_path / "run")
    assert set(files) == {a.name for a in trained.artifacts} and "figures/latent_scatter.png" in files
    for artifact in trained.artifacts:
        data = files[artifact.name].read_bytes()
        assert len(data) == artifact.size and hashlib.sha256(data).hexdigest() == artifact.sha256
    assert json.loads(files["config.json"].read_text())["model"]["hidden"] == [64]

    # A record that disagrees with the bytes the server sends (here: a wrong sha256 in the run we hold).
    model = trained.artifact("model.safetensors")
    wrong = dataclasses.replace(trained, artifacts=[dataclasses.replace(model, sha256="0" * 64)])
    with pytest.raises(ChecksumMismatch) as caught:
        wrong.download(tmp_path / "bad")
    assert caught.value.name == "model.safetensors" and caught.value.actual == model.sha256
    assert "was not kept" in str(caught.value)
    assert [p for p in (tmp_path / "bad").rglob("*") if p.is_file()] == []  # no partial file
    # A file already there with the right bytes is kept; one with wrong bytes is replaced.
    files["config.json"].write_text("{}")
    again = trained.download(tmp_path / "run", names=["config.json", "metrics.jsonl"])
    assert set(again) == {"config.json", "metrics.jsonl"}
    assert hashlib.sha256(again["config.json"].read_bytes()).hexdigest() == trained.artifact("config.json").sha256
    with pytest.raises(KeyError, match="no artifact nope.txt"):
        trained.download(tmp_path / "run", names=["nope.txt"])


def test_load_decoder_decodes_as_the_server_does(client, trained, tmp_path):
    decoder = trained.load_decoder()
    assert isinstance(decoder, torch.nn.Module) and decoder.latent_dim == 2 and decoder.image_shape == (28, 28)
    points = [[0.0, 0.0], [1.5, -2.0], [-3.0, 0.5]]
    with torch.no_grad():
        images = decoder(torch.tensor(points))
        one = decoder([1.5, -2.0])
    assert images.shape == (3, 28, 28) and one.shape == (28, 28)
    torch.testing.assert_close(one, images[1])
    # The worker's own decode of the same points (a sample job's images.npy) is the same picture.
    sample = client.sample(trained, latent_coords=points).wait(timeout=120, progress=False)
    served = np.load(sample.download(tmp_path, names=["images.npy"])["images.npy"])
    assert served.shape == (3, 28, 28)
    np.testing.assert_allclose(images.numpy(), served, atol=1e-6)
    assert sample.load_decoder().config["model"] == decoder.config["model"]  # a sample's decoder is its model's
    with pytest.raises(ValueError, match=r"latent points must have shape \(N, 2\)"):
        decoder(torch.zeros(2, 3))


def test_search_finds_runs_by_tag_name_spec_and_time_page_by_page(client, trained):
    other = client.train(epochs=1000, device="cpu", hidden=[16], latent_dim=3, name="Client wide", tags=["client"])
    other.cancel()  # found all the same: a search is about the record, not the outcome
    mine = {trained.id, other.id}
    assert {r.id for r in client.jobs(tags=["client"])} == mine
    assert [r.id for r in client.jobs(tags=["client", "ae"])] == [trained.id]
    assert [r.id for r in client.jobs(q="ent WIDE")] == [other.id]
    assert [r.id for r in client.jobs(where={"latent_dim": 3})] == [other.id]
    assert [r.id for r in client.jobs(where={"hidden": [64], "model": "ae"})] == [trained.id]
    assert [r.id for r in client.jobs(tags="client", created_after=other.created_at)] == [other.id]
    assert [r.id for r in client.jobs(tags="client", created_before=other.created_at)] == [trained.id]
    assert client.list(tags=["client"], created_after="2000-01-01", created_before=datetime.now(timezone.utc).date()
                       + timedelta(days=1), kind="train") != []
    # Every match, a page (of one) at a time, newest first; limit bounds the whole.
    paged = [r.id for r in client.jobs(kind="train", page_size=1)]
    assert paged == [r.id for r in client.jobs(kind="train", page_size=200)] and len(paged) == len(set(paged)) >= 2
    assert paged.index(other.id) < paged.index(trained.id)
    assert len(client.list(kind="train", limit=1)) == 1
    with pytest.raises(ApiError) as bad:
        client.list(where={"colour": "red"})
    assert bad.value.status == 400 and bad.value.errors[0][0] == "spec.colour"
    assert other.wait(timeout=60, progress=False).state == "cancelled"


def test_an_unreachable_api_says_how_to_point_elsewhere():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiUnreachable) as caught:
        Client(url, timeout=5).health()
    assert str(caught.value) == (f"cannot reach the LatentForge API at {url}: connection refused (start it with"
                                 " `make run`, or point at another address with Client(url=...) or LATENTFORGE_API_URL)")
    assert caught.value.status == 0 and isinstance(caught.value, ApiError)


def test_readme_example_runs_as_written(stack, monkeypatch, tmp_path):
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- client-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no ```python block after its <!-- client-example --> marker"
    monkeypatch.setenv("LATENTFORGE_API_URL", stack.url)
    monkeypatch.setenv("LATENTFORGE_API_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(match.group(1), "README.md (Python client)", "exec"), scope)
    run = scope["run"]
    assert run.succeeded and run.spec["model"] == "vae" and run.tags == ["demo"]
    assert all(path.is_file() for path in scope["files"].values())
    image = scope["image"].numpy()  # a plain tensor: the decoder's weights are frozen
    assert image.shape == (28, 28) and 0 <= image.min() <= image.max() <= 1


def test_edit_archive_restore_delete_and_download_a_zip(client, trained, tmp_path):
    """Last in this module: it deletes the shared model."""
    parent = trained
    child = client.sample(parent, latent_coords=[[0.0, 0.0]]).wait(timeout=120, progress=False)
    edited = client.update(parent, name="tidied", tags=["tidy", "x"], note="first try")
    assert (edited.name, edited.tags, edited.note) == ("tidied", ["tidy", "x"], "first try")
    assert client.update(parent.id, note=None).note is None and client.get(parent).name == "tidied"  # the rest stays

    archived = client.archive(parent)
    assert archived.archived and client.get(child).archived  # with its descendants
    assert parent.id not in {r.id for r in client.jobs(tags=["tidy"])}
    assert [r.id for r in client.jobs(tags=["tidy"], archived=True)] == [parent.id]
    assert [r.id for r in client.jobs(tags=["tidy"], archived="all")] == [parent.id]
    assert client.restore(parent).archived is False and not client.get(child).archived

    zipped = client.download_zip(parent, tmp_path)  # a folder: the server's file name
    assert zipped.parent == tmp_path and zipped.name == f"tidied-{parent.id[:8]}.zip"
    with zipfile.ZipFile(zipped) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert {f["name"] for f in manifest["files"]} == {a.name for a in parent.artifacts}
        assert manifest["job"]["id"] == parent.id
    assert client.download_zip(parent.id, tmp_path / "named.zip") == tmp_path / "named.zip"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    with pytest.raises(ApiError) as has_children:
        client.delete(parent)
    assert has_children.value.status == 409 and has_children.value.type.endswith("/has-children")
    assert "cascade" in str(has_children.value)
    results = client.bulk("delete", [parent, "00000000-0000-4000-8000-000000000000"], cascade=True)
    assert [(r.id, r.ok, r.status) for r in results] == [(parent.id, True, 204),
                                                          ("00000000-0000-4000-8000-000000000000", False, 404)]
    for gone in (parent, child):
        with pytest.raises(ApiError) as missing:
            client.get(gone)
        assert missing.value.status == 404
