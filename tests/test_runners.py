"""Embed and sample runners on a real checkpoint, without queue or database."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.specs import EmbedSpec, SampleSpec, TrainSpec
from worker.pipeline import run_training
from shared.kinds import RunContext
from worker.runners import JobInputError, run_embed, run_sample

JOB = "6f1c1a1e-2b7e-4a53-9a43-0d3c1b9f8e21"  # the runners read the model from a folder, not by id


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("z3")
    run_training(TrainSpec.from_dict({"epochs": 1, "latent_dim": 3, "hidden": [64], "device": "cpu"}), out,
                 data_dir=mnist_dir, log=lambda _: None)
    return out


def context(model_dir, out, data_dir) -> RunContext:
    return RunContext(folder=out, data_dir=data_dir, parent_folder=model_dir, log=lambda _: None)


def test_embed_above_2d_draws_pca_and_tsne(model_3d, mnist_dir, tmp_path):
    output = run_embed(EmbedSpec.from_dict({"model_job": JOB, "split": "test", "limit": 400}),
                       context(model_3d, tmp_path, mnist_dir))
    names = {a.name.rsplit("/", 1)[-1] for a in output.artifacts if a.kind != "thumbnail"}
    assert names == {"codes.npy", "labels.npy", "embedding_pca.png", "embedding_tsne.png"}
    assert all((tmp_path / a.name).is_file() for a in output.artifacts)  # the manifest lists what was written
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (400, 3) and np.isfinite(codes).all()
    assert np.load(tmp_path / "labels.npy")[:5].tolist() == [7, 2, 1, 0, 4]
    for name in ("embedding_pca.png", "embedding_tsne.png"):
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.size == (2400, 1800)
    assert output.summary == {"count": 400, "latent_dim": 3, "dataset": "mnist", "split": "test"}


def test_sample_checks_point_width_and_draws_from_the_mixture(model_3d, mnist_dir, tmp_path):
    with pytest.raises(JobInputError, match="points have 2 coordinates but the model's latent space has 3"):
        run_sample(SampleSpec.from_dict({"model_job": JOB, "latent_coords": [[0, 0]]}),
                   context(model_3d, tmp_path, mnist_dir))
    first = run_sample(SampleSpec.from_dict({"model_job": JOB, "n": 5, "seed": 1}), context(model_3d, tmp_path / "a", mnist_dir))
    run_sample(SampleSpec.from_dict({"model_job": JOB, "n": 5, "seed": 1}), context(model_3d, tmp_path / "b", mnist_dir))
    assert first.summary["count"] == 5 and first.summary["source"] == "gmm"
    assert "a plain autoencoder has no prior" in first.summary["drawn_from"]
    coords_a, coords_b = np.load(tmp_path / "a" / "coords.npy"), np.load(tmp_path / "b" / "coords.npy")
    assert coords_a.shape == (5, 3) and np.array_equal(coords_a, coords_b)  # same seed, same draws
    assert np.load(tmp_path / "a" / "images.npy").shape == (5, 28, 28)


@pytest.mark.parametrize("model, extra", [("vae", {}), ("aae", {"prior": "mixture"})])
def test_every_kind_on_sprites_samples_its_prior_and_colours_by_a_factor(tmp_path, model, extra):
    """sprites needs no files: generated in memory when the data folder is not writable (here: missing)."""
    data_dir = tmp_path / "no-such-folder" / "data"
    (tmp_path / "no-such-folder").write_text("a file where a folder would be: the cache cannot be written")
    run_dir = tmp_path / "model"
    spec = TrainSpec.from_dict({"model": model, "dataset": "sprites", "epochs": 1, "hidden": [32], "device": "cpu", **extra})
    result = run_training(spec, run_dir, data_dir=data_dir, log=lambda _: None)
    assert result.history[0].test_loss > 0

    sample_dir = tmp_path / "sample"
    sample_dir.mkdir()
    output = run_sample(SampleSpec.from_dict({"model_job": JOB, "n": 6, "seed": 3}), context(run_dir, sample_dir, data_dir))
    assert output.summary["source"] == "prior" and "prior" in output.summary["drawn_from"]
    images = np.load(sample_dir / "images.npy")
    assert images.shape == (6, 28, 28)
    if model == "vae":  # Bernoulli mean: every pixel in [0, 1]
        assert 0.0 <= images.min() and images.max() <= 1.0
    coords = np.load(sample_dir / "coords.npy")
    if model == "aae":  # the mixture's components sit on a circle of radius 4
        assert 2.0 < np.linalg.norm(coords, axis=1).mean() < 6.0

    embed_dir = tmp_path / "embed"
    embed_dir.mkdir()
    output = run_embed(EmbedSpec.from_dict({"model_job": JOB, "limit": 500, "color_by": "orientation"}),
                       context(run_dir, embed_dir, data_dir))
    factors = np.load(embed_dir / "factors.npy")
    assert factors.shape == (500, 5) and (embed_dir / "figures" / "embedding.png").is_file()
    with pytest.raises(JobInputError, match=r"color_by: 'colour' is not a factor of sprites \(factors: shape, scale"):
        run_embed(EmbedSpec.from_dict({"model_job": JOB, "color_by": "colour"}), context(run_dir, tmp_path, data_dir))
