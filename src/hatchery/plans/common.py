"""What every plan that runs a project's migrations starts from."""

from hatchery.migrator import execution
from hatchery.projects import service as projects
from hatchery.projects.models import Project
from hatchery.runs.executor import StepContext


async def prepared(context: StepContext, project: Project, commit: str) -> execution.Prepared:
    """The run's checkout of `commit` and the project's environment: made by the first
    step that asks, found again by the others."""
    return await execution.prepare(
        context.settings, str(context.run.id), projects.migrations_source(project), commit,
        context.log,
    )  # fmt: skip
