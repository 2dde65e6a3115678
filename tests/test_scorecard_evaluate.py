"""The evaluate runner in-process, on a model trained on data with known factors (sprites)."""

from __future__ import annotations

import json

import pytest

from shared.kinds import RunContext
from shared.scorecard import flat_metrics
from shared.specs import EvaluateSpec, TrainSpec
from worker.pipeline import run_training
from worker.runners import run_evaluate

PARENT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def sprites_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sprites-vae")
    spec = TrainSpec.from_dict({"model": "vae", "dataset": "sprites", "latent_dim": 4, "epochs": 1, "device": "cpu"})
    run_training(spec, folder, data_dir=None, log=lambda _: None)
    return folder


def evaluate(model, tmp_path, **fields):
    steps = []
    ctx = RunContext(folder=tmp_path, parent_folder=model, cache_dir=None, log=lambda _: None,
                     report=steps.append)
    output = run_evaluate(EvaluateSpec.from_dict({"model_job": PARENT, **fields}), ctx)
    return json.loads((tmp_path / "scorecard.json").read_text()), output, steps


def test_disentanglement_is_measured_on_data_with_factors(sprites_model, tmp_path):
    card, output, steps = evaluate(sprites_model, tmp_path, limit=1000,
                                   properties=["disentanglement", "continuity", "smoothness"])
    entry = card["properties"]["disentanglement"]
    assert entry["notes"]["factors"] == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert entry["samples"] == {"measured": 1000, "fit": 1000}
    metrics = entry["metrics"]
    assert set(metrics) == {"mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
    # A trained VAE's codes predict the factors far better than chance (1/14 for a position).
    assert metrics["dci_informativeness"] > 0.3
    assert entry["score"] == metrics["mig"] and entry["direction"] == "higher"
    assert card["properties"]["generative"] == {"label": "Generative capability", "score": None,
                                                "reason": "not requested"}
    assert card["properties"]["continuity"]["metrics"]["path_max_step_ratio"] >= 1.0
    assert card["properties"]["smoothness"]["notes"]["prior"].startswith("N(0, I)")
    # Progress: one step per measured property, in the scorecard's order; then the files the job publishes.
    assert [(s["step"], s["doing"]) for s in steps] == [(0, "disentanglement"), (1, "continuity"),
                                                        (2, "latent smoothness")]
    assert {f.name for f in output.artifacts} >= {"scorecard.json", "figures/scorecard.png",
                                                 "figures/interpolation_paths.png", "figures/lipschitz.png"}
    assert all((tmp_path / f.name).is_file() for f in output.artifacts)
    assert output.metrics == flat_metrics(card) and "mig" in output.metrics
    assert set(output.parent_scope) >= {"mig", "disentanglement_score", "lipschitz_relative"}
    assert "knn_accuracy" not in output.parent_scope  # not measured: the model keeps its older number


def test_a_stop_request_ends_the_evaluation_between_properties(sprites_model, tmp_path):
    from worker.train import TrainingCancelled

    ctx = RunContext(folder=tmp_path, parent_folder=sprites_model, log=lambda _: None, should_stop=lambda: True)
    with pytest.raises(TrainingCancelled):
        run_evaluate(EvaluateSpec.from_dict({"model_job": PARENT, "limit": 200}), ctx)
    assert not (tmp_path / "scorecard.json").exists()
