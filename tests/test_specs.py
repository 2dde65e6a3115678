import math

import pytest

from shared.specs import SEED_PRESET, SpecError, TrainSpec


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
        ("epochs", 0, "must be at least 1"),
        ("epochs", 10**7, "must be at most 10000"),
        ("epochs", "5", "must be an integer"),
        ("epochs", True, "must be an integer"),
        ("latent_dim", 0, "must be at least 1"),
        ("batch_size", 0, "must be at least 1"),
        ("lr", math.nan, "must be a finite number"),
        ("lr", 0, "must be greater than 0"),
        ("lr", "fast", "must be a number"),
        ("model", "gan", "must be one of 'ae'"),
        ("dataset", "cifar", "must be one of"),
        ("device", "tpu", "must be one of 'auto', 'cpu', 'cuda'"),
        ("hidden", [], "non-empty list"),
        ("hidden", [128, -1], "entry 1 must be at least 1"),
        ("hidden", [1] * 9, "at most 8 entries"),
        ("preset", "fast", "must be one of 'seed'"),
    ],
)
def test_invalid_fields_are_named(field, value, message):
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({field: value})
    assert err.value.errors[0][0] == field
    assert message in err.value.errors[0][1]


def test_unknown_fields_and_several_errors_at_once():
    with pytest.raises(SpecError) as err:
        TrainSpec.from_dict({"epochz": 3, "lr": -1, "batch_size": 0})
    assert sorted(name for name, _ in err.value.errors) == ["batch_size", "epochz", "lr"]
    assert ("epochz", "unknown field") in err.value.errors
