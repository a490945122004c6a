import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from hatchery.projects.models import ProjectStatus
from hatchery.runs.schemas import RunOut

SLUG_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"

Slug = Annotated[
    str,
    StringConstraints(min_length=2, max_length=30, pattern=SLUG_PATTERN),
    Field(
        description="DNS-safe: lowercase letters, digits and single hyphens.", examples=["shop-api"]
    ),
]
EnvironmentName = Annotated[
    str, StringConstraints(min_length=1, max_length=20, pattern=SLUG_PATTERN)
]


def _unique(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("environment names must be unique")
    return names


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: Slug
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    template: Annotated[str, Field(min_length=1, max_length=100, examples=["fastapi-service"])]
    environments: Annotated[
        list[EnvironmentName],
        Field(min_length=1, max_length=5, description="In promotion order."),
        AfterValidator(_unique),
    ] = ["staging", "production"]


class EnvironmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    position: int = Field(description="Place in the promotion order, from 0.")
    revision: str | None = Field(description="The Alembic revision the database is at.")


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    template: str
    status: ProjectStatus
    repository_url: str = Field(description="Clone URL of the project's git repository.")
    environments: list[EnvironmentOut]
    initialization_summary: dict[str, Any] | None
    initialization_error: str | None
    latest_run: RunOut | None = None
    created_at: datetime
    updated_at: datetime


class ProjectCreated(BaseModel):
    project: ProjectOut
    run: RunOut


class ProjectList(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class TemplateOut(BaseModel):
    name: str
    description: str


class TemplateList(BaseModel):
    items: list[TemplateOut]
