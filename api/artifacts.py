"""GET /artifacts/<id>: a published file, from whichever store holds it, never one that differs from its record.

From the local folder, Flask's ``send_file`` serves it (ETag, Range,
conditional requests). From an object store the API streams it itself with
the same headers, or, with ``LATENTFORGE_ARTIFACT_REDIRECT=1``, answers with a
302 to a presigned URL that expires in minutes. Either way the stored size
and sha256 are checked against the artifact row first: a file that differs
is refused (410), never served under the row's ETag and a year-long cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import zipfile
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, request, send_file

from api.context import API_PREFIX, services
from api.errors import RETRY_AFTER_S, Problem
from api.schemas import job_out
from shared.db import Artifact, JobState
from shared.errors import JobNotFinished
from shared.storage import (
    ArtifactNameError, ArtifactStore, LocalStore, S3Store, StoredObject, StoreRefused, StoreUnavailable, file_sha256,
)

bp = Blueprint("artifacts", __name__)
log = logging.getLogger("latentforge.api")

IMMUTABLE = "public, max-age=31536000, immutable"


class VerifiedFiles:
    """Files whose bytes were checked against their recorded sha256, keyed by what a rewrite would change.

    A published file is never written again (each attempt writes its own
    folder), so this is a last line of defence against a disk fault or a hand edit.
    """

    def __init__(self, capacity: int = 4096):
        self._known: OrderedDict[tuple, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def sha256(self, path: Path, stat: os.stat_result) -> str:
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
        value = file_sha256(path)
        with self._lock:
            self._known[key] = value
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)
        return value


verified_files = VerifiedFiles()


def gone(artifact: Artifact, why: str, slug: str = "gone") -> Problem:
    return Problem(410, "Gone", f"the file of artifact {artifact.id} ({artifact.name}) {why}", slug=slug)


def corrupt(artifact: Artifact) -> Problem:
    log.error("artifact %s (%s): the stored file no longer matches its recorded sha256", artifact.id, artifact.path)
    return gone(artifact, "no longer matches its recorded sha256 and is not served", slug="artifact-corrupt")


def file_name(artifact: Artifact) -> str:
    return artifact.name.rsplit("/", 1)[-1]


@bp.get("/artifacts/<artifact_id>")
def download_artifact(artifact_id: str) -> Response:
    artifact = services().jobs.artifact(artifact_id)
    store = services().artifacts
    try:
        if isinstance(store, S3Store):
            return from_object_store(store, artifact)
        assert isinstance(store, LocalStore)
        return from_folder(store, artifact)
    except ArtifactNameError:
        raise Problem(404, "Not Found", f"artifact {artifact_id} is not stored under the artifact root",
                      slug="not-found") from None
    except (StoreUnavailable, StoreRefused) as exc:
        log.error("artifact %s: %s", artifact_id, exc)
        raise Problem(503, "Service Unavailable", "the artifact store is not answering; try again shortly",
                      headers={"Retry-After": str(RETRY_AFTER_S)}, slug="artifact-store-unavailable") from None


def from_folder(store: LocalStore, artifact: Artifact) -> Response:
    path = store.path_of(artifact.path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    if stat is None or not path.is_file():
        raise gone(artifact, "is no longer stored")
    if stat.st_size != artifact.size or verified_files.sha256(path, stat) != artifact.sha256:
        raise corrupt(artifact)
    response = send_file(path, mimetype=artifact.content_type, etag=artifact.sha256, conditional=True,
                         download_name=file_name(artifact), max_age=31536000)
    response.headers["Cache-Control"] = IMMUTABLE
    return response


def from_object_store(store: S3Store, artifact: Artifact) -> Response:
    """Checked against the row by the object's size and the sha256 the worker stored with it: from the GET that
    streams it (one round trip), or from a HEAD where no bytes go through the API (HEAD, redirects)."""
    size = artifact.size
    headers = {"ETag": f'"{artifact.sha256}"', "Accept-Ranges": "bytes", "Cache-Control": IMMUTABLE,
               "Content-Disposition": f'inline; filename="{file_name(artifact)}"'}
    if artifact.sha256 in request.if_none_match:  # the client holds these very bytes
        return Response(status=304, headers=headers)
    redirecting = services().settings.artifact_redirect
    if redirecting or request.method == "HEAD":
        check_stored(artifact, store.head(artifact.path))
        if redirecting:
            response = redirect(store.presigned_url(artifact.path, file_name(artifact), artifact.content_type), 302)
            response.headers["Cache-Control"] = "private, no-store"  # the URL it names expires
            return response
    span = None
    if request.range is not None and (request.if_range.etag is None or request.if_range.etag == artifact.sha256):
        span = request.range.range_for_length(size)  # None for several ranges: the whole file answers those
        if span is None and len(request.range.ranges) == 1:
            return Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, first, length = (206, span[0], span[1] - span[0]) if span else (200, 0, size)
    headers["Content-Length"] = str(length)
    if span:
        headers["Content-Range"] = f"bytes {first}-{first + length - 1}/{size}"
    body: object = b""
    if request.method != "HEAD" and length > 0:
        opened = store.open(artifact.path, first, first + length - 1) if span else store.open(artifact.path)
        check_stored(artifact, opened[0] if opened else None, opened[1] if opened else None)
        body = opened[1]
    response = Response(body, status=status, mimetype=artifact.content_type, headers=headers, direct_passthrough=True)
    response.headers["Content-Length"] = str(length)  # a HEAD's empty body must not set it to 0
    return response


@bp.get("/jobs/<job_id>/download")
def download_run(job_id: str) -> Response:
    """A finished run as one zip: every artifact under its name, and manifest.json with the job and each sha256."""
    job = services().jobs.get(job_id)
    if not JobState(job.state).finished:
        raise JobNotFinished(f"job {job.id} is {job.state}: a run can be downloaded once it has finished")
    scratch = services().settings.scratch_dir
    scratch.mkdir(parents=True, exist_ok=True)  # a zip over 32 MiB spills here: the API's own scratch, not /tmp
    bundle = tempfile.SpooledTemporaryFile(max_size=32 << 20, dir=scratch)
    try:
        with zipfile.ZipFile(bundle, "w", allowZip64=True) as archive:
            for artifact in job.artifacts:
                entry = zipfile.ZipInfo(artifact.name, date_time=zip_time(artifact.created_at))
                # Already-compressed formats are stored as they are: deflating them costs time and saves nothing.
                entry.compress_type = zipfile.ZIP_STORED if artifact.name.endswith(PACKED_SUFFIXES) else zipfile.ZIP_DEFLATED
                with archive.open(entry, "w", force_zip64=artifact.size > (1 << 31)) as member:
                    copy_checked(artifact, member)
            manifest = {"job": job_out(job, API_PREFIX),
                        "files": [{"name": a.name, "size": a.size, "sha256": a.sha256} for a in job.artifacts]}
            archive.writestr("manifest.json", json.dumps(manifest, indent=2), zipfile.ZIP_DEFLATED)
        bundle.seek(0)
    except BaseException:
        bundle.close()
        raise
    slug = re.sub(r"[^a-z0-9]+", "-", (job.name or job.kind).lower()).strip("-")[:40] or job.kind
    return send_file(bundle, mimetype="application/zip", as_attachment=True, download_name=f"{slug}-{job.id[:8]}.zip",
                     max_age=0)


PACKED_SUFFIXES = (".png", ".safetensors", ".npz", ".gz", ".zip", ".jpg")


def zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    return moment.timetuple()[:6] if moment.year >= 1980 else (1980, 1, 1, 0, 0, 0)


def copy_checked(artifact: Artifact, out: BinaryIO) -> None:
    """Copy an artifact's stored bytes into ``out``, refusing (410) bytes that differ from its row."""
    store = services().artifacts
    digest, size = hashlib.sha256(), 0
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(store, S3Store):
                opened = store.open(artifact.path)
                check_stored(artifact, opened[0] if opened else None, opened[1] if opened else None)
                chunks: Iterator[bytes] = stack.enter_context(contextlib.closing(opened[1]))
            else:
                assert isinstance(store, LocalStore)
                path = store.path_of(artifact.path)
                if not path.is_file():
                    raise gone(artifact, "is no longer stored")
                chunks = iter(functools.partial(stack.enter_context(path.open("rb")).read, 1 << 20), b"")
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except ArtifactNameError:
        raise gone(artifact, "is not stored under the artifact root") from None
    except (StoreUnavailable, StoreRefused) as exc:
        log.error("artifact %s: %s", artifact.id, exc)
        raise Problem(503, "Service Unavailable", "the artifact store is not answering; try again shortly",
                      headers={"Retry-After": str(RETRY_AFTER_S)}, slug="artifact-store-unavailable") from None
    if size != artifact.size or digest.hexdigest() != artifact.sha256:
        raise corrupt(artifact)


def check_stored(artifact: Artifact, stored: StoredObject | None, body: Iterator[bytes] | None = None) -> None:
    """Refuse (410) an object that is gone or differs from the row; an opened body is closed first."""
    if stored is not None and stored.size == artifact.size and stored.sha256 == artifact.sha256:
        return
    if body is not None:
        body.close()  # type: ignore[attr-defined]
    raise gone(artifact, "is no longer stored") if stored is None else corrupt(artifact)


def redirect_origin(store: ArtifactStore, redirect_to_store: bool) -> str | None:
    """The origin presigned URLs point at, for the pages' Content-Security-Policy; None unless artifacts go there."""
    if not redirect_to_store or not isinstance(store, S3Store):
        return None
    parts = urlsplit(store.presigned_url("origin-probe", "x", "application/octet-stream"))
    return f"{parts.scheme}://{parts.netloc}"
