"""The README's main command: `latentforge up` on the embedded defaults, as a newcomer runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.stack import REPO, free_port


def test_up_starts_the_stack_queues_the_seed_run_and_prints_the_gallery(tmp_path, mnist_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTFORGE_")}
    env.update({"LATENTFORGE_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "latentforge.cli", "up", "--port", str(port)], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "LatentForge is up" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        text = log.read_text()
        assert f"gallery http://127.0.0.1:{port}/" in text and "queued the seed preset" in text
        # Embedded defaults: everything under ./var of where it was started.
        assert (tmp_path / "var" / "latentforge.db").is_file() and (tmp_path / "var" / "broker").is_dir()
        # Client commands run here without --url follow this port (latentforge/client.py: default_url).
        assert (tmp_path / "var" / "api.url").read_text() == f"http://127.0.0.1:{port}\n"
        jobs = requests.get(f"http://127.0.0.1:{port}/api/v1/jobs", timeout=10).json()["items"]
        assert len(jobs) == 1 and jobs[0]["name"] == "seed notebook" and jobs[0]["spec"]["preset"] == "seed"
        assert jobs[0]["spec"]["epochs"] == 50
        # The seed run starts training on the worker that `up` started.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = requests.get(f"http://127.0.0.1:{port}/api/v1/jobs/{jobs[0]['id']}", timeout=10).json()
            if job["progress"].get("epoch", 0) >= 1:
                break
            time.sleep(0.3)
        assert job["state"] == "running" and job["progress"]["total"] == 50
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    assert not (tmp_path / "var" / "api.url").exists()
    # Its API and worker went with it.
    def leftovers() -> str:
        return subprocess.run(["ps", "-o", "pid=,args=", "-s", str(proc.pid)], capture_output=True, text=True).stdout.strip()

    deadline = time.monotonic() + 20
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers() == ""
