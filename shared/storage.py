"""Where artifacts live: a local folder or an S3-compatible object store, behind one interface.

The store is the one place that knows paths and object keys. Everything else
speaks in keys relative to the store's root (``jobs/<id>/run-<lease>/<name>``,
the ``path`` of an artifact row and of a resume pointer). A worker's runner
writes into the local ``workspace`` of its attempt and hands over the manifest
of what it wrote; ``publish`` makes each file durable under its key before the
job row says so, and ``local_folder`` brings a published folder (a parent's
checkpoint, a resume state) back to a local disk, checked against its sha256.

:class:`LocalStore` is the embedded default and today's layout: the workspace
*is* the artifact folder, so publishing moves nothing. :class:`S3Store` keeps
a scratch folder per attempt and uploads, which lets API and workers run on
hosts that share no disk (``LATENTFORGE_ARTIFACT_URL=s3://bucket/prefix``).

Keys are built from a conservative alphabet, checked segment by segment, so a
name with ``..``, a leading ``/``, a backslash or a percent-encoded separator
can never reach outside its attempt's folder, in either store.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit

from shared.errors import LatentForgeError
from shared.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger("latentforge.storage")
T = TypeVar("T")

KEY_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
MULTIPART_BYTES = 8 << 20  # uploads above this go in parts of this size
PRESIGNED_SECONDS = 300
CHUNK_BYTES = 1 << 20


class ArtifactNameError(LatentForgeError):
    """A runner listed a file name that could leave its attempt's folder."""


class StoreUnavailable(Exception):
    """The object store did not answer within the patience: the attempt is retried later, never marked done."""


class StoreRefused(LatentForgeError):
    """The object store answered, and said no (credentials, bucket, permissions): retrying would not help."""

    status = 502


class StoreSetupError(SettingsError):
    """Start-up check: the configured store cannot be used; one line that names the setting."""


class ArtifactMismatch(LatentForgeError):
    """A stored file is missing or no longer matches the sha256 recorded when it was published."""


def checked_key(key: str, what: str = "key") -> str:
    """``key`` itself, if it is a plain relative path in the key alphabet; anything else is refused."""
    if not key or not all(KEY_SEGMENT.fullmatch(segment) for segment in key.split("/")):
        raise ArtifactNameError(
            f"{what} {key[:200]!r} is not a relative path of letters, digits and ._=+- (no '..', no leading '/' or"
            " '.', no '%' or '\\'); it could leave its job's folder")
    return key


def artifact_key(folder: str, name: str) -> str:
    """``folder/name``, refusing a name (or folder) that could reach outside the folder."""
    return f"{checked_key(folder, 'folder')}/{checked_key(name, 'artifact name')}"


def parent_key(key: str) -> str:
    return key.rsplit("/", 1)[0]


@dataclass(frozen=True)
class StoredObject:
    """What the store holds under a key: its size and the sha256 recorded with it (None where it keeps none)."""

    size: int
    sha256: str | None


