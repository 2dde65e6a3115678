"""The latent-space scorecard: how long an evaluation takes, and the four kinds' scorecards side by side.

Two parts (both by default):

``--part timing``: an evaluate job's work (``worker.runners.run_evaluate``, the
same function a worker runs) on the seed AE (MNIST, latent 2, 50 epochs),
first with an empty judge cache (the run that trains the judge) and then with
the judge cached; printed against the 60 s target for the 2-core CPU.

``--part table``: ae, vae, beta_vae (β = 4) and aae, each on MNIST with latent
2 and on sprites with latent 10, all with the seed trunk and budget (hidden
[128, 64], 50 epochs, batch 256, lr 1e-3, seed 47), evaluated with the default
spec (5,000 test images, seed 0). Prints a markdown table of the eight
normalised scores and the headline numbers, and writes it with every
scorecard.json and radar figure to ``--out``.

Runs are kept in ``--runs`` and reused when their checkpoint is there.

    python bench/scorecard.py [--part timing|table|all] [--epochs 50] [--runs DIR] [--out docs/scorecard]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from shared.kinds import RunContext  # noqa: E402
from shared.scorecard import PROPERTIES  # noqa: E402
from shared.specs import EvaluateSpec, TrainSpec  # noqa: E402
from worker.pipeline import run_training  # noqa: E402
from worker.runners import run_evaluate  # noqa: E402

KINDS = ("ae", "vae", "beta_vae", "aae")
SETTINGS = (("mnist", 2), ("sprites", 10))
TARGET_S = 60.0
PARENT = "00000000-0000-4000-8000-000000000000"  # any id: the bench hands the checkpoint folder over directly


def train_once(runs: Path, kind: str, dataset: str, latent_dim: int, epochs: int, data_dir: Path) -> Path:
    folder = runs / f"{kind}-{dataset}-z{latent_dim}-e{epochs}"
    if (folder / "config.json").exists():
        return folder
    fields = {"preset": "seed", "model": kind, "dataset": dataset, "latent_dim": latent_dim, "epochs": epochs,
              "device": "cpu"}
    if kind == "beta_vae":
        fields["beta"] = 4.0
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    run_training(TrainSpec.from_dict(fields), folder, data_dir=data_dir, log=lambda _: None)
    print(f"trained {folder.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def evaluate(checkpoint: Path, out: Path, data_dir: Path, cache_dir: Path, log=lambda _: None) -> tuple[dict, float]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ctx = RunContext(folder=out, data_dir=data_dir, cache_dir=cache_dir, parent_folder=checkpoint, log=log)
    started = time.perf_counter()
    run_evaluate(EvaluateSpec.from_dict({"model_job": PARENT}), ctx)
    seconds = time.perf_counter() - started
    return json.loads((out / "scorecard.json").read_text()), seconds


def part_timing(args: argparse.Namespace, runs: Path, data_dir: Path) -> None:
    checkpoint = train_once(runs, "ae", "mnist", 2, args.epochs, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        card, cold = evaluate(checkpoint, Path(tmp) / "cold", data_dir, cache)
        _, warm = evaluate(checkpoint, Path(tmp) / "warm", data_dir, cache)
    judge = card["properties"]["generative"]["notes"]["judge"]
    print(f"\nevaluate job, seed AE (MNIST latent 2), {torch.get_num_threads()} torch threads:")
    print(f"  first run, judge trained ({judge['trained_seconds']:.1f} s of it): {cold:6.1f} s")
    print(f"  judge cached:                                   {warm:6.1f} s  = {warm / TARGET_S:.2f} x the"
          f" {TARGET_S:.0f} s target")
    print(f"  per property, first run (s): {card['seconds']}")


def part_table(args: argparse.Namespace, runs: Path, data_dir: Path, out: Path) -> None:
    cache = Path(args.cache)
    rows = []
    for dataset, latent_dim in SETTINGS:
        for kind in KINDS:
            checkpoint = train_once(runs, kind, dataset, latent_dim, args.epochs, data_dir)
            name = checkpoint.name
            card, seconds = evaluate(checkpoint, runs / f"{name}-evaluate", data_dir, cache)
            print(f"evaluated {name} in {seconds:.0f} s", flush=True)
            (out / "scorecards").mkdir(parents=True, exist_ok=True)
            (out / "scorecards" / f"{name}.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
            shutil.copy(runs / f"{name}-evaluate" / "figures" / "scorecard.png", out / f"{name}-radar.png")
            rows.append((kind, dataset, latent_dim, card))
    table = markdown_table(rows)
    (out / "table.md").write_text(table)
    print("\n" + table)


def markdown_table(rows: list[tuple[str, str, int, dict]]) -> str:
    header = "| model | data | " + " | ".join(p.label for p in PROPERTIES) + " |"
    lines = [header, "|" + "---|" * (len(PROPERTIES) + 2)]
    for kind, dataset, latent_dim, card in rows:
        cells = []
        for prop in PROPERTIES:
            entry = card["properties"][prop.name]
            cells.append("n/a" if entry["score"] is None
                         else f"{entry['score']:.2f} ({prop.headline} {entry['headline_value']:.3g})")
        lines.append(f"| {kind} | {dataset} z={latent_dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("timing", "table", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "latentforge-scorecard-runs"))
    parser.add_argument("--out", default=str(REPO / "docs" / "scorecard"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "latentforge-scorecard-cache"),
                        help="judge cache for the table (the timing part uses an empty one of its own)")
    parser.add_argument("--data-dir", default=os.environ.get("LATENTFORGE_DATA_DIR", str(REPO.parent / "shared/data/mnist")))
    args = parser.parse_args()
    runs, out, data_dir = Path(args.runs), Path(args.out), Path(args.data_dir)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("timing", "all"):
        part_timing(args, runs, data_dir)
    if args.part in ("table", "all"):
        part_table(args, runs, data_dir, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
