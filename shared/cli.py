"""The ``latentforge`` command.

Each subcommand imports what it needs when it runs, so ``latentforge --help``
stays fast and roles that never train never load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from shared.settings import load_settings
from shared.specs import DEVICES, PRESETS, SpecError, TrainSpec


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--set expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as cpu or mnist
    return key.strip(), value


def train_spec_from_args(args: argparse.Namespace) -> TrainSpec:
    fields: dict[str, Any] = dict(_parse_assignment(item) for item in args.set)
    for name in ("preset", "epochs", "device"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    try:
        return TrainSpec.from_dict(fields)
    except SpecError as exc:
        raise UsageError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    spec = train_spec_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if (out / "config.json").exists() and not args.overwrite:
        raise UsageError(f"--out {out}: already holds a checkpoint; choose another folder or pass --overwrite")

    from worker.data import DatasetError
    from worker.pipeline import run_training
    from worker.train import TrainingError

    data_dir = args.data_dir or load_settings().data_dir
    try:
        run_training(spec, out, data_dir=data_dir, download=args.download, log=lambda line: print(line, flush=True))
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    except TrainingError as exc:
        print(f"latentforge train: failed: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="latentforge", description="Train and study autoencoder latent spaces.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model here, without queue or database")
    train.add_argument("--preset", choices=PRESETS, help="start from a named preset (seed: the notebook)")
    train.add_argument("--epochs", type=int, help="number of epochs (default 50)")
    train.add_argument("--device", choices=DEVICES, help="auto picks CUDA when present")
    train.add_argument("--data-dir", help="folder with the dataset files (default LATENTFORGE_DATA_DIR or ./data)")
    train.add_argument("--download", action="store_true", help="download the dataset when its files are missing")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other train field, e.g. --set latent_dim=8 --set hidden=[256,128]")
    train.add_argument("--out", required=True, help="checkpoint folder to write")
    train.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    train.set_defaults(handler=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as exc:
        parser.exit(2, f"latentforge {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
