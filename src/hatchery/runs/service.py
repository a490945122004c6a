import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchery import crypto, db, metrics, pagination
from hatchery.errors import Conflict, NotFound
from hatchery.events import stream
from hatchery.keys.models import ApiKey, Scope
from hatchery.observability import current_request_id
from hatchery.runs import plans, repository
from hatchery.runs.jobs import enqueue, jobs_of
from hatchery.runs.models import Run, RunKind, RunStatus, RunTrigger, Step

_ONCE = "_once"


async def create_run(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    kind: RunKind,
    trigger: RunTrigger = RunTrigger.api,
    attempt: int = 1,
    idempotency_key: str | None = None,
    params: BaseModel | None = None,
    key_id: uuid.UUID | None = None,
    not_before: datetime | None = None,
) -> tuple[Run, bool]:
    """A queued run with its plan's steps (`scheduled`, when `not_before` is later than
    now), and whether it is new: with an idempotency key, the run an earlier request made
    with it (two at once still make one). The job is enqueued once the caller's
    transaction commits."""
    if idempotency_key is not None:
        existing = await repository.get_by_idempotency_key(session, project_id, idempotency_key)
        if existing is not None:
            return existing, False
    given = params.model_dump(mode="json") if params is not None else {}
    plan = plans.plan_for(kind, given.get("variant"))
    if plan.params is not None:  # the parameters its steps will read, checked now
        given = plan.params.model_validate(given).model_dump(mode="json")
    try:
        async with session.begin_nested():
            run = await _add_run(
                session,
                project_id=project_id,
                kind=kind,
                steps=plan.step_names,
                trigger=trigger,
                idempotency_key=idempotency_key,
                params=given,
                key_id=key_id,
                attempt=attempt,
            )
            if not_before is not None and not_before > db.utcnow():
                run.status, run.not_before = RunStatus.scheduled, not_before
    except IntegrityError:
        if idempotency_key is None:
            raise
        # The other request committed first: its run is the one.
        existing = await repository.get_by_idempotency_key(session, project_id, idempotency_key)
        assert existing is not None
        return existing, False
    jobs = jobs_of(session)
    db.after_commit(session, lambda: enqueue(jobs, run.id, run.not_before))
    return run, True


async def _add_run(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    kind: RunKind,
    steps: Sequence[str],
    trigger: RunTrigger,
    idempotency_key: str | None,
    params: dict[str, Any] | None,
    key_id: uuid.UUID | None,
    attempt: int = 1,
) -> Run:
    run = Run(
        project_id=project_id,
        kind=kind,
        trigger=trigger,
        attempt=attempt,
        idempotency_key=idempotency_key,
        params=params or {},
        key_id=key_id,
        request_id=current_request_id(),
        steps=[Step(name=name, position=i) for i, name in enumerate(steps)],
    )
    session.add(run)
    await session.flush()
    return run


async def find_by_idempotency_key(
    session: AsyncSession, project_id: uuid.UUID, idempotency_key: str
) -> Run | None:
    return await repository.get_by_idempotency_key(session, project_id, idempotency_key)


async def get_run(session: AsyncSession, run_id: uuid.UUID) -> Run:
    run = await repository.get(session, run_id)
    if run is None:
        raise NotFound(f"No run with id {run_id}")
    return run


def keep_secret_once(run: Run, name: str, plaintext: str, encryption_key: bytes) -> None:
    """Put a secret in the run's result for exactly one read (see `reveal_once`)."""
    sealed = base64.b64encode(crypto.encrypt(plaintext, encryption_key)).decode()
    once = {**(run.result or {}).get(_ONCE, {}), name: sealed}
    run.add_result(**{_ONCE: once})


async def read_run(
    session: AsyncSession, run_id: uuid.UUID, reader: ApiKey, encryption_key: bytes
) -> Run:
    """The run, with its one-time secrets (a deploy token) revealed in its result on the
    first read after it succeeded by the key that started it, or an admin, and then
    dropped from storage for good. Any other reader sees what the run says of them."""
    run = await get_run(session, run_id)
    if run.status != RunStatus.succeeded or not run.result or _ONCE not in run.result:
        return run
    if reader.id != run.key_id and not reader.allows(Scope.admin):
        return run
    run = await repository.get(session, run_id, for_update=True) or run
    if not run.result or _ONCE not in run.result:
        return run
    sealed: dict[str, str] = run.result[_ONCE]
    run.result = {k: v for k, v in run.result.items() if k != _ONCE}
    await session.flush()
    revealed = {
        name: crypto.decrypt(base64.b64decode(value), encryption_key)
        for name, value in sealed.items()
    }
    session.expunge(run)
    run.add_result(**revealed)
    return run


async def cancel_run(session: AsyncSession, redis: Redis, run_id: uuid.UUID) -> Run:
    run = await repository.get(session, run_id, for_update=True)
    if run is None:
        raise NotFound(f"No run with id {run_id}")
    if run.status.finished:
        raise Conflict(f"Run {run_id} has already finished ({run.status})")
    run.cancel_requested = True
    if run.status in (RunStatus.queued, RunStatus.scheduled):
        run.status = RunStatus.cancelled
        run.finished_at = db.utcnow()
        run.error = "cancelled before it started"

        async def announce() -> None:
            metrics.run_finished(run.kind, run.status, run.seconds)
            await stream.publish(redis, run.id, "run.cancelled", status=RunStatus.cancelled)

        db.after_commit(session, announce)
    await session.flush()
    return run


async def list_runs(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[Sequence[Run], str | None]:
    after = pagination.decode(cursor) if cursor else None
    page = await repository.list_for_project(session, project_id, limit=limit + 1, after=after)
    more = len(page) > limit
    page = page[:limit]
    return page, pagination.encode(page[-1].created_at, page[-1].id) if more else None


def summarize(run: Run) -> dict[str, Any]:
    """Each step's status, duration and error; the total; the step that failed."""
    failed = next((s.name for s in run.steps if s.status == "failed"), None)
    return {
        "attempt": run.attempt,
        "steps": [
            {"name": s.name, "status": s.status, "duration_ms": s.duration_ms, "error": s.error}
            for s in run.steps
        ],
        "total_duration_ms": sum(s.duration_ms or 0 for s in run.steps if s.status != "skipped"),
        "failed_step": failed,
    }
