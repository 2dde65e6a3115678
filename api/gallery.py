"""The web gallery: server-rendered pages with small plain JavaScript, no build step.

Forms post to these routes (not to the JSON API) with a CSRF token (a
double-submit cookie, SameSite=Strict). When the server has an API token,
the gallery asks for it once on the sign-in page and keeps a signed session
cookie (api/auth.py). Every page is served under a Content-Security-Policy
that allows only this origin's scripts and styles; the pages use no inline
script or style.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, session, url_for

from api.auth import can_write, safe_next, sign_in, signed_in
from api.context import API_PREFIX, services
from shared import humane
from api.errors import Problem
from api.jobs import page_arguments
from api.schemas import job_out
from api.scorecards import compare_rows, evaluations, scorecard_view, sort_choices
from api.sweeps import sweep_view
from shared.artifacts import HEADLINE_FIGURES, ArtifactKind, thumbnail_name
from shared.db import JobState
from shared.errors import JobConflict, JobNotFound, LatentForgeError, QueryError, SpecError
from shared.kinds import KINDS, JobKind, form_fields, form_value, get_kind
from shared.search import RunFilter
from shared.service import PAGE_MAX
from shared.specs import SEED_PRESET
from shared.study import study_spec

bp = Blueprint("gallery", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

CSRF_COOKIE = "lf_csrf"


def content_security_policy(artifact_origin: str | None = None) -> str:
    """Everything from this origin; images and fetches also from the object store when artifacts redirect there."""
    extra = f" {artifact_origin}" if artifact_origin else ""
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:{extra};"
            f" connect-src 'self'{extra}; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
            " frame-ancestors 'none'")


MAX_COMPARE = 8
THUMB_PREFERENCE = tuple(thumbnail_name(name) for name in HEADLINE_FIGURES)


# -- security plumbing -------------------------------------------------------------------


def csrf_token() -> str:
    if "csrf" not in g:
        g.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    return g.csrf


bp.add_app_template_filter(humane.ago, "ago")
bp.add_app_template_filter(humane.duration, "duration")
bp.add_app_template_global(humane.eta, "eta")
bp.add_app_template_global(humane.run_time, "run_time")


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    needs_token = bool(services().settings.api_token)
    return {"csrf_token": csrf_token, "needs_token": needs_token, "signed_in": needs_token and signed_in(),
            "can_write": can_write, "api_prefix": API_PREFIX}


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", current_app.config["CSP"])
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if "csrf" in g and request.cookies.get(CSRF_COOKIE) != g.csrf:
        response.set_cookie(CSRF_COOKIE, g.csrf, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


def check_csrf() -> None:
    cookie, field = request.cookies.get(CSRF_COOKIE, ""), request.form.get("csrf_token", "")
    if not cookie or not hmac.compare_digest(cookie, field):
        raise Problem(403, "Forbidden", "the form's CSRF token is missing or does not match; reload the page and retry",
                      slug="csrf")


def check_form() -> None:
    """CSRF double-submit check, then sign-in when the server has a token."""
    check_csrf()
    if not can_write():
        raise Problem(401, "Unauthorized", "sign in first: this server needs its API token", slug="unauthorized")


# -- signing in ------------------------------------------------------------------------------


@bp.get("/signin")
def signin() -> Any:
    return render_template("signin.html", next=safe_next(request.args.get("next")), failed=False)


@bp.post("/signin")
def signin_post() -> Any:
    check_csrf()
    target = safe_next(request.form.get("next"))
    if not services().settings.api_token:
        return redirect(target, code=303)
    if not sign_in(request.form.get("token", "")):
        return render_template("signin.html", next=target, failed=True), 401
    return redirect(target, code=303)


@bp.post("/signout")
def signout() -> Any:
    check_csrf()
    session.clear()
    return redirect(url_for("gallery.signin"), code=303)


# -- helpers for the templates ------------------------------------------------------------


def thumbnail(job: dict[str, Any]) -> dict[str, Any] | None:
    by_name = {a["name"]: a for a in job["artifacts"]}
    for name in THUMB_PREFERENCE:
        if name in by_name:
            return by_name[name]
    return next((a for a in job["artifacts"] if a["kind"] == ArtifactKind.THUMBNAIL.value), None)


def figures_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure with its thumbnail (when there is one); none is ever left out."""
    by_name = {a["name"]: a for a in job["artifacts"]}
    out = []
    for artifact in job["artifacts"]:
        if artifact["kind"] == ArtifactKind.FIGURE.value:
            thumb = by_name.get(thumbnail_name(artifact["name"]))
            out.append({"figure": artifact, "thumb": thumb or artifact,
                        "title": artifact["name"].rsplit("/", 1)[-1].rsplit(".", 1)[0].replace("_", " ")})
    return out


