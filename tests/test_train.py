import math

import pytest
import torch

from shared.specs import TrainSpec
from worker.models import ModelConfig
from worker.train import (
    TrainingCancelled,
    TrainingError,
    evaluate_loss,
    format_progress,
    new_state,
    resolve_device,
    train,
)


def small_data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.rand(100, 784, generator=g)


def test_same_seed_same_run_different_seed_different_run():
    train_x, test_x = small_data()
    spec = TrainSpec.from_dict({"epochs": 2, "batch_size": 64})
    runs = []
    for seed in (1, 1, 2):
        state = new_state(TrainSpec.from_dict({**spec.to_dict(), "seed": seed}), ModelConfig(), torch.device("cpu"))
        train(TrainSpec.from_dict({**spec.to_dict(), "seed": seed}), state, train_x, test_x)
        runs.append([m.train_loss for m in state.history])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_nan_loss_stops_with_a_clear_error():
    train_x, test_x = small_data()
    train_x[5, 3] = float("nan")
    spec = TrainSpec.from_dict({"epochs": 3})
    state = new_state(spec, ModelConfig(), torch.device("cpu"))
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 1"):
        train(spec, state, train_x, test_x)
    assert state.history == []


def test_cancel_is_checked_between_batches():
    train_x, test_x = small_data()
    spec = TrainSpec.from_dict({"epochs": 5, "batch_size": 100})
    state = new_state(spec, ModelConfig(), torch.device("cpu"))
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 8  # 6 batches per epoch: stop in epoch 2

    with pytest.raises(TrainingCancelled, match="epoch 2"):
        train(spec, state, train_x, test_x, should_stop=should_stop)
    assert state.epoch == 1


def test_on_epoch_reports_every_epoch_with_metrics():
    train_x, test_x = small_data()
    spec = TrainSpec.from_dict({"epochs": 3, "batch_size": 128})
    state = new_state(spec, ModelConfig(), torch.device("cpu"))
    seen = []
    train(spec, state, train_x, test_x, on_epoch=lambda st, m: seen.append(m))
    assert [m.epoch for m in seen] == [1, 2, 3]
    for m in seen:
        assert math.isfinite(m.train_loss) and math.isfinite(m.test_loss)
        assert m.seconds > 0 and m.samples_per_s == pytest.approx(600 / m.seconds)
    line = format_progress(seen[0], 3)
    assert line.startswith("epoch 1/3  train ") and "samples/s" in line


def test_evaluate_loss_is_the_mean_of_batch_means():
    model = new_state(TrainSpec(), ModelConfig(), torch.device("cpu")).model
    x = torch.rand(300, 784)
    with torch.no_grad():
        recon = model(x).reconstruction
    batch_means = [torch.nn.functional.mse_loss(recon[i:i + 256], x[i:i + 256]).item() for i in (0, 256)]
    assert evaluate_loss(model, x) == pytest.approx(sum(batch_means) / 2, rel=1e-5)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_closely():
    train_x, test_x = small_data()
    spec = TrainSpec.from_dict({"epochs": 2, "batch_size": 64})
    losses = {}
    for dev in ("cpu", "cuda"):
        device = torch.device(dev)
        state = new_state(spec, ModelConfig(), device)
        train(spec, state, train_x.to(device), test_x.to(device))
        losses[dev] = [m.train_loss for m in state.history]
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=2e-4)
