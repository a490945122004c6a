import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hatchery.keys.models import Scope
from hatchery.text import VisibleText


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        VisibleText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]
    scopes: Annotated[list[Scope], Field(min_length=1)]
    project_id: uuid.UUID | None = Field(
        default=None, description="Bind the key to one project; it is refused everywhere else."
    )

    @model_validator(mode="after")
    def _admin_is_global(self) -> "KeyCreate":
        if Scope.admin in self.scopes and self.project_id is not None:
            raise ValueError("a key with the admin scope cannot be bound to a project")
        self.scopes = sorted(set(self.scopes))
        return self


class Key(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The start of the token, enough to recognise it.")
    scopes: list[Scope]
    project_id: uuid.UUID | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(Key):
    token: str = Field(description="The bearer token. Shown once: store it now.")


class KeyList(BaseModel):
    items: list[Key]
