"""The web gallery: server-rendered pages with small plain JavaScript, no build step.

Forms post to these routes (not to the JSON API) with a CSRF token (a
double-submit cookie, SameSite=Strict). When the server has an API token,
the gallery asks for it once on the sign-in page and keeps a signed session
cookie (api/auth.py). Every page is served under a Content-Security-Policy
that allows only this origin's scripts and styles; the pages use no inline
script or style.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any

from flask import Blueprint, Response, abort, g, redirect, render_template, request, session, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from api import API_PREFIX, db, services
from api.auth import can_write, safe_next, sign_in, signed_in
from api.errors import Problem
from api.jobs import get_job_or_404, page_of_jobs, parse_uuid, submit_job
from api.schemas import job_out
from shared.jobstore import JobConflict, JobNotFound
from shared.db import Job, JobState
from shared.specs import SEED_PRESET, JobKind

bp = Blueprint("gallery", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

CSRF_COOKIE = "lf_csrf"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAX_COMPARE = 8
THUMB_PREFERENCE = ("figures/latent_scatter.thumb.png", "figures/embedding.thumb.png",
                    "figures/embedding_pca.thumb.png", "figures/samples.thumb.png")


# -- security plumbing -------------------------------------------------------------------


def csrf_token() -> str:
    if "csrf" not in g:
        g.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    return g.csrf


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    needs_token = bool(services().settings.api_token)
    return {"csrf_token": csrf_token, "needs_token": needs_token, "signed_in": needs_token and signed_in(),
            "can_write": can_write, "api_prefix": API_PREFIX}


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
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
    return next((a for a in job["artifacts"] if a["kind"] == "thumbnail"), None)


def figures_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure with its thumbnail (when there is one); none is ever left out."""
    by_name = {a["name"]: a for a in job["artifacts"]}
    out = []
    for artifact in job["artifacts"]:
        if artifact["kind"] == "figure":
            thumb = by_name.get(artifact["name"][: -len(".png")] + ".thumb.png")
            out.append({"figure": artifact, "thumb": thumb or artifact,
                        "title": artifact["name"].rsplit("/", 1)[-1][: -len(".png")].replace("_", " ")})
    return out


def train_choices() -> list[dict[str, Any]]:
    """Finished models for the embed/sample forms: plain rows, not ORM objects."""
    rows = db().execute(
        select(Job.id, Job.name, Job.spec).where(Job.kind == JobKind.TRAIN.value, Job.state == JobState.SUCCEEDED.value)
        .order_by(Job.created_at.desc()).limit(100)
    ).all()
    return [{"id": r.id, "name": r.name, "spec": r.spec} for r in rows]


def is_2d_model(job: dict[str, Any]) -> bool:
    names = {a["name"] for a in job["artifacts"]}
    return job["kind"] == "train" and job["spec"].get("latent_dim") == 2 and "decoder.safetensors" in names


# -- pages ----------------------------------------------------------------------------------------


def render_runs(errors: list[dict[str, str]] | None = None, form: dict[str, Any] | None = None, status: int = 200):
    jobs, next_cursor = page_of_jobs()
    kind, state, parent = (request.args.get(name) or None for name in ("kind", "state", "parent"))
    rows = [job_out(j, API_PREFIX, history=False) for j in jobs]
    children = dict(db().execute(
        select(Job.parent_id, func.count()).where(Job.parent_id.in_([r["id"] for r in rows])).group_by(Job.parent_id)
    ).all()) if rows else {}
    counts = dict(db().execute(select(Job.state, func.count()).group_by(Job.state)).all())
    defaults = {**SEED_PRESET, "device": "auto", "preset": "seed", "hidden": "128,64"}
    html = render_template(
        "runs.html", rows=rows, thumbnail=thumbnail, next_cursor=next_cursor, kind=kind, state=state, parent=parent,
        children=children,
        counts=counts, total=sum(counts.values()), kinds=[k.value for k in JobKind], states=[s.value for s in JobState],
        defaults=defaults, form=form or {}, errors=errors or [], models=train_choices(),
    )
    return html, status


@bp.get("/favicon.ico")
def favicon() -> Any:
    return bp.send_static_file("favicon.svg")


@bp.get("/")
def runs() -> Any:
    return render_runs()


