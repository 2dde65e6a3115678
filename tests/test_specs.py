import math

import pytest

from shared.kinds import get_kind
from shared.specs import SEED_PRESET, EmbedSpec, SampleSpec, SpecError, TrainSpec


def parse_spec(kind, data):
    return get_kind(kind).parse(data)


def test_defaults_are_the_seed_notebook():
    spec = TrainSpec.from_dict({})
    for key, value in SEED_PRESET.items():
        got = list(getattr(spec, key)) if key == "hidden" else getattr(spec, key)
        assert got == value, key


def test_preset_with_overrides():
    spec = TrainSpec.from_dict({"preset": "seed", "epochs": 2, "device": "cpu"})
    assert (spec.preset, spec.epochs, spec.device, spec.lr, spec.batch_size) == ("seed", 2, "cpu", 1e-3, 256)


def test_round_trip():
    spec = TrainSpec.from_dict({"latent_dim": 8, "hidden": [256, 64], "lr": 3e-4})
    assert TrainSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "greater than or equal to 1"),
        ("epochs", 10**7, "less than or equal to 10000"),
        ("epochs", "5", "valid integer"),
        ("epochs", True, "valid integer"),
        ("epochs", 2.0, "valid integer"),
        ("latent_dim", 0, "greater than or equal to 1"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("lr", math.nan, "finite number"),
        ("lr", math.inf, "finite number"),
        ("lr", 0, "greater than 0"),
        ("lr", "fast", "valid number"),
        ("model", "gan", "ae, vae, beta_vae, aae"),
        ("dataset", "cifar", "'mnist', 'fashion_mnist' or 'sprites'"),
        ("device", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("hidden", [], "at least 1 item"),
        ("hidden.1", [128, -1], "greater than or equal to 1"),
        ("hidden", [1] * 9, "at most 8 items"),
        ("preset", "fast", "'seed'"),
    ],
)
def test_invalid_fields_are_named(field, value, message):
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({field.split(".")[0]: value})
    assert err.value.errors[0][0] == field
    assert message in err.value.errors[0][1]


def test_unknown_fields_and_several_errors_at_once():
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({"epochz": 3, "lr": -1, "batch_size": 0})
    assert sorted(name for name, _ in err.value.errors) == ["batch_size", "epochz", "lr"]
    assert ("epochz", "not a field of model 'ae'") in err.value.errors


def test_parse_spec_prefixes_fields_and_checks_kind():
    with pytest.raises(SpecError) as err:
        parse_spec("train", {"epochs": 0})
    assert err.value.errors[0][0] == "spec.epochs"
    with pytest.raises(SpecError) as err:
        parse_spec("dance", {})
    assert err.value.errors[0][0] == "kind"
    with pytest.raises(SpecError) as err:
        parse_spec("train", [1, 2])
    assert err.value.errors == [("spec", "must be a JSON object")]


def test_embed_and_sample_specs():
    job = "6f1c1a1e-2b7e-4a53-9a43-0d3c1b9f8e21"
    assert EmbedSpec.from_dict({"model_job": job}).limit == 5000
    with pytest.raises(SpecError) as err:
        EmbedSpec.from_dict({"model_job": "abc"})
    assert err.value.errors[0][0] == "model_job" and "not a job id" in err.value.errors[0][1]
    with pytest.raises(SpecError):
        EmbedSpec.from_dict({})
    sample = SampleSpec.from_dict({"model_job": job, "latent_coords": [[0, 1], [2.5, -3]]})
    assert sample.latent_coords == [[0.0, 1.0], [2.5, -3.0]]
    with pytest.raises(SpecError) as err:
        SampleSpec.from_dict({"model_job": job, "latent_coords": [[0, 1], [2]]})
    assert "same number of coordinates" in err.value.errors[0][1]
    with pytest.raises(SpecError) as err:
        SampleSpec.from_dict({"model_job": job, "latent_coords": [[0, float("nan")]]})
    assert err.value.errors[0][0] == "latent_coords.0.1"


@pytest.mark.parametrize("data", [
    {},
    {"model": "vae", "likelihood": "gaussian", "gaussian_std": 0.2, "beta": 0.5},
    {"model": "beta_vae", "capacity_max": 25.0, "capacity_epochs": 10, "gamma": 500.0},
    {"model": "aae", "prior": "mixture", "disc_hidden": [64, 32], "disc_lr": 2e-4},
    {"preset": "seed", "model": "vae", "dataset": "sprites"},
])
def test_every_model_kind_survives_its_round_trip(data):
    """The API stores spec.to_dict() and the worker parses it again: the same spec must come back."""
    spec = TrainSpec.from_dict(data)
    assert type(spec).__name__.startswith(("AE", "VAE", "BetaVAE", "AAE")) and spec.model == data.get("model", "ae")
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    assert set(spec.to_dict()) <= set(TrainSpec.field_names())
