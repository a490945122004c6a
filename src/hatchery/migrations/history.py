"""Recording what landed on an environment, shared by baselines and migration runs."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchery.migrations.models import Backup, Direction, MigrationRecord, Outcome
from hatchery.projects.models import Environment
from hatchery.runs.models import Run


def record_applied(
    session: AsyncSession,
    environment: Environment,
    run: Run,
    applied: list[dict[str, Any]],
    sha256s: Mapping[str, str | None],
    direction: Direction,
) -> None:
    """Record revisions as the child reported them landing: `revision`, `started_at`
    (epoch seconds) and `duration_ms` each; `sha256s` the hashes of their files."""
    for entry in applied:
        started_at, duration_ms = float(entry["started_at"]), int(entry["duration_ms"])
        session.add(
            MigrationRecord(
                environment_id=environment.id,
                run_id=run.id,
                deployment_id=run.params.get("deployment_id"),
                key_id=run.key_id,
                revision=entry["revision"],
                direction=direction,
                outcome=Outcome.succeeded,
                sha256=sha256s.get(entry["revision"]),
                started_at=datetime.fromtimestamp(started_at, UTC),
                finished_at=datetime.fromtimestamp(started_at + duration_ms / 1000, UTC),
                duration_ms=duration_ms,
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


def record_restore(
    session: AsyncSession, environment: Environment, run: Run, backup: Backup
) -> None:
    """The environment went back to its backup: `started_at` is the moment restored to."""
    now = datetime.now(UTC)
    session.add(
        MigrationRecord(
            environment_id=environment.id,
            run_id=run.id,
            key_id=run.key_id,
            revision=backup.revision or "base",
            direction=Direction.restore,
            outcome=Outcome.succeeded,
            started_at=backup.created_at,
            finished_at=now,
            duration_ms=0,
        )
    )
