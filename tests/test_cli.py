"""The ``latentforge`` command, run as users run it: a real subprocess."""

import json
import os
import subprocess
import sys

import pytest


def latentforge(*args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "latentforge.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--epochs", "x", "--out", "OUT"], "argument --epochs: invalid int value: 'x'"),
        (["train", "--epochs", "0", "--out", "OUT"], "epochs: Input should be greater than or equal to 1"),
        (["train", "--device", "tpu", "--out", "OUT"], "argument --device: invalid choice: 'tpu'"),
        (["train", "--preset", "fast", "--out", "OUT"], "argument --preset: invalid choice: 'fast'"),
        (["train", "--preset", "seed"], "the following arguments are required: --out"),
        (["train", "--set", "latent_dim=0", "--out", "OUT"], "latent_dim: Input should be greater than or equal to 1"),
        (["train", "--set", "lr=NaN", "--out", "OUT"], "lr: Input should be a finite number"),
        (["train", "--set", "nope", "--out", "OUT"], "--set expects key=value, got 'nope'"),
        (["train", "--set", "colour=red", "--out", "OUT"], "colour: not a field of model 'ae'"),
        (["train", "--set", "model=vae", "--set", "prior=mixture", "--out", "OUT"], "prior: not a field of model 'vae'"),
        (["train", "--data-dir", "EMPTY", "--out", "OUT"], "mnist train split: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] not found"),
        (["fly"], "argument COMMAND: invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, needle):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("OUT", "EMPTY") else a for a in args]
    proc = latentforge(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "OUT").exists()


def test_refuses_to_overwrite_a_checkpoint_without_flag(tmp_path, trained_run):
    proc = latentforge("train", "--epochs", "1", "--out", str(trained_run.folder))
    assert proc.returncode == 2
    assert "already holds a checkpoint" in proc.stderr and "--overwrite" in proc.stderr


def test_train_command_writes_a_checkpoint_with_progress(tmp_path, mnist_dir):
    out = tmp_path / "run"
    proc = latentforge("train", "--preset", "seed", "--epochs", "2", "--device", "cpu",
                       "--data-dir", str(mnist_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert epoch_lines[0].startswith("epoch 1/2  train 0.0") and "samples/s" in epoch_lines[0]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["device"] == "cpu"
    assert (out / "model.safetensors").is_file()
    assert len(list((out / "figures").glob("*.thumb.png"))) == 7


@pytest.mark.parametrize("model, fields, shown", [
    ("vae", [], "kl "),
    ("beta_vae", ["capacity_max=5", "capacity_epochs=2"], "capacity "),
    ("aae", ["prior=mixture"], "disc_acc "),
])
def test_train_command_trains_every_model_kind(tmp_path, mnist_dir, model, fields, shown):
    out = tmp_path / "run"
    sets = [arg for field in [f"model={model}", *fields] for arg in ("--set", field)]
    proc = latentforge("train", "--epochs", "1", "--device", "cpu", *sets, "--data-dir", str(mnist_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    epoch_line = next(line for line in proc.stdout.splitlines() if line.startswith("epoch "))
    assert shown in epoch_line, epoch_line  # the kind's own terms in the progress line
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["kind"] == model and config["train"]["model"] == model
    assert "prior" in config and "objective" in config
    assert (out / "figures" / "prior_samples.png").is_file()


def test_data_dir_comes_from_the_environment(tmp_path, mnist_dir):
    out = tmp_path / "run"
    proc = latentforge("train", "--epochs", "1", "--set", "latent_dim=3", "--set", "hidden=[64]", "--out", str(out),
                       env_extra={"LATENTFORGE_DATA_DIR": str(mnist_dir)})
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent_dim"] == 3 and config["model"]["hidden"] == [64]
    # Above 2-D there is no manifold grid; the scatter is a PCA projection.
    assert not (out / "figures" / "latent_manifold.png").exists()
    assert (out / "figures" / "latent_scatter.png").exists()


# -- client commands against a real API (no worker: queued and cancelled runs are enough) -------------------

TOKEN = "cli-test-token"
CLIENT_COMMANDS = [
    ["jobs", "list"], ["jobs", "show", "00000000-0000-4000-8000-000000000000"], ["submit", "train", "--set", "epochs=1"],
    ["evaluate", "00000000-0000-4000-8000-000000000000"], ["sweep", "--grid", "lr=0.001,0.01"], ["study"], ["health"],
]


def test_every_client_command_takes_url_and_says_how_to_point_elsewhere():
    from tests.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"
    for command in CLIENT_COMMANDS:
        proc = latentforge(*command, "--url", url)
        assert proc.returncode == 1, (command, proc.stderr)
        assert proc.stderr == (f"latentforge {command[0]}: error: cannot reach the LatentForge API at {url}: connection"
                               " refused (start it with `make run`, or point at another address with --url or"
                               " LATENTFORGE_API_URL)\n"), command
    from_env = latentforge("jobs", "list", env_extra={"LATENTFORGE_API_URL": url + "/"})
    assert from_env.returncode == 1 and f"cannot reach the LatentForge API at {url}: " in from_env.stderr


def test_the_default_address_follows_a_running_up(tmp_path):
    """`make run PORT=...` records its address under LATENTFORGE_HOME; client commands there follow it."""
    from tests.stack import free_port

    port = free_port()
    (tmp_path / "api.url").write_text(f"http://127.0.0.1:{port}\n")
    followed = latentforge("jobs", "list", env_extra={"LATENTFORGE_HOME": str(tmp_path), "LATENTFORGE_API_URL": ""})
    assert f"cannot reach the LatentForge API at http://127.0.0.1:{port}: " in followed.stderr
    named = latentforge("jobs", "list", env_extra={"LATENTFORGE_HOME": str(tmp_path),
                                                   "LATENTFORGE_API_URL": "http://127.0.0.1:9"})
    assert "at http://127.0.0.1:9: " in named.stderr  # the variable wins


def test_times_durations_and_eta_read_as_people_say_them():
    from datetime import datetime, timedelta, timezone

    from latentforge.cli import job_row
    from latentforge.client import Run
    from shared.humane import ago, duration, eta

    now = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert [ago(now - timedelta(seconds=s), now) for s in (5, 200, 7300, 90000, 200000)] == [
        "5 s ago", "3 min ago", "2 h ago", "1 d ago", "2 d ago"]
    assert [duration(s) for s in (42, 200, 7500, 100000)] == ["42 s", "3 min 20 s", "2 h 05 min", "1 d 3 h"]
    running = Run.from_json({"id": "j1", "kind": "train", "state": "running", "name": "vae z=2", "tags": ["demo"],
                             "created_at": (now - timedelta(minutes=5)).isoformat(),
                             "started_at": (now - timedelta(seconds=60)).isoformat(),
                             "progress": {"epoch": 2, "total": 10}})
    assert running.eta(now) == timedelta(seconds=240) and eta(running.raw, now) == 240  # the gallery's ETA agrees
    assert job_row(running, now) == ("j1  train    running      2/10     5 min ago  1 min 00 s, ETA 4 min 00 s"
                                     " vae z=2  [demo]")
    done = Run.from_json({**running.raw, "state": "succeeded", "finished_at": (now - timedelta(seconds=10)).isoformat(),
                          "progress": {"epoch": 10, "total": 10}, "metrics": {"knn_accuracy": 0.91234}})
    assert done.eta(now) is None
    assert job_row(done, now, "-metrics.knn_accuracy") == ("j1  train    succeeded   10/10     5 min ago  50 s"
                                                           + " " * 23 + "0.9123  vae z=2  [demo]")


@pytest.fixture(scope="module")
def api(stack_factory):
    return stack_factory("embedded", token=TOKEN, workers=0)


def cli(api, *args, **kw):
    return api.cli(*args, "--url", api.url, **kw)


def test_jobs_list_searches_by_tag_name_spec_time_and_archive(api):
    first = api.submit("train", {"epochs": 1, "latent_dim": 3}, name="CLI alpha", tags=["cli", "a"])
    second = api.submit("train", {"epochs": 1, "model": "vae"}, name="CLI beta", tags=["cli"])

    def listed(*args):
        proc = cli(api, "jobs", "list", *args)
        assert proc.returncode == 0, proc.stderr
        return [line.split()[0] for line in proc.stdout.splitlines()]

    assert listed("--tag", "cli") == [second["id"], first["id"]]
    assert listed("--tag", "cli", "--tag", "a") == [first["id"]]
    assert listed("-q", "beta") == listed("--search", "BETA") == [second["id"]]
    assert listed("--where", "spec.latent_dim=3") == [first["id"]]
    assert listed("--where", "spec.model=vae", "--where", "epochs=1") == [second["id"]]
    assert listed("--tag", "cli", "--since", second["created_at"]) == [second["id"]]
    assert listed("--tag", "cli", "--until", second["created_at"]) == [first["id"]]
    assert listed("--tag", "cli", "--since", "2000-01-01", "--limit", "1") == [second["id"]]
    row = cli(api, "jobs", "list", "-q", "alpha").stdout
    assert " queued " in row and (" s ago" in row or "just now" in row) and row.rstrip().endswith("CLI alpha  [cli, a]")

    bad = cli(api, "jobs", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since: expects an ISO 8601 date or date-time" in bad.stderr
    unknown = cli(api, "jobs", "list", "--where", "spec.colour=red")
    assert unknown.returncode == 2 and "spec.colour" in unknown.stderr and "Traceback" not in unknown.stderr

    assert cli(api, "jobs", "cancel", first["id"], second["id"]).stdout.count("cancelled") == 2
    archived = cli(api, "jobs", "archive", first["id"], second["id"])
    assert archived.returncode == 0 and archived.stdout.splitlines() == [f"{first['id']}: archived",
                                                                         f"{second['id']}: archived"]
    assert listed("--tag", "cli") == []
    assert listed("--tag", "cli", "--archived", "1") == listed("--tag", "cli", "--archived", "all") == [
        second["id"], first["id"]]
    assert "(archived)" in cli(api, "jobs", "list", "--tag", "cli", "--archived", "1").stdout
    assert cli(api, "jobs", "restore", first["id"]).stdout.strip() == f"{first['id']}: restored"
    assert listed("--tag", "cli") == [first["id"]]


def test_jobs_edit_delete_and_download(api, tmp_path):
    run = api.submit("train", {"epochs": 1}, name="to edit", tags=["old", "keep"])
    edited = cli(api, "jobs", "edit", run["id"], "--name", "edited", "--note", "lr too high", "--add-tag", "new",
                 "--remove-tag", "old")
    assert edited.returncode == 0, edited.stderr
    job = api.job(run["id"])
    assert (job["name"], job["tags"], job["note"]) == ("edited", ["keep", "new"], "lr too high")
    assert cli(api, "jobs", "edit", run["id"], "--tag", "only", "--note", "").returncode == 0
    assert (api.job(run["id"])["tags"], api.job(run["id"])["note"]) == (["only"], None)
    nothing = cli(api, "jobs", "edit", run["id"])
    assert nothing.returncode == 2 and "say what to change" in nothing.stderr

    # Still queued: a zip and a delete are refused, each with the API's reason.
    early = cli(api, "jobs", "delete", run["id"], "--yes")
    assert early.returncode == 1 and early.stderr.startswith(f"{run['id']}: not deleted: ") and "queued" in early.stderr
    assert cli(api, "jobs", "download", run["id"], "--out", str(tmp_path)).returncode == 2
    cli(api, "jobs", "cancel", run["id"])
    saved = cli(api, "jobs", "download", run["id"], "--out", str(tmp_path / "run.zip"))
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith(f"{run['id']}: {tmp_path / 'run.zip'} (")
    import zipfile

    with zipfile.ZipFile(tmp_path / "run.zip") as archive:
        assert json.loads(archive.read("manifest.json"))["job"]["name"] == "edited"

    unconfirmed = cli(api, "jobs", "delete", run["id"])  # no terminal to ask on
    assert unconfirmed.returncode == 2 and "pass --yes" in unconfirmed.stderr
    assert api.job(run["id"])["state"] == "cancelled"
    # A sweep's children come with it at submit time; the sweep goes only with --cascade.
    sweep = api.submit("sweep", {"base": {"epochs": 1}, "grid": {"lr": [0.001, 0.01]}, "evaluate": False})
    cli(api, "jobs", "cancel", sweep["id"])
    children = [c["id"] for c in api.get(f"/jobs?parent={sweep['id']}").json()["items"]]
    assert len(children) == 2
    refused = cli(api, "jobs", "delete", sweep["id"], run["id"], "--yes")
    assert refused.returncode == 1 and refused.stdout.strip() == f"{run['id']}: deleted"
    assert refused.stderr.startswith(f"{sweep['id']}: not deleted: job {sweep['id']} has 2 run(s) made from it")
    assert refused.stderr.rstrip().endswith("(here: jobs delete --cascade)")
    cascaded = cli(api, "jobs", "delete", sweep["id"], "--cascade", "-y")
    assert cascaded.returncode == 0 and cascaded.stdout.strip() == f"{sweep['id']}: deleted"
    for gone in [run["id"], sweep["id"], *children]:
        assert api.get(f"/jobs/{gone}").status_code == 404


def test_a_closed_pipe_ends_quietly(api, tmp_path):
    api.submit("train", {"epochs": 1}, name="pipe")
    listed = subprocess.run(["bash", "-c", f"{sys.executable} -m latentforge.cli jobs list --url {api.url} | head -c 10"],
                            capture_output=True, text=True, env=api.env, timeout=60)
    assert len(listed.stdout) == 10 and listed.stderr == ""

    # `submit --wait | head -1`: head leaves after the job id; the next progress line meets a closed pipe.
    script = (f"{sys.executable} -m latentforge.cli submit train --set epochs=1 --name piped --wait --url {api.url}"
              f" 2>{tmp_path / 'err'} | head -1 >{tmp_path / 'first'}; echo ${{PIPESTATUS[0]}} >{tmp_path / 'status'}")
    shell = subprocess.Popen(["bash", "-c", script], env=api.env)
    try:
        api.wait_until(lambda: (tmp_path / "first").exists() and (tmp_path / "first").read_text().strip(), 60,
                       "the job id through head")
        job_id = (tmp_path / "first").read_text().strip()
        assert api.job(job_id)["name"] == "piped"
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 202  # a state change: one more line to write
        assert shell.wait(timeout=60) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
    assert (tmp_path / "status").read_text().strip() == "141"
    assert (tmp_path / "err").read_text() == ""