class ArtifactStore(ABC):
    """One artifact store; keys are relative to its root (see the module docstring)."""

    description: str  # for logs and /health, never with credentials
    remote: bool  # publishing copies the file elsewhere (and may be slow or fail), rather than leaving it in place

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreSetupError` naming the setting when the store cannot be used."""

    @abstractmethod
    def workspace(self, folder: str) -> Path:
        """The local folder an attempt writes its files into (created)."""

    @abstractmethod
    def publish(self, folder: str, name: str, sha256: str, content_type: str) -> str:
        """Make ``workspace(folder)/name`` durable under its key; returns the key once the whole file is stored."""

    @abstractmethod
    def local_folder(self, folder: str, files: Mapping[str, str]) -> Path:
        """A local folder holding ``files`` ({name: sha256}) as published under ``folder``, each checked."""

    @abstractmethod
    def delete(self, folder: str) -> None:
        """Remove everything under ``folder``; best effort (a leftover costs space, not correctness)."""

    @abstractmethod
    def attempt_folders(self, job_id: str) -> list[str]:
        """The attempt folders (``jobs/<id>/run-<lease>``) stored for a job."""

    def release(self, folder: str) -> None:
        """The attempt is over: its local workspace is no longer needed (the store keeps the published files)."""


class LocalStore(ArtifactStore):
    """Files under one root folder; the workspace of an attempt is its published folder."""

    remote = False

    def __init__(self, root: Path, setting: str = f"{ENV_PREFIX}ARTIFACT_DIR"):
        self.root = Path(root).resolve()
        self.setting = setting
        self.description = f"local folder {self.root}"

    def path_of(self, key: str) -> Path:
        """The file of ``key``; a key that resolves outside the root (a link, a stored '..') is refused."""
        path = (self.root / checked_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactNameError(f"{key!r} lies outside the artifact root")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreSetupError(f"{self.setting}={self.root}: cannot create the artifact folder ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreSetupError(f"{self.setting}={self.root}: the artifact folder is not writable by this user")

    def workspace(self, folder: str) -> Path:
        path = self.path_of(artifact_key(folder, "_")).parent
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, folder: str, name: str, sha256: str, content_type: str) -> str:
        key = artifact_key(folder, name)
        path = self.root / key
        if path.is_symlink() or not path.resolve().is_relative_to(self.workspace(folder)):
            raise ArtifactNameError(f"artifact {name} lies outside its run's folder")
        return key

    def local_folder(self, folder: str, files: Mapping[str, str]) -> Path:
        return self.path_of(artifact_key(folder, "_")).parent

    def delete(self, folder: str) -> None:
        path = self.path_of(artifact_key(folder, "_")).parent
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)

    def attempt_folders(self, job_id: str) -> list[str]:
        job_root = self.path_of(artifact_key(f"jobs/{job_id}", "_")).parent
        if not job_root.is_dir():
            return []
        return [f"jobs/{job_id}/{child.name}" for child in job_root.glob("run-*")
                if child.is_dir() and not child.is_symlink()]


class S3Store(ArtifactStore):
    """Objects in ``s3://bucket/prefix`` through boto3; attempts write into a local scratch folder first.

    Credentials come from boto3's standard chain (environment, config file,
    instance role); ``endpoint_url`` points at a non-AWS server (SeaweedFS,
    MinIO, Ceph). Calls that fail for want of an answer are retried with
    backoff for ``patience_s``, then raise :class:`StoreUnavailable`; a refusal
    (403, a missing bucket) raises :class:`StoreRefused` at once.
    """

    remote = True

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None, scratch_dir: Path, cache_dir: Path,
                 patience_s: float, url: str):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.scratch = Path(scratch_dir).resolve()
        self.objects = Path(cache_dir).resolve() / "objects"  # by sha256
        self.views = Path(cache_dir).resolve() / "published"  # folders of links into objects, by key
        self.patience_s = patience_s
        self.url = url
        self.description = f"{url}" + (f" at {endpoint_url}" if endpoint_url else "")
        # Short timeouts and one try per call: ``patiently`` retries, within the patience.
        config = Config(signature_version="s3v4", connect_timeout=min(5.0, patience_s),
                        read_timeout=max(1.0, min(30.0, patience_s / 2)), retries={"total_max_attempts": 1, "mode": "standard"},
                        s3={"addressing_style": "path" if endpoint_url else "auto"})
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    def object_key(self, key: str) -> str:
        return self.prefix + checked_key(key)

    # -- errors and patience --------------------------------------------------------------

    @staticmethod
    def _error_code(exc: BaseException) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", "")) or str(
            response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))

    def _is_transient(self, exc: BaseException) -> bool:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status == 429 or self._error_code(exc) in ("SlowDown", "RequestTimeout",
                                                                                "InternalError", "ServiceUnavailable")
        if isinstance(exc, S3UploadFailedError):  # wraps the part's error in its message
            return not any(word in str(exc) for word in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId",
                                                         "SignatureDoesNotMatch", "(403)", "(404)"))
        return isinstance(exc, (BotoCoreError, OSError))

    def patiently(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried while the store does not answer, for up to the patience."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + self.patience_s
        delay = 0.5
        while True:
            try:
                return fn()
            except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as exc:
                if not self._is_transient(exc):
                    if isinstance(exc, OSError):
                        raise
                    raise StoreRefused(f"the artifact store {self.url} refused {what}: {_one_line(exc)}") from None
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"the artifact store {self.url} did not answer for {self.patience_s:g} s"
                                           f" while {what} ({_one_line(exc)})") from None
                log.warning("artifact store: %s failed (%s); retrying in %.1f s", what, _one_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- the interface ---------------------------------------------------------------------

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StoreSetupError(f"{ENV_PREFIX}ARTIFACT_URL={self.url}: no S3 credentials found (set"
                                  " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or an instance role)") from None
        except ClientError as exc:
            code = self._error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreSetupError(f"{ENV_PREFIX}ARTIFACT_URL={self.url}: bucket {self.bucket!r} does not exist"
                                      " (create it, e.g. `latentforge store init`)") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreSetupError(f"{ENV_PREFIX}ARTIFACT_URL={self.url}: the store refused these credentials"
                                      f" ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
            raise StoreSetupError(f"{ENV_PREFIX}ARTIFACT_URL={self.url}: {_one_line(exc)}") from None
        except BotoCoreError as exc:
            where = (f"{ENV_PREFIX}S3_ENDPOINT_URL={self.endpoint_url}" if self.endpoint_url
                     else f"{ENV_PREFIX}ARTIFACT_URL={self.url}")
            raise StoreSetupError(f"{where}: the object store is unreachable ({_one_line(exc)})") from None

    def create_bucket(self) -> bool:
        """Create the bucket unless it exists; True if it was made."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if self._error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        self.client.create_bucket(Bucket=self.bucket)
        return True

    def _scratch(self, folder: str) -> Path:
        return self.scratch / parent_key(artifact_key(folder, "_"))

    def workspace(self, folder: str) -> Path:
        path = self._scratch(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, folder: str, name: str, sha256: str, content_type: str) -> str:
        from boto3.s3.transfer import TransferConfig

        key = artifact_key(folder, name)
        workspace = self._scratch(folder)
        source = workspace / name
        if source.is_symlink() or not source.resolve().is_relative_to(workspace):
            raise ArtifactNameError(f"artifact {name} lies outside its run's folder")
        size = source.stat().st_size
        transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                  use_threads=True, max_concurrency=4)

        def upload_and_confirm() -> None:
            self.client.upload_file(str(source), self.bucket, self.object_key(key), Config=transfer,
                                    ExtraArgs={"Metadata": {"sha256": sha256}, "ContentType": content_type})
            stored = self._head(key)
            if stored is None or stored.size != size or stored.sha256 != sha256:
                raise OSError(f"{key}: the store holds {stored} after the upload, not {size} bytes with sha256"
                              f" {sha256[:12]}")

        self.patiently(f"uploading {name}", upload_and_confirm)
        return key

    def _head(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if self._error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(int(head["ContentLength"]), head.get("Metadata", {}).get("sha256"))

    def head(self, key: str) -> StoredObject | None:
        return self.patiently(f"reading {key}", lambda: self._head(key))

    def local_folder(self, folder: str, files: Mapping[str, str]) -> Path:
        view = self.views / parent_key(artifact_key(folder, "_"))
        view.mkdir(parents=True, exist_ok=True)
        for name, sha256 in files.items():
            cached = self.cached_object(artifact_key(folder, name), sha256)
            target = view / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not (target.is_file() and _same_file(target, cached)):
                _link_or_copy(cached, target)
        return view

    def cached_object(self, key: str, sha256: str) -> Path:
        """The object under ``key``, from the local cache by sha256; downloaded and checked when not there."""
        cached = self.objects / sha256[:2] / sha256
        if cached.is_file():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256[:12]}.", suffix=".part", dir=cached.parent)
        os.close(fd)
        try:
            def download() -> None:
                self.client.download_file(self.bucket, self.object_key(key), tmp)

            try:
                self.patiently(f"downloading {key}", download)
            except StoreRefused as exc:
                raise ArtifactMismatch(f"{key} cannot be read from the artifact store ({exc})") from None
            got = file_sha256(tmp)
            if got != sha256:
                raise ArtifactMismatch(f"{key}: the stored file's sha256 is {got[:12]}..., not the recorded"
                                       f" {sha256[:12]}...")
            os.chmod(tmp, 0o444)
            os.replace(tmp, cached)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return cached

    def open(self, key: str, first: int | None = None, last: int | None = None
             ) -> tuple[StoredObject, Iterator[bytes]] | None:
        """What the store holds under ``key`` and its bytes (``first``..``last`` inclusive when given) as chunks,
        from one GET; None if there is no such object. The request is made now, so a store that is away raises
        here, before a caller has sent any header."""
        from botocore.exceptions import ClientError

        extra: dict[str, Any] = {"Range": f"bytes={first}-{last}"} if first is not None else {}

        def get() -> dict[str, Any] | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key), **extra)
            except ClientError as exc:
                if self._error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        response = self.patiently(f"reading {key}", get)
        if response is None:
            return None
        total = response.get("ContentRange", "").rpartition("/")[2]  # "bytes 0-9/1234" for a range
        size = int(total) if total.isdigit() else int(response["ContentLength"])
        return StoredObject(size, response.get("Metadata", {}).get("sha256")), _chunks(response["Body"])

    def presigned_url(self, key: str, filename: str, content_type: str) -> str:
        return self.client.generate_presigned_url("get_object", ExpiresIn=PRESIGNED_SECONDS, Params={
            "Bucket": self.bucket, "Key": self.object_key(key), "ResponseContentType": content_type,
            "ResponseContentDisposition": f'inline; filename="{filename}"'})

    def delete(self, folder: str) -> None:
        prefix = self.object_key(artifact_key(folder, "_"))[:-1]
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as exc:  # best effort: the next prune tries again
            log.warning("artifact store: could not delete %s (%s)", folder, _one_line(exc))

    def attempt_folders(self, job_id: str) -> list[str]:
        # From the keys, not from "directories": some servers keep a folder listed after its last object went.
        prefix = self.object_key(artifact_key(f"jobs/{job_id}", "_"))[:-1]
        folders: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix):].split("/", 1)[0]
                if name.startswith("run-"):
                    folders.add(f"jobs/{job_id}/{name}")
        return sorted(folders)

    def release(self, folder: str) -> None:
        shutil.rmtree(self._scratch(folder), ignore_errors=True)


# -- helpers ------------------------------------------------------------------------------------


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)
    except OSError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def open_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` name: ``LATENTFORGE_ARTIFACT_URL`` (file:// or s3://), else the artifact folder."""
    url = settings.artifact_url
    if not settings.uses_object_store:
        return LocalStore(settings.artifact_dir, setting=f"{ENV_PREFIX}ARTIFACT_URL" if url else f"{ENV_PREFIX}ARTIFACT_DIR")
    parts = urlsplit(url)
    return S3Store(parts.netloc, parts.path, endpoint_url=settings.s3_endpoint_url, scratch_dir=settings.scratch_dir,
                   cache_dir=settings.cache_dir, patience_s=settings.store_patience_seconds, url=url)
