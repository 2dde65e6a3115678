"""The study report: the seed document's claims (shared/study.py) judged on a study sweep's numbers.

A plain function of the runs the sweep handed over ({id, spec, state,
metrics} per child): groups them by setting (model, dataset, latent size, β),
takes mean ± sd over seeds, and gives each claim a verdict per setting it can
be tested on: it *holds* when it holds on every one, *does not hold* when on
none, and is *mixed* otherwise. Writes study.json, study.md and the β
frontier figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from shared.artifacts import ArtifactFile, ArtifactKind, figure_files
from shared.kinds import RunContext, RunOutput
from shared.specs import StudySpec
from shared.study import CLAIMS, SETTINGS, STUDY_BETA
from worker.figures import plt, save_figure
from worker.files import atomic_path, write_json

FRONTIER_FIGURE = "figures/beta_frontier.png"
Setting = tuple[str, int]  # (dataset, latent_dim)


class Runs:
    """The succeeded children, their numbers grouped by (model, dataset, latent size, β)."""

    def __init__(self, runs: list[dict[str, Any]]):
        self.groups: dict[tuple, list[dict[str, float]]] = defaultdict(list)
        for run in runs:
            if run.get("state") == "succeeded":
                spec = run["spec"]
                self.groups[self.key(spec["model"], spec["dataset"], spec["latent_dim"], spec.get("beta"))].append(
                    run["metrics"])

    @staticmethod
    def key(model: str, dataset: str, latent_dim: int, beta: float | None = None) -> tuple:
        beta = (STUDY_BETA if beta is None else float(beta)) if model == "beta_vae" else None
        return model, dataset, int(latent_dim), beta

    def stat(self, model: str, setting: Setting, metric: str, beta: float | None = None) -> dict[str, float] | None:
        values = [m[metric] for m in self.groups.get(self.key(model, *setting, beta), []) if metric in m]
        if not values:
            return None
        return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values)}


def _compare(runs: Runs, settings: tuple[Setting, ...], metric: str, model: str, others: tuple[str, ...],
             better: str, other_metric: str | None = None) -> list[dict[str, Any]]:
    """Per setting: does ``model``'s mean ``metric`` beat every one of ``others`` (on ``other_metric``)?"""
    found = []
    for setting in settings:
        mine = runs.stat(model, setting, metric)
        theirs = {o: runs.stat(o, setting, other_metric or metric) for o in others}
        if mine is None or any(v is None for v in theirs.values()):
            continue
        holds = all(mine["mean"] < v["mean"] if better == "lower" else mine["mean"] > v["mean"]
                    for v in theirs.values())
        found.append({"setting": f"{setting[0]} z={setting[1]}", "holds": holds,
                      "numbers": {f"{model} {metric}": mine, **{f"{o} {other_metric or metric}": v
                                                                for o, v in theirs.items()}}})
    return found


SPRITES = (("sprites", 10),)


