"""Package boundaries: the ML core runs without web/queue/database libraries; the API without torch;
shared/ is the ground floor and imports nothing above it."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

CORE_MODULES = ["worker.data", "worker.models", "worker.train", "worker.figures", "worker.checkpoint",
                "worker.pipeline", "worker.runners", "worker.files", "worker.samplers", "worker.scorecard.metrics",
                "worker.scorecard.judge", "worker.scorecard.figures", "worker.scorecard.evaluate", "worker.study"]
FORBIDDEN_IN_CORE = ["flask", "celery", "sqlalchemy", "kombu", "redis"]


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize("module", CORE_MODULES)
def test_ml_core_never_imports_web_queue_or_database(module):
    loaded = imported_after(f"import {module}")
    assert not loaded & set(FORBIDDEN_IN_CORE), loaded & set(FORBIDDEN_IN_CORE)


REPO = Path(__file__).resolve().parent.parent
SHARED_MODULES = sorted(f"shared.{m.name}" for m in pkgutil.iter_modules([str(REPO / "shared")]))
API_MODULES = ["api"] + sorted(f"api.{m.name}" for m in pkgutil.iter_modules([str(REPO / "api")]) if m.name != "wsgi")


@pytest.mark.parametrize("module", API_MODULES + SHARED_MODULES + ["latentforge.cli", "latentforge.client"])
def test_api_and_shared_never_import_torch(module):
    loaded = imported_after(f"import {module}")
    assert "torch" not in loaded


@pytest.mark.parametrize("module", SHARED_MODULES)
def test_shared_imports_nothing_above_it(module):
    loaded = imported_after(f"import {module}")
    assert not loaded & {"api", "worker", "latentforge"}, loaded & {"api", "worker", "latentforge"}
