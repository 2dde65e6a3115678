"""Training speed: the seed notebook's loop against LatentForge's trainer.

Both train the seed AutoEncoder on the same data, on the same device, in the
same process, for the same epochs, and both measure the test loss after each
epoch (the same work per epoch). The rounds alternate (notebook, ours,
notebook, ours, ...) so that a noisy machine slows both alike; each side's
speed is its median epoch after the first (warm-up). It prints samples/s of
each, the ratio, and the largest per-epoch loss difference, which must stay
within 0.0002 (same seed, same batches).

    python bench/train_speed.py [--epochs 4] [--rounds 2] [--device cpu|cuda]

With ``--model vae`` (or ``aae``, or several: ``--model vae,beta_vae,aae``) it
instead times each model kind's epoch against the AE's, on the same data and
device in the same run (rounds alternate AE, kind, AE, kind, ...), and prints
seconds per epoch and the ratio to the AE.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from shared.specs import TrainSpec  # noqa: E402
from tests.notebook import notebook_run  # noqa: E402  (the notebook's code, verbatim)
from worker.data import load_split  # noqa: E402
from worker.models import ModelConfig  # noqa: E402
from worker.train import images_to_tensor, keep_large_allocations_on_heap, new_state, resolve_device, train  # noqa: E402

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def torchvision_layout(data_dir: Path, root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in FILES:
        src = data_dir / (stem + ".gz")
        with (gzip.open(src) if src.exists() else open(data_dir / stem, "rb")) as fin, open(raw / stem, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return root


def ours_run(data_dir: Path, epochs: int, device: torch.device, model: str = "ae") -> list[tuple[float, float, float]]:
    spec = TrainSpec.from_dict({"preset": "seed", "model": model, "epochs": epochs, "device": device.type})
    state = new_state(spec, ModelConfig.from_spec(spec, (28, 28)), device)
    train_x = images_to_tensor(load_split("mnist", "train", data_dir), device)
    test_x = images_to_tensor(load_split("mnist", "test", data_dir), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train(spec, state, train_x, test_x)
    return [(m.train_loss, m.test_loss, m.seconds) for m in state.history]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--data-dir", default=os.environ.get("LATENTFORGE_DATA_DIR", str(REPO.parent / "shared/data/mnist")))
    parser.add_argument("--model", help="time these model kinds (comma-separated) against the AE instead")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.model:
        return compare_kinds(args, device)
    # Process-wide: give the notebook loop the same allocator setting as ours.
    keep_large_allocations_on_heap()
    data_dir = Path(args.data_dir).resolve()
    n_train = len(load_split("mnist", "train", data_dir))

    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_layout(data_dir, Path(tmp))
        epoch_times: dict[str, list[float]] = {"notebook": [], "latentforge": []}
        max_diff = 0.0
        for round_no in range(1, args.rounds + 1):
            reference, _ = notebook_run(root, args.epochs, device=device)
            ours = ours_run(data_dir, args.epochs, device)
            epoch_times["notebook"] += [s for _, _, s in reference[1:]]
            epoch_times["latentforge"] += [s for _, _, s in ours[1:]]
            for (rt, re, _), (ot, oe, _) in zip(reference, ours):
                max_diff = max(max_diff, abs(rt - ot), abs(re - oe))
            print(
                f"round {round_no}: notebook epoch losses {[round(r[0], 4) for r in reference]},"
                f" ours {[round(o[0], 4) for o in ours]}"
            )

    speed = {name: n_train / statistics.median(times) for name, times in epoch_times.items()}
    ratio = speed["latentforge"] / speed["notebook"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; {n_train:,} training images, batch 256")
    print(f"notebook loop : {speed['notebook']:>10,.0f} samples/s  ({statistics.median(epoch_times['notebook']):.3f} s/epoch)")
    print(f"latentforge   : {speed['latentforge']:>10,.0f} samples/s  ({statistics.median(epoch_times['latentforge']):.3f} s/epoch)")
    print(f"ratio         : {ratio:.2f}x")
    print(f"max |loss difference| per epoch: {max_diff:.6f} ({'ok' if max_diff <= 2e-4 else 'TOO LARGE'}, limit 0.0002)")
    return 0 if max_diff <= 2e-4 else 1


def compare_kinds(args: argparse.Namespace, device: torch.device) -> int:
    """Seconds per epoch of each kind against the AE's, measured in the same run."""
    keep_large_allocations_on_heap()
    data_dir = Path(args.data_dir).resolve()
    kinds = ["ae"] + [k for k in args.model.split(",") if k != "ae"]
    limits = {"vae": 1.5, "beta_vae": 1.5, "aae": 3.0}  # the ceilings, relative to the AE
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            times[kind] += [s for _, _, s in ours_run(data_dir, args.epochs, device, kind)[1:]]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; seed trunk, latent 2, batch 256;"
          f" median of {len(times['ae'])} epochs each")
    ae = statistics.median(times["ae"])
    ok = True
    for kind in kinds:
        seconds = statistics.median(times[kind])
        ratio = seconds / ae
        limit = limits.get(kind)
        verdict = "" if limit is None else f"  (limit {limit}x: {'ok' if ratio <= limit else 'OVER'})"
        ok &= limit is None or ratio <= limit
        print(f"{kind:<9}: {seconds:.3f} s/epoch  {ratio:.2f}x the AE{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
