"""One error hierarchy, rendered everywhere as RFC 9457 problem+json."""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hatchery import db
from hatchery.observability import current_request_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger("hatchery.http")
PROBLEM_TYPE_BASE = "https://hatchery.dev/problems/"


class FieldError(BaseModel):
    field: str = Field(description="Dotted location of the offending field, e.g. `body.scopes.0`.")
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


class HatcheryError(Exception):
    status: int = 500
    problem: str = "internal-error"
    title: str = "Internal server error"
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str | None = None, *, errors: list[FieldError] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors


class InvalidInput(HatcheryError):
    status, problem, title = 422, "invalid-input", "Invalid input"


class NotFound(HatcheryError):
    status, problem, title = 404, "not-found", "Not found"


class Conflict(HatcheryError):
    status, problem, title = 409, "conflict", "Conflict"


class Unavailable(HatcheryError):
    status, problem, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class Unauthorized(HatcheryError):
    status, problem, title = 401, "unauthorized", "Unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(HatcheryError):
    status, problem, title = 403, "forbidden", "Forbidden"


def problem_response(
    request: Request | None,
    status: int,
    *,
    problem: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=PROBLEM_TYPE_BASE + problem if problem else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        request_id=current_request_id(),
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def _hatchery_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HatcheryError)
    return problem_response(
        request,
        exc.status,
        problem=exc.problem,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
    )


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(field=_field(e["loc"]), message=e["msg"], type=e["type"]) for e in exc.errors()
    ]
    fields = ", ".join(sorted({e.field for e in errors}))
    return problem_response(
        request,
        422,
        problem="invalid-input",
        title="Invalid input",
        detail=f"Invalid value for: {fields}",
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # FastAPI's answer to a body that is not even text (not UTF-8): invalid input.
        return problem_response(
            request, 422, problem="invalid-input", title="Invalid input",
            detail="The body is not UTF-8 JSON",
            errors=[FieldError(field="body", message="not UTF-8 JSON", type="json_invalid")],
        )  # fmt: skip
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route that matched the path.
        headers["Allow"] = ", ".join(request.state.routes.allowed_methods(request.url.path))
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    return problem_response(request, exc.status_code, detail=detail, headers=headers)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL or Redis cannot be reached: nothing was done, try again shortly."""
    log.warning("dependency_unavailable", error=type(exc).__name__, path=request.url.path)
    return problem_response(
        request, 503, problem="unavailable", title="Service unavailable",
        detail="A service Hatchery needs (its database or Redis) cannot be reached now: "
        "nothing was done; try again shortly",
        headers={"Retry-After": "5"},
    )  # fmt: skip


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refused a value it cannot store (SQLSTATE class 22: a NUL character,
    an over-long string): bad input, whatever route let it through; the request's
    transaction is rolled back. A lost or refused connection is a 503. Any other
    database error stays a 500."""
    assert isinstance(exc, DBAPIError)
    if db.unavailable(exc):
        return await _unavailable(request, exc)
    if not str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
        raise exc
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
    return problem_response(
        request, 422, problem="invalid-input", title="Invalid input",
        detail=f"A value could not be stored: {reason.split(': ', 1)[-1]}",
    )  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HatcheryError, _hatchery_error)
    app.add_exception_handler(DBAPIError, _database_error)
    for lost in (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(lost, _unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }
