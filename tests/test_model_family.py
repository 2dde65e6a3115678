"""The model kinds (ae, vae, beta_vae, aae): known answers, the registry, and every kind end to end."""

import math

import numpy as np
import pytest
import torch

from shared.errors import TrainingError
from shared.specs import TrainSpec
from worker.checkpoint import export_decoder, load_model
from worker.models import (MODELS, AAEConfig, AdversarialAutoEncoder, BetaVAEConfig, ConfigError, ModelConfig, VAE,
                           VAEConfig, build_model, decode_points, encode_all)
from worker.models.priors import CircleMixture, StandardNormal
from worker.models.vae import gaussian_kl
from worker.train import TrainingCancelled, evaluate, images_to_tensor, new_state, train

KIND_SPECS = {
    "ae": {},
    "vae": {"model": "vae"},
    "vae_gaussian": {"model": "vae", "likelihood": "gaussian", "gaussian_std": 0.2},
    "beta_vae": {"model": "beta_vae"},
    "beta_vae_capacity": {"model": "beta_vae", "capacity_max": 5.0, "capacity_epochs": 2},
    "aae": {"model": "aae"},
    "aae_mixture": {"model": "aae", "prior": "mixture"},
}
OWN_METRICS = {
    "ae": set(),
    "vae": {"train_recon", "train_kl", "train_elbo", "test_recon", "test_kl", "test_elbo", "test_mse"},
    "aae": {"train_disc", "train_gen", "train_disc_acc"},
}


@pytest.fixture(scope="module")
def data(mnist_train, mnist_test):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cpu = torch.device("cpu")
    return images_to_tensor(mnist_train, cpu)[:2048], images_to_tensor(mnist_test, cpu)[:512]


def spec_of(name, **fields):
    return TrainSpec.from_dict({"epochs": 2, "batch_size": 128, "device": "cpu", **KIND_SPECS[name], **fields})


def fresh(spec):
    return new_state(spec, ModelConfig.from_spec(spec, (28, 28)), torch.device("cpu"))


# -- known answers ---------------------------------------------------------------------------


def test_kl_of_a_posterior_equal_to_the_prior_is_zero():
    zeros = torch.zeros(5, 3)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(5))
    # ... and positive otherwise: KL(N(1, 1) || N(0, 1)) = 1/2 per dimension.
    assert gaussian_kl(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.5)


def test_bernoulli_recon_of_a_perfect_reconstruction_of_binary_data_is_about_zero():
    model = VAE(VAEConfig(latent_dim=2, hidden=(16,)))
    x = (torch.rand(8, 784) > 0.5).float()
    logits = (2 * x - 1) * 40.0  # sigmoid(±40) is 0 or 1 to float precision
    assert model.recon_nll(logits, x).max().item() < 1e-6
    assert model.recon_nll(torch.zeros_like(x), x).mean().item() == pytest.approx(784 * math.log(2), rel=1e-6)


def test_gaussian_recon_is_the_normal_negative_log_likelihood():
    model = VAE(VAEConfig(latent_dim=2, hidden=(16,), likelihood="gaussian", gaussian_std=0.5))
    x, raw = torch.rand(4, 784), torch.rand(4, 784)
    expected = -torch.distributions.Normal(raw, 0.5).log_prob(x).sum(dim=1)
    assert torch.allclose(model.recon_nll(raw, x), expected, rtol=1e-5)


def test_a_vae_with_beta_zero_and_a_tiny_fixed_variance_trains_like_an_ae(data):
    x, test_x = data
    ae = train(spec_of("ae", epochs=4), fresh(spec_of("ae", epochs=4)), x, test_x)
    vae_spec = spec_of("vae", epochs=4, likelihood="gaussian", gaussian_std=0.01, beta=0.0)
    vae = train(vae_spec, fresh(vae_spec), x, test_x)
    ae_mse, vae_mse = ae.history[-1].test_loss, vae.history[-1].extra["test_mse"]
    assert vae_mse == pytest.approx(ae_mse, rel=0.25), (ae_mse, vae_mse)
    # Nothing pulls the posterior towards the prior: the KL grows instead of shrinking to 0.
    assert vae.history[-1].extra["test_kl"] > 5


