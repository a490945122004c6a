"""What a project's initialize and delete runs are given. `variant` chooses the plan:
an adopted project's runs follow plans of their own."""

from typing import Literal

from pydantic import BaseModel


class InitializeParams(BaseModel):
    variant: Literal["adopt"] | None = None
    stamp: str | None = None  # adopted databases with tables but no version table


class DeleteParams(BaseModel):
    variant: Literal["forget"] | None = None
