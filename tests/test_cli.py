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
