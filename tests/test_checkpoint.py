import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from worker.checkpoint import CheckpointError, load_model, read_metrics
from worker.models import AutoEncoder

SHAPES = {
    "latent_scatter": (2400, 1800),  # 8x6 in at dpi 300
    "reconstructions": (600, 440),
    "generated": (660, 520),
    "loss_curve": (800, 500),
    "latent_manifold": (900, 900),
    "interpolation": (1300, 200),
    "prior_samples": (1760, 520),  # 16 draws, 8 columns
}


def test_checkpoint_folder_describes_itself(trained_run, mnist_dir):
    folder = trained_run.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "latentforge.checkpoint/1"
    assert config["model"] == {"kind": "ae", "input_shape": [28, 28], "latent_dim": 2, "hidden": [128, 64]}
    assert config["train"]["preset"] == "seed" and config["train"]["epochs"] == 2 and config["train"]["seed"] == 47
    assert config["data"]["train"]["count"] == 19690 and config["data"]["test"]["count"] == 10000
    assert config["data"]["train"]["files"]["train-images-idx3-ubyte.gz"].startswith("af7b4082")
    assert set(config["versions"]) >= {"torch", "numpy", "python", "safetensors"}
    assert config["result"]["epochs"] == 2
    assert config["result"]["train_loss"] == pytest.approx(trained_run.history[-1].train_loss)


def test_metrics_jsonl_has_one_row_per_epoch(trained_run):
    rows = read_metrics(trained_run.folder)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) >= {"epoch", "train_loss", "test_loss", "seconds"}
        assert 0 < row["test_loss"] < 0.2 and row["seconds"] > 0
    assert rows[1]["train_loss"] < rows[0]["train_loss"]


def test_weights_are_safetensors_not_pickle(trained_run):
    path = trained_run.folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(AutoEncoder().state_dict())
    assert not list(trained_run.folder.rglob("*.pt")) and not list(trained_run.folder.rglob("*.pkl"))


def test_round_trip_gives_identical_outputs(trained_run, mnist_test):
    model, config = load_model(trained_run.folder)
    again, _ = load_model(trained_run.folder)
    x = torch.from_numpy(mnist_test.images[:64]).float().div(255)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.code, b.code)
    # The reloaded model is the trained one, not a fresh initialisation.
    mse = torch.nn.functional.mse_loss(a.reconstruction, x.view(64, -1)).item()
    assert mse < 0.07
    assert model.training is False


def test_figures_are_pngs_of_the_expected_size(trained_run):
    names = {p.stem for p in trained_run.figures}
    assert names == set(SHAPES)
    for path in trained_run.figures:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == SHAPES[path.stem], path.name
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 5, f"{path.name} is blank"
        thumb = path.with_name(path.stem + ".thumb.png")
        with Image.open(thumb) as image:
            assert image.format == "PNG"
            assert image.size[0] <= 320 and image.size[1] <= 240
    # No temporary files left behind.
    assert not [p for p in trained_run.folder.rglob("*") if p.name.endswith(".tmp")]


