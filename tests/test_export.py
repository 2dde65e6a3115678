"""``latentforge export``: a run trained on a real stack, exported through the real command, then read back
by TensorBoard's own event reader and MLflow's own client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("services_up")

FIGURES = {"figures/latent_scatter", "figures/reconstructions", "figures/generated", "figures/loss_curve",
           "figures/prior_samples", "figures/latent_manifold", "figures/interpolation"}
# A checkpoint folder (what worker.checkpoint.load_model reads) and the decoder the explorer runs.
MODEL_FILES = {"config.json", "model.safetensors", "metrics.jsonl", "decoder.safetensors"}


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded")


@pytest.fixture(scope="module")
def job(stack):
    """A VAE (its KL terms are per-epoch metrics beyond the losses), two epochs."""
    queued = stack.submit("train", {"model": "vae", "epochs": 2, "hidden": [64], "device": "cpu"},
                          name="vae for export", tags=["export"])
    finished = stack.wait_job(queued["id"], timeout=240)
    assert finished["state"] == "succeeded", finished["error"]
    assert [row["epoch"] for row in finished["progress"]["history"]] == [1, 2]
    return finished


def export(stack, *args: str, cwd: Path, env: dict[str, str] | None = None, preamble: str = ""
           ) -> subprocess.CompletedProcess:
    """``latentforge export ...`` as a user runs it, in ``cwd``; ``preamble`` runs first in the same process."""
    code = f"import sys; {preamble}from latentforge.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "export", *args, "--url", stack.url], cwd=cwd,
                          env={**stack.env, **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def epoch_metrics(job) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in job["progress"]["history"]:
        for name, value in row.items():
            if name != "epoch":
                series.setdefault(name, []).append((row["epoch"], value))
    return series


def sha256s(job) -> dict[str, str]:
    return {a["name"]: a["sha256"] for a in job["artifacts"]}


def test_tensorboard_export_holds_every_metric_and_figure(stack, job, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = export(stack, job["id"], "--to", "tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "tb" / f"vae_for_export-{job['id'][:8]}"
    assert str(run_dir) in proc.stdout and f"tensorboard --logdir {tmp_path / 'tb'}" in proc.stdout

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    per_epoch = epoch_metrics(job)
    assert {"train_loss", "test_loss", "train_kl", "test_kl", "seconds", "samples_per_s", "lr"} <= set(per_epoch)
    assert set(tags["scalars"]) == set(per_epoch) | {"train_seconds"}  # the one final metric no epoch reports
    for name, points in per_epoch.items():
        read = events.Scalars(name)
        assert [e.step for e in read] == [step for step, _ in points], name
        # TensorBoard keeps scalars as float32.
        assert [e.value for e in read] == pytest.approx([value for _, value in points], rel=1e-6), name
    assert events.Scalars("train_seconds")[0].value == pytest.approx(job["metrics"]["train_seconds"], rel=1e-6)
    wall = [e.wall_time for e in events.Scalars("train_loss")]
    assert wall[0] < wall[1]  # each epoch at the time it ended

    assert set(tags["images"]) == FIGURES
    expected = sha256s(job)
    for tag in FIGURES:
        (image,) = events.Images(tag)
        assert image.step == 2 and image.width > 0 and image.height > 0
        assert hashlib.sha256(image.encoded_image_string).hexdigest() == expected[tag + ".png"]
    (spec,) = events.Tensors("spec")
    text = spec.tensor_proto.string_val[0].decode()
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == job["spec"]

    again = export(stack, job["id"], "--to", "tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # replaced, not doubled
    assert len(EventAccumulator(str(run_dir)).Reload().Scalars("train_loss")) == 2


def test_mlflow_export_is_one_run_with_params_metrics_artifacts_and_model(stack, job, tmp_path):
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = export(stack, job["id"], "--to", "mlflow", "--experiment", "autoencoders", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode == 0, proc.stderr
    assert "experiment 'autoencoders'" in proc.stdout

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("autoencoders")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run_id in proc.stdout
    assert run.info.run_name == "vae for export" and run.info.status == "FINISHED"
    assert run.data.tags["latentforge.job_id"] == job["id"] and run.data.tags["latentforge.tags"] == "export"

    params = run.data.params
    assert set(params) == set(job["spec"])
    for name, value in job["spec"].items():
        assert (params[name] if isinstance(value, str) else json.loads(params[name])) == value, name
    assert params["model"] == "vae" and params["hidden"] == "[64]" and params["epochs"] == "2"

    for name, points in epoch_metrics(job).items():
        history = client.get_metric_history(run_id, name)
        assert [(m.step, m.value) for m in history] == points, name
    (seconds,) = client.get_metric_history(run_id, "train_seconds")
    assert seconds.value == job["metrics"]["train_seconds"] and seconds.step == 2

    expected = sha256s(job)
    # The model's files under model/, every other file at its own path; thumbnails stay out.
    others = {name for name in expected if name not in MODEL_FILES and not name.endswith(".thumb.png")}
    assert {"latent_codes.safetensors"} | {tag + ".png" for tag in FIGURES} <= others
    listed = {f.path for f in client.list_artifacts(run_id)}
    assert listed == {"model"} | {name.split("/")[0] for name in others}
    assert {f.path for f in client.list_artifacts(run_id, "figures")} == {n for n in others if n.startswith("figures/")}
    for name in others - {n for n in others if n.startswith("figures/")}:
        local = client.download_artifacts(run_id, name, str(tmp_path / "others"))
        assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == expected[name], name
    model_dir = Path(client.download_artifacts(run_id, "model", str(tmp_path / "download")))
    assert {p.name for p in model_dir.iterdir()} == MODEL_FILES
    for name in MODEL_FILES:
        assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == expected[name], name

    from worker.checkpoint import load_model  # the model/ folder is a checkpoint folder

    model, config = load_model(model_dir)
    assert model.config.latent_dim == 2 and config["train"]["model"] == "vae"


@pytest.mark.parametrize("target, module", [(["tensorboard", "out"], "tensorboard"), (["mlflow"], "mlflow")])
def test_a_missing_package_is_one_line_naming_the_extra(stack, job, tmp_path, target, module):
    # A module set to None in sys.modules cannot be imported: this Python behaves as one without the extra.
    proc = export(stack, job["id"], "--to", *target, cwd=tmp_path, preamble=f"sys.modules[{module!r}] = None; ")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"latentforge export: error: {module} is not installed;"
                                   " pip install 'latentforge[export]'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_unfinished_job_is_refused(stack, job, tmp_path):
    running = stack.submit("train", {"epochs": 200, "device": "cpu"}, name="long")
    try:
        proc = export(stack, running["id"], "--to", "tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
        assert proc.returncode == 2
        state = stack.job(running["id"])["state"]
        assert state in ("queued", "running")
        assert proc.stderr.strip().startswith(f"latentforge export: error: job {running['id']} is ")
        assert "export it once it has finished" in proc.stderr and not (tmp_path / "tb").exists()
    finally:
        stack.post(f"/jobs/{running['id']}/cancel")
    assert stack.wait_job(running["id"], timeout=60)["state"] == "cancelled"


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "figures/../../x.png", "figures\\..\\x.png"])
def test_artifact_names_that_could_leave_the_folder_are_refused(tmp_path, name):
    from latentforge.export import ExportError, local_artifacts

    job = {"id": "j1", "state": "succeeded", "artifacts": [{"name": name, "kind": "figure"}]}
    with pytest.raises(ExportError, match="could leave the run's folder"):
        local_artifacts(job, tmp_path)


def test_the_tensorboard_export_needs_neither_torch_nor_the_server_libraries(job, tmp_path):
    """An export of a saved job (its JSON and files) in a Python that imports only what it needs."""
    (tmp_path / "job.json").write_text(json.dumps({**job, "artifacts": []}))
    code = ("import json, sys; from latentforge import export; "
            f"export.to_tensorboard(json.load(open({str(tmp_path / 'job.json')!r})), {str(tmp_path)!r}, {str(tmp_path / 'tb')!r}); "
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "tensorboard" in loaded
    assert not loaded & {"torch", "tensorflow", "flask", "celery", "sqlalchemy"}, loaded
    assert len(list((tmp_path / "tb").glob("*/events.out.tfevents.*"))) == 1