def test_an_aae_discriminator_cannot_tell_the_prior_from_itself():
    torch.manual_seed(0)
    model = AdversarialAutoEncoder(AAEConfig(latent_dim=2, hidden=(32,), prior="mixture"))
    optimizer = model.make_optimizers(1e-3)["disc"]
    accuracies = []
    for _ in range(300):
        loss, accuracy = model.discriminator_terms(model.prior.sample(256), model.prior.sample(256))
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        accuracies.append(accuracy.item())
    assert np.mean(accuracies[-100:]) == pytest.approx(0.5, abs=0.05)
    # The same discriminator does tell the prior from codes far off it.
    far = model.prior.sample(256) + 20.0
    for _ in range(100):
        loss, accuracy = model.discriminator_terms(model.prior.sample(256), far)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    assert accuracy.item() > 0.95


def test_the_capacity_schedule_follows_c_of_t(data):
    config = BetaVAEConfig(capacity_max=25.0, capacity_epochs=10)
    assert [config.capacity(t) for t in (0, 2.5, 5, 10, 30)] == [0.0, 6.25, 12.5, 25.0, 25.0]
    model = VAE(config)
    x = data[0][:64]
    torch.manual_seed(1)
    parts = model.loss(x, progress=5.0)
    assert parts["total"].item() == pytest.approx(
        (parts["recon"] + 1000.0 * (parts["kl"] - 12.5).abs()).item(), rel=1e-6)
    # In training, per epoch: C at the epoch's end is reported, and reaches capacity_max at capacity_epochs.
    spec = spec_of("beta_vae", epochs=3, capacity_max=6.0, capacity_epochs=2)
    state = train(spec, fresh(spec), *data)
    assert [m.extra["capacity"] for m in state.history] == [3.0, 6.0, 6.0]


def test_prior_draws_have_the_prior_moments():
    g = torch.Generator().manual_seed(0)
    normal = StandardNormal(3).sample(20_000, generator=g)
    assert normal.mean(0).abs().max() < 0.03 and (normal.std(0) - 1).abs().max() < 0.03
    mixture = CircleMixture(2).sample(20_000, generator=g)
    radius = mixture.norm(dim=1)
    assert radius.mean().item() == pytest.approx(4.0, abs=0.1)
    assert len(CircleMixture(2).components_2d()) == 10


# -- the registry and configs -------------------------------------------------------------------


def test_every_kind_is_registered_with_its_config():
    assert set(MODELS) == {"ae", "vae", "beta_vae", "aae"}
    for name, kind in MODELS.items():
        config = kind.config(kind=name, latent_dim=3, hidden=(16,))
        model = build_model(config)
        assert ModelConfig.from_dict(config.to_dict()) == config
        assert model.encode(torch.rand(2, 784)).shape == (2, 3)
    assert BetaVAEConfig().beta == 4.0 and VAEConfig().beta == 1.0
    assert AAEConfig(hidden=(128, 64)).disc_hidden == (128, 128)


