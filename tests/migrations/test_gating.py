"""What a migration may do, checked before anything runs: promotion gating on the test's
rolled-back session, and the revision paths of a history as a child reports it."""

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import db
from hatchery.migrations import gating
from hatchery.migrations.models import Direction, MigrationRecord, Outcome
from hatchery.migrator.revisions import BASE, History, Revision
from hatchery.projects.models import Environment, Project, ProjectStatus


def revision(name: str, *down: str, downgradable: bool = True) -> Revision:
    return Revision(
        revision=name, down_revisions=down, message=name, path=f"versions/{name}.py",
        sha256="0" * 64, downgradable=downgradable, transactional=True,
    )  # fmt: skip


# a ← b ← c ← e, a ← d ← e (a merge), then f; d cannot be undone.
HISTORY = History(
    heads=("f",),
    revisions=(
        revision("a"), revision("b", "a"), revision("c", "b"),
        revision("d", "a", downgradable=False), revision("e", "c", "d"), revision("f", "e"),
    ),
)  # fmt: skip


async def project_with(session: AsyncSession, *names: str) -> Project:
    async with db.transaction(session):
        project = Project(
            slug=f"gated-{uuid.uuid4().hex[:6]}", name="gated", template="fastapi-service",
            status=ProjectStatus.active, repository_url="file:///nonexistent",
            repository_path="/nonexistent",
            environments=[
                Environment(name=n, position=i, database_name=f"gated_{n}", role_name="gated")
                for i, n in enumerate(names)
            ],
        )  # fmt: skip
        session.add(project)
    return project


async def landed(
    session: AsyncSession, environment: Environment, name: str, outcome: Outcome
) -> None:
    async with db.transaction(session):
        now = db.utcnow()
        session.add(
            MigrationRecord(
                environment_id=environment.id, revision=name, direction=Direction.upgrade,
                outcome=outcome, started_at=now, finished_at=now, duration_ms=1,
            )
        )  # fmt: skip


async def test_an_environment_receives_only_what_the_one_before_it_passed(
    session: AsyncSession,
) -> None:
    project = await project_with(session, "staging", "production")
    staging, production = project.environments
    assert await gating.promotion(session, project, staging, "b") is None  # never gated
    refused = await gating.promotion(session, project, production, "b")
    assert refused is not None and refused.field is None
    assert refused.reason.startswith("revision b has not succeeded on staging yet")
    await landed(session, staging, "b", Outcome.failed)
    assert await gating.promotion(session, project, production, "b") is not None
    await landed(session, staging, "b", Outcome.succeeded)
    assert await gating.promotion(session, project, production, "b") is None


async def test_an_environment_already_at_the_target_before_any_record_passes_the_gate(
    session: AsyncSession,
) -> None:
    project = await project_with(session, "staging", "production")
    staging, production = project.environments
    async with db.transaction(session):
        staging.revision = "c"  # adopted at c: no history of how it got there
    assert await gating.promotion(session, project, production, "c") is None


def test_upgrade_and_downgrade_paths_follow_merges() -> None:
    assert HISTORY.upgrade_path(None, "f") == ["a", "b", "c", "d", "e", "f"]
    assert HISTORY.upgrade_path("c", "f") == ["d", "e", "f"]
    assert HISTORY.downgrade_path("f", "c") == ["f", "e", "d"]
    assert HISTORY.downgrade_path("c", None) == ["c", "b", "a"]


def test_a_rollback_is_refused_when_a_revision_on_the_way_cannot_be_undone() -> None:
    assert gating.revisions_to_revert(HISTORY, "f", "e") == ["f"]
    assert gating.revisions_to_revert(HISTORY, "c", BASE) == ["c", "b", "a"]
    assert gating.revisions_to_revert(HISTORY, "f", "f") == []
    with pytest.raises(gating.Refused, match="revision d has no usable downgrade") as refused:
        gating.revisions_to_revert(HISTORY, "f", "c")
    assert refused.value.refusal.field is None  # a conflict with the history: 409


def test_a_rollback_target_must_be_a_known_earlier_revision() -> None:
    with pytest.raises(gating.Refused, match="not in the history") as unknown:
        gating.revisions_to_revert(HISTORY, "f", "zzz")
    assert unknown.value.refusal.field == "body.target_revision"  # an invalid input: 422
    with pytest.raises(gating.Refused, match="not an earlier revision"):
        gating.revisions_to_revert(HISTORY, "c", "d")
