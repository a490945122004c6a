"""What a migration run is given, set by the api when it creates the run and read by its
plan's steps (`context.params(UpgradeParams)`)."""

import uuid

from pydantic import BaseModel


class MigrationParams(BaseModel):
    environment: str


class UpgradeParams(MigrationParams):
    commit_sha: str
    target_revision: str | None = None  # the head when None
    force: bool = False  # past promotion gating (an admin's choice, audited)
    deployment_id: str | None = None  # when CI reported the deployment


class DowngradeParams(MigrationParams):
    target_revision: str


class RestoreParams(MigrationParams):
    backup_id: uuid.UUID
