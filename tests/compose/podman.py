"""docker-compose.yml brought up for real with Podman, on a machine with no Docker engine and no Docker Hub.

What is made here, and why:

* a Debian base image from ``debootstrap`` (``podman import``), since no image can be pulled;
* stand-ins for the images the compose file names (python, redis, postgres, seaweedfs), built on that base
  and tagged with the compose file's exact names, so the file runs unmodified (tests/compose/standins/);
* the project's API and worker images from its own Dockerfiles, with this host's local wheel index mounted
  into the build (``--podman-build-args``), so torch is not downloaded again.

Podman 4.3 (Debian 12) runs no healthchecks by itself (they need systemd timers) and podman-compose 1.6
ignores ``condition: service_healthy`` on it; ``up`` with ``depends_on`` chains also trips a podman bug
(containers/podman-compose#921). So :meth:`ComposeProject.up` brings the services up in the compose file's
own dependency order, one stage at a time with ``--no-deps``, and runs each healthcheck itself until it
passes, as Docker would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
PROJECT = "latentforge"
LOCAL_BASE = "localhost/latentforge-localbase"
# Built in this order: seaweedfs builds on the python stand-in.
STANDIN_IMAGES = {
    "python": "docker.io/library/python:3.12-slim",
    "redis": "docker.io/library/redis:7-alpine",
    "postgres": "docker.io/library/postgres:16-alpine",
    "seaweedfs": "docker.io/chrislusf/seaweedfs:4.48",
}
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
# runc and cgroupfs: what works in this sandbox; explicit ulimits: the defaults exceed its hard limits.
CONTAINERS_CONF_TEXT = """[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"

[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
"""
CDI_SPEC = Path("/var/run/cdi/latentforge-test-gpu.json")
# A stand-in for the NVIDIA CDI device the worker reserves (deploy.resources): no GPU here.
CDI_SPEC_TEXT = json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [
    {"name": "0", "containerEdits": {"env": ["LATENTFORGE_CDI_STAND_IN=1"]}}]})


class Unavailable(RuntimeError):
    """Podman cannot run here; the message says why (the test skips with it)."""


def sh(*cmd: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:300]} exited {result.returncode}\n{result.stdout[-3000:]}"
                           f"\n{result.stderr[-3000:]}")
    return result


def podman_compose() -> str:
    found = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not os.access(found, os.X_OK):
        raise Unavailable("podman-compose is not installed (pip install podman-compose)")
    return found


def ensure_podman() -> None:
    """Install podman, runc and debootstrap from Debian when missing; write the engine settings once."""
    if shutil.which("podman") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise Unavailable("podman is not installed and cannot be installed here (needs root and apt-get)")
        sh("apt-get", "install", "-y", "-q", "podman", "runc", "debootstrap", timeout=900,
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not CONTAINERS_CONF.exists():
        CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
        CONTAINERS_CONF.write_text(CONTAINERS_CONF_TEXT)
    probe = sh("podman", "info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=120)
    if probe.returncode != 0:
        raise Unavailable(f"podman cannot run containers here: {probe.stderr.strip().splitlines()[-1:]}")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (debootstrap needs one)."""
    for path in sorted(Path("/etc/apt").rglob("*.sources")) + sorted(Path("/etc/apt").rglob("*.list")):
        match = re.search(r"(?:URIs:|deb)\s+(https?://\S+/debian)\b", path.read_text())
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def image_exists(name: str) -> bool:
    return sh("podman", "image", "exists", name, check=False).returncode == 0


def ensure_local_base() -> None:
    if image_exists(LOCAL_BASE):
        return
    with tempfile.TemporaryDirectory(prefix="lf-rootfs-") as rootfs:
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
           rootfs, debian_mirror(), timeout=900)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        sh("podman", "import", "-", LOCAL_BASE, stdin=tar.stdout, timeout=600)
        tar.wait()


def host_pip() -> tuple[str, list[str]]:
    """This host's pip settings as a pip.conf for the images, and the folders they name (mounted into builds)."""
    listed = sh(sys.executable, "-m", "pip", "config", "list", check=False).stdout
    values = dict(re.findall(r"^global\.([\w-]+)='(.*)'$", listed, re.M))
    lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    mounts: list[str] = []
    for key in ("find-links", "extra-index-url", "index-url", "constraint"):
        if key in values:
            lines.append(f"{key} = {values[key]}")
            for location in values[key].split():
                folder = location.removeprefix("file://")
                if folder.startswith("/") and Path(folder).exists():
                    top = "/" + "/".join(folder.strip("/").split("/")[:2])  # /opt/pypi for /opt/pypi/simple
                    if top not in mounts:
                        mounts.append(top)
    return "\n".join(lines) + "\n", mounts


def build_standins() -> None:
    ensure_local_base()
    pip_conf, mounts = host_pip()
    for name, tag in STANDIN_IMAGES.items():
        if image_exists(tag):
            continue
        with tempfile.TemporaryDirectory(prefix=f"lf-{name}-") as context:
            shutil.copytree(STANDINS / name, context, dirs_exist_ok=True)
            if name == "python":
                shutil.copy("/etc/ssl/certs/ca-certificates.crt", Path(context) / "host-ca.crt")
                (Path(context) / "pip.conf").write_text(pip_conf)
            volumes = [arg for m in mounts for arg in ("-v", f"{m}:{m}:ro")]
            sh("podman", "build", "-t", tag, "--build-arg", f"LOCAL_BASE={LOCAL_BASE}", *volumes,
               "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro", context,
               timeout=900)


class ComposeProject:
    """The repository's docker-compose.yml as podman-compose project ``latentforge``."""

    def __init__(self, env: dict[str, str]):
        self.env = {**os.environ, **env}
        self.compose = [podman_compose(), "-p", PROJECT, "-f", str(REPO / "docker-compose.yml")]

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.compose, *args, cwd=REPO, env=self.env, timeout=timeout, check=check)

    def build(self) -> dict[str, float]:
        """The API and worker images from the project's Dockerfiles; seconds each."""
        _, mounts = host_pip()
        volumes = " ".join(f"-v {m}:{m}:ro" for m in mounts)
        seconds = {}
        for service in ("api", "worker"):
            started = time.monotonic()
            self.run(f"--podman-build-args={volumes}", "build", service, timeout=1800)
            seconds[service] = time.monotonic() - started
        return seconds

    def container(self, service: str, index: int = 1) -> str:
        return f"{PROJECT}_{service}_{index}"

    def healthy(self, container: str) -> bool:
        return sh("podman", "healthcheck", "run", container, check=False, timeout=120).returncode == 0

    def wait_healthy(self, container: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(container):
            if time.monotonic() > deadline:
                logs = sh("podman", "logs", "--tail", "40", container, check=False).stdout
                raise AssertionError(f"{container} not healthy after {timeout:g} s\n{logs}")
            time.sleep(1)

    def up(self, *services: str) -> None:
        self.run("up", "-d", "--no-deps", *services)

    def up_staged(self, workers: int = 1) -> None:
        """The compose file's dependency order, each healthcheck run until it passes, as Docker would."""
        CDI_SPEC.parent.mkdir(parents=True, exist_ok=True)
        CDI_SPEC.write_text(CDI_SPEC_TEXT)
        self.up("redis", "postgres", "seaweedfs")
        for service in ("redis", "postgres", "seaweedfs"):
            self.wait_healthy(self.container(service), 120)
        self.up("bucket", "migrate")
        for service in ("bucket", "migrate"):
            code = sh("podman", "wait", self.container(service), timeout=300).stdout.strip()
            if code != "0":
                logs = sh("podman", "logs", self.container(service), check=False).stdout
                raise AssertionError(f"{service} exited {code}\n{logs}")
        self.up("api")
        self.wait_healthy(self.container("api"), 120)
        self.run("up", "-d", "--no-deps", "--scale", f"worker={workers}", "worker")

    def down(self) -> None:
        # --remove-orphans: podman-compose 1.6 takes the replicas that --scale added for orphans.
        self.run("down", "-v", "--remove-orphans", "-t", "20", check=False, timeout=600)
        CDI_SPEC.unlink(missing_ok=True)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that are still there."""
        found = {}
        for what, cmd in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]), ("volumes", ["volume", "ls"])):
            names = sh("podman", *cmd, "--format", "{{.Names}}" if what == "containers" else "{{.Name}}").stdout.split()
            found[what] = [n for n in names if n.startswith(PROJECT)]
        return found