def _both(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two comparisons that must hold together, setting by setting (only where both could be made)."""
    by_setting = {e["setting"]: e for e in second}
    return [{"setting": e["setting"], "holds": e["holds"] and by_setting[e["setting"]]["holds"],
             "numbers": {**e["numbers"], **by_setting[e["setting"]]["numbers"]}}
            for e in first if e["setting"] in by_setting]


def _frontier(runs: Runs) -> list[dict[str, Any]]:
    points = []
    for (model, dataset, latent_dim, beta), _ in sorted(runs.groups.items(), key=lambda kv: kv[0][3] or 0):
        if model == "beta_vae" and (dataset, latent_dim) == SPRITES[0]:
            mse, mig = runs.stat(model, SPRITES[0], "test_mse", beta), runs.stat(model, SPRITES[0], "mig", beta)
            if mse and mig:
                points.append({"beta": beta, "test_mse": mse, "mig": mig})
    if len(points) < 3:
        return []
    betas = [p["beta"] for p in points]
    rho_mse = _spearman(betas, [p["test_mse"]["mean"] for p in points])
    rho_mig = _spearman(betas, [p["mig"]["mean"] for p in points])
    return [{"setting": "sprites z=10, β frontier", "holds": rho_mse > 0 and rho_mig > 0,
             "numbers": {"spearman(β, test_mse)": {"mean": rho_mse, "sd": 0.0, "n": len(points)},
                         "spearman(β, mig)": {"mean": rho_mig, "sd": 0.0, "n": len(points)}}, "points": points}]


def _spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return float(rho) if math.isfinite(rho) else 0.0


TESTS: dict[tuple[str, str], Callable[[Runs], list[dict[str, Any]]]] = {
    ("ae", "similar inputs can map to distant latent points"):
        lambda r: _compare(r, SETTINGS, "continuity", "ae", ("vae", "beta_vae", "aae"), "lower"),
    ("ae", "holes between valid encodings, unrealistic outputs when sampling"):
        lambda r: _compare(r, SETTINGS, "judge_score_normal", "ae", ("vae",), "lower", other_metric="judge_score"),
    ("ae", "no mechanism for factor separation"):
        lambda r: _compare(r, SPRITES, "mig", "ae", ("vae", "beta_vae"), "lower"),
    ("vae", "continuous latent space"):
        lambda r: _compare(r, SETTINGS, "path_max_step_ratio", "vae", ("ae",), "lower"),
    ("vae", "Gaussian prior for proper sampling, better generation"):
        lambda r: _both(_compare(r, SETTINGS, "judge_score", "vae", ("ae",), "higher", "judge_score_normal"),
                        _compare(r, SETTINGS, "frechet_distance", "vae", ("ae",), "lower", "frechet_distance_normal")),
    ("beta_vae", "enhanced disentanglement"):
        lambda r: _compare(r, SPRITES, "mig", "beta_vae", ("vae",), "higher"),
    ("beta_vae", "trade-off between reconstruction and independence"): _frontier,
    ("aae", "better distribution matching, more realistic generation"):
        lambda r: _both(_compare(r, SETTINGS, "frechet_distance", "aae", ("vae",), "lower"),
                        _compare(r, SETTINGS, "judge_score", "aae", ("vae",), "higher")),
    ("aae", "improved structure"):
        lambda r: _compare(r, SETTINGS, "trustworthiness", "aae", ("vae",), "higher"),
}


def judge_claims(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped = Runs(runs)
    table = []
    for claim in CLAIMS:
        evidence = TESTS[(claim.model, claim.text)](grouped)
        held = [e["holds"] for e in evidence]
        verdict = ("not measured" if not held else "holds" if all(held) else
                   "does not hold" if not any(held) else "mixed")
        table.append({"model": claim.model, "claim": claim.text, "test": claim.test, "verdict": verdict,
                      "evidence": evidence})
    return table


def _markdown(table: list[dict[str, Any]], runs: int) -> str:
    lines = ["# The seed document's claims, tested", "",
             f"{runs} runs; numbers are mean ± sd over seeds (n runs).", "",
             "| model | claim | test | verdict | numbers |", "|---|---|---|---|---|"]
    for row in table:
        numbers = "<br>".join(
            f"{e['setting']}: " + ", ".join(f"{name} {v['mean']:.4g} ± {v['sd']:.2g}" for name, v in e["numbers"].items())
            + (" ✓" if e["holds"] else " ✗") for e in row["evidence"]) or "—"
        lines.append(f"| {row['model']} | {row['claim']} | {row['test']} | **{row['verdict']}** | {numbers} |")
    return "\n".join(lines) + "\n"


def _frontier_figure(table: list[dict[str, Any]], path) -> bool:
    evidence = next((row["evidence"] for row in table if row["claim"].startswith("trade-off")), [])
    points = evidence[0]["points"] if evidence else []
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    x = [p["test_mse"]["mean"] for p in points]
    y = [p["mig"]["mean"] for p in points]
    ax.errorbar(x, y, xerr=[p["test_mse"]["sd"] for p in points], yerr=[p["mig"]["sd"] for p in points],
                fmt="o-", capsize=3)
    for p, xi, yi in zip(points, x, y):
        ax.annotate(f"β={p['beta']:g}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("test reconstruction MSE (mean ± sd over seeds)")
    ax.set_ylabel("MIG on sprites (mean ± sd)")
    ax.set_title("β-VAE frontier: reconstruction against disentanglement (sprites, latent 10)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def run_study(spec: StudySpec, ctx: RunContext) -> RunOutput:
    table = judge_claims(spec.runs)
    ctx.log(f"judged {len(table)} claims on {len(spec.runs)} runs")
    write_json(ctx.folder / "study.json", {"sweep_job": spec.sweep_job, "runs": len(spec.runs), "claims": table})
    with atomic_path(ctx.folder / "study.md") as tmp:
        tmp.write_text(_markdown(table, len(spec.runs)))
    files = [ArtifactFile.of("study.json", ArtifactKind.METRICS), ArtifactFile.of("study.md", ArtifactKind.FILE)]
    (ctx.folder / "figures").mkdir(exist_ok=True)
    if _frontier_figure(table, ctx.folder / FRONTIER_FIGURE):
        files += figure_files(FRONTIER_FIGURE)
    summary = {"claims": [{k: row[k] for k in ("model", "claim", "test", "verdict")} for row in table]}
    return RunOutput(files, summary)
