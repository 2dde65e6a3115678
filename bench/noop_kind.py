"""Two job kinds for bench/sweep_overhead.py only, loaded with LATENTFORGE_PLUGINS=bench.noop_kind.

``noop``: a job whose runner returns at once and writes nothing, so a worker's time on it is the queue's own
overhead (claim, monitor thread, heartbeats, finish and the sweep's recount). ``noop_sweep``: a sweep whose
children are ``count`` noop jobs, made by the same fan-out as a sweep of train jobs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt

from shared.kinds import SWEEP_QUEUE, Child, JobKind, RunContext, RunOutput, register
from shared.specs import MAX_SWEEP_CHILDREN, Spec


class NoopSpec(Spec):
    index: Annotated[StrictInt, Field(ge=0)] = 0


class NoopSweepSpec(Spec):
    count: Annotated[StrictInt, Field(ge=1, le=MAX_SWEEP_CHILDREN)] = 10


def run_noop(spec: NoopSpec, ctx: RunContext) -> RunOutput:
    ctx.log(f"noop {spec.index} ran")
    return RunOutput([], {"index": spec.index})


register(JobKind(name="noop", spec=NoopSpec, runner="bench.noop_kind:run_noop", help="does nothing (benchmarks)"))
register(JobKind(
    name="noop_sweep", spec=NoopSweepSpec, runner=None, help="a sweep of noop jobs (benchmarks)",
    queue=lambda spec: SWEEP_QUEUE,
    fan_out=lambda spec: [Child("noop", NoopSpec(index=i), {"index": i}) for i in range(spec.count)],
))