@pytest.mark.parametrize("config, field", [
    (lambda: VAEConfig(beta=-1.0), "beta"),
    (lambda: VAEConfig(beta=float("nan")), "beta"),
    (lambda: VAEConfig(likelihood="poisson"), "likelihood"),
    (lambda: BetaVAEConfig(capacity_max=10.0), "capacity_max"),
    (lambda: AAEConfig(prior="uniform"), "prior"),
    (lambda: AAEConfig(disc_hidden=()), "disc_hidden"),
    (lambda: ModelConfig.from_dict({"kind": "ae", "beta": 1.0}), "beta"),
])
def test_model_configs_name_the_bad_field(config, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        config()


# -- every kind, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("name", KIND_SPECS)
def test_every_kind_trains_with_any_sizes_and_reports_its_own_metrics(name, data):
    spec = spec_of(name, latent_dim=3, hidden=[64, 32])
    state = train(spec, fresh(spec), *data)
    first, last = state.history
    assert last.train_loss < first.train_loss or name.startswith("beta_vae_capacity")
    row = last.to_dict()
    assert all(math.isfinite(v) for v in row.values())
    own = OWN_METRICS["vae" if "vae" in name else name.split("_")[0]]
    assert own <= set(row), (own - set(row))
    if "vae" in name:
        assert row["test_elbo"] < 0 < row["test_kl"] and row["train_elbo"] < 0
    if name.startswith("aae"):
        assert 0.0 <= row["train_disc_acc"] <= 1.0


@pytest.mark.parametrize("name", ["vae", "aae_mixture"])
def test_nan_is_caught_with_a_clear_error(name, data):
    x, test_x = data
    x = x.clone()
    x[7, 100] = float("nan")
    spec = spec_of(name)
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 1"):
        train(spec, fresh(spec), x, test_x)


@pytest.mark.parametrize("name", ["vae", "aae"])
def test_cancel_between_batches(name, data):
    spec = spec_of(name, epochs=3)
    polls = []
    with pytest.raises(TrainingCancelled, match="epoch 2"):
        train(spec, fresh(spec), *data, should_stop=lambda: polls.append(1) or len(polls) > 20)  # 16 batches/epoch


def test_the_aae_generator_step_moves_the_encoder_alone(data):
    spec = spec_of("aae")
    state = fresh(spec)
    model, optimizers = state.model, state.optimizers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    codes = model.encode(data[0][:128])
    fooled = model.discriminator(codes)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    optimizers["gen"].zero_grad(set_to_none=False)
    loss.backward()
    optimizers["gen"].step()
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"encoder"}


def test_decoded_outputs_are_the_likelihood_mean(data, tmp_path):
    spec = spec_of("vae")
    model = fresh(spec).model.eval()
    z = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    decoded = decode_points(model, z)
    logits = model.decoder(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(decoded, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-7)
    assert 0.0 <= decoded.min() and decoded.max() <= 1.0
    # Embeddings are posterior means: deterministic, the mean head's output.
    codes = encode_all(model, data[1][:16])
    np.testing.assert_array_equal(codes, encode_all(model, data[1][:16]))
    # The browser's decoder export says to apply the sigmoid.
    from safetensors import safe_open

    export_decoder(model, tmp_path / "decoder.safetensors")
    with safe_open(str(tmp_path / "decoder.safetensors"), framework="pt") as f:
        assert f.metadata()["output"] == "sigmoid"
    gaussian = fresh(spec_of("vae_gaussian")).model
    assert gaussian.output == "identity"


def test_evaluation_draws_its_own_random_numbers(data):
    """The test-set ELBO samples codes from a private generator: evaluating leaves training's stream alone."""
    spec = spec_of("vae")
    model = fresh(spec).model
    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = evaluate(model, data[1])
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(model, data[1]) == first


@pytest.mark.parametrize("name", ["vae", "aae_mixture"])
def test_a_checkpoint_of_every_kind_reloads_from_its_folder(name, data, tmp_path):
    from worker.checkpoint import write_checkpoint

    spec = spec_of(name, epochs=1)
    state = train(spec, fresh(spec), *data)
    config = ModelConfig.from_spec(spec, (28, 28))
    write_checkpoint(tmp_path, state.model, {"model": config.to_dict(), "train": spec.to_dict()}, [])
    model, record = load_model(tmp_path)
    assert type(model) is type(state.model) and model.config == config
    x = data[1][:32]
    assert torch.equal(model.reconstruct(x), state.model.eval().reconstruct(x))
