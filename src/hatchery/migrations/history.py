"""Recording what landed on an environment, shared by baselines and migration runs."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.migrations.models import Direction, MigrationRecord, Outcome
from hatchery.migrations.runner import Applied, Scripts
from hatchery.projects.models import Environment
from hatchery.runs.models import Run


def record_applied(
    session: AsyncSession,
    environment: Environment,
    run: Run,
    applied: list[dict[str, Any]],
    scripts: Scripts,
    direction: Direction,
) -> None:
    """Record revisions as a migration step reported them (`as_dicts` of its output)."""
    for item in applied:
        entry = Applied(**item)
        revision = scripts.get(entry.revision)
        started = datetime.fromtimestamp(entry.started_at, UTC)
        session.add(
            MigrationRecord(
                environment_id=environment.id,
                run_id=run.id,
                deployment_id=run.params.get("deployment_id"),
                key_id=run.key_id,
                revision=entry.revision,
                direction=direction,
                outcome=Outcome.succeeded,
                sha256=revision.sha256 if revision else None,
                started_at=started,
                finished_at=datetime.fromtimestamp(
                    entry.started_at + entry.duration_ms / 1000, UTC
                ),
                duration_ms=entry.duration_ms,
            )
        )


def record_failure(
    session: AsyncSession,
    environment: Environment,
    run: Run,
    revision: str,
    direction: Direction,
    started_at: float,
    error: str,
    statement: str | None,
    sha256: str | None,
) -> None:
    now = datetime.now(UTC)
    started = datetime.fromtimestamp(started_at, UTC)
    session.add(
        MigrationRecord(
            environment_id=environment.id,
            run_id=run.id,
            deployment_id=run.params.get("deployment_id"),
            key_id=run.key_id,
            revision=revision,
            direction=direction,
            outcome=Outcome.failed,
            sha256=sha256,
            started_at=started,
            finished_at=now,
            duration_ms=round((now - started).total_seconds() * 1000),
            error=error[:4000],
            failing_statement=statement[:4000] if statement else None,
        )
    )


def as_dicts(applied: list[Applied]) -> list[dict[str, Any]]:
    return [
        {"revision": a.revision, "started_at": a.started_at, "duration_ms": a.duration_ms}
        for a in applied
    ]
