"""The runners of the built-in job kinds (named in shared/kinds.py): train, embed, sample and evaluate.

A runner is a plain function of (spec, RunContext) returning a RunOutput (both
in shared/kinds.py): the manifest of the files it wrote into ``ctx.folder``
and a summary to record as the job's progress. No queue or database here:
the worker (worker/tasks.py) builds the context and records the output.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.artifacts import EMBEDDING_FIGURE, EMBEDDING_PCA_FIGURE, SAMPLES_FIGURE, ArtifactFile, ArtifactKind, figure_files
from shared.errors import JobInputError
from shared.kinds import RunContext, RunOutput
from shared.scorecard import flat_metrics, metric_names
from shared.specs import EmbedSpec, EvaluateSpec, SampleSpec, TrainSpec, latent_width_problem
from worker import figures
from worker.checkpoint import load_model
from worker.data import ImageSplit, load_split
from worker.files import atomic_path
from worker.models import decode_points, encode_all
from worker.pipeline import label_options, run_training
from worker.samplers import GMM_COMPONENTS, GMM_FIT_LIMIT, GMM_SOURCE, draw_latents
from worker.train import TrainingCancelled, images_to_tensor



def save_array(ctx: RunContext, name: str, array: np.ndarray) -> ArtifactFile:
    with atomic_path(ctx.folder / name) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return ArtifactFile.of(name, ArtifactKind.ARRAY)


def run_train(spec: TrainSpec, ctx: RunContext) -> RunOutput:
    result = run_training(spec, ctx.folder, data_dir=ctx.data_dir, download=ctx.allow_download, log=ctx.log,
                          on_epoch=ctx.on_epoch, should_stop=ctx.should_stop, resume_from=ctx.resume_from)
    final = {name: float(value) for name, value in result.history[-1].to_dict().items() if name != "epoch"}
    # Progress was recorded epoch by epoch; the final numbers become the run's metrics, to rank runs by.
    return RunOutput(result.artifacts, None, metrics={**final, "train_seconds": round(result.seconds, 3)})


def run_embed(spec: EmbedSpec, ctx: RunContext) -> RunOutput:
    model, config = load_model(ctx.parent_folder)
    dataset = config["train"]["dataset"]
    split = load_split(dataset, spec.split, ctx.data_dir)
    count = len(split) if spec.limit is None else min(spec.limit, len(split))
    x = images_to_tensor(split, torch.device("cpu"))[:count]
    colours, colour_options = colour_labels(split, spec.color_by)
    colours = colours[:count]
    ctx.log(f"embedding {count:,} {dataset} {spec.split} images")
    codes = encode_all(model, x)  # posterior means for the VAEs
    files = [save_array(ctx, "codes.npy", codes.astype(np.float32)),
             save_array(ctx, "labels.npy", split.labels[:count].astype(np.int64))]
    if split.factors is not None:
        files.append(save_array(ctx, "factors.npy", split.factors[:count].astype(np.int64)))
    title = f"Codes of {count:,} {dataset} {spec.split} images"
    latent_dim = codes.shape[1]
    scatter = {**colour_options, "contours": model.prior.components_2d() if model.prior is not None else ()}
    if latent_dim <= 2:
        figures.latent_scatter(codes, colours, ctx.folder / EMBEDDING_FIGURE, title, **scatter)
        files += figure_files(EMBEDDING_FIGURE)
    else:
        figures.latent_scatter(codes, colours, ctx.folder / EMBEDDING_PCA_FIGURE, title + " (PCA)", **colour_options)
        from sklearn.manifold import TSNE

        ctx.log(f"t-SNE of {count:,} codes of dimension {latent_dim}")
        perplexity = min(30.0, max(2.0, (count - 1) / 3))
        points = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(codes)
        tsne = "figures/embedding_tsne.png"
        figures.scatter_2d(points, colours, ctx.folder / tsne, title + " (t-SNE)", ("t-SNE 1", "t-SNE 2"),
                           **colour_options)
        files += figure_files(EMBEDDING_PCA_FIGURE) + figure_files(tsne)
    return RunOutput(files, {"count": count, "latent_dim": latent_dim, "dataset": dataset, "split": spec.split})


def colour_labels(split: ImageSplit, color_by: str | None) -> tuple[np.ndarray, dict]:
    """The values the scatter colours by: the class labels, or one factor of a dataset with known factors."""
    if color_by is None:
        return split.labels, label_options(split)
    if color_by not in split.factor_names:
        known = ", ".join(split.factor_names) if split.factor_names else f"none: {split.dataset} has no factors"
        raise JobInputError(f"color_by: {color_by!r} is not a factor of {split.dataset} (factors: {known})")
    return split.factors[:, split.factor_names.index(color_by)], {"label_title": color_by}


def run_sample(spec: SampleSpec, ctx: RunContext) -> RunOutput:
    model, config = load_model(ctx.parent_folder)
    latent_dim = int(config["model"]["latent_dim"])
    shape = tuple(config["model"]["input_shape"])
    if spec.latent_coords is not None:
        if problem := latent_width_problem(spec.latent_coords, latent_dim):
            raise JobInputError(f"latent_coords: {problem}")
        points = np.asarray(spec.latent_coords, dtype=np.float32)
        title, source = "Decoded latent points", "given"
    else:
        def training_codes() -> np.ndarray:
            train = load_split(config["train"]["dataset"], "train", ctx.data_dir)
            ctx.log(f"fitting a {GMM_COMPONENTS}-component mixture to the training codes (a plain AE has no prior)")
            return encode_all(model, images_to_tensor(train, torch.device("cpu"))[:GMM_FIT_LIMIT])

        points, source = draw_latents(model, spec.n, spec.seed, training_codes)
        title = (f"{spec.n} samples from the prior, {model.prior.describe()}" if source == "prior"
                 else f"{spec.n} samples from {GMM_SOURCE}")
        ctx.log(f"drawing {spec.n} points from {model.describe_prior() if source == 'prior' else GMM_SOURCE}")
    decoded = decode_points(model, points)  # the likelihood's mean (sigmoid of the logits for bernoulli)
    images = decoded.reshape(len(points), *shape).astype(np.float32)
    files = [save_array(ctx, "images.npy", images), save_array(ctx, "coords.npy", points)]
    figures.decoded_grid(decoded, points.tolist(), shape, ctx.folder / SAMPLES_FIGURE, title=title,
                         columns=min(len(points), 8))
    files += figure_files(SAMPLES_FIGURE)
    described = {"given": "the given latent points", "prior": f"the model's prior, {model.describe_prior()}",
                 "gmm": f"{GMM_SOURCE} (a plain autoencoder has no prior)"}
    return RunOutput(files, {"count": len(points), "source": source, "drawn_from": described[source]})


def run_evaluate(spec: EvaluateSpec, ctx: RunContext) -> RunOutput:
    from worker.scorecard.evaluate import evaluate_checkpoint

    def on_property(step: int, steps: int, doing: str) -> None:
        if ctx.should_stop is not None and ctx.should_stop():
            raise TrainingCancelled("stopped between properties")
        if ctx.report is not None:
            ctx.report({"step": step, "steps": steps, "doing": doing})

    scorecard, files = evaluate_checkpoint(spec, ctx.parent_folder, ctx.folder, data_dir=ctx.data_dir,
                                           cache_dir=ctx.cache_dir, log=ctx.log, on_property=on_property)
    properties = scorecard["properties"]
    summary = {"scores": {name: entry["score"] for name, entry in properties.items()},
               "reasons": {name: entry["reason"] for name, entry in properties.items() if entry["score"] is None},
               "seconds": scorecard["seconds"]["total"]}
    return RunOutput(files, summary, metrics=flat_metrics(scorecard), parent_scope=metric_names(spec.measured()))
