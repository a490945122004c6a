"""What a migration may do to an environment, checked before anything runs. Verdicts,
not HTTP errors: the api answers a refusal with 409 or 422, a run's step fails with it."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.migrations import repository
from hatchery.migrator.revisions import BASE, History
from hatchery.projects.models import Environment, Project


@dataclass(frozen=True)
class Refusal:
    reason: str
    # The request field at fault (an invalid input), or None (a conflict with the state),
    # and what is wrong with it, in the words and type of a field error.
    field: str | None = None
    message: str = ""
    type: str = ""


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


async def promotion(
    session: AsyncSession, project: Project, environment: Environment, target: str
) -> Refusal | None:
    """An environment only receives a revision that has already succeeded on the one
    before it in promotion order."""
    earlier = [e for e in project.environments if e.position < environment.position]
    if not earlier:
        return None
    previous = max(earlier, key=lambda e: e.position)
    landed = await repository.succeeded_revisions(session, previous.id)
    if target not in landed and previous.revision != target:
        return Refusal(
            f"revision {target} has not succeeded on {previous.name} yet: {environment.name} "
            f"only receives what {previous.name} has passed (an admin may force it)"
        )
    return None


def revisions_to_revert(history: History, current: str, target: str) -> list[str]:
    """The revisions a downgrade from `current` to `target` reverts, newest first; Refused
    when the target is not earlier or a revision on the way cannot be undone."""
    field = "body.target_revision"
    resolved = BASE if target == BASE else history.resolve(target)
    if resolved is None:
        unknown = f"revision {target} is not in the history"
        raise Refused(Refusal(unknown, field, "unknown revision", "unknown"))
    if resolved == current:
        return []
    if not history.is_ancestor(resolved, current):
        later = f"revision {target} is not an earlier revision of {current}"
        raise Refused(Refusal(later, field, "not an ancestor", "not_ancestor"))
    path = history.downgrade_path(current, None if resolved == BASE else resolved)
    for revision in path:
        found = history.get(revision)
        if found is None or not found.downgradable:
            where = found.path if found else "missing file"
            raise Refused(
                Refusal(
                    f"revision {revision} has no usable downgrade ({where}): "
                    "restore a backup instead"
                )
            )
    return path