def artifact_of_kind(job: dict[str, Any], kind: ArtifactKind) -> dict[str, Any] | None:
    return next((a for a in job["artifacts"] if a["kind"] == kind.value), None)


def is_2d_model(job: dict[str, Any]) -> bool:
    return job["spec"].get("latent_dim") == 2 and artifact_of_kind(job, ArtifactKind.DECODER) is not None


MODEL_CHOICES = [("ae", "ae: autoencoder (seed)"), ("vae", "vae: variational AE"), ("beta_vae", "beta_vae: β-VAE"),
                 ("aae", "aae: adversarial AE")]


def generic_fields(kind: JobKind) -> list[dict[str, str]]:
    """A form for a kind without a template of its own: one text field per spec field, with its default."""
    parent_field = kind.parent.field if kind.parent else None
    fields = []
    for name, info in kind.spec.model_fields.items():
        if name == parent_field:
            continue
        default = info.get_default(call_default_factory=True)  # {} and [] for a sweep's grid and overrides
        shown = "" if default is None or info.is_required() else json.dumps(default).strip('"')
        fields.append({"name": name, "default": shown})
    return fields


def problems_of(exc: LatentForgeError) -> list[dict[str, str]]:
    if isinstance(exc, SpecError):
        return [{"field": name, "message": message} for name, message in exc.errors]
    return [{"field": "", "message": str(exc)}]


# -- pages ----------------------------------------------------------------------------------------


def list_query() -> list[tuple[str, str]]:
    """The runs page's query as the job list's filters: its ``where`` box (``model=vae latent_dim=2``) becomes
    ``spec.`` parameters, and empty fields of the filter form are no filter."""
    pairs = [(name, value) for name, value in request.args.items(multi=True) if value.strip() and name != "where"]
    for word in request.args.get("where", "").split():
        field, sep, value = word.partition("=")
        if not sep or not field:
            raise QueryError([("where", f"expects field=value words, e.g. model=vae latent_dim=2; got {word[:40]!r}")])
        pairs.append((field if field.startswith("spec.") else f"spec.{field}", value))
    return pairs


def render_runs(errors: list[dict[str, str]] | None = None, form: dict[str, Any] | None = None, status: int = 200):
    jobs = services().jobs
    query = list_query()
    page = jobs.page(**page_arguments(query))
    kind, state, parent, sort = (request.args.get(name) or None for name in ("kind", "state", "parent", "sort"))
    ranked_by = sort.split("metrics.", 1)[1] if sort and "metrics." in sort else None
    rows = [job_out(j, API_PREFIX, history=False) for j in page.items]
    counts = jobs.state_counts()
    parents = {k.name: jobs.succeeded(k.parent.kinds) for k in KINDS.values() if k.parent}
    next_query = [(name, value) for name, value in request.args.items(multi=True) if name != "cursor"]
    html = render_template(
        "runs.html", rows=rows, thumbnail=thumbnail, kind=kind, state=state,
        next_url=url_for("gallery.runs") + "?" + urlencode([*next_query, ("cursor", page.next_cursor)])
        if page.next_cursor else None, filters=request.args, parent_names=jobs.names(
            [r["parent"] for r in rows if r["parent"]] + ([parent] if parent else [])),
        parent=parent, children=jobs.child_counts([r["id"] for r in rows]), counts=counts,
        total=sum(counts.values()), kinds=list(KINDS.values()), states=[s.value for s in JobState],
        defaults={**SEED_PRESET, "device": "auto", "preset": "seed", "hidden": "128,64"}, form=form or {},
        errors=errors or [], parents=parents, generic_fields=generic_fields, thumb_names=json.dumps(THUMB_PREFERENCE),
        model_kinds=MODEL_CHOICES, sort=sort, ranked_by=ranked_by, sort_choices=sort_choices(jobs.metric_names()),
    )
    return html, status


@bp.get("/favicon.ico")
def favicon() -> Any:
    return bp.send_static_file("favicon.svg")


