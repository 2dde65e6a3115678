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
    assert first.summary == {"count": 5, "source": "gmm"}
    coords_a, coords_b = np.load(tmp_path / "a" / "coords.npy"), np.load(tmp_path / "b" / "coords.npy")
    assert coords_a.shape == (5, 3) and np.array_equal(coords_a, coords_b)  # same seed, same draws
    assert np.load(tmp_path / "a" / "images.npy").shape == (5, 28, 28)
