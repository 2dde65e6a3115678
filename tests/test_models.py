import pytest
import torch

from tests.notebook import AutoEncoder as NotebookAutoEncoder
from tests.notebook import seed_notebook
from worker.models import AutoEncoder, ConfigError, ModelConfig, build_model, count_parameters

SEED_STATE_DICT = [
    ("encoder.1.weight", (128, 784)), ("encoder.1.bias", (128,)),
    ("encoder.3.weight", (64, 128)), ("encoder.3.bias", (64,)),
    ("encoder.5.weight", (2, 64)), ("encoder.5.bias", (2,)),
    ("decoder.0.weight", (64, 2)), ("decoder.0.bias", (64,)),
    ("decoder.2.weight", (128, 64)), ("decoder.2.bias", (128,)),
    ("decoder.4.weight", (784, 128)), ("decoder.4.bias", (784,)),
]


def test_seed_model_parameter_count_and_names():
    model = AutoEncoder()
    assert count_parameters(model) == 218_514
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == SEED_STATE_DICT


def test_same_seed_same_initialisation_as_the_notebook():
    seed_notebook(47)
    theirs = NotebookAutoEncoder()
    seed_notebook(47)
    ours = AutoEncoder()
    for (k1, v1), (k2, v2) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2
        assert torch.equal(v1, v2), k1


def test_notebook_weights_load_and_give_the_same_outputs():
    theirs = NotebookAutoEncoder()
    ours = AutoEncoder()
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(5, 1, 28, 28)
    recon, code = ours(x)
    ref_recon, ref_code = theirs(x)
    assert recon.shape == (5, 784) and code.shape == (5, 2)
    assert torch.equal(recon, ref_recon) and torch.equal(code, ref_code)


def test_named_outputs_unpack_like_a_tuple():
    out = AutoEncoder()(torch.rand(3, 784))
    assert out.reconstruction.shape == (3, 784)
    assert out.code.shape == (3, 2)
    recon, code = out
    assert recon is out.reconstruction and code is out.code


def test_configurable_sizes():
    model = build_model(ModelConfig(latent_dim=8, hidden=(256, 128, 32)))
    out = model(torch.rand(4, 28, 28))
    assert out.code.shape == (4, 8)
    expected = (784 * 256 + 256) + (256 * 128 + 128) + (128 * 32 + 32) + (32 * 8 + 8)
    expected += (8 * 32 + 32) + (32 * 128 + 128) + (128 * 256 + 256) + (256 * 784 + 784)
    assert count_parameters(model) == expected


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kind": "gan"}, "kind"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (128, 0)}, "hidden"),
        ({"input_shape": (28,)}, "input_shape"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ModelConfig(**kwargs)


def test_config_round_trip():
    config = ModelConfig(latent_dim=4, hidden=(64,))
    assert ModelConfig.from_dict(config.to_dict()) == config
