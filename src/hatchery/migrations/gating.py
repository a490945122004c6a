"""What a migration may do to an environment, checked before anything runs."""

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.errors import Conflict, FieldError, InvalidInput
from hatchery.migrations import repository
from hatchery.migrator.revisions import BASE, History
from hatchery.projects.models import Environment, Project


async def check(
    session: AsyncSession, project: Project, environment: Environment, target: str
) -> None:
    """An environment only receives a revision that has already succeeded on the one
    before it in promotion order."""
    earlier = [e for e in project.environments if e.position < environment.position]
    if not earlier:
        return
    previous = max(earlier, key=lambda e: e.position)
    landed = await repository.succeeded_revisions(session, previous.id)
    if target not in landed and previous.revision != target:
        raise Conflict(
            f"revision {target} has not succeeded on {previous.name} yet: {environment.name} "
            f"only receives what {previous.name} has passed (an admin may force it)"
        )


def revisions_to_revert(history: History, current: str, target: str) -> list[str]:
    """The revisions a downgrade from `current` to `target` reverts, newest first; refused
    when the target is not earlier or a revision on the way cannot be undone."""
    field = "body.target_revision"
    resolved = BASE if target == BASE else history.resolve(target)
    if resolved is None:
        raise InvalidInput(
            f"revision {target} is not in the history",
            errors=[FieldError(field=field, message="unknown revision", type="unknown")],
        )
    if resolved == current:
        return []
    if not history.is_ancestor(resolved, current):
        raise InvalidInput(
            f"revision {target} is not an earlier revision of {current}",
            errors=[FieldError(field=field, message="not an ancestor", type="not_ancestor")],
        )
    path = history.downgrade_path(current, None if resolved == BASE else resolved)
    for revision in path:
        found = history.get(revision)
        if found is None or not found.downgradable:
            where = found.path if found else "missing file"
            raise Conflict(
                f"revision {revision} has no usable downgrade ({where}): restore a backup instead"
            )
    return path
