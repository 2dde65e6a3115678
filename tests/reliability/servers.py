"""Private, restartable PostgreSQL and Redis servers for fault-injection tests.

The shared services on 5432 and 6379 must never be stopped, so a test that
wants to see what happens when the database or the broker goes away gets a
server of its own: a PostgreSQL cluster in a scratch folder, or a
``redis-server`` child process, on a port nobody else uses. Both can be
stopped (cleanly or as a crash) and started again; PostgreSQL keeps its data
across restarts, Redis does not (no RDB, no AOF), as a broker without
persistence would.

Everything is real: ``initdb``/``pg_ctl``/``redis-server`` binaries, psycopg and
redis-py clients. Servers are context managers, and any still running when
the interpreter exits are stopped by an ``atexit`` hook, so a failing test
does not leave processes behind.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

START_TIMEOUT = 30.0

# Servers started and not yet stopped; the atexit hook stops what is left.
_RUNNING: "weakref.WeakSet[PrivatePostgres | PrivateRedis]" = weakref.WeakSet()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_from_env(name: str) -> int:
    value = os.environ.get(name)
    return int(value) if value else free_port()


def _refuse_busy_port(port: int) -> None:
    """Fail before starting if something already listens on ``port``.

    Otherwise the readiness check could be answered by that other server (the
    shared one on 5432/6379, say) and a later stop would shut *it* down.
    """
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} on 127.0.0.1 is already in use; a private server needs a port of its own")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _scratch_dir(prefix: str) -> Path:
    """A fresh folder in the system temp dir that the ``postgres`` user can reach.

    pytest's tmp_path lives under /tmp/pytest-of-<user>/ (mode 700), which the
    postgres OS user cannot traverse; mkdtemp in /tmp (sticky, world-traversable)
    avoids touching anyone else's permissions.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl: PATH first, else the newest Debian install."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("pg_ctl not found on PATH nor under /usr/lib/postgresql/*/bin")
    return Path(candidates[-1]).parent


class PrivatePostgres:
    """A PostgreSQL cluster in ``root/pgdata`` on 127.0.0.1:``port``, owned by this test run.

    ``root`` defaults to a fresh folder under /tmp, removed on context exit.
    The unix socket lives in ``root`` (not /var/run/postgresql), so the
    cluster shares nothing with the system one. As root, the binaries run as
    the ``postgres`` OS user, because PostgreSQL refuses to run as root.
    """

    def __init__(self, root: Path | None = None, port: int | None = None):
        self._own_root = root is None
        self.root = Path(root) if root is not None else _scratch_dir("lf-pg-")
        self.port = port if port is not None else _port_from_env("LATENTFORGE_TEST_PG_PRIVATE_PORT")
        self.datadir = self.root / "pgdata"
        self.logfile = self.root / "postgres.log"
        self.bindir = _pg_bindir()
        self.running = False

    # -- addresses ---------------------------------------------------------

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def admin_url(self) -> str:
        """psycopg conninfo URL of the ``postgres`` maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    # -- lifecycle ---------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        """The command line, wrapped in ``runuser -u postgres`` when we are root."""
        return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + list(args)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # cwd=root: the postgres user may not be allowed into our cwd (/root).
        # pg_ctl -l sends the postmaster's output to the log file, so the pipes close.
        proc = subprocess.run(self._cmd(*args), cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n--- {self.logfile} ---\n{_tail(self.logfile)}"
            )
        return proc

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            if subprocess.run(self._cmd("test", "-w", str(self.root), "-a", "-x", str(self.root))).returncode != 0:
                raise RuntimeError(
                    f"the postgres OS user cannot write {self.root}: a parent folder is not traversable "
                    "(pytest's tmp_path is mode 700); pass root=None or a folder under /tmp with mode 755"
                )

    def _initdb(self) -> None:
        """Create the cluster once; later starts reuse it (that is what restart tests rely on)."""
        if (self.datadir / "PG_VERSION").exists():
            return
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
            "--no-sync", "--locale=C", "--encoding=UTF8",
        )

    def start(self) -> "PrivatePostgres":
        """Start the server and wait (up to 30 s) until it accepts TCP connections."""
        _refuse_busy_port(self.port)
        self._prepare_root()
        self._initdb()
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-c port={self.port}", f"-c unix_socket_directories='{self.root}'",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c shared_buffers=16MB", "-c max_connections=100",
        ])
        self._run(
            str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", str(int(START_TIMEOUT)), "-o", options,
        )
        self.running = True
        _RUNNING.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                    served = conn.execute("SHOW data_directory").fetchone()[0]
                if Path(served).resolve() != self.datadir.resolve():
                    raise RuntimeError(f"port {self.port} is served by another cluster ({served}), not {self.datadir}")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres on port {self.port} not ready: {exc}\n{_tail(self.logfile)}") from exc
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server. ``mode="immediate"`` skips the shutdown checkpoint, like a crash:
        the next start runs WAL recovery."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown pg_ctl stop mode {mode!r}")
        if not self.running:
            return
        self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(START_TIMEOUT)))
        self.running = False
        _RUNNING.discard(self)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port and data dir: data survives."""
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def _kill(self) -> None:
        """Last-resort stop for atexit: no waiting on a clean shutdown."""
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate", "-w", check=False)
            self.running = False

    def __enter__(self) -> "PrivatePostgres":
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)  # a failed start must not leave a cluster or folder behind
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop("fast")
        except RuntimeError:
            self._kill()
        shutil.rmtree(self.root if self._own_root else self.datadir, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` child process on 127.0.0.1:``port`` with persistence off.

    ``stop()`` is ``SHUTDOWN NOSAVE``: every key is lost, as when a broker
    without RDB/AOF restarts. ``root`` (default: a fresh folder under /tmp,
    removed on context exit) holds its working dir and log.
    """

    def __init__(self, root: Path | None = None, port: int | None = None):
        self._own_root = root is None
        self.root = Path(root) if root is not None else _scratch_dir("lf-redis-")
        self.port = port if port is not None else _port_from_env("LATENTFORGE_TEST_REDIS_PRIVATE_PORT")
        self.logfile = self.root / "redis.log"
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _client(self):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py 6+ retries with backoff by default, which turns the
        # expected "connection closed" after SHUTDOWN (or a refused PING while
        # starting) into seconds of sleeping.
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def start(self) -> "PrivateRedis":
        """Start the server (not daemonized) and wait (up to 30 s) until *our* process answers."""
        import redis

        _refuse_busy_port(self.port)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{_tail(self.logfile)}")
            try:
                if self._is_ours():
                    return self
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"redis-server on port {self.port} not answering PING:\n{_tail(self.logfile)}")
            time.sleep(0.05)

    def _is_ours(self) -> bool:
        """Whether the server answering on our port is our child process (PING alone is not enough)."""
        return self.proc is not None and self._client().info("server").get("process_id") == self.proc.pid

    def stop(self) -> None:
        """SHUTDOWN NOSAVE and wait for the process to exit (SIGKILL after 10 s)."""
        import redis

        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                # Never SHUTDOWN a server that is not our child process.
                if self._is_ours():
                    self._client().shutdown(nosave=True)
                else:
                    self.proc.terminate()
            except redis.ConnectionError:
                pass  # already going away
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        _RUNNING.discard(self)

    def restart(self) -> None:
        """Stop and start on the same port: an empty server comes back."""
        self.stop()
        self.start()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "PrivateRedis":
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._kill()
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)


@atexit.register
def _stop_leftovers() -> None:
    """Kill servers a test started and never stopped (e.g. it failed outside a ``with``)."""
    for server in list(_RUNNING):
        try:
            server._kill()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
