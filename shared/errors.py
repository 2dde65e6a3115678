"""One hierarchy for every error a user can fix, apart from bugs.

A :class:`LatentForgeError` carries a message written for the user: the API
answers it with one status (``status``, mapped in api/errors.py), the CLI
prints it in one line, the worker stores it as the job's error. Anything else
raised is a bug: the API answers 500 and the worker stores a generic line,
and both log the traceback. Nothing here imports anything heavy, so the ML
core raises these too.
"""

from __future__ import annotations


class LatentForgeError(Exception):
    """Something the user can fix; ``str(error)`` says what, in one line."""

    status = 400  # the HTTP status the API answers it with


class SpecError(LatentForgeError):
    """One or more fields are invalid; ``errors`` lists (field, message)."""

    status = 422

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors))

    @classmethod
    def from_validation(cls, exc, prefix: str = "") -> "SpecError":
        """From a pydantic ValidationError: each location joined with dots."""
        errors = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(part) for part in err["loc"]) or "(body)"
            errors.append((prefix + loc, err["msg"]))
        return cls(errors)

    def prefixed(self, prefix: str) -> "SpecError":
        return SpecError([(prefix + name, msg) for name, msg in self.errors])


class QueryError(SpecError):
    """A bad query parameter (filter, limit, cursor); the field is the parameter."""

    status = 400


class JobNotFound(LatentForgeError):
    """No job has this id."""

    status = 404


class JobConflict(LatentForgeError):
    """The job is in a state that does not allow the operation."""

    status = 409


class ParentNotReady(JobConflict):
    """The parent job exists and fits, but has not succeeded (yet)."""


class JobNotFinished(JobConflict):
    """The run (or one below it) is queued or running: cancel it before archiving, deleting or downloading it."""


class RunHasChildren(JobConflict):
    """Deleting a run that other runs were made from needs ``cascade``: they go with it."""


class IdempotencyKeyReused(LatentForgeError):
    """The Idempotency-Key was used before with a different request."""

    status = 422


class JobInputError(LatentForgeError):
    """The job's input does not fit its model or data; the message says how."""

    status = 422


class DatasetError(LatentForgeError):
    """A dataset file is missing, truncated or corrupt; the message names it."""


class CheckpointError(LatentForgeError):
    """A folder is not a readable checkpoint; the message says why."""


class TrainingError(LatentForgeError):
    """Training cannot go on (a non-finite loss, no such device); the message says where."""