@bp.get("/")
def runs() -> Any:
    return render_runs()


@bp.post("/runs")
def create_run() -> Any:
    check_form()
    form = request.form.to_dict()
    try:
        kind = get_kind(form.get("kind", "train"))
        body: dict[str, Any] = {"kind": kind.name, "spec": form_fields(kind, form)}
        if form.get("name", "").strip():
            body["name"] = form["name"].strip()
        job, _ = services().jobs.submit(body)
    except LatentForgeError as exc:
        if request.form.get("return_to") == "run" and form.get("model_job"):
            return render_run(form["model_job"], errors=problems_of(exc), status=exc.status)
        return render_runs(errors=problems_of(exc), form=form, status=exc.status)
    return redirect(url_for("gallery.run_page", job_id=job.id), code=303)


def render_run(job_id: str, errors: list[dict[str, str]] | None = None, status: int = 200):
    jobs = services().jobs
    job = job_out(jobs.get(job_id), API_PREFIX)
    children = [job_out(j, API_PREFIX) for j in jobs.children(job["id"])]
    parent = job_out(jobs.get(job["parent"]), API_PREFIX) if job["parent"] else None
    shown = (ArtifactKind.FIGURE.value, ArtifactKind.THUMBNAIL.value)
    downloads = [a for a in job["artifacts"] if a["kind"] not in shown]
    model_spec = parent["spec"] if job["kind"] == "evaluate" and parent else job["spec"]
    scorecard = scorecard_view(job, evaluations(children) if job["kind"] == "train" else [], model_spec)
    sweep = None
    if job["kind"] == "sweep":
        sort = request.args.get("sort") or None
        # An archived sweep's runs are archived with it, and its page still shows them.
        ranked = jobs.page(parent=job["id"], kind="train", sort=sort, limit=PAGE_MAX,
                           cursor=request.args.get("cursor") or None, where=RunFilter(archived="all"))
        sweep = sweep_view(job, [job_out(j, API_PREFIX, history=False) for j in ranked.items], sort)
        sweep.update(sort=sort, next_cursor=ranked.next_cursor, rows_json=json.dumps(sweep["rows"]),
                     sort_choices=sort_choices(jobs.metric_names()),
                     report=next((c for c in children if c["kind"] == "study"), None))
    return render_template(
        "run.html", job=job, figures=figures_of(job), downloads=downloads, children=children, parent=parent,
        thumbnail=thumbnail, explorable=is_2d_model(job), errors=errors or [], scorecard=scorecard, sweep=sweep,
        history_json=json.dumps(job["progress"].get("history", [])),
    ), status


@bp.get("/runs/<job_id>")
def run_page(job_id: str) -> Any:
    return render_run(job_id)


@bp.post("/study")
def start_study() -> Any:
    """The runs page's Study button: the built-in study sweep (shared/study.py) with the epochs asked for."""
    check_form()
    raw = request.form.get("epochs", "").strip() or "50"
    epochs = form_value(raw)
    try:
        job, _ = services().jobs.submit({"kind": "sweep", "name": f"study, {raw} epochs",
                                         "spec": study_spec(epochs=epochs if isinstance(epochs, int) else raw)})
    except LatentForgeError as exc:
        return render_runs(errors=problems_of(exc), status=exc.status)
    return redirect(url_for("gallery.run_page", job_id=job.id), code=303)


@bp.post("/runs/<job_id>/cancel")
def cancel_run(job_id: str) -> Any:
    check_form()
    try:
        job = services().jobs.cancel(job_id)
    except JobConflict as exc:  # already finished: show the page as it is
        return render_run(job_id, errors=problems_of(exc), status=exc.status)
    return redirect(url_for("gallery.run_page", job_id=job.id), code=303)


