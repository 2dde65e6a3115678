"""The ``latentforge`` command: train locally, run the roles, submit and watch jobs.

Each subcommand imports what it needs when it runs, so ``latentforge --help``
stays fast and roles that never train never load torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from shared import humane
from shared.kinds import KINDS, form_value, load_plugins
from shared.settings import SettingsError, load_settings
from shared.specs import DEVICES, PRESETS, SpecError, TrainSpec

class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_assignments(items: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got {text!r}")
        fields[key.strip()] = form_value(raw)  # JSON, a list of numbers, or a bare word such as cpu
    return fields


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``--grid beta=0.5,1,2`` and ``--grid model=ae,vae``: each value of a comma-separated list, or a JSON list."""
    grid: dict[str, list[Any]] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise UsageError(f"--grid expects key=value,value,..., got {text!r}")
        value = form_value(raw.strip())
        grid[key.strip()] = value if isinstance(value, list) else [form_value(part.strip()) for part in raw.split(",")]
    return grid


# -- train (no queue, no database) --------------------------------------------------------


def train_spec_from_args(args: argparse.Namespace) -> TrainSpec:
    fields = parse_assignments(args.set)
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


# -- roles ------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from shared.db import make_engine
    from shared.migrate import current_revision, upgrade

    settings = load_settings()
    upgrade(settings.database_url)
    print(f"database {make_engine(settings.database_url).url.render_as_string(hide_password=True)}"
          f" is at revision {current_revision(make_engine(settings.database_url))}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from shared.storage import S3Store, open_store

    store = open_store(load_settings())
    if args.action == "init" and isinstance(store, S3Store) and store.create_bucket():
        print(f"created bucket {store.bucket}")
    store.check()
    print(f"artifact store ready: {store.description}")
    return 0


def _preflight(check_store: bool = True) -> None:
    """Before a server or worker starts: the schema is current and the artifact store answers (one line if not)."""
    from shared.db import make_engine
    from shared.migrate import SchemaOutOfDate, check_schema
    from shared.storage import open_store

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        check_schema(engine)
    except SchemaOutOfDate as exc:
        raise UsageError(str(exc)) from None
    finally:
        engine.dispose()  # no connection may outlive this check into a forked server
    if check_store:
        open_store(settings).check()  # a SettingsError: one line naming the setting


def cmd_api(args: argparse.Namespace) -> int:
    from api.server import OpenBindWithoutToken, StoreUnusable, check_bind, check_store_apart, serve

    try:
        settings = load_settings()
        check_bind(args.host, settings.api_token)
        _preflight(check_store=not settings.uses_object_store)
        if settings.uses_object_store:
            check_store_apart()
    except (OpenBindWithoutToken, StoreUnusable) as exc:
        raise UsageError(str(exc)) from None
    serve(args.host, args.port, workers=args.workers, threads=args.threads, worker_class=args.worker_class)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    queues = ",".join(q.strip() for q in args.queues.split(",") if q.strip())
    from shared.queue import QUEUES

    unknown = set(queues.split(",")) - set(QUEUES)
    if not queues or unknown:
        raise UsageError(f"--queues: choose from gpu, cpu (got {args.queues!r})")
    _preflight()
    if not args.no_supervise:
        import logging

        from latentforge.supervisor import supervise

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s")
        child = [sys.executable, "-m", "latentforge.cli", "worker", "--queues", queues, "--loglevel", args.loglevel,
                 "--no-supervise"]
        return supervise(child, load_settings())
    from worker.tasks import JobWorker

    return JobWorker(load_settings(), queues.split(",")).start(args.loglevel)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when healthy: the API's /health, or (--worker) this host's worker heartbeat."""
    if args.worker:
        import socket

        from shared.db import make_engine, make_sessionmaker
        from shared.jobstore import JobStore

        settings = load_settings()
        store = JobStore(make_sessionmaker(make_engine(settings.database_url)), lambda *_: None)
        prefix = socket.gethostname() + ":"
        mine = [w for w in store.live_workers(settings.stale_after_seconds) if w.hostname.startswith(prefix)]
        print(f"{len(mine)} live worker(s) on {prefix[:-1]}")
        return 0 if mine else 1
    from latentforge.client import ApiError, ApiUnreachable

    client = _client(args)
    try:
        report = client.health()
    except ApiUnreachable:
        raise  # main says how to point at another address
    except ApiError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A finished run as TensorBoard event files or an MLflow run (latentforge/export.py)."""
    import tempfile

    from latentforge import export
    from latentforge.client import ChecksumMismatch

    target, *rest = args.to
    if target not in export.PACKAGES:
        raise UsageError(f"--to: choose 'tensorboard DIR' or 'mlflow', got {target!r}")
    if target == "tensorboard" and len(rest) != 1:
        raise UsageError("--to tensorboard takes one folder: --to tensorboard DIR")
    if target == "mlflow" and rest:
        raise UsageError(f"--to mlflow takes no folder (got {' '.join(rest)}); the run goes to --tracking-uri")
    if target == "tensorboard" and (args.tracking_uri or args.experiment):
        raise UsageError("--tracking-uri and --experiment are options of --to mlflow")
    try:
        export.require(target)
        client = _client(args)
        job = client.request("GET", f"/jobs/{args.job_id}")
        export.check_finished(job)
        with tempfile.TemporaryDirectory(prefix="latentforge-export-") as folder:
            client.download(job["id"], folder)
            if target == "tensorboard":
                result = export.to_tensorboard(job, folder, rest[0])
            else:
                result = export.to_mlflow(job, folder, tracking_uri=args.tracking_uri,
                                          experiment=args.experiment or export.DEFAULT_EXPERIMENT,
                                          source_url=f"{client.url}/api/v1/jobs/{job['id']}")
    except export.ExportError as exc:
        raise UsageError(str(exc)) from None
    except ChecksumMismatch as exc:
        print(f"latentforge export: error: {exc}", file=sys.stderr)
        return 1
    print(export.describe(result))
    return 0


def _wait_for_api(url: str, seconds: float, procs: list[subprocess.Popen]) -> None:
    from latentforge.client import ApiError, Client

    client = Client(url, timeout=2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise UsageError("a role exited during start-up; see its messages above")
        try:
            client.health()
            return
        except ApiError as exc:
            if exc.status:  # it answered (503 until the worker registers): the API is up
                return
            time.sleep(0.3)
    raise UsageError(f"the API did not answer at {url} within {seconds:.0f} s")


def cmd_up(args: argparse.Namespace) -> int:
    from latentforge.client import ADDRESS_FILE, Client

    settings = load_settings()
    cmd_db_upgrade(args)
    base = [sys.executable, "-m", "latentforge.cli"]
    procs = [
        subprocess.Popen(base + ["api", "--host", args.host, "--port", str(args.port)]),
        subprocess.Popen(base + ["worker", "--queues", "gpu,cpu"]),
    ]
    url = f"http://{args.host}:{args.port}"
    stopping = []

    def stop(*_: Any) -> None:
        stopping.append(True)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    # The address this stack serves at, for client commands run with the same LATENTFORGE_HOME and no
    # LATENTFORGE_API_URL (`make run PORT=8001`, then `latentforge jobs list`); removed when it stops.
    address = settings.home / ADDRESS_FILE
    try:
        _wait_for_api(url, 60, procs)
        address.parent.mkdir(parents=True, exist_ok=True)
        address.write_text(url + "\n")
        client = Client(url, settings.api_token)
        if not args.no_seed and not client.page(limit=1, archived="all").items:
            job = client.submit("train", {"preset": "seed"}, name="seed notebook",
                                idempotency_key="latentforge-up-first-seed-run")
            print(f"queued the seed preset as job {job.id}", flush=True)
        print(f"LatentForge is up: gallery {url}/  API {url}/api/v1  (Ctrl-C stops it)", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        # A role that dies on its own is an error; one that was stopped (a
        # signal to the whole group, say) exits 0.
        return 0 if stopping or all(p.poll() in (None, 0) for p in procs) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()
        if address.is_file() and address.read_text().strip() == url:  # another `up` may have taken over
            address.unlink()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- client commands ----------------------------------------------------------------------


def _client(args: argparse.Namespace):
    """The API client for a command: --url, else LATENTFORGE_API_URL, else a running `latentforge up`'s address."""
    from latentforge.client import Client

    return Client(getattr(args, "url", None) or None)


def follow(run: Any, out=None) -> Any:
    """Show a run's progress on ``out`` (stdout) until it ends; returns the finished run."""
    from latentforge.client import ProgressPrinter

    return run.wait(progress=ProgressPrinter(out or sys.stdout))


def cmd_submit(args: argparse.Namespace) -> int:
    return submit_and_follow(args, args.kind, parse_assignments(args.set))


def cmd_evaluate(args: argparse.Namespace) -> int:
    return submit_and_follow(args, "evaluate", {**parse_assignments(args.set), "model_job": args.model_job})


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = {"base": parse_assignments(args.set), "grid": parse_grid(args.grid), "seeds": args.seeds,
            "evaluate": not args.no_evaluate}
    return submit_and_follow(args, "sweep", spec)


def cmd_study(args: argparse.Namespace) -> int:
    from shared.study import study_spec

    evaluate = {"limit": args.evaluate_limit} if args.evaluate_limit else True
    return submit_and_follow(args, "sweep", study_spec(epochs=args.epochs, seeds=args.seeds, evaluate=evaluate))


def submit_and_follow(args: argparse.Namespace, kind: str, spec: dict[str, Any]) -> int:
    client = _client(args)
    run = client.submit(kind, spec, name=args.name or None, tags=args.tag, idempotency_key=args.idempotency_key)
    print(run.id, flush=True)
    if not args.wait:
        return 0
    final = follow(run)
    if not final.succeeded:
        error = final.error or {}
        print(f"job {final.id} {final.state}" + (f": {error.get('type')}: {error.get('message')}" if error else ""),
              file=sys.stderr)
        return 1
    if final.kind == "evaluate":
        print_scorecard(final.raw)
    if final.kind == "sweep":
        print(f"  children: {final.progress['children']}; evaluations: {final.progress['follow_ups']}")
        print(f"  ranked: latentforge jobs list --parent {final.id} --sort -metrics.knn_accuracy")
        for report in client.jobs(parent=final, kind="study"):
            for row in report.progress.get("claims", []):
                print(f"  {row['model']:<9} {row['claim']:<62} {row['verdict']}")
            print_artifacts(report)
    print_artifacts(final)
    return 0


def print_artifacts(run: Any) -> None:
    for artifact in run.artifacts:
        print(f"  {artifact.name:<34} {artifact.size:>10,} B  {artifact.url}")


def print_scorecard(job: dict[str, Any]) -> None:
    """The eight properties: the normalised score and the headline metric it comes from."""
    from shared.scorecard import PROPERTIES

    metrics = job.get("metrics") or {}
    for prop in PROPERTIES:
        score = metrics.get(prop.score_name)
        headline = metrics.get(prop.headline)
        shown = "n/a" if score is None else f"{score:.3f}"
        detail = "" if headline is None else f"  {prop.headline} = {headline:.4g}"
        print(f"  {prop.label:<24} {shown:>6}{detail}")


def job_row(run: Any, now: datetime, sort: str | None = None) -> str:
    """One line of `jobs list`: id, kind, state, progress, age, run time (ETA while running), name."""
    progress = run.progress
    if progress.get("steps"):
        where = f"{progress.get('step', 0)}/{progress['steps']}"
    else:
        where = f"{progress.get('epoch')}/{progress.get('total')}" if progress.get("total") else ""
    took = run.duration(now)
    timing = "" if took is None else humane.duration(took.total_seconds())
    if (eta := run.eta(now)) is not None:
        timing += f", ETA {humane.duration(eta.total_seconds())}"
    ranked = ""
    if sort and "metrics." in sort:
        value = run.metrics.get(sort.split("metrics.", 1)[1])
        ranked = f"{'-' if value is None else f'{value:.4g}':>10}  "
    tags = f"  [{', '.join(run.tags)}]" if run.tags else ""
    archived = "  (archived)" if run.archived else ""
    return (f"{run.id}  {run.kind:<8} {run.state:<9} {where:>7}  {humane.ago(run.created_at, now):>12}  {timing:<22}"
            f" {ranked}{run.name or ''}{tags}{archived}").rstrip()


def iso_moment(option: str, text: str | None) -> str | None:
    """An ISO 8601 date or date-time given to ``option``, as given; a UsageError naming the option otherwise."""
    if text is None:
        return None
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: expects an ISO 8601 date or date-time such as 2025-05-01 or"
                         f" 2025-05-01T14:30, got {text!r}") from None
    return text


def parse_where(items: list[str]) -> dict[str, str]:
    """``--where spec.model=vae --where latent_dim=2``: spec field -> value (the API reads it as JSON when it
    parses, else as a string)."""
    where: dict[str, str] = {}
    for text in items:
        key, sep, value = text.partition("=")
        key = key.strip().removeprefix("spec.")
        if not sep or not key:
            raise UsageError(f"--where expects spec.FIELD=VALUE, got {text!r}")
        where[key] = value.strip()
    return where


ARCHIVED_CHOICES = {"0": False, "1": True, "all": "all"}


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "list":
        if args.job_ids:
            raise UsageError(f"jobs list takes no job id (got {args.job_ids[0]!r}); use --parent for a job's children")
        now = datetime.now(timezone.utc)
        runs = client.jobs(kind=args.kind, state=args.state, parent=args.parent, tags=args.tag, q=args.search,
                           where=parse_where(args.where), created_after=iso_moment("--since", args.since),
                           created_before=iso_moment("--until", args.until),
                           archived=ARCHIVED_CHOICES[args.archived], sort=args.sort, limit=args.limit)
        for run in runs:
            print(job_row(run, now, args.sort))
        return 0
    if not args.job_ids:
        raise UsageError(f"jobs {args.action} needs a job id")
    if args.action == "watch" and len(args.job_ids) > 1:
        raise UsageError("jobs watch follows one job at a time")
    if args.action == "show":
        for job_id in args.job_ids:
            print(json.dumps(client.get(job_id).raw, indent=2))
    elif args.action == "watch":
        return 0 if follow(client.get(args.job_ids[0])).succeeded else 1
    elif args.action == "cancel":
        for job_id in args.job_ids:
            run = client.cancel(job_id)
            print(f"{run.id}: {'cancelled' if run.state == 'cancelled' else 'asked to stop'}")
    elif args.action == "edit":
        return edit_jobs(client, args)
    elif args.action in ("archive", "restore", "delete"):
        return tidy_jobs(client, args)
    elif args.action == "download":
        return download_jobs(client, args)
    return 0


def edit_jobs(client: Any, args: argparse.Namespace) -> int:
    """Name, note and tags of each run: --name/--note ("" clears), --tag (the whole list), --add-tag, --remove-tag."""
    if args.name is None and args.note is None and not (args.tag or args.clear_tags or args.add_tag
                                                        or args.remove_tag):
        raise UsageError("jobs edit: say what to change: --name, --note, --tag, --add-tag, --remove-tag or"
                         " --clear-tags")
    if (args.tag or args.clear_tags) and (args.add_tag or args.remove_tag):
        raise UsageError("jobs edit: --tag/--clear-tags set the whole list; use them without --add-tag/--remove-tag")
    for job_id in args.job_ids:
        changes: dict[str, Any] = {}
        if args.name is not None:
            changes["name"] = args.name or None
        if args.note is not None:
            changes["note"] = args.note or None
        if args.tag or args.clear_tags:
            changes["tags"] = args.tag
        elif args.add_tag or args.remove_tag:
            current = client.get(job_id).tags
            changes["tags"] = [t for t in dict.fromkeys(current + args.add_tag) if t not in args.remove_tag]
        run = client.update(job_id, **changes)
        print(f"{run.id}: name {run.name!r}, tags [{', '.join(run.tags)}]" + (f", note {run.note!r}" if run.note else ""))
    return 0


def tidy_jobs(client: Any, args: argparse.Namespace) -> int:
    """Archive, restore or delete runs (the API's bulk call, 200 ids at a time); exit 1 if any was refused."""
    ids = list(dict.fromkeys(args.job_ids))
    if args.action == "delete" and not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("jobs delete: pass --yes to delete without a terminal to confirm on")
        what = "runs" if len(ids) > 1 else "run"
        subtree = " and everything made from them" if args.cascade else ""
        answer = input(f"Delete {len(ids)} {what}{subtree}, with their artifacts, for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    done = {"archive": "archived", "restore": "restored", "delete": "deleted"}[args.action]
    failed = 0
    for start in range(0, len(ids), 200):
        for result in client.bulk(args.action, ids[start:start + 200], cascade=args.cascade):
            if result.ok:
                print(f"{result.id}: {done}")
            else:
                failed += 1
                why = result.detail or f"HTTP {result.status}"
                if args.action == "delete" and "cascade" in why and not args.cascade:
                    why += " (here: jobs delete --cascade)"
                print(f"{result.id}: not {done}: {why}", file=sys.stderr)
    return 1 if failed else 0


def download_jobs(client: Any, args: argparse.Namespace) -> int:
    """Each run as one zip (its artifacts and a manifest of sha256s), checked before it is kept."""
    out = Path(args.out) if args.out else Path.cwd()
    if len(args.job_ids) > 1 and not out.is_dir():
        raise UsageError(f"--out {out}: several runs go into a folder; make it first or name one that exists")
    for job_id in args.job_ids:
        path = client.download_zip(job_id, out)
        print(f"{job_id}: {path} ({path.stat().st_size:,} B)")
    return 0


# -- parser -----------------------------------------------------------------------------------


URL_HELP = ("the API's address (default: LATENTFORGE_API_URL, else the address of a `latentforge up` running with"
            " this LATENTFORGE_HOME, else http://127.0.0.1:8000)")


def add_submit_options(parser: argparse.ArgumentParser, set_help: str | None, wait_help: str) -> None:
    if set_help:
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    parser.add_argument("--name")
    parser.add_argument("--tag", action="append", default=[])
    parser.add_argument("--idempotency-key")
    parser.add_argument("--wait", action="store_true", help=wait_help)
    parser.add_argument("--url", help=URL_HELP)


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

    database = sub.add_parser("db", help="database schema")
    database.add_argument("action", choices=["upgrade"], help="upgrade: apply every migration")
    database.set_defaults(handler=cmd_db_upgrade)

    store = sub.add_parser("store", help="the artifact store (LATENTFORGE_ARTIFACT_URL)")
    store.add_argument("action", choices=["check", "init"],
                       help="check: exit 0 when it can be used; init: create its folder or bucket when missing")
    store.set_defaults(handler=cmd_store)

    for name, helptext, default_port in (("api", "serve the HTTP API", 8000), ("up", "API and one worker on these settings", 8000)):
        role = sub.add_parser(name, help=helptext)
        role.add_argument("--host", default="127.0.0.1")
        role.add_argument("--port", type=int, default=default_port)
        if name == "api":
            role.add_argument("--workers", type=int, default=2, help="server processes")
            role.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent",
                              help="gevent (default): open progress streams hold no thread")
            role.add_argument("--threads", type=int, default=8, help="threads per process (gthread only)")
            role.set_defaults(handler=cmd_api)
        else:
            role.add_argument("--no-seed", action="store_true", help="do not queue the seed preset on an empty store")
            role.set_defaults(handler=cmd_up)

    worker = sub.add_parser("worker", help="run jobs from the queue (one at a time)")
    worker.add_argument("--queues", default="gpu,cpu", help="comma-separated: gpu, cpu")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--no-supervise", action="store_true",
                        help="run Celery in this process (for a process manager that restarts it); without a"
                             " supervisor a job that crashes the worker is settled by the reaper, after the stale timeout")
    worker.set_defaults(handler=cmd_worker)

    submit = sub.add_parser("submit", help="queue a job through the API")
    submit.add_argument("kind", choices=list(KINDS), help="; ".join(f"{k.name}: {k.help}" for k in KINDS.values()))
    add_submit_options(submit, "a spec field (JSON value)", "follow progress until the job ends")
    submit.set_defaults(handler=cmd_submit)

    evaluate = sub.add_parser("evaluate", help="queue the latent-space scorecard of a trained model")
    evaluate.add_argument("model_job", help="id of a succeeded train job")
    add_submit_options(evaluate, "a spec field: split, limit, properties, seed (e.g. --set properties=[\"separation\"])",
                       "follow progress, then print the scorecard")
    evaluate.set_defaults(handler=cmd_evaluate)

    sweep = sub.add_parser("sweep", help="queue train jobs over a grid of settings (each evaluated), as one sweep")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a train field and its values, e.g. --grid beta=0.5,1,2,4,8 --grid model=vae,beta_vae")
    sweep.add_argument("--seeds", type=int, default=1, help="runs of every setting, seeds base seed + 0, 1, ...")
    sweep.add_argument("--no-evaluate", action="store_true", help="do not evaluate each child when it succeeds")
    add_submit_options(sweep, "a base train field every child shares, e.g. --set model=vae --set epochs=10",
                       "one progress bar for the whole sweep until every child (and evaluation) ends")
    sweep.set_defaults(handler=cmd_sweep)

    study = sub.add_parser("study", help="the built-in study: every kind on MNIST z=2, z=10 and sprites z=10, a β"
                                         " frontier, all evaluated, then the seed document's claims judged")
    study.add_argument("--epochs", type=int, default=50, help="epochs of every run (the same for all)")
    study.add_argument("--seeds", type=int, default=3)
    study.add_argument("--evaluate-limit", type=int, help="images per evaluation (default 5000)")
    add_submit_options(study, None, "one progress bar for the whole study, then the claims table")
    study.set_defaults(handler=cmd_study)

    health = sub.add_parser("health", help="exit 0 when the API (or, with --worker, this host's worker) is healthy")
    health.add_argument("--worker", action="store_true", help="check this host's worker heartbeat in the database")
    health.add_argument("--url", help=URL_HELP)
    health.set_defaults(handler=cmd_health)

    export = sub.add_parser("export", help="a finished run as TensorBoard event files or an MLflow run"
                                           " (needs: pip install 'latentforge[export]')")
    export.add_argument("job_id")
    export.add_argument("--to", nargs="+", required=True, metavar=("FORMAT", "DIR"),
                        help="tensorboard DIR: event files in DIR/<run name>-<id> (tensorboard --logdir DIR); "
                             "mlflow: one MLflow run (params, metrics per epoch, figures, the model under model/)")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else MLflow's default)")
    export.add_argument("--experiment", help="MLflow experiment, created when missing (default latentforge)")
    export.add_argument("--url")
    export.set_defaults(handler=cmd_export)

    jobs = sub.add_parser("jobs", help="find, show, watch, cancel, edit, archive, restore, delete or download runs",
                          description="list: find runs (newest first); show, watch, cancel, edit, archive, restore,"
                                      " delete, download: the runs whose ids follow")
    jobs.add_argument("action", choices=["list", "show", "watch", "cancel", "edit", "archive", "restore", "delete",
                                         "download"])
    jobs.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="one or more job ids (watch: one)")
    found = jobs.add_argument_group("list: filters (all must hold)")
    found.add_argument("--kind", choices=list(KINDS))
    found.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    found.add_argument("--tag", action="append", default=[],
                       help="list: runs carrying this tag (repeat: every one); edit: set the tags to these")
    found.add_argument("--search", "-q", metavar="TEXT", help="a piece of the run's name (any case)")
    found.add_argument("--where", action="append", default=[], metavar="spec.FIELD=VALUE",
                       help="a spec field's value, e.g. --where spec.model=vae --where spec.latent_dim=2")
    found.add_argument("--since", metavar="ISO", help="created at or after, e.g. 2025-05-01 or 2025-05-01T14:30 (UTC)")
    found.add_argument("--until", metavar="ISO", help="created before")
    found.add_argument("--archived", choices=list(ARCHIVED_CHOICES), default="0",
                       help="0 (default): runs not archived; 1: archived ones; all: both")
    found.add_argument("--parent", help="only the children of this job (a sweep's train jobs, a model's evaluations)")
    found.add_argument("--sort", help="-created (default), created, or [-]metrics.<name>, e.g. -metrics.knn_accuracy")
    found.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    edit = jobs.add_argument_group("edit")
    edit.add_argument("--name", help="the new name (\"\" clears it)")
    edit.add_argument("--note", help="a free-text note (\"\" clears it)")
    edit.add_argument("--add-tag", action="append", default=[], metavar="TAG", help="add this tag (repeatable)")
    edit.add_argument("--remove-tag", action="append", default=[], metavar="TAG", help="remove this tag (repeatable)")
    edit.add_argument("--clear-tags", action="store_true", help="remove every tag")
    tidy = jobs.add_argument_group("delete, archive, restore, download")
    tidy.add_argument("--cascade", action="store_true", help="delete: also every run made from these (children,"
                                                             " their evaluations)")
    tidy.add_argument("--yes", "-y", action="store_true", help="delete: do not ask for confirmation")
    tidy.add_argument("--out", metavar="PATH", help="download: the zip file, or a folder for it (default: here,"
                                                     " named after the run)")
    jobs.add_argument("--url", help=URL_HELP)
    jobs.set_defaults(handler=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return run_command(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here (also after --help), not at exit
    except BrokenPipeError:
        # The reader closed the pipe (`latentforge jobs list | head -1`): stop quietly, as a command killed by
        # SIGPIPE does. Python flushes stdout again at exit; pointing it at /dev/null keeps that quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def run_command(argv: Sequence[str] | None = None) -> int:
    from latentforge.client import ApiError, ApiUnreachable

    try:
        load_plugins(load_settings().plugins)  # their kinds are choices of submit and jobs
    except SettingsError as exc:
        print(f"latentforge: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, SettingsError, SpecError) as exc:
        parser.exit(2, f"latentforge {args.command}: error: {exc}\n")
    except ApiUnreachable as exc:
        parser.exit(1, f"latentforge {args.command}: error: {exc.describe('--url or LATENTFORGE_API_URL')}\n")
    except ApiError as exc:
        status = 2 if 400 <= exc.status < 500 else 1
        parser.exit(status, f"latentforge {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
