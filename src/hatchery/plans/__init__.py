"""What runs do, step by step: the plans of every kind of run, and `register()`, which
hands them to the registry in `hatchery.runs.plans` (the api and the worker call it at
start). Above the domains: a plan may use projects, migrations, runs and the
infrastructure; nothing below imports this package."""

from hatchery.plans import adopt, delete, initialize, migrate, refresh
from hatchery.runs import plans
from hatchery.runs.models import RunKind


def register() -> None:
    plans.register(RunKind.initialize, initialize.PLAN)
    plans.register(RunKind.initialize, adopt.PLAN, "adopt")
    plans.register(RunKind.upgrade, migrate.UPGRADE)
    plans.register(RunKind.downgrade, migrate.DOWNGRADE)
    plans.register(RunKind.restore, migrate.RESTORE)
    plans.register(RunKind.refresh, refresh.PLAN)
    plans.register(RunKind.delete, delete.PLAN)
    plans.register(RunKind.delete, adopt.FORGET, "forget")