@bp.post("/runs/bulk")
def tidy_runs() -> Any:
    """Archive, restore or delete the selected runs (runs page) or one run (its page); deleting asks first."""
    check_form()
    action, ids = request.form.get("action", ""), request.form.getlist("ids")
    back = safe_next(request.form.get("return_to"))
    if not ids:
        return render_runs(errors=[{"field": "ids", "message": "select one or more runs first"}], status=400)
    if action == "delete" and request.form.get("confirm") != "1":
        runs = []
        for job_id in ids[:PAGE_MAX]:
            with contextlib.suppress(JobNotFound):  # gone meanwhile: nothing to confirm
                runs.append(job_out(services().jobs.get(job_id), API_PREFIX, history=False))
        counts = services().jobs.child_counts([r["id"] for r in runs])
        return render_template("confirm_delete.html", runs=runs, children=counts, back=back)
    results = services().jobs.bulk(action, ids, cascade=request.form.get("cascade") == "1")
    failed = [r for r in results if not r["ok"]]
    if failed:
        return render_runs(errors=[{"field": r["id"][:8], "message": r["detail"]} for r in failed],
                           status=failed[0]["status"])
    # A deleted run's page is gone: go back to the list instead.
    return redirect(url_for("gallery.runs") if action == "delete" and back.startswith("/runs/") else back, code=303)


@bp.post("/runs/<job_id>/edit")
def edit_run(job_id: str) -> Any:
    """The run page's edit form: name, comma-separated tags, note."""
    check_form()
    form = request.form
    body = {"name": form.get("name", "").strip() or None, "note": form.get("note", "").strip() or None,
            "tags": [tag.strip() for tag in form.get("tags", "").split(",") if tag.strip()]}
    try:
        services().jobs.edit(job_id, body)
    except SpecError as exc:
        return render_run(job_id, errors=problems_of(exc), status=exc.status)
    return redirect(url_for("gallery.run_page", job_id=job_id), code=303)


@bp.post("/runs/<job_id>/rerun")
def rerun(job_id: str) -> Any:
    check_form()
    job = services().jobs.get(job_id)
    body = {"kind": job.kind, "spec": dict(job.spec), "name": f"{job.name or job.kind} (re-run)"[:200],
            "tags": list(job.tags or [])}
    new_job, _ = services().jobs.submit(body)
    return redirect(url_for("gallery.run_page", job_id=new_job.id), code=303)


@bp.get("/compare")
def compare() -> Any:
    raw = [part.strip() for part in request.args.get("ids", "").split(",") if part.strip()]
    if not 1 <= len(raw) <= MAX_COMPARE:
        raise Problem(400, "Bad Request", f"give 1 to {MAX_COMPARE} run ids as ?ids=a,b,...", slug="compare-ids")
    jobs = [job_out(services().jobs.get(job_id), API_PREFIX) for job_id in raw]
    spec_keys = sorted({key for job in jobs for key in job["spec"]})
    differing = {key for key in spec_keys if len({json.dumps(job["spec"].get(key)) for job in jobs}) > 1}
    figure_names: list[str] = []
    for job in jobs:
        for item in figures_of(job):
            if item["figure"]["name"] not in figure_names:
                figure_names.append(item["figure"]["name"])
    figure_rows = [
        {"name": name, "cells": [next((f for f in figures_of(job) if f["figure"]["name"] == name), None) for job in jobs]}
        for name in figure_names
    ]
    curves = [{"id": job["id"], "label": job["name"] or job["id"][:8], "history": job["progress"].get("history", [])}
              for job in jobs]
    return render_template("compare.html", jobs=jobs, spec_keys=spec_keys, differing=differing,
                           figure_rows=figure_rows, curves_json=json.dumps(curves), metric_keys=final_metrics(jobs),
                           scorecard_rows=compare_rows(jobs))


def final_metrics(jobs: list[dict[str, Any]]) -> list[str]:
    """Every loss or metric any of the runs reports (the kinds differ: kl, elbo, disc_acc, ...), losses first."""
    keys = ["train_loss", "test_loss"]
    for job in jobs:
        keys += [k for k, v in job["progress"].items() if isinstance(v, (int, float)) and k not in keys
                 and k not in NOT_METRICS and not k.startswith("lr")]  # a learning rate is a setting, not a result
    return keys


NOT_METRICS = {"epoch", "total", "seconds", "samples_per_s", "count", "latent_dim"}


@bp.get("/runs/<job_id>/explore")
def explore(job_id: str) -> Any:
    job = job_out(services().jobs.get(job_id), API_PREFIX)
    if not is_2d_model(job):
        raise Problem(409, "Conflict", "the latent explorer needs a succeeded train job with a 2-D latent space",
                      slug="not-explorable")
    return render_template("explorer.html", job=job, decoder=artifact_of_kind(job, ArtifactKind.DECODER),
                           codes=artifact_of_kind(job, ArtifactKind.CODES))
