"""The four model kinds side by side on MNIST: a table of test metrics and one figure of prior samples.

Trains ``ae``, ``vae``, ``beta_vae`` (β = 4) and ``aae`` with the seed trunk
(latent 2, hidden [128, 64], 50 epochs, batch 256, seed 47) on the same data,
then prints, per kind: test reconstruction MSE (the VAEs decode the posterior
mean through the Bernoulli mean, sigmoid of the logits), test KL to N(0, I)
(the VAEs), the ELBO estimate, and the AAE's discriminator accuracy. The
figure shows 12 decoded draws per row: the AE from N(0, I) and from the
Gaussian mixture fitted to its codes (what its sample jobs use), the VAE and
β-VAE from their N(0, I) prior, the AAE from its prior. Same draws' seed for all.

    python bench/model_family.py [--epochs 50] [--out docs/model_family]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from shared.specs import TrainSpec  # noqa: E402
from worker.checkpoint import load_model  # noqa: E402
from worker.data import load_split  # noqa: E402
from worker.models import decode_points, encode_all  # noqa: E402
from worker.models.priors import StandardNormal  # noqa: E402
from worker.pipeline import run_training  # noqa: E402
from worker.samplers import fit_code_mixture  # noqa: E402
from worker.train import images_to_tensor  # noqa: E402

KINDS = ("ae", "vae", "beta_vae", "aae")
DRAWS = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", default=str(REPO / "docs" / "model_family"))
    parser.add_argument("--runs", default=None, help="folder for the runs (default: a folder under --out)")
    parser.add_argument("--data-dir", default=os.environ.get("LATENTFORGE_DATA_DIR", str(REPO.parent / "shared/data/mnist")))
    args = parser.parse_args()
    out = Path(args.out)
    runs = Path(args.runs) if args.runs else out / "runs"
    out.mkdir(parents=True, exist_ok=True)

    rows, panels = [], []
    for kind in KINDS:
        spec = TrainSpec.from_dict({"preset": "seed", "model": kind, "epochs": args.epochs, "device": "cpu"})
        started = time.perf_counter()
        result = run_training(spec, runs / kind, data_dir=args.data_dir, log=lambda line: None)
        seconds = time.perf_counter() - started
        last = result.history[-1]
        extra = last.extra
        rows.append({
            "kind": kind,
            "test_mse": extra.get("test_mse", last.test_loss),
            "test_kl": extra.get("test_kl"),
            "test_elbo": extra.get("test_elbo"),
            "disc_acc": extra.get("train_disc_acc"),
            "seconds": seconds,
        })
        model, config = load_model(runs / kind)
        generator = torch.Generator().manual_seed(0)
        if model.prior is None:
            normal = StandardNormal(model.config.latent_dim).sample(DRAWS, generator=generator).numpy()
            panels.append(("ae: draws from N(0, I)", decode_points(model, normal)))
            train = images_to_tensor(load_split("mnist", "train", args.data_dir), torch.device("cpu"))
            mixture = fit_code_mixture(encode_all(model, train), seed=0)
            panels.append(("ae: draws from a 10-Gaussian mixture fitted to its codes",
                           decode_points(model, mixture.sample(DRAWS)[0].astype(np.float32))))
        else:
            draws = model.prior.sample(DRAWS, generator=generator).numpy()
            panels.append((f"{kind}: draws from its prior, {model.prior.describe()}", decode_points(model, draws)))
        print(f"{kind}: {seconds:.0f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()
                                                        if isinstance(v, float)), flush=True)

    print()
    print("| kind | test recon MSE | test KL (nats) | test ELBO (nats) | disc. accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    fmt = lambda v, spec=".4f": "–" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        print(f"| {row['kind']} | {fmt(row['test_mse'])} | {fmt(row['test_kl'], '.2f')} | {fmt(row['test_elbo'], '.1f')}"
              f" | {fmt(row['disc_acc'], '.3f')} | {row['seconds']:.0f} |")

    fig, axes = plt.subplots(len(panels), DRAWS, figsize=(DRAWS * 0.9, len(panels) * 1.25), squeeze=False)
    for r, (title, images) in enumerate(panels):
        for c in range(DRAWS):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c].reshape(28, 28), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        axes[r, 0].set_title(title, loc="left", fontsize=9, x=0.0)
    fig.suptitle(f"Samples from each kind's prior (MNIST, latent 2, {args.epochs} epochs)")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.02, hspace=0.45)
    path = out / "prior_samples.png"
    fig.savefig(path, dpi=100)
    print(f"\nfigure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
