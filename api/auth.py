"""Bearer-token auth for writes (when LATENTFORGE_API_TOKEN is set)."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from typing import Callable, TypeVar

from flask import current_app, request

from api.errors import Problem

F = TypeVar("F", bound=Callable)


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_write_token() -> None:
    expected = current_app.config["LATENTFORGE"].settings.api_token
    if not expected:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="latentforge"'}
    if not header:
        raise Problem(401, "Unauthorized", "this server requires a token for writes: send 'Authorization: Bearer <token>'",
                      headers=challenge, slug="unauthorized")
    if scheme.lower() != "bearer" or not token_matches(token.strip(), expected):
        raise Problem(401, "Unauthorized", "the bearer token is not valid for this server",
                      headers={"WWW-Authenticate": 'Bearer realm="latentforge", error="invalid_token"'}, slug="unauthorized")


def write_access(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        check_write_token()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