def test_load_errors_name_the_problem(tmp_path, trained_run):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    config = json.loads((trained_run.folder / "config.json").read_text())
    config["model"]["latent_dim"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((trained_run.folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        load_model(tmp_path)


def parse_safetensors(data: bytes) -> tuple[dict, dict]:
    """Parse safetensors the way the browser does: header length, JSON header, raw little-endian buffers."""
    import struct

    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    base = 8 + header_len
    dtypes = {"F32": np.float32, "U8": np.uint8}
    tensors = {
        name: np.frombuffer(data[base + info["data_offsets"][0] : base + info["data_offsets"][1]],
                            dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        for name, info in header.items()
    }
    return tensors, metadata


def test_exported_decoder_decodes_like_the_model(trained_run):
    tensors, metadata = parse_safetensors((trained_run.folder / "decoder.safetensors").read_bytes())
    assert metadata["format"] == "latentforge.decoder/1" and metadata["latent_dim"] == "2"
    plan = json.loads(metadata["layers"])
    assert [(p["in"], p["out"], p["activation"]) for p in plan] == [(2, 64, "relu"), (64, 128, "relu"), (128, 784, "none")]
    points = np.array([[0.0, 0.0], [-2.0, 2.0], [1.5, -3.0]], dtype=np.float32)
    h = points
    for i, step in enumerate(plan):
        h = h @ tensors[f"layers.{i}.weight"].T + tensors[f"layers.{i}.bias"]
        if step["activation"] == "relu":
            h = np.maximum(h, 0)
    model, _ = load_model(trained_run.folder)
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(h, expected, atol=1e-5)


def test_exported_codes_are_the_training_set(trained_run, mnist_train):
    tensors, metadata = parse_safetensors((trained_run.folder / "latent_codes.safetensors").read_bytes())
    assert tensors["codes"].shape == (19690, 2) and np.isfinite(tensors["codes"]).all()
    np.testing.assert_array_equal(tensors["labels"], mnist_train.labels.astype(np.uint8))
    model, _ = load_model(trained_run.folder)
    with torch.no_grad():
        first = model.encode(torch.from_numpy(mnist_train.images[:5]).float().div(255)).numpy()
    np.testing.assert_allclose(tensors["codes"][:5], first, atol=1e-5)


def test_safetensors_bytes_are_the_same_in_every_process(tmp_path):
    """safetensors orders metadata by a per-process random hash; ours sorts it (a resumed
    job's weights must have the sha256 of an uninterrupted run's)."""
    import subprocess
    import sys

    from safetensors import safe_open

    code = ("import sys, torch; from pathlib import Path; from worker.checkpoint import write_safetensors;"
            "write_safetensors(Path(sys.argv[1]), {'b': torch.arange(6.).reshape(2, 3), 'a': torch.ones(3)},"
            " {'zeta': '1', 'alpha': '2', 'layers': '[{\"in\": 2}]', 'm': 'x'})")
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == {"zeta": "1", "alpha": "2", "layers": '[{"in": 2}]', "m": "x"}
        assert f.get_tensor("b").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


MODEL_SPECS = {
    "ae": {},
    "vae": {"model": "vae"},
    "beta_vae": {"model": "beta_vae", "capacity_max": 10.0, "capacity_epochs": 3},
    "aae": {"model": "aae", "prior": "mixture"},  # three optimizers, prior draws every batch
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", MODEL_SPECS)
def test_resumed_training_ends_with_the_bytes_of_an_uninterrupted_run(tmp_path, mnist_train, mnist_test, device, kind):
    """Save the full state after epoch 2, scramble every random stream, resume in a fresh
    state: epochs 3-4 give the same weights, bit for bit, and the same saved bytes, for every kind."""
    import random

    import numpy as np

    from shared.specs import TrainSpec
    from worker.checkpoint import (load_training_state, save_training_state, save_weights,
                                   verify_training_state)
    from worker.models import ModelConfig
    from worker.train import images_to_tensor, new_state, train

    spec = TrainSpec.from_dict({"epochs": 4, "hidden": [64, 32], "device": device, "seed": 5, **MODEL_SPECS[kind]})
    config = ModelConfig.from_spec(spec, (28, 28))
    dev = torch.device(device)
    x, test_x = images_to_tensor(mnist_train, dev)[:4096], images_to_tensor(mnist_test, dev)[:1024]

    clean = train(spec, new_state(spec, config, dev), x, test_x)

    saved = {}

    def stop_after_two(state, _metrics):
        if state.epoch == 2:
            saved.update(save_training_state(tmp_path / "epoch-2", state))
            raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        train(spec, new_state(spec, config, dev), x, test_x, on_epoch=stop_after_two)
    assert verify_training_state(tmp_path / "epoch-2", saved) is None
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a new process's streams differ
    resumed = new_state(TrainSpec.from_dict({**spec.to_dict(), "seed": 123}), config, dev)
    assert load_training_state(tmp_path / "epoch-2", resumed) and resumed.epoch == 2
    train(spec, resumed, x, test_x)

    assert [m.to_dict() | {"seconds": 0, "samples_per_s": 0} for m in resumed.history] == \
        [m.to_dict() | {"seconds": 0, "samples_per_s": 0} for m in clean.history]
    save_weights(clean.model, tmp_path / "clean.safetensors")
    save_weights(resumed.model, tmp_path / "resumed.safetensors")
    assert (tmp_path / "clean.safetensors").read_bytes() == (tmp_path / "resumed.safetensors").read_bytes()


def test_a_torn_or_foreign_resume_state_is_refused(tmp_path, trained_run):
    from shared.specs import TrainSpec
    from worker.checkpoint import save_training_state, verify_training_state
    from worker.models import ModelConfig
    from worker.train import new_state

    spec = TrainSpec.from_dict({"epochs": 1, "hidden": [8], "device": "cpu"})
    state = new_state(spec, ModelConfig(kind="ae", input_shape=(28, 28), latent_dim=2, hidden=(8,)), torch.device("cpu"))
    digests = save_training_state(tmp_path / "epoch-1", state)
    assert not list(tmp_path.glob(".epoch-1.*")), "the staging folder is renamed into place"
    tensors = tmp_path / "epoch-1" / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])  # torn
    assert verify_training_state(tmp_path / "epoch-1", digests) == "state.safetensors does not match its recorded sha256"
    assert verify_training_state(tmp_path / "nowhere", digests) == "state.safetensors is missing"
    assert verify_training_state(tmp_path / "epoch-1", {}) == "no sha256 recorded for state.safetensors"
