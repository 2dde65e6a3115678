"""LatentForge's user-facing entry points: the ``latentforge`` command (latentforge.cli) and the Python
client of the HTTP API (latentforge.client). They stand on api/, worker/ and shared/; nothing there imports them.

    from latentforge import Client

The client's names are imported on first use, so ``import latentforge`` stays
cheap (no pydantic, never torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentforge.client import (ApiError, ApiUnreachable, Artifact, BulkResult, ChecksumMismatch, Client, Page,
                                    Run)
    from shared.errors import SpecError

_CLIENT_NAMES = ("ApiError", "ApiUnreachable", "Artifact", "BulkResult", "ChecksumMismatch", "Client", "Page", "Run")
__all__ = [*_CLIENT_NAMES, "SpecError"]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from latentforge import client

        return getattr(client, name)
    if name == "SpecError":  # what a job request that fails validation raises
        from shared.errors import SpecError

        return SpecError
    raise AttributeError(f"module 'latentforge' has no attribute {name!r}")
