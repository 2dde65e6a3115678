"""A job kind for tests/test_object_store.py only (LATENTFORGE_PLUGINS=tests.hostile_kind): its runner lists a
file name of the spec's choosing, so the test can hand the worker names built to escape the job's prefix."""

from __future__ import annotations

from pydantic import StrictStr

from shared.artifacts import ArtifactFile, ArtifactKind
from shared.kinds import JobKind, RunContext, RunOutput, register
from shared.specs import Spec


class HostileSpec(Spec):
    artifact_name: StrictStr


def run_hostile(spec: HostileSpec, ctx: RunContext) -> RunOutput:
    (ctx.folder / "ok.txt").write_text("fine")
    target = ctx.folder / spec.artifact_name
    try:  # write it where the name points, as a careless runner would
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("escaped")
    except OSError:
        pass
    files = [ArtifactFile.of("ok.txt", ArtifactKind.FILE), ArtifactFile.of(spec.artifact_name, ArtifactKind.FILE)]
    return RunOutput(files, {})


register(JobKind(name="hostile_files", spec=HostileSpec, runner="tests.hostile_kind:run_hostile",
                 help="lists a file name chosen by its spec (tests)"))
