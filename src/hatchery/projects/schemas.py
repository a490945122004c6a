import re
import uuid
from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Any

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StringConstraints,
    model_validator,
)

from hatchery.git import check_branch
from hatchery.projects.models import ProjectStatus
from hatchery.runs.schemas import RunOut
from hatchery.text import VisibleText, visible

SLUG_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
RevisionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$"),
    Field(description="An Alembic revision id, never an expression (`@`, `+`, `-`, `:`)."),
]


def _not_reserved(slug: str) -> str:
    # `<slug>_<8 hex>_<environment>` names each database and role (at most 30 + 10 + 20
    # bytes, under PostgreSQL's 63), and PostgreSQL keeps pg_ names for itself.
    if slug.startswith("pg-"):
        raise ValueError("a slug may not begin with 'pg-' (PostgreSQL keeps pg_ names)")
    return slug


Slug = Annotated[
    str,
    StringConstraints(min_length=2, max_length=30, pattern=SLUG_PATTERN),
    AfterValidator(_not_reserved),
    Field(
        description="DNS-safe: lowercase letters, digits and single hyphens.", examples=["shop-api"]
    ),
]
EnvironmentName = Annotated[
    str, StringConstraints(min_length=1, max_length=20, pattern=SLUG_PATTERN)
]


NAME_MAX = 255  # bytes in one file name, on every file system a repository lives on


def _inside(path: str) -> str:
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or "\\" in path:
        raise ValueError("a relative path inside the repository")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise ValueError(f"each part of the path is at most {NAME_MAX} bytes")
    return visible(path)


def _unique(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("environment names must be unique")
    return names


IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"
# Variables a child must keep as the sandbox sets them.
_RESERVED = ("PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "LD_", "PYTHON")


def _requirements(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        try:
            Requirement(value)
        except InvalidRequirement as exc:
            raise ValueError(f"{value!r} is not a requirement: {exc}") from None
    return values


def _variables(values: dict[str, str]) -> dict[str, str]:
    for name, value in values.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,63}", name) or name.startswith(_RESERVED):
            raise ValueError(
                f"{name!r}: an upper-case name, not PATH, HOME, TMPDIR, LD_* or PYTHON*"
            )
        visible(value)
    return values


class MigrationSettings(BaseModel):
    """How Hatchery runs the project's Alembic migrations (always in a child process,
    from the directory of its alembic.ini, in the project's own Python dependencies)."""

    model_config = ConfigDict(extra="forbid")

    section: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = Field(
        default="alembic", description="The ini section, as `alembic -n SECTION` names it."
    )
    env_py: StrictBool = Field(
        default=True,
        description="Run the project's env.py, as `alembic upgrade` does. False: Hatchery "
        "drives Alembic itself, with the version table below, for an env.py that needs "
        "services absent at migration time.",
    )
    version_table: Annotated[str, StringConstraints(pattern=IDENTIFIER)] = Field(
        default="alembic_version", description="Used when `env_py` is false."
    )
    version_table_schema: Annotated[str, StringConstraints(pattern=IDENTIFIER)] | None = Field(
        default=None, description="Used when `env_py` is false."
    )
    requirements: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=300)]] | None,
        Field(max_length=200),
        AfterValidator(_requirements),
    ] = Field(
        default=None,
        description="Requirements (PEP 508) of the migrations' Python environment. Unset: "
        "what the repository declares beside alembic.ini or at its root (uv.lock, "
        "requirements*.txt, pyproject.toml, Pipfile.lock, Pipfile).",
    )
    variables: Annotated[dict[str, str], Field(max_length=50), AfterValidator(_variables)] = Field(
        default_factory=dict,
        description="Environment variables for env.py, beside DATABASE_URL and PG*: "
        "`{host}`, `{port}`, `{user}`, `{password}`, `{database}` and `{url}` are replaced "
        "with the environment's database (for an env.py that builds its URL from settings).",
        examples=[{"POSTGRES_SERVER": "{host}", "POSTGRES_PASSWORD": "{password}"}],
    )


class AdoptedEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: EnvironmentName
    database_url: SecretStr = Field(
        description="postgresql://user:password@host:port/database of the existing database. "
        "Kept encrypted; never returned."
    )


class Adoption(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository_url: Annotated[
        str,
        StringConstraints(min_length=1, max_length=2000),
        Field(description="`https://...`, `ssh://...` or `user@host:path`; `file://` only "
              "under the server's HATCHERY_REPOSITORY_FILE_ROOT. Credentials in it are kept "
              "encrypted and never returned."),
    ]  # fmt: skip
    branch: Annotated[
        str, StringConstraints(min_length=1, max_length=200), AfterValidator(check_branch)
    ] = "main"
    alembic_ini: (
        Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_inside)]
        | None
    ) = Field(
        default=None,
        description="Path of alembic.ini in the repository, relative; found when omitted.",
    )
    environments: Annotated[list[AdoptedEnvironment], Field(min_length=1, max_length=5)]
    migrations: MigrationSettings = Field(default_factory=MigrationSettings)
    stamp: RevisionId | None = Field(
        default=None,
        description="Stamp databases that have tables but no Alembic version table with "
        "this revision. Without it they are only reported.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "Adoption":
        _unique([e.name for e in self.environments])
        return self


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: Slug
    name: Annotated[
        VisibleText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]
    template: (
        Annotated[str, Field(min_length=1, max_length=100, examples=["fastapi-service"])] | None
    ) = None
    environments: Annotated[
        list[EnvironmentName],
        Field(min_length=1, max_length=5, description="In promotion order."),
        AfterValidator(_unique),
    ] = ["staging", "production"]
    adopt: Adoption | None = Field(
        default=None,
        description="Instead of a template: an existing repository and databases to manage.",
    )

    @model_validator(mode="after")
    def _template_or_adopt(self) -> "ProjectCreate":
        if (self.template is None) == (self.adopt is None):
            raise ValueError("give exactly one of template and adopt")
        if self.adopt is not None and "environments" in self.model_fields_set:
            raise ValueError("an adopted project's environments are named in adopt")
        return self


class MigrationSettingsUpdate(MigrationSettings):
    alembic_ini: (
        Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_inside)]
        | None
    ) = Field(
        default=None, description="Path of alembic.ini in the repository; found when omitted."
    )


class EnvironmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    database_name: str
    position: int = Field(description="Place in the promotion order, from 0.")
    revision: str | None = Field(description="The Alembic revision the database is at.")


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    template: str | None = Field(description="None for an adopted project.")
    adopted: bool
    status: ProjectStatus
    repository_url: str = Field(description="Clone URL of the project's git repository.")
    alembic_ini: str | None = Field(description="Where its alembic.ini is in the repository.")
    migration_settings: Annotated[MigrationSettings, BeforeValidator(lambda v: v or {})]
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