def _form_train_spec(form: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if form.get("preset"):
        spec["preset"] = form["preset"]
    for name in ("epochs", "latent_dim", "batch_size", "seed"):
        if form.get(name, "").strip():
            spec[name] = _number(form[name], int)
    if form.get("lr", "").strip():
        spec["lr"] = _number(form["lr"], float)
    if form.get("hidden", "").strip():
        spec["hidden"] = [_number(part, int) for part in form["hidden"].split(",") if part.strip()]
    for name in ("dataset", "device", "model"):
        if form.get(name):
            spec[name] = form[name]
    return spec


def _number(text: str, kind: type) -> Any:
    try:
        if not text.isascii():  # int() takes other scripts' digits; the API's rules do not
            raise ValueError(text)
        return kind(text.strip())
    except ValueError:
        return text.strip()  # left as text: validation names the field


@bp.post("/runs")
def create_run() -> Any:
    check_form()
    form = request.form.to_dict()
    kind = form.get("kind", "train")
    if kind == "train":
        spec = _form_train_spec(form)
    elif kind == "embed":
        spec = {"model_job": form.get("model_job", ""), "split": form.get("split", "test")}
        if form.get("limit", "").strip():
            spec["limit"] = _number(form["limit"], int)
    elif kind == "sample":
        spec = {"model_job": form.get("model_job", "")}
        if form.get("latent_coords", "").strip():
            try:
                spec["latent_coords"] = json.loads(form["latent_coords"])
            except json.JSONDecodeError:
                spec["latent_coords"] = form["latent_coords"]
        elif form.get("n", "").strip():
            spec["n"] = _number(form["n"], int)
    else:
        spec = {}
    body: dict[str, Any] = {"kind": kind, "spec": spec}
    if form.get("name", "").strip():
        body["name"] = form["name"].strip()
    try:
        job, _ = submit_job(body)
    except Problem as problem:
        if problem.status in (401, 403):
            raise
        if request.form.get("return_to") == "run" and form.get("model_job"):
            return render_run(form["model_job"], errors=problem.errors or [{"field": "", "message": problem.detail}],
                              status=problem.status)
        return render_runs(errors=problem.errors or [{"field": "", "message": problem.detail}], form=form,
                           status=problem.status)
    return redirect(url_for("gallery.run_page", job_id=job.id), code=303)


def render_run(job_id: str, errors: list[dict[str, str]] | None = None, status: int = 200):
    job = job_out(get_job_or_404(job_id), API_PREFIX)
    children = [job_out(j, API_PREFIX) for j in db().scalars(
        select(Job).where(Job.parent_id == job["id"]).options(selectinload(Job.artifacts)).order_by(Job.created_at)
    )]
    parent = job_out(get_job_or_404(job["parent"]), API_PREFIX) if job["parent"] else None
    downloads = [a for a in job["artifacts"] if a["kind"] not in ("figure", "thumbnail")]
    return render_template(
        "run.html", job=job, figures=figures_of(job), downloads=downloads, children=children, parent=parent,
        thumbnail=thumbnail, explorable=is_2d_model(job), errors=errors or [],
        history_json=json.dumps(job["progress"].get("history", [])),
    ), status


@bp.get("/runs/<job_id>")
def run_page(job_id: str) -> Any:
    return render_run(job_id)


@bp.post("/runs/<job_id>/cancel")
def cancel_run(job_id: str) -> Any:
    check_form()
    job_id = parse_uuid(job_id)
    try:
        services().store.cancel(job_id)
    except JobNotFound:
        abort(404)
    except JobConflict as exc:  # already finished: show the page as it is (a database outage is a 503)
        return render_run(job_id, errors=[{"field": "", "message": str(exc)}], status=409)
    return redirect(url_for("gallery.run_page", job_id=job_id), code=303)


@bp.post("/runs/<job_id>/rerun")
def rerun(job_id: str) -> Any:
    check_form()
    job = get_job_or_404(job_id)
    spec = dict(job.spec)
    body = {"kind": job.kind, "spec": spec, "name": f"{job.name or job.kind} (re-run)"[:200], "tags": list(job.tags or [])}
    new_job, _ = submit_job(body)
    return redirect(url_for("gallery.run_page", job_id=new_job.id), code=303)


@bp.get("/compare")
def compare() -> Any:
    raw = [part.strip() for part in request.args.get("ids", "").split(",") if part.strip()]
    if not 1 <= len(raw) <= MAX_COMPARE:
        raise Problem(400, "Bad Request", f"give 1 to {MAX_COMPARE} run ids as ?ids=a,b,...", slug="compare-ids")
    jobs = [job_out(get_job_or_404(job_id), API_PREFIX) for job_id in raw]
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
                           figure_rows=figure_rows, curves_json=json.dumps(curves))


@bp.get("/runs/<job_id>/explore")
def explore(job_id: str) -> Any:
    job = job_out(get_job_or_404(job_id), API_PREFIX)
    if not is_2d_model(job):
        raise Problem(409, "Conflict", "the latent explorer needs a succeeded train job with a 2-D latent space",
                      slug="not-explorable")
    by_name = {a["name"]: a for a in job["artifacts"]}
    return render_template("explorer.html", job=job, decoder=by_name["decoder.safetensors"],
                           codes=by_name.get("latent_codes.safetensors"))
