"""Access control: with LATENTFORGE_API_TOKEN set, every route but health needs it.

* JSON API: ``Authorization: Bearer <token>`` (the scheme word is
  case-insensitive, RFC 7235; the token is compared exactly, in constant
  time). Reads also accept the gallery's session cookie, so the pages' own
  scripts and images work after sign-in; writes need the bearer token.
* Gallery: one sign-in page asks for the token and keeps a signed, HttpOnly,
  SameSite=Strict session cookie; its forms also carry a CSRF token.
* ``LATENTFORGE_PUBLIC_READ=1`` opens reads (GET/HEAD) on purpose;
  ``LATENTFORGE_PUBLIC_METRICS=1`` opens only ``/metrics`` (guarded like the JSON API otherwise).

Without a token (loopback only: the server refuses other addresses) nothing
is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, current_app, redirect, request, session, url_for

from api.errors import Problem
from api.metrics import METRICS_PATH
from api.openapi import DOCS_PATH

SESSION_KEY = "signed_in"
SESSION_LIFETIME = timedelta(hours=12)
OPEN_PATHS = frozenset({"/api/v1/health", "/signin", "/favicon.ico"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Pages for people under /api/: like the gallery's, they send a browser that is not signed in to sign in.
PAGES_UNDER_API = frozenset({DOCS_PATH})


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def expected_token() -> str | None:
    return current_app.config["LATENTFORGE"].settings.api_token


def token_fingerprint(token: str) -> str:
    """What a session stores: proves sign-in with this token, and a changed token signs everyone out."""
    return hashlib.sha256(b"latentforge-session-token\0" + token.encode()).hexdigest()[:32]


def configure_sessions(app: Flask, token: str | None) -> None:
    # The key is derived from the token: every API process agrees without more
    # configuration, and whoever can forge a session could sign in anyway.
    app.secret_key = hashlib.sha256(b"latentforge-session-key\0" + (token or "").encode()).digest()
    app.config.update(SESSION_COOKIE_NAME="lf_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)


def signed_in() -> bool:
    token = expected_token()
    return bool(token) and hmac.compare_digest(str(session.get(SESSION_KEY, "")), token_fingerprint(token))


def sign_in(given: str) -> bool:
    token = expected_token()
    if not token or not token_matches(given, token):
        return False
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = token_fingerprint(token)
    return True


def bearer_status() -> str:
    """'absent', 'valid' or 'invalid' for the request's Authorization header."""
    header = request.headers.get("Authorization")
    if not header:
        return "absent"
    scheme, _, credentials = header.partition(" ")
    token = credentials.lstrip(" ")  # 1*SP after the scheme (RFC 7235); the token itself is exact
    token_ok = scheme.lower() == "bearer" and token_matches(token, expected_token() or "")
    return "valid" if token_ok else "invalid"


def unauthorized(detail: str, invalid: bool = False) -> Problem:
    challenge = 'Bearer realm="latentforge"' + (', error="invalid_token"' if invalid else "")
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge}, slug="unauthorized")


def can_write() -> bool:
    """May this request change things (for the gallery's forms)?"""
    return not expected_token() or signed_in() or bearer_status() == "valid"


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def authenticate_request():
    """The one access rule, run before every request."""
    if not expected_token():
        return None
    path = request.path
    if path in OPEN_PATHS or path.startswith("/static/"):
        return None
    # For Prometheus: open on request, else like the JSON API (a 401, never the sign-in page).
    if path == METRICS_PATH and current_app.config["LATENTFORGE"].settings.public_metrics:
        return None
    reading = request.method in READ_METHODS
    if reading and current_app.config["LATENTFORGE"].settings.public_read:
        return None
    bearer = bearer_status()
    if bearer == "invalid":
        raise unauthorized("the bearer token is not valid for this server", invalid=True)
    if bearer == "valid":
        return None
    if (path.startswith("/api/") and path not in PAGES_UNDER_API) or path == METRICS_PATH:
        if reading and signed_in():
            return None
        raise unauthorized("this server requires a token: send 'Authorization: Bearer <token>'")
    if signed_in():
        return None
    if reading:
        return redirect(url_for("gallery.signin", next=request.full_path.rstrip("?")), code=303)
    raise unauthorized("sign in first: this server needs its API token")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
