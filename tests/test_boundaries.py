"""Package boundaries: the ML core runs without web/queue/database libraries; the API without torch."""

import subprocess
import sys

import pytest

CORE_MODULES = ["worker.data", "worker.models", "worker.train", "worker.figures", "worker.checkpoint",
                "worker.pipeline", "worker.runners", "worker.files"]
FORBIDDEN_IN_CORE = ["flask", "celery", "sqlalchemy", "kombu", "redis"]


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize("module", CORE_MODULES)
def test_ml_core_never_imports_web_queue_or_database(module):
    loaded = imported_after(f"import {module}")
    assert not loaded & set(FORBIDDEN_IN_CORE), loaded & set(FORBIDDEN_IN_CORE)


@pytest.mark.parametrize("module", ["api", "api.jobs", "api.health", "api.openapi", "api.server", "api.gunicorn_conf",
                                    "shared.settings", "shared.specs", "shared.cli", "shared.jobstore", "shared.queue",
                                    "shared.db", "shared.migrate"])
def test_api_and_shared_never_import_torch(module):
    loaded = imported_after(f"import {module}")
    assert "torch" not in loaded
