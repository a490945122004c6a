import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from hatchery.db import SessionDep
from hatchery.deps import CachesDep, RedisDep, SettingsDep
from hatchery.errors import error_responses
from hatchery.keys.auth import check_project, require
from hatchery.keys.models import ApiKey, Scope
from hatchery.schema import service
from hatchery.schema.catalog import PARTS
from hatchery.schema.schemas import SchemaDocument, TableDocument, TableKind

router = APIRouter(tags=["schema"], responses=error_responses(401, 403, 404, 409, 422, 503))

SchemaReader = Annotated[ApiKey, Depends(require(Scope.schema_read))]


async def _schema_state(request: Request) -> service.SchemaState:
    """The api process's schema engines (its lifespan state's)."""
    found: service.SchemaState = request.state.schema
    return found


SchemaStateDep = Annotated[service.SchemaState, Depends(_schema_state)]
ENVIRONMENT = "/projects/{project_id}/environments/{environment}"
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "The schema still has the ETag sent in If-None-Match"}
}
IfNoneMatch = Annotated[str | None, Header(description="An ETag from an earlier answer.")]
Include = Annotated[
    list[str] | None,
    Query(
        description=(
            "Parts to return (repeat or comma-separate): "
            f"{', '.join(PARTS)}; `default` is all but `stats`, which is opt-in "
            "because sizes cost a read per table."
        )
    ),
]


def _answer(answer: service.Answer) -> Response:
    headers = {"ETag": answer.etag, "Cache-Control": "private, no-cache"}
    if answer.body is None:
        return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)


@router.get(
    ENVIRONMENT + "/schema",
    response_model=SchemaDocument,
    name="get_schema",
    summary="Database schema of an environment",
    responses=NOT_MODIFIED,
)
async def get_schema(
    project_id: uuid.UUID,
    environment: str,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    state: SchemaStateDep,
    caches: CachesDep,
    key: SchemaReader,
    schema: Annotated[list[str] | None, Query(description="Only these schemas.")] = None,
    kind: Annotated[list[TableKind] | None, Query(description="Only these kinds.")] = None,
    include: Include = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Every schema, table, view, column, constraint, index, enum, domain, sequence,
    partition and policy of the environment's database (never its rows), with its
    current revision and a fingerprint that is also the ETag. Columns whose names look
    sensitive are flagged and their defaults and comments left out."""
    check_project(key, project_id)
    query = service.Query(
        schemas=tuple(sorted({service.identifier(s, "query.schema") for s in schema or []})),
        kinds=tuple(sorted(set(kind or []))),
        parts=service.parse_parts(include),
    )
    answer = await service.read(
        session, redis, state, caches, settings, project_id, environment, query, if_none_match
    )
    return _answer(answer)


@router.get(
    ENVIRONMENT + "/schema/tables/{qualified_name}",
    response_model=TableDocument,
    name="get_table_schema",
    summary="One table of an environment's schema",
    responses=NOT_MODIFIED,
)
async def get_table_schema(
    project_id: uuid.UUID,
    environment: str,
    qualified_name: str,
    session: SessionDep,
    settings: SettingsDep,
    redis: RedisDep,
    state: SchemaStateDep,
    caches: CachesDep,
    key: SchemaReader,
    include: Include = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """One table, view or materialized view, named `schema.table`: the same detail as the
    whole schema, looked up by its oid so the cost does not grow with the catalog."""
    check_project(key, project_id)
    query = service.Query(
        parts=service.parse_parts(include), table=service.parse_table(qualified_name)
    )
    answer = await service.read(
        session, redis, state, caches, settings, project_id, environment, query, if_none_match
    )
    return _answer(answer)
