"""Which plan a run follows: one registry, keyed by the run's kind (and, for some kinds, a
variant in its params), filled by `hatchery.plans` and read by both sides: the api (the
steps a new run lists) and the worker (what it executes)."""

from hatchery.runs.executor import Plan
from hatchery.runs.models import Run, RunKind

_PLANS: dict[tuple[RunKind, str | None], Plan] = {}


def register(kind: RunKind, plan: Plan, variant: str | None = None) -> None:
    _PLANS[(kind, variant)] = plan


def plan_for(kind: RunKind, variant: str | None = None) -> Plan:
    try:
        return _PLANS[(kind, variant)]
    except KeyError:
        raise LookupError(f"no plan for a {kind} run ({variant}): import hatchery.plans") from None


def of_run(run: Run) -> Plan:
    return plan_for(run.kind, run.params.get("variant"))
